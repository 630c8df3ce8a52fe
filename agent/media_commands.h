// `pkirelay media status` and `pkirelay media report` (issue 17, the air-gap chain): what is out
// on the media, what came back, what is still missing and the oldest outstanding item; and a
// printable transfer report, per batch, for the person who carries the stick (file names, sizes,
// the start of each SHA-256, what came back). Read-only views, like `status`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace pkirelay::agent {

int commandMediaStatus(const std::string &cfgPath, bool json);
int commandMediaReport(const std::string &cfgPath, const std::string &endpoint,
                       std::optional<std::int64_t> batch, bool json);

} // namespace pkirelay::agent
