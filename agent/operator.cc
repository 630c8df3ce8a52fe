// The operator commands (operator.h). What they trust: the store's own records. What they
// print for people goes through printable() (a file name may hold terminal escapes); what they
// print as JSON keeps every name exactly, with the bytes in hex where a name is not UTF-8.
#include "operator.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sys/stat.h>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "lib/classify.h"
#include "lib/describe.h"
#include "lib/file_io.h"
#include "lib/text.h"
#include "run.h"

namespace pkirelay::agent {
namespace {

std::optional<spdlog::level::level_enum> levelOverride;

spdlog::level::level_enum levelFromName(const std::string &name) {
    if (name == "debug")
        return spdlog::level::debug;
    if (name == "warning")
        return spdlog::level::warn;
    if (name == "error")
        return spdlog::level::err;
    return spdlog::level::info;
}

std::string timeText(spool::Millis ms) {
    const std::time_t t = static_cast<std::time_t>(ms / 1000);
    return fmt::format("{:%Y-%m-%d %H:%M:%S}Z", fmt::gmtime(t));
}

std::string ageText(spool::Millis ms) {
    std::int64_t s = std::max<std::int64_t>(ms / 1000, 0);
    if (s < 120)
        return fmt::format("{}s", s);
    if (s < 7200)
        return fmt::format("{}m", s / 60);
    if (s < 172800)
        return fmt::format("{}h{:02}m", s / 3600, s / 60 % 60);
    return fmt::format("{}d{:02}h", s / 86400, s / 3600 % 24);
}

// A name as JSON: exactly as stored when it is UTF-8 (JSON escapes control characters itself,
// losslessly); otherwise the escaped form, plus the exact bytes in hex under key + "_hex".
void putName(nlohmann::json &j, const std::string &key, const std::string &value) {
    if (isUtf8(value)) {
        j[key] = value;
        return;
    }
    j[key] = printable(value);
    j[key + "_hex"] = toHex(asBytes(value));
}

nlohmann::json summaryJson(const spool::ItemSummary &s) {
    nlohmann::json j = {{"id", s.id},
                        {"state", spool::stateName(s.state)},
                        {"kind", s.kind ? std::string(kindInfo(*s.kind).id) : std::string()},
                        {"attempts", s.attempts},
                        {"created_at_ms", s.createdAt},
                        {"updated_at_ms", s.updatedAt}};
    putName(j, "source", s.source);
    putName(j, "origin", s.origin);
    putName(j, "reason", s.reason);
    return j;
}

// The store for a view, read-only. A store that does not exist yet is not created: a mistyped
// path must not leave an empty database behind, and there is simply nothing to show (exit 0).
// An emptied store is not "nothing yet": it is reported and fails.
std::optional<spool::Store> openView(const std::string &cfgPath, int &exitCode) {
    auto config = loadOrReport(cfgPath);
    if (!config) {
        exitCode = ExitConfig;
        return std::nullopt;
    }
    struct stat st {};
    if (::stat(config->settings.storePath.c_str(), &st) != 0 && errno == ENOENT) {
        fmt::print(stderr, "pkirelay: no store at {} yet (nothing has run)\n",
                   config->settings.storePath);
        exitCode = ExitOk;
        return std::nullopt;
    }
    return spool::Store::openReadOnly(config->settings.storePath);
}

// The store for a command that changes items: it must exist (never created here).
std::optional<spool::Store> openForChange(const std::string &cfgPath, int &exitCode) {
    auto config = loadOrReport(cfgPath);
    if (!config) {
        exitCode = ExitConfig;
        return std::nullopt;
    }
    return spool::Store::open(config->settings.storePath, spool::OpenMode::MustExist);
}

// Prints what happened to each item; the status is 0 when every item changed, 65 otherwise.
int reportChanges(const std::vector<spool::Change> &changes, std::string_view verb, bool json) {
    int code = ExitOk;
    nlohmann::json all = nlohmann::json::array();
    for (const auto &c : changes) {
        if (!c.changed)
            code = ExitDataErr;
        if (json) {
            all.push_back({{"id", c.itemId},
                           {"changed", c.changed},
                           {"state", c.state ? std::string(spool::stateName(*c.state)) : ""},
                           {"why", c.why}});
        } else if (c.changed) {
            fmt::print("item {}: {}, now {}\n", c.itemId, verb, spool::stateName(*c.state));
        } else {
            fmt::print(stderr, "pkirelay: item {} not {}: {}\n", c.itemId, verb, c.why);
        }
    }
    if (json)
        printJson(all);
    return code;
}

std::optional<spool::Millis> durationOrReport(const std::string &text, std::string_view option) {
    auto d = parseDuration(text);
    if (!d)
        fmt::print(stderr,
                   "pkirelay: {} takes a duration such as 30s, 15m, 12h or 7d, not \"{}\"\n",
                   option, printable(text));
    return d;
}

// What a stored answer says when it is a CMP error or not a PKI message at all, for `show`.
std::string answerText(const Bytes &response) {
    ClassifyLimits limits;
    limits.maxSize = 256u << 20;
    Classification c = classify(response, limits);
    if (const auto *m = std::get_if<Message>(&c)) {
        // An accepted answer needs no explanation; anything else shows what the CA said.
        const bool accepted =
            (m->cmp && m->cmp->bodyType != 23 && m->cmp->pkiStatus.value_or(0) <= 1 &&
             m->cmp->statusText.empty()) ||
            (m->cmc && m->cmc->status.value_or(0) == 0 && m->cmc->statusText.empty());
        return accepted ? std::string() : statusSummary(*m);
    }
    // Not a PKI message: when it reads as text, it is most likely the CA's own explanation.
    const auto text = asChars(response).substr(0, 300);
    std::size_t printableCount = 0;
    for (unsigned char ch : text)
        printableCount += (ch >= 0x20 && ch < 0x7f) || ch == '\n' || ch == '\r' || ch == '\t';
    if (text.empty() || printableCount * 10 < text.size() * 9)
        return {};
    return fmt::format("\"{}\"{}", printable(text), response.size() > text.size() ? "..." : "");
}

} // namespace

void setLogLevelOverride(std::optional<spdlog::level::level_enum> level) {
    levelOverride = level;
    if (level)
        spdlog::set_level(*level);
}

void applyConfiguredLogLevel(const std::string &cfgPath) {
    if (levelOverride)
        return;
    try {
        spdlog::set_level(levelFromName(loadConfig(cfgPath).settings.logLevel));
    } catch (const std::exception &) {
        // Reported by the command that loads it.
    }
}

void printJson(const nlohmann::json &j) {
    fmt::print("{}\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
}

int commandStatus(const std::string &cfgPath, bool json) {
    int code = ExitOk;
    auto store = openView(cfgPath, code);
    if (!store)
        return code;
    const spool::Millis now = systemClock();
    const auto st = store->status(now);
    if (json) {
        nlohmann::json counts = nlohmann::json::object();
        for (const auto &[state, n] : st.counts)
            counts[std::string(spool::stateName(state))] = n;
        nlohmann::json j = {{"counts", counts}, {"orphaned", st.orphaned}};
        if (st.oldestWaitingId)
            j["oldest_waiting"] = {{"id", *st.oldestWaitingId},
                                   {"since_ms", st.oldestWaitingSince},
                                   {"age_seconds", (now - st.oldestWaitingSince) / 1000}};
        else
            j["oldest_waiting"] = nullptr;
        nlohmann::json errors = nlohmann::json::array();
        for (const auto &e : st.lastErrors) {
            nlohmann::json one = {{"endpoint", e.endpoint},
                                  {"id", e.itemId},
                                  {"state", spool::stateName(e.state)},
                                  {"at_ms", e.at}};
            putName(one, "reason", e.reason);
            errors.push_back(std::move(one));
        }
        j["last_errors"] = errors;
        printJson(j);
        return ExitOk;
    }
    for (const auto &[state, n] : st.counts)
        fmt::print("{:<12} {}\n", spool::stateName(state), n);
    if (st.orphaned > 0)
        fmt::print("{:<12} {}  (were being relayed when a run stopped; the next run queues them "
                   "again)\n",
                   "orphaned", st.orphaned);
    if (st.oldestWaitingId)
        fmt::print("oldest waiting: item {}, {} (since {})\n", *st.oldestWaitingId,
                   ageText(now - st.oldestWaitingSince), timeText(st.oldestWaitingSince));
    else
        fmt::print("oldest waiting: none\n");
    for (const auto &e : st.lastErrors)
        fmt::print("last error at {}: item {} {} {}: {}\n", e.endpoint, e.itemId,
                   spool::stateName(e.state), timeText(e.at), printable(e.reason));
    return ExitOk;
}

int commandList(const std::string &cfgPath, const ListOptions &o, bool json) {
    spool::ListFilter filter;
    filter.limit = o.limit;
    if (!o.state.empty()) {
        filter.state = spool::stateFromName(o.state);
        if (!filter.state) {
            fmt::print(stderr, "pkirelay: unknown state {}\n", printable(o.state));
            return ExitUsage;
        }
    }
    if (!o.kind.empty()) {
        filter.kind = kindFromId(o.kind);
        if (!filter.kind) {
            fmt::print(stderr, "pkirelay: unknown kind {}\n", printable(o.kind));
            return ExitUsage;
        }
    }
    filter.source = o.source;
    const spool::Millis now = systemClock();
    if (!o.olderThan.empty()) {
        auto d = durationOrReport(o.olderThan, "--older-than");
        if (!d)
            return ExitUsage;
        filter.createdBefore = now - *d;
    }
    if (!o.newerThan.empty()) {
        auto d = durationOrReport(o.newerThan, "--newer-than");
        if (!d)
            return ExitUsage;
        filter.createdAfter = now - *d;
    }
    int code = ExitOk;
    auto store = openView(cfgPath, code);
    if (!store) {
        if (json && code == ExitOk)
            printJson({{"items", nlohmann::json::array()}, {"truncated", false}});
        return code;
    }
    const auto page = store->list(filter);
    if (json) {
        nlohmann::json items = nlohmann::json::array();
        for (const auto &s : page.items)
            items.push_back(summaryJson(s));
        printJson({{"items", items}, {"truncated", page.truncated}, {"limit", o.limit}});
        return ExitOk;
    }
    for (const auto &s : page.items)
        fmt::print("{:>6}  {:<11}  {:<20}  {}/{}{}\n", s.id, spool::stateName(s.state),
                   s.kind ? kindInfo(*s.kind).id : "-", printable(s.source), printable(s.origin),
                   s.reason.empty() ? "" : "  (" + printable(s.reason) + ")");
    if (page.truncated)
        fmt::print(stderr, "pkirelay: list cut at {} item(s); more match (-n N shows more)\n",
                   o.limit);
    return ExitOk;
}

int commandShow(const std::string &cfgPath, std::int64_t id, bool json) {
    int code = ExitOk;
    auto store = openView(cfgPath, code);
    if (!store)
        return code;
    const auto item = store->show(id);
    if (!item) {
        fmt::print(stderr, "pkirelay: no item {}\n", id);
        return ExitDataErr;
    }
    const auto stored = store->storedBytes(id);
    const std::string said =
        stored && stored->response ? answerText(*stored->response) : std::string();
    if (json) {
        nlohmann::json j = summaryJson(item->summary);
        j["sha256"] = item->sha256;
        j["size"] = item->size;
        j["endpoint"] = item->endpoint;
        j["transaction_id"] = toHex(item->transactionId);
        j["sender_nonce"] = toHex(item->senderNonce);
        j["recip_nonce"] = toHex(item->recipNonce);
        if (item->responseSize) {
            nlohmann::json answer = {{"size", *item->responseSize},
                                     {"kind", item->responseKind
                                                  ? std::string(kindInfo(*item->responseKind).id)
                                                  : std::string()}};
            putName(answer, "detail", item->responseDetail);
            if (!said.empty())
                answer["ca_says"] = said;
            j["answer"] = answer;
        } else {
            j["answer"] = nullptr;
        }
        nlohmann::json arrivals = nlohmann::json::array();
        for (std::size_t i = 0; i < item->arrivals.size(); ++i) {
            nlohmann::json a = {{"delivery", i < item->deliveryStates.size()
                                                 ? item->deliveryStates[i]
                                                 : std::string()}};
            putName(a, "source", item->arrivals[i].source);
            putName(a, "origin", item->arrivals[i].origin);
            putName(a, "reply_to", item->arrivals[i].replyTo);
            arrivals.push_back(std::move(a));
        }
        j["arrivals"] = arrivals;
        nlohmann::json events = nlohmann::json::array();
        for (const auto &e : item->events) {
            nlohmann::json one = {{"at_ms", e.at}, {"what", e.what}};
            putName(one, "detail", e.detail);
            events.push_back(std::move(one));
        }
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
    if (item->responseSize)
        fmt::print("  answer:   {} bytes, {}{}\n", *item->responseSize,
                   item->responseKind ? kindInfo(*item->responseKind).id : "not accepted",
                   item->responseDetail.empty() ? "" : ": " + printable(item->responseDetail));
    if (!said.empty())
        fmt::print("  CA says:  {}\n", said);
    for (std::size_t i = 0; i < item->arrivals.size(); ++i)
        fmt::print("  arrival:  {}/{} -> {} ({})\n", printable(item->arrivals[i].source),
                   printable(item->arrivals[i].origin), printable(item->arrivals[i].replyTo),
                   i < item->deliveryStates.size() ? item->deliveryStates[i] : "");
    fmt::print("  history:\n");
    for (const auto &e : item->events)
        fmt::print("    {}  {:<10} {}\n", timeText(e.at), e.what, printable(e.detail));
    if (s.state == spool::State::Review)
        fmt::print("  needs a person: `pkirelay export {0}` writes the request and the answer to "
                   "files; `pkirelay deliver {0} --force` delivers the stored answer; `pkirelay "
                   "retry {0}` sends the request to the CA again\n",
                   s.id);
    return ExitOk;
}

int commandRetry(const std::string &cfgPath, const std::vector<std::int64_t> &ids, bool failed,
                 bool json) {
    if (ids.empty() == !failed) {
        fmt::print(stderr, "pkirelay: retry takes item ids or --failed\n");
        return ExitUsage;
    }
    int code = ExitOk;
    auto store = openForChange(cfgPath, code);
    if (!store)
        return code;
    const auto changes =
        failed ? store->retryFailed(systemClock()) : store->retry(ids, systemClock());
    if (failed && changes.empty() && !json)
        fmt::print("no failed items\n");
    return reportChanges(changes, "retried", json);
}

int commandHold(const std::string &cfgPath, const std::vector<std::int64_t> &ids, bool json) {
    int code = ExitOk;
    auto store = openForChange(cfgPath, code);
    if (!store)
        return code;
    return reportChanges(store->hold(ids, systemClock()), "held", json);
}

int commandRelease(const std::string &cfgPath, const std::vector<std::int64_t> &ids, bool json) {
    int code = ExitOk;
    auto store = openForChange(cfgPath, code);
    if (!store)
        return code;
    return reportChanges(store->release(ids, systemClock()), "released", json);
}

int commandPurge(const std::string &cfgPath, const std::string &olderThan, bool json) {
    auto d = durationOrReport(olderThan, "--older-than");
    if (!d)
        return ExitUsage;
    auto config = loadOrReport(cfgPath);
    if (!config)
        return ExitConfig;
    int code = ExitOk;
    auto store = openForChange(cfgPath, code);
    if (!store)
        return code;
    const spool::Millis now = systemClock();
    const auto n = store->purge(now - *d, now);
    if (json) {
        printJson({{"purged", n}});
    } else {
        fmt::print("purged {} item(s) in a final state last changed more than {} ago\n", n,
                   olderThan);
        // With after = "keep" the request files stay in their folder; once their items are
        // gone the next run takes them as new and relays them again.
        for (const auto &s : config->sources)
            if (s.afterStore() == AfterStore::Keep && n > 0)
                fmt::print(stderr,
                           "pkirelay: warning: source {} keeps request files (after = \"keep\"): "
                           "a purged request still in {} is taken as new by the next run\n",
                           s.name, printable(s.path));
    }
    return ExitOk;
}

int commandExport(const std::string &cfgPath, std::int64_t id, const std::string &dirPath,
                  bool json) {
    int code = ExitOk;
    auto store = openView(cfgPath, code);
    if (!store)
        return code;
    const auto stored = store->storedBytes(id);
    if (!stored) {
        fmt::print(stderr, "pkirelay: no item {}\n", id);
        return ExitDataErr;
    }
    const Directory dir = Directory::open(dirPath);
    std::vector<FileToWrite> files;
    std::vector<std::string> what;
    if (!stored->request.empty()) {
        const auto ext = stored->kind ? kindInfo(*stored->kind).fileExt : std::string_view(".bin");
        files.push_back({&dir, fmt::format("{}-request{}", id, ext), stored->request, "export"});
        what.push_back("request");
    } else {
        fmt::print(stderr,
                   "pkirelay: item {}: no request bytes are stored (a quarantined file "
                   "too large to keep)\n",
                   id);
    }
    if (stored->response) {
        // The extension of the answer's kind when it classifies (without the relay's size
        // limit), else .bin: the bytes are written as the CA sent them either way.
        std::optional<Kind> kind = stored->responseKind;
        if (!kind) {
            ClassifyLimits limits;
            limits.maxSize = 256u << 20;
            Classification c = classify(*stored->response, limits);
            if (const auto *m = std::get_if<Message>(&c))
                kind = m->kind;
        }
        files.push_back({&dir,
                         fmt::format("{}-answer{}", id,
                                     kind ? kindInfo(*kind).fileExt : std::string_view(".bin")),
                         *stored->response, "export"});
        what.push_back("answer");
    }
    const auto errors = writeFilesDurably(files, 0640);
    nlohmann::json j = nlohmann::json::object();
    for (std::size_t i = 0; i < files.size(); ++i) {
        const std::string path = fmt::format("{}/{}", dirPath, files[i].name);
        if (!errors[i].empty()) {
            fmt::print(stderr, "pkirelay: {} not written: {}\n", printable(path),
                       printable(errors[i]));
            code = ExitCantCreat;
            j[what[i]] = nullptr;
            continue;
        }
        putName(j, what[i], path);
        if (!json)
            fmt::print("{}: {} bytes\n", printable(path), files[i].bytes.size());
    }
    if (!stored->response && !json)
        fmt::print(stderr, "pkirelay: item {}: no answer is stored\n", id);
    if (json)
        printJson(j);
    return code;
}

int commandDeliver(const std::string &cfgPath, std::int64_t id, bool force, bool json) {
    if (!force) {
        fmt::print(stderr, "pkirelay: deliver needs --force: it delivers an answer pkirelay did "
                           "not accept (see `pkirelay show ID`)\n");
        return ExitUsage;
    }
    int code = ExitOk;
    auto store = openForChange(cfgPath, code);
    if (!store)
        return code;
    const auto stored = store->storedBytes(id);
    if (!stored) {
        fmt::print(stderr, "pkirelay: no item {}\n", id);
        return ExitDataErr;
    }
    if (stored->state != spool::State::Review || !stored->response) {
        fmt::print(stderr,
                   "pkirelay: item {} is {}{}; only a review item's stored answer can "
                   "be delivered this way\n",
                   id, spool::stateName(stored->state),
                   stored->response ? "" : " with no stored answer");
        return ExitDataErr;
    }
    // Accepted whatever its kind and size (up to 256 MiB, the bound of everything the store
    // takes), but it must be a PKI message: a response file that is not one helps nobody.
    ClassifyLimits limits;
    limits.maxSize = 256u << 20;
    Classification c = classify(*stored->response, limits);
    if (const auto *r = std::get_if<Rejection>(&c)) {
        fmt::print(stderr,
                   "pkirelay: item {}: the stored answer is not a PKI message ({}); not "
                   "delivered. `pkirelay export {}` writes it to a file\n",
                   id, printable(r->reason), id);
        return ExitDataErr;
    }
    const auto &m = std::get<Message>(c);
    const auto change =
        store->forceDeliver(id, m.kind, fmt::format("{} bytes", m.der.size()), systemClock());
    if (change.changed && !json)
        fmt::print("item {}: the stored answer ({}) will be written out by the next run\n", id,
                   kindInfo(m.kind).id);
    if (!change.changed || json)
        return reportChanges({change}, "delivered", json);
    return ExitOk;
}

} // namespace pkirelay::agent
