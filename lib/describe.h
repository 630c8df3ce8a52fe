// What `pkirelay inspect` prints: a classified message or a rejection, for people (one
// "field: value" line each) and for scripts (JSON).
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "classify.h"

namespace pkirelay {

std::string describe(const Message &message);
std::string describe(const Rejection &rejection);
nlohmann::json toJson(const Message &message);
nlohmann::json toJson(const Rejection &rejection);
// What an answer's status says, on one line for `show` ("CMP ip, PKIStatus rejection (2),
// failInfo badPOP: \"...\""), with the CA's own text; empty when it carries no status.
std::string statusSummary(const Message &message);
// RFC 9810 §5.2.3 PKIFailureInfo bit names, comma-separated ("badPOP,badRequest").
std::string failInfoNames(std::uint32_t bits);

} // namespace pkirelay
