// The run loop's stages. Trust boundary: everything read from a watched folder is hostile until
// classify() has accepted it; names from a folder are only ever used relative to that folder's
// descriptor (lib/file_io.h), and a response file's name is derived from the request file's name,
// never from message content.
#include "run.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <map>
#include <optional>
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "lib/classify.h"
#include "lib/file_io.h"

namespace pkirelay::agent {

using spool::Millis;

namespace {

// Response files carry certificates and CMC status: readable by the owner and its group only.
constexpr mode_t responseMode = 0640;

// Most bytes of messages a scan holds before it commits them (on top of limits.batch_size).
constexpr std::size_t maxBatchBytes = 64 * 1024 * 1024;

// "ir.der" -> "ir"; names without an extension (or dotfiles) stay as they are.
std::string stemOf(const std::string &name) {
    const auto dot = name.rfind('.');
    if (dot == std::string::npos || dot == 0)
        return name;
    return name.substr(0, dot);
}

std::string describeIngest(const spool::Submission &sub) {
    if (!sub.message)
        return fmt::format("quarantined {}/{}: {}", sub.arrival.source,
                           printable(sub.arrival.origin), printable(sub.rejectReason));
    const Message &m = *sub.message;
    std::string what(kindInfo(m.kind).title);
    if (m.cmp)
        what = fmt::format("CMP {}", cmpBodyName(m.cmp->bodyType));
    return fmt::format("received {}/{}: {}, {} bytes{}", sub.arrival.source,
                       printable(sub.arrival.origin), what, m.der.size(),
                       sub.relay ? "" : " (a response: kept for matching)");
}

} // namespace

Millis systemClock() {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

Runner::Runner(const Config &config, spool::Store &store, Clock clock,
               std::function<bool()> stopRequested)
    : config_(config), store_(store), clock_(std::move(clock)),
      stopRequested_(std::move(stopRequested)) {
    for (const auto &endpoint : config_.endpoints)
        endpoints_.push_back(endpoint.toHttp());
}

RunReport Runner::runOnce() {
    RunReport report;
    // The caller holds the run lock, so an item still marked as relaying belongs to a pass that
    // died: its lease is void whatever its time says, and it goes back to the queue.
    if (int n = store_.requeueExpiredLeases(clock_(), std::numeric_limits<Millis>::max()); n > 0)
        spdlog::warn("- {} item(s) were being relayed when an earlier run stopped: queued again "
                     "(the CA may see them twice; `pkirelay show` lists each resend)",
                     n);
    for (const auto &source : config_.sources)
        scanSource(source, report);
    deliverAnswers(report); // duplicates of answered items need no relaying
    relayReady(report);
    for (const auto &[state, count] : store_.countByState())
        if (state == spool::State::Queued || state == spool::State::Relaying ||
            state == spool::State::Deferred)
            report.waiting += count;
    return report;
}

int Runner::exitCode(const RunReport &report) {
    // Quarantined input and requests the CA refused (or that gave up) need a person; a deferral
    // only needs time. So 65 wins over 75.
    if (report.quarantined > 0 || report.failed > 0)
        return ExitDataErr;
    if (report.stillArriving > 0 || report.sourceErrors > 0 || report.deliveryErrors > 0 ||
        report.waiting > 0)
        return ExitTempFail;
    return ExitOk;
}

void Runner::scanSource(const SourceConfig &source, RunReport &report) {
    std::optional<Directory> dir;
    std::optional<Directory> moveDir;
    try {
        dir.emplace(Directory::open(source.path));
        if (source.afterStore() == AfterStore::Move)
            moveDir.emplace(Directory::openOrCreate(source.moveTo));
    } catch (const IoError &e) {
        spdlog::error("- source {}: {}; skipped this pass", source.name, e.what());
        ++report.sourceErrors;
        return;
    }
    // Response files pkirelay wrote into this folder, with the hash of what it wrote: such a
    // file is an answer, not a request. A name alone is not enough: a client may write its next
    // request under the name of an earlier answer.
    const auto ours = store_.outputs(source.path);
    const auto limit = static_cast<std::uint64_t>(config_.settings.maxMessageSize);
    ClassifyLimits limits;
    limits.maxSize = static_cast<std::size_t>(limit);

    // Acknowledges one stored file: deleted, or moved without replacing anything in move_to;
    // but only while the name still refers to the file that was read and stored. A file replaced
    // meanwhile (a client writing again under the same name) is left for the next scan.
    bool touched = false;
    auto release = [&](const std::string &name, const FileIdentity &stored) {
        if (source.afterStore() == AfterStore::Keep)
            return;
        if (dir->identity(name) != stored) {
            spdlog::warn("- source {}: {} changed after it was read; left for the next scan",
                         source.name, printable(name));
            return;
        }
        if (source.afterStore() == AfterStore::Delete) {
            dir->unlink(name);
        } else {
            std::string target = name;
            for (int n = 1; !dir->moveTo(name, *moveDir, target); ++n)
                target = fmt::format("{}.{}", name, n);
        }
        touched = true;
    };
    auto syncTouched = [&] {
        if (!touched)
            return;
        touched = false;
        try {
            dir->sync();
            if (moveDir)
                moveDir->sync();
        } catch (const IoError &e) {
            // The items are committed; at worst a file reappears and is recognised as known.
            spdlog::error("- source {}: {}", source.name, e.what());
        }
    };

    struct Pending {
        bool acknowledge; // false for files we could not store whole (too large)
        FileIdentity identity;
    };
    std::vector<spool::Submission> batch;
    std::vector<Pending> pending; // parallel to batch
    std::size_t batchBytes = 0;
    auto flush = [&] {
        if (batch.empty())
            return;
        const auto results = store_.ingest(batch, clock_());
        // Committed: from here on the store has every item, so the files may go.
        for (std::size_t i = 0; i < batch.size(); ++i) {
            const auto &sub = batch[i];
            const auto &res = results[i];
            if (res.duplicate) {
                ++report.duplicates;
                spdlog::info("{}: {}/{} is another arrival of this item ({})", res.itemId,
                             sub.arrival.source, printable(sub.arrival.origin),
                             spool::stateName(res.state));
            } else {
                if (!sub.message)
                    ++report.quarantined;
                else if (!sub.relay)
                    ++report.unmatched;
                else
                    ++report.received;
                auto line = fmt::format("{}: {}", res.itemId, describeIngest(sub));
                if (sub.message)
                    spdlog::info("{}", line);
                else
                    spdlog::warn("{}", line);
            }
            if (!pending[i].acknowledge)
                continue;
            try {
                release(sub.arrival.origin, pending[i].identity);
            } catch (const IoError &e) {
                spdlog::error("{}: stored, but {} (it will be acknowledged on a later scan)",
                              res.itemId, e.what());
            }
        }
        syncTouched();
        batch.clear();
        pending.clear();
        batchBytes = 0;
    };

    std::vector<DirEntry> entries;
    try {
        entries = dir->list();
    } catch (const IoError &e) {
        spdlog::error("- source {}: {}; skipped this pass", source.name, e.what());
        ++report.sourceErrors;
        return;
    }
    for (const auto &entry : entries) {
        if (entry.name.starts_with('.') || entry.type == DirEntry::Type::Directory)
            continue; // temporary files (ours and other tools'), processed/, quarantine folders
        if (entry.type != DirEntry::Type::Regular) {
            spdlog::warn("- source {}: {} is {}; not read", source.name, printable(entry.name),
                         entry.type == DirEntry::Type::Symlink ? "a symlink"
                                                               : "not a regular file");
            continue;
        }

        FileRead file;
        try {
            file = dir->read(entry.name, limit);
        } catch (const IoError &e) {
            spdlog::warn("- source {}: {}; not read", source.name, printable(e.what()));
            continue;
        }
        spool::Submission sub;
        sub.arrival = {source.name, entry.name, source.responses};
        sub.size = file.size;
        bool acknowledge = true;
        if (file.tooLarge) {
            // Not read, so not stored whole: the file stays where it is. Source, name, size and
            // mtime identify this arrival, so later scans do not record it again.
            sub.arrivalSha256 =
                fmt::format("oversize:{}:{}:{}:{}", source.name, sha256Hex(asBytes(entry.name)),
                            file.size, file.identity.mtimeNs);
            sub.rejectReason = fmt::format(
                "too large: {} bytes, the limit is {} (limits.max_message_size)", file.size, limit);
            acknowledge = false;
        } else {
            sub.arrivalSha256 = sha256Hex(file.bytes);
            if (auto it = ours.find(entry.name);
                it != ours.end() && it->second == sub.arrivalSha256)
                continue; // a response file pkirelay wrote here
        }
        if (store_.knownArrival(source.name, entry.name, sub.arrivalSha256)) {
            // Stored by an earlier pass. Keep mode leaves it; otherwise the earlier pass stopped
            // between commit and acknowledgement, so acknowledge now.
            if (acknowledge) {
                try {
                    release(entry.name, file.identity);
                } catch (const IoError &e) {
                    spdlog::error("- source {}: {}", source.name, e.what());
                }
                syncTouched();
            }
            continue;
        }
        if (!file.tooLarge) {
            auto classified = classify(file.bytes, limits);
            if (auto *rejection = std::get_if<Rejection>(&classified)) {
                const Millis age = clock_() - file.mtimeMs;
                if (rejection->truncated && age < config_.settings.settleSeconds * 1000) {
                    spdlog::info("- source {}: {} ends early ({}); taken to be still arriving",
                                 source.name, printable(entry.name), rejection->reason);
                    ++report.stillArriving;
                    continue;
                }
                sub.rejectReason = rejection->reason;
                sub.rejectedBytes = std::move(file.bytes);
            } else {
                sub.message = std::move(std::get<Message>(classified));
                sub.relay = sub.message->isRequest();
            }
        }
        batchBytes += sub.size;
        batch.push_back(std::move(sub));
        pending.push_back({acknowledge, file.identity});
        // Bounded by count and by bytes: a batch of large messages must not hold gigabytes.
        if (batch.size() >= static_cast<std::size_t>(config_.settings.batchSize) ||
            batchBytes >= maxBatchBytes)
            flush();
    }
    flush();
}

namespace {

// What the CA sent back may be delivered as the answer to this request: the same protocol,
// and an answer rather than another request (a CMP error body may travel either way).
std::optional<std::string> unacceptableAnswer(Kind request, const Message &answer,
                                              const std::string &endpoint) {
    const bool cmpAnswer = answer.kind == Kind::Cmp;
    if (cmpAnswer != (request == Kind::Cmp))
        return fmt::format("{} answered a {} with a {}", endpoint, kindInfo(request).title,
                           kindInfo(answer.kind).title);
    // An encrypted CMC answer is EnvelopedData (RFC 5272/10002 confidentiality wrapping, as in
    // ../shared/PROTOCOLS.md §2.1), which cannot be told from an encrypted request without the
    // key: the exchange says it is one.
    const bool isAnswer = cmpAnswer ? (answer.cmp->bodyType == 23 || !answer.isRequest())
                                    : (answer.kind == Kind::CmcEnveloped || !answer.isRequest());
    if (!isAnswer)
        return fmt::format("{} answered with a request ({}), not a response", endpoint,
                           answer.cmp ? std::string(cmpBodyName(answer.cmp->bodyType))
                                      : std::string(kindInfo(answer.kind).id));
    return std::nullopt;
}

} // namespace

void Runner::relayReady(RunReport &report) {
    // A lease outlives the longest exchange the endpoints allow, with a margin: an item is only
    // taken back from a relay stage that has certainly given up on it.
    Millis lease = 60'000;
    for (const auto &e : config_.endpoints)
        lease = std::max(lease, (e.connectTimeoutSeconds + e.timeoutSeconds + 60) * 1000);
    const auto policy = config_.retryPolicy();

    while (!stopRequested()) {
        const Millis now = clock_();
        auto claims =
            store_.claim(static_cast<std::size_t>(config_.settings.batchSize), now, now + lease);
        if (claims.empty())
            return;
        struct Sent {
            Kind kind;
            std::string endpoint;
        };
        std::map<std::int64_t, Sent> sent;    // by item id
        std::vector<spool::Outcome> outcomes; // not yet recorded
        std::vector<HttpRequest> requests;

        // Outcomes are recorded as they come, in small groups: an answer the CA gave must not
        // wait in memory for the slowest exchange of the batch, where a crash would lose it and
        // make the next pass send the request again.
        auto lastRecord = std::chrono::steady_clock::now();
        auto recordPending = [&] {
            if (outcomes.empty())
                return;
            const auto states = store_.record(outcomes, clock_(), policy);
            for (std::size_t i = 0; i < outcomes.size(); ++i) {
                const auto &outcome = outcomes[i];
                const std::string_view why = std::visit(
                    [](const auto &r) -> std::string_view {
                        if constexpr (std::is_same_v<std::decay_t<decltype(r)>, spool::Answer>)
                            return r.detail;
                        else
                            return r.reason;
                    },
                    outcome.result);
                // Counted by what the store decided (a transient failure past retry.max_age is
                // a failure), not by the kind of outcome.
                switch (states[i]) {
                case spool::State::Answered:
                    ++report.answered;
                    spdlog::info("{}: answered by {}: {}", outcome.itemId, outcome.endpoint, why);
                    break;
                case spool::State::Deferred:
                    ++report.deferred;
                    spdlog::warn("{}: deferred ({}): {}", outcome.itemId, outcome.endpoint, why);
                    break;
                case spool::State::Failed:
                    ++report.failed;
                    spdlog::error("{}: failed: {}", outcome.itemId, why);
                    break;
                default:
                    spdlog::warn("{}: outcome not applied, the item is {}: {}", outcome.itemId,
                                 spool::stateName(states[i]), why);
                    break;
                }
            }
            outcomes.clear();
            lastRecord = std::chrono::steady_clock::now();
        };

        for (const auto &claim : claims) {
            const EndpointConfig *endpoint = config_.route(claim.source, claim.kind);
            if (!endpoint) {
                // Only a source that left the configuration has no route (check-config sees to
                // the rest): a slip that a reload can mend, so retried until retry.max_age.
                outcomes.push_back(
                    {claim.itemId, "",
                     spool::Transient{fmt::format("no route: source {} is not in the configuration",
                                                  claim.source)}});
                continue;
            }
            const auto index = static_cast<std::size_t>(endpoint - config_.endpoints.data());
            if (claim.attempts > 1)
                spdlog::info("{}: attempt {} to {}", claim.itemId, claim.attempts, endpoint->name);
            requests.push_back({claim.itemId, &endpoints_[index], claim.kind, claim.der});
            sent[claim.itemId] = {claim.kind, endpoint->name};
        }
        recordPending();

        relay_.perform(
            requests, static_cast<unsigned>(config_.settings.maxInFlight),
            [&](const HttpResult &result) {
                ++report.relayed;
                const auto &[kind, endpoint] = sent.at(result.id);
                spool::Outcome outcome{result.id, endpoint, spool::Transient{""}};
                switch (result.type) {
                case HttpResult::Type::Response:
                    if (auto why = unacceptableAnswer(kind, *result.response, endpoint))
                        outcome.result = spool::Permanent{*why};
                    else
                        outcome.result = spool::Answer{result.response->der, result.response->kind,
                                                       result.detail};
                    break;
                case HttpResult::Type::Done:
                    // RFC 9811 §3.3: 201/202 acknowledge pushed announcements,
                    // which are never relayed as requests; a request needs an answer.
                    outcome.result = spool::Permanent{
                        fmt::format("{}: no PKI message for a request", result.detail)};
                    break;
                case HttpResult::Type::Transient:
                    outcome.result = spool::Transient{result.detail};
                    break;
                case HttpResult::Type::Permanent:
                    outcome.result = spool::Permanent{result.detail};
                    break;
                }
                outcomes.push_back(std::move(outcome));
                if (outcomes.size() >= 32 ||
                    std::chrono::steady_clock::now() - lastRecord > std::chrono::milliseconds(250))
                    recordPending();
            });
        recordPending();
        deliverAnswers(report);
    }
}

namespace {

// The response file's name: the request's stem with the extension of the answer's kind, kept
// short enough that it and its temporary name fit NAME_MAX; a long stem is cut and made unique
// with a hash of the whole name.
std::string responseName(const std::string &origin, Kind kind, int attempt) {
    std::string stem = stemOf(origin);
    const std::string ext(kindInfo(kind).fileExt);
    const std::string suffix = attempt == 0   ? ""
                               : attempt == 1 ? ".response"
                                              : fmt::format(".response-{}", attempt);
    if (stem.size() + suffix.size() + ext.size() > maxOutputName)
        stem = stem.substr(0, maxOutputName - suffix.size() - ext.size() - 17) + "-" +
               sha256Hex(asBytes(origin)).substr(0, 16);
    return stem + suffix + ext;
}

} // namespace

void Runner::deliverAnswers(RunReport &report) {
    std::int64_t after = 0; // page past deliveries this pass could not write
    for (;;) {
        auto deliveries =
            store_.deliveriesToWrite(static_cast<std::size_t>(config_.settings.batchSize), after);
        if (deliveries.empty())
            return;
        after = deliveries.back().deliveryId;

        std::map<std::string, std::optional<Directory>> dirs;
        for (const auto &d : deliveries) {
            auto &slot = dirs[d.arrival.replyTo];
            if (slot)
                continue;
            try {
                slot.emplace(Directory::openOrCreate(d.arrival.replyTo));
            } catch (const IoError &e) {
                spdlog::error("- cannot write responses: {}", e.what());
            }
        }
        std::erase_if(deliveries, [&](const spool::Delivery &d) {
            if (dirs[d.arrival.replyTo])
                return false;
            ++report.deliveryErrors;
            return true;
        });

        // Choose names first and commit them, so that a crash between writing and recording
        // rewrites the same file instead of making a second response (DESIGN: exactly one).
        std::vector<std::pair<std::int64_t, std::string>> names;
        std::set<std::pair<std::string, std::string>> chosen;
        std::set<std::int64_t> assignedNow;
        for (auto &d : deliveries) {
            if (!d.output.empty())
                continue;
            const auto &dir = dirs[d.arrival.replyTo];
            auto taken = [&](const std::string &name) {
                return dir->exists(name) || chosen.contains({d.arrival.replyTo, name});
            };
            int attempt = 0;
            std::string name = responseName(d.arrival.origin, d.responseKind, attempt);
            while (taken(name))
                name = responseName(d.arrival.origin, d.responseKind, ++attempt);
            chosen.insert({d.arrival.replyTo, name});
            d.output = name;
            names.emplace_back(d.deliveryId, name);
            assignedNow.insert(d.deliveryId);
        }
        store_.assignOutputs(names, clock_());

        // A name assigned by an earlier pass that stopped before recording the delivery may
        // already hold this very response (written, not recorded): then it is delivered. Anything
        // else under that name is not ours and is never replaced: the delivery waits for a
        // person (`pkirelay show` says why).
        std::vector<std::int64_t> written;
        std::vector<FileToWrite> files;
        std::vector<const spool::Delivery *> toWrite;
        for (const auto &d : deliveries) {
            const auto &dir = *dirs[d.arrival.replyTo];
            if (!assignedNow.contains(d.deliveryId) && dir.exists(d.output)) {
                FileRead there;
                try {
                    there = dir.read(d.output, d.response.size());
                } catch (const IoError &) {
                    // Unreadable, a symlink, not a regular file: not this response either.
                }
                if (!there.tooLarge && there.bytes == d.response) {
                    written.push_back(d.deliveryId);
                    continue;
                }
                spdlog::error("{}: {}/{} is taken by a file that is not this response; not "
                              "replaced (move it away and the response is written)",
                              d.itemId, d.arrival.replyTo, printable(d.output));
                ++report.deliveryErrors;
                continue;
            }
            files.push_back({&dir, d.output, d.response});
            toWrite.push_back(&d);
        }
        const auto errors = writeFilesDurably(files, responseMode);
        for (std::size_t i = 0; i < toWrite.size(); ++i) {
            const auto &d = *toWrite[i];
            if (!errors[i].empty()) {
                spdlog::error("{}: writing the response failed: {} (it stays pending)", d.itemId,
                              printable(errors[i]));
                ++report.deliveryErrors;
                continue;
            }
            written.push_back(d.deliveryId);
            spdlog::info("{}: response written to {}/{}", d.itemId, d.arrival.replyTo,
                         printable(d.output));
        }
        store_.markDelivered(written, clock_());
        report.delivered += static_cast<int>(written.size());
    }
}

} // namespace pkirelay::agent
