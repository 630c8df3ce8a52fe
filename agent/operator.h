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

namespace pkirelay::agent {

// sysexits(3) statuses besides those in pipeline.h's ExitCode (move them there when convenient).
constexpr int ExitNoInput = 66; // EX_NOINPUT: a store that should exist is missing or empty
// The store is damaged (SQLITE_CORRUPT, SQLITE_NOTADB, PRAGMA quick_check). sysexits has no
// code for "data on disk is corrupt": EX_IOERR (74, "an error occurred while doing I/O on some
// file") is the nearest, and it keeps corruption apart from EX_SOFTWARE (70, a bug in
// pkirelay) and from EX_TEMPFAIL (75, try again later), which cron is told to ignore.
constexpr int ExitStoreCorrupt = 74;

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
