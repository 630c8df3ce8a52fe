// pkirelay's command line (CLI11, Debian libcli11-dev): run, inspect, check-config, and the
// operator commands of operator.h. Exit codes follow sysexits(3), as ../shared/DESIGN.md
// promises to cron/systemd.
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <iostream>
#include <optional>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/chrono.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "config.h"
#include "lib/describe.h"
#include "lib/file_io.h"
#include "lib/text.h"
#include "media_commands.h"
#include "operator.h"
#include "run.h"

using namespace pkirelay;
using namespace pkirelay::agent;

namespace {

constexpr const char *defaultConfig = "/etc/pkirelay/pkirelay.toml";

std::string configPath(const std::string &given) {
    if (!given.empty())
        return given;
    if (const char *env = std::getenv("PKIRELAY_CONFIG"); env && *env)
        return env;
    return defaultConfig;
}

int commandInspect(const std::vector<std::string> &files, bool json) {
    constexpr int exitNoInput = 66; // EX_NOINPUT
    int code = ExitOk;
    nlohmann::json all = nlohmann::json::array();
    const ClassifyLimits limits;
    for (const auto &file : files) {
        FileRead read;
        try {
            read = readFile(file, limits.maxSize);
        } catch (const IoError &e) {
            // In --json output every file has its entry, so scripts can match by position.
            if (json)
                all.push_back({{"file", printable(file)}, {"error", printable(e.what())}});
            fmt::print(stderr, "pkirelay: {}\n", printable(e.what()));
            code = exitNoInput;
            continue;
        }
        Classification c =
            read.tooLarge
                ? Classification{Rejection{fmt::format("too large: {} bytes, the limit is {}",
                                                       read.size, limits.maxSize),
                                           std::nullopt, false}}
                : classify(read.bytes, limits);
        if (std::holds_alternative<Rejection>(c) && code == ExitOk)
            code = ExitDataErr;
        if (json) {
            nlohmann::json j = std::visit([](const auto &v) { return toJson(v); }, c);
            j["file"] = printable(file);
            all.push_back(std::move(j));
        } else {
            if (files.size() > 1)
                fmt::print("{}:\n", printable(file));
            fmt::print("{}", std::visit([](const auto &v) { return describe(v); }, c));
            if (files.size() > 1)
                fmt::print("\n");
        }
    }
    if (json)
        printJson(files.size() == 1 && !all.empty() ? all[0] : all);
    return code;
}

int commandCheckConfig(const std::string &cfgPath, bool keys) {
    if (keys) {
        fmt::print("{}", keyReference());
        return ExitOk;
    }
    auto config = loadOrReport(cfgPath);
    if (!config)
        return ExitConfig;
    for (const auto &w : environmentWarnings(*config))
        fmt::print(stderr, "warning: {}\n", w);
    fmt::print("{}: valid; {} source(s), {} endpoint(s), store {}\n", cfgPath,
               config->sources.size(), config->endpoints.size(), config->settings.storePath);
    // [[route]] rules are tried first, in this order, before each source's routes and endpoint.
    for (const auto &r : config->routeTables) {
        std::vector<std::string> when;
        for (const auto &[key, value] : {std::pair{"source", &r.source}, std::pair{"kind", &r.kind},
                                         std::pair{"cmp_body", &r.cmpBody}})
            if (!value->empty())
                when.push_back(fmt::format("{} {}", key, *value));
        fmt::print("  {}: {} -> {}\n", r.name,
                   when.empty() ? "anything" : fmt::format("{}", fmt::join(when, ", ")),
                   r.endpoint);
    }
    for (const auto &s : config->sources) {
        if (s.isMail())
            fmt::print("  source {}: mailbox {} at {} -> {} (replies via {}, from {})\n", s.name,
                       s.mailbox, redactUrl(s.url), s.endpoint.empty() ? "(per kind)" : s.endpoint,
                       redactUrl(s.smtpUrl), s.replyFrom);
        else
            fmt::print("  source {}: {} -> {} (responses in {}, after storing: {})\n", s.name,
                       s.path, s.endpoint.empty() ? "(per kind)" : s.endpoint, s.responses,
                       s.after);
        for (const auto &[kind, name] : s.routes)
            fmt::print("    {} -> {}\n", kindInfo(kind).id, name);
    }
    for (const auto &e : config->endpoints)
        fmt::print("  endpoint {}: {}{}\n", e.name, redactUrl(e.url),
                   e.verifyTls ? "" : " (TLS NOT VERIFIED)");
    return ExitOk;
}

} // namespace

