// pkirelay's command line (CLI11, Debian libcli11-dev): run, inspect, check-config, status,
// list, show. Exit codes follow sysexits(3), as ../shared/DESIGN.md promises to cron/systemd.
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

// Names from folders may be any bytes: never let one make the JSON encoder throw.
void printJson(const nlohmann::json &j) {
    fmt::print("{}\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
}

std::string timeText(spool::Millis ms) {
    const std::time_t t = static_cast<std::time_t>(ms / 1000);
    return fmt::format("{:%Y-%m-%d %H:%M:%S}Z", fmt::gmtime(t));
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
    for (const auto &s : config->sources) {
        fmt::print("  source {}: {} -> {} (responses in {}, after storing: {})\n", s.name, s.path,
                   s.endpoint.empty() ? "(per kind)" : s.endpoint, s.responses, s.after);
        for (const auto &[kind, name] : s.routes)
            fmt::print("    {} -> {}\n", kindInfo(kind).id, name);
    }
    for (const auto &e : config->endpoints)
        fmt::print("  endpoint {}: {}{}\n", e.name, e.url,
                   e.verifyTls ? "" : " (TLS NOT VERIFIED)");
    return ExitOk;
}

// The store for the operator views. A store that does not exist yet is not created by them: a
// mistyped path must not leave an empty database behind. Reports the problem and returns
// nullopt with the exit status in exitCode (0 when there is simply nothing yet).
std::optional<spool::Store> openStore(const std::string &cfgPath, int &exitCode) {
    auto config = loadOrReport(cfgPath);
    if (!config) {
        exitCode = ExitConfig;
        return std::nullopt;
    }
    struct stat st {};
    if (::stat(config->settings.storePath.c_str(), &st) != 0) {
        fmt::print(stderr, "pkirelay: no store at {} yet (nothing has run)\n",
                   config->settings.storePath);
        exitCode = ExitOk;
        return std::nullopt;
    }
    return spool::Store::open(config->settings.storePath);
}

nlohmann::json summaryJson(const spool::ItemSummary &s) {
    return {{"id", s.id},
            {"state", spool::stateName(s.state)},
            {"kind", s.kind ? std::string(kindInfo(*s.kind).id) : std::string()},
            {"source", s.source},
            {"origin", printable(s.origin)},
            {"attempts", s.attempts},
            {"reason", printable(s.reason)},
            {"created_at_ms", s.createdAt},
            {"updated_at_ms", s.updatedAt}};
}

int commandStatus(const std::string &cfgPath, bool json) {
    int status = ExitOk;
    auto store = openStore(cfgPath, status);
    if (!store)
        return status;
    const auto counts = store->countByState();
    if (json) {
        nlohmann::json j = nlohmann::json::object();
        for (const auto &[state, n] : counts)
            j[std::string(spool::stateName(state))] = n;
        printJson(j);
        return ExitOk;
    }
    if (counts.empty())
        fmt::print("no items\n");
    for (const auto &[state, n] : counts)
        fmt::print("{:<12} {}\n", spool::stateName(state), n);
    return ExitOk;
}

int commandList(const std::string &cfgPath, const std::string &stateName, std::size_t limit,
                bool json) {
    std::optional<spool::State> state;
    if (!stateName.empty()) {
        state = spool::stateFromName(stateName);
        if (!state) {
            fmt::print(stderr, "pkirelay: unknown state {}\n", stateName);
            return 64; // EX_USAGE
        }
    }
    int status = ExitOk;
    auto store = openStore(cfgPath, status);
    if (!store)
        return status;
    const auto items = store->list(state, limit);
    if (json) {
        nlohmann::json j = nlohmann::json::array();
        for (const auto &s : items)
            j.push_back(summaryJson(s));
        printJson(j);
        return ExitOk;
    }
    for (const auto &s : items)
        fmt::print("{:>6}  {:<11}  {:<20}  {}/{}{}\n", s.id, spool::stateName(s.state),
                   s.kind ? kindInfo(*s.kind).id : "-", s.source, printable(s.origin),
                   s.reason.empty() ? "" : "  (" + printable(s.reason) + ")");
    return ExitOk;
}

int commandShow(const std::string &cfgPath, std::int64_t id, bool json) {
    int status = ExitOk;
    auto store = openStore(cfgPath, status);
    if (!store)
        return status;
    const auto item = store->show(id);
    if (!item) {
        fmt::print(stderr, "pkirelay: no item {}\n", id);
        return ExitDataErr;
    }
    if (json) {
        nlohmann::json j = summaryJson(item->summary);
        j["sha256"] = item->sha256;
        j["size"] = item->size;
        j["endpoint"] = item->endpoint;
        j["transaction_id"] = toHex(item->transactionId);
        j["sender_nonce"] = toHex(item->senderNonce);
        j["recip_nonce"] = toHex(item->recipNonce);
        nlohmann::json arrivals = nlohmann::json::array();
        for (std::size_t i = 0; i < item->arrivals.size(); ++i)
            arrivals.push_back(
                {{"source", item->arrivals[i].source},
                 {"origin", item->arrivals[i].origin},
                 {"reply_to", item->arrivals[i].replyTo},
                 {"delivery",
                  i < item->deliveryStates.size() ? item->deliveryStates[i] : std::string()}});
        j["arrivals"] = arrivals;
        nlohmann::json events = nlohmann::json::array();
        for (const auto &e : item->events)
            events.push_back({{"at_ms", e.at}, {"what", e.what}, {"detail", printable(e.detail)}});
        j["events"] = events;
        printJson(j);
        return ExitOk;
    }
    const auto &s = item->summary;
    fmt::print("item {}: {}\n", s.id, spool::stateName(s.state));
    fmt::print("  kind:     {}\n", s.kind ? kindInfo(*s.kind).title : "(not a PKI message)");
    fmt::print("  sha256:   {}\n  size:     {} bytes\n", item->sha256, item->size);
    if (!item->transactionId.empty())
        fmt::print("  transactionID: {}\n", toHex(item->transactionId));
    if (!item->senderNonce.empty())
        fmt::print("  senderNonce:   {}\n", toHex(item->senderNonce));
    if (!s.reason.empty())
        fmt::print("  reason:   {}\n", printable(s.reason));
    if (!item->endpoint.empty())
        fmt::print("  endpoint: {} ({} attempt(s))\n", item->endpoint, s.attempts);
    for (std::size_t i = 0; i < item->arrivals.size(); ++i)
        fmt::print("  arrival:  {}/{} -> {} ({})\n", item->arrivals[i].source,
                   printable(item->arrivals[i].origin), item->arrivals[i].replyTo,
                   i < item->deliveryStates.size() ? item->deliveryStates[i] : "");
    fmt::print("  history:\n");
    for (const auto &e : item->events)
        fmt::print("    {}  {:<10} {}\n", timeText(e.at), e.what, printable(e.detail));
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
    std::string cfg;
    bool json = false;

    auto *run = app.add_subcommand("run", "Relay: scan sources, relay, write responses");
    bool once = false;
    run->add_option("-c,--config", cfg,
                    "Configuration file (default $PKIRELAY_CONFIG or " +
                        std::string(defaultConfig) + ")");
    run->add_flag("--once", once, "One pass over everything waiting, then exit (for cron)");
    bool newStore = false;
    run->add_flag("--new-store", newStore,
                  "Start with a new, empty store although the folders hold pkirelay's answers");

    auto *inspect = app.add_subcommand("inspect", "Classify files and print what they are");
    std::vector<std::string> files;
    inspect->add_option("FILE", files, "Files to classify")->required();
    inspect->add_flag("--json", json, "Machine-readable output");

    auto *check = app.add_subcommand("check-config", "Check a configuration file");
    bool keys = false;
    check->add_option("-c,--config", cfg, "Configuration file");
    check->add_flag("--keys", keys, "Print the reference of every configuration key");

    auto *status = app.add_subcommand("status", "Count items by state");
    status->add_option("-c,--config", cfg, "Configuration file");
    status->add_flag("--json", json, "Machine-readable output");

    auto *list = app.add_subcommand("list", "List items, newest first");
    std::string state;
    std::size_t limit = 50;
    list->add_option("-c,--config", cfg, "Configuration file");
    list->add_option("--state", state, "Only items in this state");
    list->add_option("-n,--limit", limit, "At most this many");
    list->add_flag("--json", json, "Machine-readable output");

    auto *show = app.add_subcommand("show", "Show one item and its whole history");
    std::int64_t id = 0;
    show->add_option("-c,--config", cfg, "Configuration file");
    show->add_option("ID", id, "Item id")->required();
    show->add_flag("--json", json, "Machine-readable output");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError &e) {
        return app.exit(e) == 0 ? 0 : 64; // EX_USAGE
    }

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
            return commandList(configPath(cfg), state, limit, json);
        if (*show)
            return commandShow(configPath(cfg), id, json);
    } catch (const spool::StoreError &e) {
        spdlog::critical("- store: {}", e.what());
        return ExitCantCreat;
    } catch (const std::exception &e) {
        spdlog::critical("- {}", e.what());
        return ExitSoftware;
    }
    return ExitSoftware;
}
