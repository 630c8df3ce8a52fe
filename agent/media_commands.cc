// The media views (media_commands.h), from the store's media_file table and awaiting items.
#include "media_commands.h"

#include <cerrno>
#include <ctime>
#include <sys/stat.h>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "config.h"
#include "operator.h"
#include "pipeline.h"
#include "lib/text.h"
#include "spool/store.h"

namespace pkirelay::agent {

namespace {

std::string when(spool::Millis ms) {
    const std::time_t t = static_cast<std::time_t>(ms / 1000);
    return fmt::format("{:%Y-%m-%d %H:%M:%S}Z", fmt::gmtime(t));
}

std::string age(spool::Millis ms) {
    const std::int64_t s = std::max<std::int64_t>(ms / 1000, 0);
    if (s < 7200)
        return fmt::format("{}m", s / 60);
    if (s < 172800)
        return fmt::format("{}h{:02}m", s / 3600, s / 60 % 60);
    return fmt::format("{}d{:02}h", s / 86400, s / 3600 % 24);
}

std::optional<spool::Store> openStore(const std::string &cfgPath, int &code) {
    Config config;
    try {
        config = loadConfig(cfgPath);
    } catch (const ConfigError &e) {
        for (const auto &p : e.problems())
            fmt::print(stderr, "{}\n", p);
        code = ExitConfig;
        return std::nullopt;
    }
    struct stat st {};
    if (::stat(config.settings.storePath.c_str(), &st) != 0 && errno == ENOENT) {
        fmt::print(stderr, "pkirelay: no store at {} yet (nothing has run)\n",
                   config.settings.storePath);
        code = ExitOk;
        return std::nullopt;
    }
    return spool::Store::openReadOnly(config.settings.storePath);
}

} // namespace

int commandMediaStatus(const std::string &cfgPath, bool json) {
    int code = ExitOk;
    auto store = openStore(cfgPath, code);
    if (!store)
        return code;
    const spool::Millis now = systemClock();
    const auto st = store->mediaStatus(now);
    if (json) {
        nlohmann::json batches = nlohmann::json::array();
        for (const auto &b : st.batches)
            batches.push_back({{"endpoint", b.endpoint},
                               {"batch", b.batch},
                               {"written_at_ms", b.writtenAt},
                               {"files", b.files},
                               {"returned", b.returned},
                               {"outstanding", b.outstanding}});
        nlohmann::json j = {{"awaiting", st.awaiting},
                            {"returned", st.returned},
                            {"expired", st.expired},
                            {"quarantined_returns", st.quarantinedReturns},
                            {"batches", batches}};
        if (st.oldestId)
            j["oldest"] = {{"id", *st.oldestId},
                           {"since_ms", st.oldestSince},
                           {"age_seconds", (now - st.oldestSince) / 1000},
                           {"deadline_ms", st.oldestDeadline}};
        else
            j["oldest"] = nullptr;
        printJson(j);
        return ExitOk;
    }
    fmt::print("out on the media   {}  (waiting for their answers)\n", st.awaiting);
    fmt::print("came back          {}\n", st.returned);
    fmt::print("failed waiting     {}  (await_max_age_seconds passed)\n", st.expired);
    fmt::print("refused on return  {}  (quarantined: altered, replayed, unmatched)\n",
               st.quarantinedReturns);
    if (st.oldestId)
        fmt::print("oldest outstanding: item {}, out for {} (since {}), fails at {}\n",
                   *st.oldestId, age(now - st.oldestSince), when(st.oldestSince),
                   when(st.oldestDeadline));
    else
        fmt::print("oldest outstanding: none\n");
    if (!st.batches.empty()) {
        fmt::print("\n{:<12} {:>7}  {:<21} {:>6} {:>9} {:>12}\n", "endpoint", "batch", "written",
                   "files", "returned", "outstanding");
        for (const auto &b : st.batches)
            fmt::print("{:<12} {:>7}  {:<21} {:>6} {:>9} {:>12}\n", printable(b.endpoint), b.batch,
                       when(b.writtenAt), b.files, b.returned, b.outstanding);
    }
    return ExitOk;
}

int commandMediaReport(const std::string &cfgPath, const std::string &endpoint,
                       std::optional<std::int64_t> batch, bool json) {
    int code = ExitOk;
    auto store = openStore(cfgPath, code);
    if (!store)
        return code;
    const auto rows = store->mediaFiles(endpoint, batch);
    if (json) {
        nlohmann::json files = nlohmann::json::array();
        for (const auto &r : rows) {
            nlohmann::json one = {{"endpoint", r.endpoint},
                                  {"batch", r.batch},
                                  {"name", r.name},
                                  {"item", r.itemId},
                                  {"size", r.size},
                                  {"sha256", r.sha256},
                                  {"state", spool::stateName(r.state)},
                                  {"written_at_ms", r.writtenAt}};
            one["returned_at_ms"] = r.returnedAt ? nlohmann::json(*r.returnedAt) : nullptr;
            one["returned_as"] = r.returnedAs;
            files.push_back(std::move(one));
        }
        printJson({{"files", files}});
        return ExitOk;
    }
    // For paper: one block per batch, each file with its size and the start of its hash, so
    // the person carrying the stick can check what went and what came back.
    std::string current;
    for (const auto &r : rows) {
        const std::string key = fmt::format("{}/{}", r.endpoint, r.batch);
        if (key != current) {
            current = key;
            fmt::print("\npkirelay transfer report: endpoint {}, batch {} (manifest b{:06}."
                       "manifest), written {}\n",
                       printable(r.endpoint), r.batch, r.batch, when(r.writtenAt));
            fmt::print("  {:<40} {:>8}  {:<16}  {:<10} {}\n", "file", "bytes", "sha256", "state",
                       "came back");
        }
        fmt::print("  {:<40} {:>8}  {:<16}  {:<10} {}\n", printable(r.name), r.size,
                   r.sha256.substr(0, 16), spool::stateName(r.state),
                   r.returnedAt ? when(*r.returnedAt) : std::string("-"));
    }
    if (rows.empty())
        fmt::print("nothing has been written onto media\n");
    else
        fmt::print("\nchecked by: ____________________   date: ____________\n");
    return ExitOk;
}

} // namespace pkirelay::agent
