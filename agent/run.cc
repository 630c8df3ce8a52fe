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

bool isCmcKind(Kind kind) {
    return kind != Kind::Cmp;
}

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

Runner::Runner(const Config &config, spool::Store &store, Clock clock)
    : config_(config), store_(store), clock_(std::move(clock)) {
    for (const auto &endpoint : config_.endpoints)
        endpoints_.push_back(endpoint.toHttp());
}

RunReport Runner::runOnce() {
    RunReport report;
    // The caller holds the run lock, so an item still marked as relaying belongs to a pass that
    // died: its lease is void whatever its time says, and it goes back to the queue.
    if (int n = store_.requeueExpiredLeases(std::numeric_limits<Millis>::max()); n > 0)
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
    // Our own response files may sit in the watched folder: they are answers, not requests.
    const auto ours = store_.outputNames(source.responses);
    const auto limit = static_cast<std::uint64_t>(config_.settings.maxMessageSize);
    ClassifyLimits limits;
    limits.maxSize = static_cast<std::size_t>(limit);

    // Acknowledges one stored file: deleted, or moved without replacing anything in move_to.
    auto release = [&](const std::string &name) {
        if (source.afterStore() == AfterStore::Delete) {
            dir->unlink(name);
        } else if (source.afterStore() == AfterStore::Move) {
            std::string target = name;
            for (int n = 1; !dir->moveTo(name, *moveDir, target); ++n)
                target = fmt::format("{}.{}", name, n);
        }
    };

    std::vector<spool::Submission> batch;
    std::vector<bool> acknowledge; // parallel to batch: false for files we could not store whole
    auto flush = [&] {
        if (batch.empty())
            return;
        const Millis now = clock_();
        const auto results = store_.ingest(batch, now);
        // Committed: from here on the store has every item, so the files may go.
        bool touched = false;
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
            if (!acknowledge[i])
                continue;
            try {
                release(sub.arrival.origin);
                touched = source.afterStore() != AfterStore::Keep;
            } catch (const IoError &e) {
                spdlog::error("{}: stored, but {} (it will be acknowledged on a later scan)",
                              res.itemId, e.what());
            }
        }
        if (touched) {
            dir->sync();
            if (moveDir)
                moveDir->sync();
        }
        batch.clear();
        acknowledge.clear();
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
        if (ours.contains(entry.name))
            continue;

        FileRead file;
        try {
            file = dir->read(entry.name, limit);
        } catch (const IoError &e) {
            spdlog::warn("- source {}: {}; not read", source.name, e.what());
            continue;
        }
        spool::Submission sub;
        sub.arrival = {source.name, entry.name, source.responses};
        sub.size = file.size;
        bool ack = true;
        if (file.tooLarge) {
            // Not read, so not stored whole: the file stays where it is. The size and mtime
            // identify this arrival so later scans do not record it again.
            sub.arrivalSha256 = fmt::format("oversize:{}:{}", file.size, file.mtimeMs);
            sub.rejectReason = fmt::format(
                "too large: {} bytes, the limit is {} (limits.max_message_size)", file.size, limit);
            ack = false;
        } else {
            sub.arrivalSha256 = sha256Hex(file.bytes);
        }
        if (store_.knownArrival(source.name, entry.name, sub.arrivalSha256)) {
            // Stored by an earlier pass. Keep mode leaves it; otherwise the earlier pass stopped
            // between commit and acknowledgement, so acknowledge now.
            if (ack && source.afterStore() != AfterStore::Keep) {
                try {
                    release(entry.name);
                    dir->sync();
                    if (moveDir)
                        moveDir->sync();
                } catch (const IoError &e) {
                    spdlog::error("- source {}: {}", source.name, e.what());
                }
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
        batch.push_back(std::move(sub));
        acknowledge.push_back(ack);
        if (batch.size() >= static_cast<std::size_t>(config_.settings.batchSize))
            flush();
    }
    flush();
}

void Runner::relayReady(RunReport &report) {
    // A lease outlives the longest exchange the endpoints allow, with a margin: an item is only
    // taken back from a relay stage that has certainly given up on it.
    Millis lease = 60'000;
    for (const auto &e : config_.endpoints)
        lease = std::max(lease, (e.connectTimeoutSeconds + e.timeoutSeconds + 60) * 1000);
    const auto policy = config_.retryPolicy();

    for (;;) {
        const Millis now = clock_();
        auto claims =
            store_.claim(static_cast<std::size_t>(config_.settings.batchSize), now, now + lease);
        if (claims.empty())
            return;
        std::vector<spool::Outcome> outcomes;
        std::vector<HttpRequest> requests;
        std::map<std::int64_t, const spool::Claim *> byId;
        for (const auto &claim : claims) {
            byId[claim.itemId] = &claim;
            const EndpointConfig *endpoint = config_.route(claim.source, claim.kind);
            if (!endpoint) {
                outcomes.push_back(
                    {claim.itemId, "",
                     spool::Permanent{fmt::format("no route: source {} has no endpoint for {}",
                                                  claim.source, kindInfo(claim.kind).id)}});
                continue;
            }
            const auto index = static_cast<std::size_t>(endpoint - config_.endpoints.data());
            if (claim.attempts > 1)
                spdlog::info("{}: attempt {} to {}", claim.itemId, claim.attempts, endpoint->name);
            requests.push_back({claim.itemId, &endpoints_[index], claim.kind, claim.der});
        }
        relay_.perform(
            requests, static_cast<unsigned>(config_.settings.maxInFlight),
            [&](const HttpResult &result) {
                ++report.relayed;
                const spool::Claim &claim = *byId.at(result.id);
                const std::string endpoint = config_.route(claim.source, claim.kind)->name;
                spool::Outcome outcome{result.id, endpoint, spool::Transient{""}};
                switch (result.type) {
                case HttpResult::Type::Response:
                    if (isCmcKind(result.response->kind) != isCmcKind(claim.kind)) {
                        outcome.result = spool::Permanent{fmt::format(
                            "{} answered a {} with a {}", endpoint, kindInfo(claim.kind).title,
                            kindInfo(result.response->kind).title)};
                        break;
                    }
                    outcome.result =
                        spool::Answer{result.response->der, result.response->kind, result.detail};
                    break;
                case HttpResult::Type::Done:
                    outcome.result = spool::Answer{{}, std::nullopt, result.detail};
                    break;
                case HttpResult::Type::Transient:
                    outcome.result = spool::Transient{result.detail};
                    break;
                case HttpResult::Type::Permanent:
                    outcome.result = spool::Permanent{result.detail};
                    break;
                }
                outcomes.push_back(std::move(outcome));
            });
        store_.record(outcomes, clock_(), policy);
        for (const auto &outcome : outcomes) {
            if (const auto *answer = std::get_if<spool::Answer>(&outcome.result)) {
                ++report.answered;
                spdlog::info("{}: answered by {}: {}", outcome.itemId, outcome.endpoint,
                             answer->detail);
            } else if (const auto *t = std::get_if<spool::Transient>(&outcome.result)) {
                // The store fails a transient outcome once the item is older than maxAge.
                if (clock_() - byId.at(outcome.itemId)->firstSeen >= policy.maxAge) {
                    ++report.failed;
                    spdlog::error("{}: failed, retries exhausted: {}", outcome.itemId, t->reason);
                } else {
                    ++report.deferred;
                    spdlog::warn("{}: deferred ({}): {}", outcome.itemId, outcome.endpoint,
                                 t->reason);
                }
            } else {
                ++report.failed;
                spdlog::error("{}: failed: {}", outcome.itemId,
                              std::get<spool::Permanent>(outcome.result).reason);
            }
        }
        deliverAnswers(report);
    }
}

void Runner::deliverAnswers(RunReport &report) {
    std::set<std::int64_t> failedHere; // deliveries whose folder failed this pass
    for (;;) {
        auto deliveries =
            store_.deliveriesToWrite(static_cast<std::size_t>(config_.settings.batchSize));
        std::erase_if(deliveries,
                      [&](const spool::Delivery &d) { return failedHere.contains(d.deliveryId); });
        if (deliveries.empty())
            return;

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

        // Choose names first and commit them, so that a crash between writing and recording
        // rewrites the same file instead of making a second response (DESIGN: exactly one).
        std::vector<std::pair<std::int64_t, std::string>> names;
        std::set<std::pair<std::string, std::string>> chosen;
        for (auto &d : deliveries) {
            const auto &dir = dirs[d.arrival.replyTo];
            if (!dir) {
                failedHere.insert(d.deliveryId);
                ++report.deliveryErrors;
                continue;
            }
            if (!d.output.empty())
                continue;
            const std::string stem = stemOf(d.arrival.origin);
            const std::string ext(kindInfo(d.responseKind).fileExt);
            auto taken = [&](const std::string &name) {
                return dir->exists(name) || chosen.contains({d.arrival.replyTo, name});
            };
            std::string name = stem + ext;
            for (int n = 1; taken(name); ++n)
                name = n == 1 ? fmt::format("{}.response{}", stem, ext)
                              : fmt::format("{}.response-{}{}", stem, n, ext);
            chosen.insert({d.arrival.replyTo, name});
            d.output = name;
            names.emplace_back(d.deliveryId, name);
        }
        store_.assignOutputs(names, clock_());

        std::vector<FileToWrite> files;
        std::vector<std::int64_t> ids;
        for (const auto &d : deliveries) {
            if (failedHere.contains(d.deliveryId))
                continue;
            files.push_back({&*dirs[d.arrival.replyTo], d.output, d.response});
            ids.push_back(d.deliveryId);
        }
        try {
            writeFilesDurably(files, responseMode);
        } catch (const IoError &e) {
            spdlog::error("- writing responses failed: {} (they stay pending)", e.what());
            report.deliveryErrors += static_cast<int>(ids.size());
            failedHere.insert(ids.begin(), ids.end());
            continue;
        }
        store_.markDelivered(ids, clock_());
        for (const auto &d : deliveries)
            if (!failedHere.contains(d.deliveryId))
                spdlog::info("{}: response written to {}/{}", d.itemId, d.arrival.replyTo,
                             printable(d.output));
        report.delivered += static_cast<int>(ids.size());
    }
}

} // namespace pkirelay::agent
