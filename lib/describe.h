// What `pkirelay inspect` prints: a classified message or a rejection, for people (one
// "field: value" line each) and for scripts (JSON).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "classify.h"

namespace pkirelay {

std::string describe(const Message &message);
std::string describe(const Rejection &rejection);
nlohmann::json toJson(const Message &message);
nlohmann::json toJson(const Rejection &rejection);

} // namespace pkirelay
