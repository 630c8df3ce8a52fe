// pkirelay's operator commands: status, list, show, retry, hold, release, purge, export and
// deliver. They work while a `pkirelay run` is going: none takes the run lock; the views open
// the store read-only, and the few writes are short BEGIN IMMEDIATE transactions that never
// touch an item in flight. Names from folders and messages are escaped for the terminal only;
// --json gives them exactly as stored.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/common.h>

#include "config.h"
#include "pipeline.h"

namespace pkirelay::agent {

// The level set by --verbose/--quiet.
void setLogLevelOverride(std::optional<spdlog::level::level_enum> level);
// Without --verbose/--quiet: the level of the file's log.level, read before the command runs
// (a file that is not valid changes nothing here; the command itself reports it).
void applyConfiguredLogLevel(const std::string &cfgPath);

// Names from folders may be any bytes: never let one make the JSON encoder throw.
void printJson(const nlohmann::json &j);

struct ListOptions {
    std::string state;
    std::string source;
    std::string kind;
    std::string olderThan; // DURATION: 30s, 15m, 12h, 7d
    std::string newerThan;
    std::size_t limit = 50;
};

int commandStatus(const std::string &cfgPath, bool json);
int commandList(const std::string &cfgPath, const ListOptions &options, bool json);
int commandShow(const std::string &cfgPath, std::int64_t id, bool json);
int commandRetry(const std::string &cfgPath, const std::vector<std::int64_t> &ids, bool failed,
                 bool json);
int commandHold(const std::string &cfgPath, const std::vector<std::int64_t> &ids, bool json);
int commandRelease(const std::string &cfgPath, const std::vector<std::int64_t> &ids, bool json);
int commandPurge(const std::string &cfgPath, const std::string &olderThan, bool json);
int commandExport(const std::string &cfgPath, std::int64_t id, const std::string &dir, bool json);
int commandDeliver(const std::string &cfgPath, std::int64_t id, bool force, bool json);

} // namespace pkirelay::agent