int main(int argc, char **argv) {
    auto logger = spdlog::stderr_logger_st("pkirelay");
    // One line per event, item id first (DESIGN, "Operating it"); journald adds its own time,
    // but a terminal or a cron mail wants one.
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
    spdlog::set_default_logger(logger);

    CLI::App app{"pkirelay: store-and-forward relay for CMC and CMP enrollment messages"};
    app.set_version_flag("--version", PKIRELAY_VERSION);
    app.require_subcommand(1);
    // Global options may also follow the subcommand (`pkirelay run --once --verbose`).
    app.fallthrough();
    bool verbose = false, quiet = false;
    app.add_flag("-v,--verbose", verbose, "Log everything, debug lines included")
        ->excludes(app.add_flag("-q,--quiet", quiet, "Log only warnings and errors"));
    std::string cfg;
    bool json = false;
    const std::string cfgHelp =
        "Configuration file (default $PKIRELAY_CONFIG or " + std::string(defaultConfig) + ")";
    const auto jsonFlag = [&](CLI::App *sub) {
        sub->add_option("-c,--config", cfg, cfgHelp);
        sub->add_flag("--json", json, "Machine-readable output");
    };

    auto *run = app.add_subcommand("run", "Relay: scan sources, relay, write responses");
    bool once = false, newStore = false;
    run->add_option("-c,--config", cfg, cfgHelp);
    run->add_flag("--once", once, "One pass over everything waiting, then exit (for cron)");
    run->add_flag("--new-store", newStore,
                  "Start with a new, empty store although the folders hold pkirelay's answers");

    auto *inspect = app.add_subcommand("inspect", "Classify files and print what they are");
    std::vector<std::string> files;
    inspect->add_option("FILE", files, "Files to classify")->required();
    inspect->add_flag("--json", json, "Machine-readable output");

    auto *check = app.add_subcommand("check-config", "Check a configuration file");
    bool keys = false;
    check->add_option("-c,--config", cfg, cfgHelp);
    check->add_flag("--keys", keys, "Print the reference of every configuration key");

    auto *status = app.add_subcommand(
        "status", "Items by state, the oldest waiting item, the last error per endpoint");
    jsonFlag(status);

    auto *list = app.add_subcommand("list", "List items, newest first");
    ListOptions listOptions;
    jsonFlag(list);
    list->add_option("--state", listOptions.state, "Only items in this state");
    list->add_option("--source", listOptions.source, "Only items that first came from this source");
    list->add_option("--kind", listOptions.kind, "Only items of this kind (e.g. cmp)");
    list->add_option("--older-than", listOptions.olderThan,
                     "Only items that arrived longer ago than DURATION (30s, 15m, 12h, 7d)");
    list->add_option("--newer-than", listOptions.newerThan,
                     "Only items that arrived within DURATION");
    list->add_option("-n,--limit", listOptions.limit, "At most this many (default 50)");

    std::int64_t id = 0;
    std::vector<std::int64_t> ids;
    auto *show = app.add_subcommand("show", "Show one item and its whole history");
    jsonFlag(show);
    show->add_option("ID", id, "Item id")->required();

    auto *retry = app.add_subcommand("retry", "Queue failed or review items again");
    bool failed = false;
    jsonFlag(retry);
    retry->add_option("ID", ids, "Item ids");
    retry->add_flag("--failed", failed, "Every failed item");

    auto *hold = app.add_subcommand("hold", "Put queued or deferred items aside");
    jsonFlag(hold);
    hold->add_option("ID", ids, "Item ids")->required();

    auto *release = app.add_subcommand("release", "Queue held items again");
    jsonFlag(release);
    release->add_option("ID", ids, "Item ids")->required();

    auto *purge = app.add_subcommand("purge", "Delete finished items older than DURATION");
    std::string olderThan;
    jsonFlag(purge);
    purge->add_option("--older-than", olderThan, "DURATION: 30s, 15m, 12h, 7d")->required();

    auto *exportCmd =
        app.add_subcommand("export", "Write an item's request and answer bytes to files");
    std::string dir = ".";
    jsonFlag(exportCmd);
    exportCmd->add_option("ID", id, "Item id")->required();
    exportCmd->add_option("--dir", dir, "Folder to write to (default: the current one)");

    auto *deliver = app.add_subcommand("deliver", "Deliver a review item's stored answer anyway");
    bool force = false;
    jsonFlag(deliver);
    deliver->add_option("ID", id, "Item id")->required();
    deliver->add_flag("--force", force, "Required: deliver an answer pkirelay did not accept");

    auto *media = app.add_subcommand("media", "The air-gap chain: what is out on removable media");
    media->require_subcommand(1);
    auto *mediaStatus =
        media->add_subcommand("status", "Out on the media, came back, still missing, oldest");
    jsonFlag(mediaStatus);
    auto *mediaReport = media->add_subcommand("report", "A printable transfer report, per batch");
    jsonFlag(mediaReport);
    std::string mediaEndpoint;
    std::int64_t mediaBatch = 0; // 0: every batch
    mediaReport->add_option("--endpoint", mediaEndpoint, "Only this directory endpoint");
    mediaReport->add_option("--batch", mediaBatch, "Only this batch");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError &e) {
        return app.exit(e) == 0 ? 0 : ExitUsage;
    }
    if (verbose)
        setLogLevelOverride(spdlog::level::debug);
    else if (quiet)
        setLogLevelOverride(spdlog::level::warn);
    else if (!*inspect)
        applyConfiguredLogLevel(configPath(cfg));

    try {
        if (*run)
            return commandRun(configPath(cfg), once, newStore);
        if (*inspect)
            return commandInspect(files, json);
        if (*check)
            return commandCheckConfig(configPath(cfg), keys);
        if (*status)
            return commandStatus(configPath(cfg), json);
        if (*list)
            return commandList(configPath(cfg), listOptions, json);
        if (*show)
            return commandShow(configPath(cfg), id, json);
        if (*retry)
            return commandRetry(configPath(cfg), ids, failed, json);
        if (*hold)
            return commandHold(configPath(cfg), ids, json);
        if (*release)
            return commandRelease(configPath(cfg), ids, json);
        if (*purge)
            return commandPurge(configPath(cfg), olderThan, json);
        if (*exportCmd)
            return commandExport(configPath(cfg), id, dir, json);
        if (*deliver)
            return commandDeliver(configPath(cfg), id, force, json);
        if (*mediaStatus)
            return commandMediaStatus(configPath(cfg), json);
        if (*mediaReport)
            return commandMediaReport(
                configPath(cfg), mediaEndpoint,
                mediaBatch > 0 ? std::optional<std::int64_t>(mediaBatch) : std::nullopt, json);
    } catch (const spool::StoreCorrupt &e) {
        // Loud, and its own status: a damaged store does not heal by waiting (README, "Exit
        // status"), and cron is told to ignore only 75.
        spdlog::critical("- STORE DAMAGED: {}; nothing more is relayed from it. Stop pkirelay, "
                         "keep a copy of the file, and restore it from a backup (or recover it "
                         "with sqlite3's .recover)",
                         e.what());
        return ExitStoreCorrupt;
    } catch (const spool::StoreMissing &e) {
        spdlog::critical("- store: {}; refusing to start with a new one, which would relay every "
                         "kept request again. If that is what you want (a first start, or a "
                         "store given up on purpose), run once with --new-store",
                         e.what());
        return ExitNoInput;
    } catch (const spool::StoreBusy &e) {
        spdlog::error("- store: {}; try again later", e.what());
        return ExitTempFail;
    } catch (const spool::StoreError &e) {
        spdlog::critical("- store: {}", e.what());
        return ExitCantCreat;
    } catch (const IoError &e) {
        spdlog::critical("- {}", printable(e.what()));
        return ExitCantCreat;
    } catch (const std::exception &e) {
        spdlog::critical("- {}", e.what());
        return ExitSoftware;
    }
    return ExitSoftware;
}
