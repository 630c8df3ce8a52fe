// The store's SQL migrations, compiled in from schemas/ (see schemas/meson.build).
#pragma once

#include <string_view>
#include <vector>

namespace pkirelay::spool {

const std::vector<std::string_view> &migrations();

} // namespace pkirelay::spool
