// The pipeline's stages (pipeline.h). Trust boundary: everything a source hands over is
// hostile until classify() accepted it (the sources do that); everything a transport returns is
// hostile until it classified and matched the request's protocol (here). Names from folders are
// only ever used relative to that folder's descriptor (lib/file_io.h).
#include "pipeline.h"

#include <algorithm>
#include <chrono>
#include <limits>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "lib/correlate.h"
#include "lib/crash_point.h"

namespace pkirelay::agent {

using spool::Millis;

namespace {

// Most bytes of messages a stage holds at once (on top of limits.batch_size).
constexpr std::size_t maxBatchBytes = 64 * 1024 * 1024;

// Longest a stored file waits for its acknowledgement while its request is out (intake()).
constexpr EventLoop::Millis lateAckMs = 20;

// Longest a stop waits for a store another writer holds, to record the answers in hand (the
// unit's TimeoutStopSec leaves room for it).
constexpr EventLoop::Millis stopWaitMs = 12'000;

// Longest a lazy 'delivered' or 'removed' mark waits for a record to take it along while
// exchanges are out (scheduleFlush()).
constexpr EventLoop::Millis lazyMarksMs = 20;

// What happens to each item is logged at info in the daemon; a batch run logs per batch (and
// per item at debug), so that 100,000 files are not 300,000 lines and as many writes.
spdlog::level::level_enum perItem(bool once) {
    return once ? spdlog::level::debug : spdlog::level::info;
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

// What the CA sent back may be delivered as the answer to this request: the same protocol,
// and an answer rather than another request (a CMP error body may travel either way).
std::optional<std::string> unacceptableAnswer(Kind request, const Message &answer,
                                              const std::string &endpoint) {
    const bool cmpAnswer = answer.kind == Kind::Cmp;
    if (cmpAnswer != (request == Kind::Cmp))
        return fmt::format("{} answered a {} with a {}", endpoint, kindInfo(request).title,
                           kindInfo(answer.kind).title);
    // An encrypted CMC answer is EnvelopedData (RFC 5272/10002 confidentiality wrapping), which
    // cannot be told from an encrypted request without the key: the exchange says it is one.
    const bool isAnswer = cmpAnswer ? (answer.cmp->bodyType == 23 || !answer.isRequest())
                                    : (answer.kind == Kind::CmcEnveloped || !answer.isRequest());
    if (!isAnswer)
        return fmt::format("{} answered with a request ({}), not a response", endpoint,
                           answer.cmp ? std::string(cmpBodyName(answer.cmp->bodyType))
                                      : std::string(kindInfo(answer.kind).id));
    return std::nullopt;
}

// An answer of the right protocol that belongs to another transaction (lib/correlate.h): a CA
// or a path that mixed answers up, or one that answers everything with the same message.
// Delivered, it would give the requester someone else's certificate, and the next request the
// same one again: it goes to a person with the reason.
std::optional<std::string> otherTransaction(const std::optional<spool::Claim> &request,
                                            const Message &answer, const std::string &endpoint) {
    if (!request) // a reply to nothing this run sent (it cannot happen): not delivered blind
        return fmt::format("{} answered a request this run has no record of", endpoint);
    const std::string name = fmt::format("item {}", request->itemId);
    // No public key (RequestKeys::publicKey) here: a certs-only answer on a synchronous
    // exchange came on this request's own connection, and the test peers that stand in for a
    // CA (tests/fault_endpoint.py, test_daemon's --fixed) answer every PKCS#10 with one
    // certificate for another key. The key binds a certs-only answer on the return leg
    // (spool/store.cc), where answers can be swapped on the stick.
    auto why = answerMismatch(
        {request->kind == Kind::Cmp, request->transactionId, request->senderNonce, {}}, answer,
        name);
    if (!why)
        return std::nullopt;
    return fmt::format("{} answered with a message of another transaction: {}", endpoint, *why);
}

std::string_view outcomeText(const spool::Outcome &outcome) {
    return std::visit(
        [](const auto &r) -> std::string_view {
            using R = std::decay_t<decltype(r)>;
            if constexpr (std::is_same_v<R, spool::Answer> || std::is_same_v<R, spool::Handed>)
                return r.detail;
            else
                return r.reason;
        },
        outcome.result);
}

// Groups tasks by the responder that delivers them (the way their requests came), then calls
// f(responder, tasks of that responder) once per group.
template <class F> void byResponder(const Parts &parts, std::vector<DeliveryTask> &tasks, F f) {
    std::map<Responder *, int> order;
    for (const auto &t : tasks)
        order.emplace(&parts.responderFor(t.arrival.source), static_cast<int>(order.size()));
    if (order.size() > 1)
        std::stable_sort(tasks.begin(), tasks.end(), [&](const auto &a, const auto &b) {
            return order[&parts.responderFor(a.arrival.source)] <
                   order[&parts.responderFor(b.arrival.source)];
        });
    for (std::size_t i = 0; i < tasks.size();) {
        Responder &r = parts.responderFor(tasks[i].arrival.source);
        std::size_t j = i + 1;
        while (j < tasks.size() && &parts.responderFor(tasks[j].arrival.source) == &r)
            ++j;
        f(r, std::span<DeliveryTask>(tasks).subspan(i, j - i));
        i = j;
    }
}

} // namespace

Millis systemClock() {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

int RunReport::exitCode() const {
    if (quarantined > 0 || failed > 0)
        return ExitDataErr;
    if (stillArriving > 0 || sourceErrors > 0 || deliveryErrors > 0 || waiting > 0)
        return ExitTempFail;
    return ExitOk;
}

bool RunReport::quiet() const {
    return received == 0 && duplicates == 0 && quarantined == 0 && unmatched == 0 && relayed == 0 &&
           delivered == 0 && sourceErrors == 0 && deliveryErrors == 0;
}

// The store as the sources see it (lib/sources/source.h).
class Pipeline::StoreLedger final : public Ledger {
public:
    explicit StoreLedger(spool::Store &store) : store_(store) {}
    Seen arrival(std::string_view source, std::string_view origin,
                 std::string_view sha256) override {
        return store_.arrivalSeen(source, origin, sha256);
    }
    bool isOurResponse(std::string_view replyTo, std::string_view name,
                       std::string_view sha256) override {
        return store_.isOutput(replyTo, name, sha256);
    }
    std::string cursor(std::string_view source) override { return store_.sourceCursor(source); }
    bool everStored(std::string_view source, std::string_view origin,
                    std::string_view sha256) override {
        return store_.arrivalKnown(source, origin, sha256);
    }
    std::int64_t sentSince(std::string_view source, std::string_view sender,
                           std::int64_t since) override {
        return store_.sentSince(source, sender, since);
    }

private:
    spool::Store &store_;
};

Pipeline::Pipeline(const Config &config, spool::Store &store, EventLoop &loop, Clock clock,
                   bool once)
    : config_(config), store_(store), loop_(loop), clock_(std::move(clock)), once_(once),
      ledger_(std::make_unique<StoreLedger>(store)) {
    build();
}

Pipeline::~Pipeline() {
    for (auto &s : parts_.sources)
        s->detach();
    cancelTimers();
}

void Pipeline::cancelTimer(EventLoop::TimerId &id) {
    if (id != 0)
        loop_.cancel(id);
    id = 0;
}

void Pipeline::cancelTimers() {
    for (auto *id : {&retryTimer_, &sweepTimer_, &recordRetryTimer_, &recordDueTimer_,
                     &lateAckTimer_, &lazyMarksTimer_})
        cancelTimer(*id);
}

void Pipeline::build() {
    policy_ = config_.retryPolicy();
    // A lease outlives the longest exchange the endpoints allow, with a margin: an item is only
    // taken back from a relay stage that has certainly given up on it.
    lease_ = 60'000;
    for (const auto &e : config_.endpoints)
        lease_ = std::max(lease_, (e.connectTimeoutSeconds + e.timeoutSeconds + 60 +
                                   (e.type == "cmp-tcp" ? e.pollMaxSeconds * 2 : 0)) *
                                      1000);

    // A directory endpoint asks the store which files of a batch are out on the media before
    // it removes a batch without a manifest (lib/transports/directory.h); the media responder
    // which files of its folder are its answers before it lists them (lib/responders/media.h).
    StoreHooks hooks;
    hooks.filesOut = [this](const std::string &endpoint, std::int64_t batch) {
        std::vector<media::ManifestEntry> out;
        for (auto &f : store_.mediaFilesOut(endpoint, batch))
            out.push_back({std::move(f.name), f.size, std::move(f.sha256)});
        return out;
    };
    hooks.isOurResponse = [this](std::string_view folder, std::string_view name,
                                 std::string_view sha256) {
        return store_.isOutput(folder, name, sha256);
    };
    parts_ = buildParts(config_, clock_, hooks);
}

std::size_t Pipeline::inFlight() const {
    return inFlight_.size();
}

void Pipeline::start() {
    // The caller holds the run lock, so an item still marked as relaying belongs to a run that
    // died: its lease is void whatever its time says, and it goes back to the queue.
    if (int n = store_.requeueExpiredLeases(clock_(), std::numeric_limits<Millis>::max()); n > 0)
        spdlog::warn("- {} item(s) were being relayed when an earlier run stopped: queued again "
                     "(the CA may see them twice; `pkirelay show` lists each resend)",
                     n);
    for (auto &[name, t] : parts_.transports)
        t->attach(loop_);
    for (auto &s : parts_.sources)
        s->attach(loop_, [this] { scheduleIntake(false); });
    // What a killed run left half-written (temporary response files); the answers they held
    // are in the store and are delivered again.
    for (auto &r : parts_.responders)
        r->recover();
    store_.changedElsewhere(); // the baseline: what is there now is delivered right here
    deliverAll();              // answers recorded by an earlier run and not yet written
    expireAwaiting();
    scheduleIntake(true);
    queueMayHaveItems_ = true;
    scheduleRelay();
    armRetryTimer();
    if (!once_)
        sweepTimer_ = loop_.after(config_.settings.pollSeconds * 1000, [this] { sweep(); });
}

bool Pipeline::finished() const {
    return !intakeScheduled_ && !relayScheduled_ && !recordScheduled_ && !flushScheduled_ &&
           acksLater_.empty() && inFlight_.empty() && waiting_.empty() && outcomes_.empty() &&
           !queueMayHaveItems_ && pendingDelivered_.empty() && pendingAcks_.empty();
}

void Pipeline::sweep() {
    sweepTimer_ = 0;
    if (storeCheck_)
        storeCheck_(); // a store replaced while idle is noticed within run.poll_seconds
    // The rescan is the truth: a missed event (or a network file system without inotify) only
    // delays an item until here. Deliveries that waited (a folder gone) are tried again.
    scheduleIntake(true);
    for (auto &r : parts_.responders)
        r->sweep(); // a return manifest that failed, written once the stick has room again
    try {
        // A daemon runs for weeks: its store is checked whole on the same interval as the
        // opens of a cron job (damage found ends the run, loudly, with its own exit status).
        store_.checkWholeIfDue();
        expireAwaiting();
        // An operator's deliver --force (or any change by another process) may have made
        // answers deliverable that no stage of this run knows of.
        if (store_.changedElsewhere() || deliveriesWaiting_)
            deliverAll();
    } catch (const spool::StoreBusy &e) {
        // Nothing of it happened; the next sweep does it.
        spdlog::warn("- the store cannot be written now ({}); looked at again in {} s", e.what(),
                     config_.settings.pollSeconds);
    }
    queueMayHaveItems_ = true;
    scheduleRelay();
    sweepTimer_ = loop_.after(config_.settings.pollSeconds * 1000, [this] { sweep(); });
}

void Pipeline::expireAwaiting() {
    // Requests out on the media whose answer did not come back in time fail, visibly.
    for (const auto id : store_.expireAwaiting(clock_())) {
        ++report_.failed;
        spdlog::error("{}: failed: no answer came back from the media in time", id);
    }
}

void Pipeline::scheduleIntake(bool full) {
    if (stopped_)
        return;
    intakeFull_ = intakeFull_ || full;
    if (intakeScheduled_)
        return;
    intakeScheduled_ = true;
    loop_.defer([this] { intake(); });
}

void Pipeline::acknowledge(const LateAck &ack) {
    if (storeCheck_)
        storeCheck_(); // what was committed must still be reachable before a file goes
    const auto acks = ack.source->acknowledge(ack.tokens);
    crashPoint("acknowledged"); // acknowledged, the acknowledgement not yet recorded
    for (std::size_t i = 0; i < acks.size(); ++i) {
        if (acks[i] == Source::Ack::Failed)
            ++report_.sourceErrors;
        else if (!ack.recordedAck[i])
            pendingAcks_.emplace_back(ack.deliveries[i], acks[i]);
    }
}

void Pipeline::acknowledgeLate() {
    cancelTimer(lateAckTimer_);
    if (acksLater_.empty())
        return;
    auto work = std::move(acksLater_);
    acksLater_.clear();
    for (const auto &ack : work)
        acknowledge(ack);
    scheduleFlush();
}

void Pipeline::intake() {
    intakeScheduled_ = false;
    const bool full = intakeFull_;
    intakeFull_ = false;
    if (stopped_)
        return;
    acknowledgeLate(); // a source never looks again at files it has not acknowledged yet
    bool more = false;
    const auto batch = static_cast<std::size_t>(config_.settings.batchSize);
    wasAvailable_.resize(parts_.sources.size(), true);
    bool cameBack = false;
    for (std::size_t s = 0; s < parts_.sources.size(); ++s) {
        auto &source = parts_.sources[s];
        // A folder that came back (a stick put back in) may be where answers wait to be written.
        cameBack = cameBack || (source->available() && !wasAvailable_[s]);
        wasAvailable_[s] = source->available();
        // One transaction: what the source asks the store while it looks (two lookups per
        // file, which on their own would be one read transaction each), the batch, the claims
        // of what can be sent at once, the names of the answers that duplicates get. The
        // source is acknowledged only after it committed.
        std::optional<spool::Store::Unit> unit;
        unit.emplace(store_.unit());
        Taken taken = source->take(*ledger_, batch, maxBatchBytes, full);
        report_.stillArriving += taken.stillArriving;
        report_.sourceErrors += taken.errors;
        more = more || taken.more;
        if (taken.submissions.empty() && taken.unacknowledged.empty()) {
            unit->commit(); // it wrote nothing
            continue;
        }

        std::vector<spool::Ingested> results;
        std::vector<DeliveryTask> answers;
        {
            results = store_.ingest(taken.submissions, clock_());
            std::vector<std::int64_t> answeredAgain; // duplicates of answered items
            for (const auto &res : results) {
                if (res.state == spool::State::Queued)
                    queueMayHaveItems_ = true;
                if (res.state == spool::State::Answered)
                    answeredAgain.push_back(res.itemId);
            }
            if (!answeredAgain.empty())
                answers = planDeliveries(store_.deliveriesFor(answeredAgain));
            claimReady();
            const auto lazy = flushLazy();
            unit->commit();
            flushed(lazy);
        }
        crashPoint("stored"); // committed, the source not yet acknowledged, nothing sent
        std::vector<std::uint64_t> tokens;
        std::vector<std::int64_t> deliveries;
        std::vector<bool> recordedAck; // the ack is already in the store (kept in place)
        const int receivedBefore = report_.received, duplicatesBefore = report_.duplicates;
        for (std::size_t i = 0; i < results.size(); ++i) {
            const auto &sub = taken.submissions[i];
            const auto &res = results[i];
            if (sub.returnLeg && sub.message) {
                // The media's return leg: matched to its request, or quarantined (not delivered).
                if (res.matched) {
                    spdlog::info("{}: answer matched: {}/{} ({})", res.itemId, sub.arrival.source,
                                 printable(sub.arrival.origin), res.why);
                } else if (res.foreign) {
                    // Another agent's answer on a shared stick: not ours to refuse or remove.
                    // Recorded as kept in place, so that later looks pass it by; not counted
                    // as quarantined (the run is not in error for it).
                    spdlog::warn("{}: left {}/{} on the media: {}", res.itemId, sub.arrival.source,
                                 printable(sub.arrival.origin), res.why);
                    if (!sub.acknowledgedWhenStored)
                        pendingAcks_.emplace_back(res.deliveryId, Source::Ack::Kept);
                    continue;
                } else {
                    ++report_.quarantined;
                    spdlog::warn("{}: quarantined {}/{}: {}", res.itemId, sub.arrival.source,
                                 printable(sub.arrival.origin), res.why);
                }
            } else if (res.duplicate) {
                ++report_.duplicates;
                if (spdlog::should_log(perItem(once_))) // its text is built only when logged
                    spdlog::log(perItem(once_), "{}: {}/{} is another arrival of this item ({})",
                                res.itemId, sub.arrival.source, printable(sub.arrival.origin),
                                spool::stateName(res.state));
            } else {
                if (!sub.message)
                    ++report_.quarantined;
                else if (!sub.relay)
                    ++report_.unmatched;
                else
                    ++report_.received;
                if (!sub.message)
                    spdlog::warn("{}: {}", res.itemId, describeIngest(sub));
                else if (spdlog::should_log(perItem(once_))) // its text built only when logged
                    spdlog::log(perItem(once_), "{}: {}", res.itemId, describeIngest(sub));
            }
            tokens.push_back(taken.tokens[i]);
            deliveries.push_back(res.deliveryId);
            recordedAck.push_back(sub.acknowledgedWhenStored);
        }
        if (once_)
            spdlog::info("- source {}: {} stored in one transaction ({} new, {} duplicate)",
                         source->name(), results.size(), report_.received - receivedBefore,
                         report_.duplicates - duplicatesBefore);
        for (const auto &[token, delivery] : taken.unacknowledged) {
            tokens.push_back(token);
            deliveries.push_back(delivery);
            recordedAck.push_back(false);
        }
        dispatch();            // the CA sees the new requests before the files are acknowledged
        crashPoint("claimed"); // claimed and handed to the transport, the source not acknowledged
        LateAck ack{source.get(), std::move(tokens), std::move(deliveries), std::move(recordedAck)};
        if (inFlight_.empty()) {
            acknowledge(ack);
        } else {
            // The requests just sent are answered while their files wait: an acknowledgement
            // ends with a sync of the folder, which would otherwise delay the answers (on disk
            // a few ms of a lone file's drop-to-response time). Committed already, the files are
            // acknowledged after the answers are recorded and written, before the source is
            // looked at again, or within lateAckMs.
            acksLater_.push_back(std::move(ack));
            if (lateAckTimer_ == 0)
                lateAckTimer_ = loop_.after(lateAckMs, [this] {
                    lateAckTimer_ = 0;
                    acknowledgeLate();
                });
        }
        writeDeliveries(std::move(answers));
    }
    if (cameBack && deliveriesWaiting_)
        deliverAll();
    if (queueMayHaveItems_)
        scheduleRelay();
    if (more)
        scheduleIntake(false);
    scheduleFlush();
}

void Pipeline::scheduleRelay() {
    if (relayScheduled_ || stopped_)
        return;
    relayScheduled_ = true;
    loop_.defer([this] { relay(); });
}

void Pipeline::relay() {
    relayScheduled_ = false;
    if (stopped_)
        return;
    // Claims held up to the bound need no transaction: what is claimed already is sent below.
    if (queueMayHaveItems_ &&
        inFlight_.size() + waiting_.size() < static_cast<std::size_t>(config_.settings.batchSize)) {
        auto unit = store_.unit();
        claimReady();
        const auto lazy = flushLazy();
        unit.commit();
        flushed(lazy);
    }
    dispatch();
}

void Pipeline::claimReady() {
    // Claimed ahead of the transports' places, up to limits.batch_size held at once (sent or
    // waiting for a place): each reply sends the next waiting claim at once (onReply), with no
    // transaction in between, and the outcomes are recorded together (recordWhenDue). Claiming
    // only what the places took (4 per endpoint by default) made every answer one commit and
    // one response file synced on its own: on disk that was the whole cost (204 msg/s). A claim
    // waiting in memory when the run stops is given back unsent (unclaim); when it dies, the
    // next run records it as a possible resend, which errs on the side the history may.
    const auto bound = static_cast<std::size_t>(config_.settings.batchSize);
    const std::size_t held = inFlight_.size() + waiting_.size();
    if (stopped_ || !queueMayHaveItems_ || held >= bound)
        return;
    std::size_t places = 0;
    for (const auto &[name, t] : parts_.transports)
        places += t->capacity() + t->inFlight();
    const std::size_t want = bound - held;
    const Millis now = clock_();
    // A claim may wait behind others for its place: its lease covers every exchange that can
    // be ahead of it on one place, so that it never lapses while the claim waits.
    const auto depth = static_cast<Millis>(1 + (held + want) / std::max<std::size_t>(1, places));
    std::vector<spool::Damaged> damaged;
    auto claims = store_.claim(want, now, now + lease_ * depth, maxBatchBytes, &damaged);
    for (const auto &d : damaged) {
        ++report_.failed; // needs a person: the run says so (65)
        spdlog::critical("{}: NOT SENT: its stored bytes are damaged (sha256 {} recorded, {} now); "
                         "it waits for a person in state review",
                         d.itemId, d.recorded, d.actual);
    }
    // Only a claim that found nothing at all says the queue is empty: damaged items and the
    // byte bound may have cut this one short.
    if (claims.empty() && damaged.empty())
        queueMayHaveItems_ = false; // until something is stored, retried or recorded
    else
        scheduleRelay(); // look again next turn, while places are free
    for (auto &claim : claims) {
        const EndpointConfig *endpoint = config_.route(claim.source, claim.kind, claim.cmpBody);
        if (!endpoint && config_.source(claim.source)) {
            // No rule matches: the configuration says nowhere, and it would say so again.
            outcomes_.push_back(
                {claim.itemId, "",
                 spool::Permanent{fmt::format(
                     "no route: no rule matches a {}{} from source {} (add a [[route]] or the "
                     "source's endpoint)",
                     kindInfo(claim.kind).id,
                     claim.kind == Kind::Cmp ? fmt::format(" {}", cmpBodyName(claim.cmpBody))
                                             : std::string(),
                     claim.source)}});
            continue;
        }
        if (!endpoint) {
            // Only a source that left the configuration has no route (check-config sees to the
            // rest): a slip that a reload can mend, so retried until retry.max_age.
            outcomes_.push_back(
                {claim.itemId, "",
                 spool::Transient{fmt::format("no route: source {} is not in the configuration",
                                              claim.source)}});
            continue;
        }
        // A TCP endpoint carries one protocol (RFC 5273 §5: CMC; RFC 2510 §5.2: CMP), with no
        // content type to tell the server otherwise: a message of the other protocol would
        // reach a server that cannot read it, every time it is retried.
        if ((endpoint->type == "cmc-tcp" && claim.kind == Kind::Cmp) ||
            (endpoint->type == "cmp-tcp" && claim.kind != Kind::Cmp)) {
            outcomes_.push_back(
                {claim.itemId, endpoint->name,
                 spool::Permanent{fmt::format(
                     "not sent: endpoint {} is {}, which cannot carry a {} (route it to an "
                     "endpoint of its protocol)",
                     endpoint->name, endpoint->type, kindInfo(claim.kind).id)}});
            continue;
        }
        if (claim.attempts > 1)
            spdlog::log(perItem(once_), "{}: attempt {} to {}", claim.itemId, claim.attempts,
                        endpoint->name);
        waiting_.push_back({std::move(claim), parts_.transports.at(endpoint->name).get()});
    }
}

void Pipeline::dispatch() {
    if (stopped_)
        return; // shutting down: claims still waiting are given back by stop()
    // Send what the transports have room for, up to limits.max_in_flight; the rest waits for a
    // reply to free a place. The scan ends when no transport has a place left (it runs at
    // every reply, with up to limits.batch_size claims waiting).
    const auto maxInFlight = static_cast<std::size_t>(config_.settings.maxInFlight);
    std::size_t open = 0;
    for (const auto &[name, t] : parts_.transports)
        open += t->capacity() > 0 ? 1 : 0;
    for (auto it = waiting_.begin();
         it != waiting_.end() && open > 0 && inFlight_.size() < maxInFlight;) {
        if (it->transport->capacity() == 0) {
            ++it;
            continue;
        }
        const auto id = it->claim.itemId;
        auto slot = inFlight_.emplace(id, std::move(*it)).first;
        it = waiting_.erase(it);
        Claimed &c = slot->second;
        c.sentAt = EventLoop::monotonicNow();
        const std::string endpoint = c.transport->name();
        const Kind kind = c.claim.kind;
        ++report_.relayed;
        c.transport->send({id, kind, c.claim.der}, [this, endpoint, kind](Reply reply) {
            onReply(std::move(reply), endpoint, kind);
        });
        if (c.transport->capacity() == 0)
            --open;
    }
    if (!outcomes_.empty())
        scheduleRecord();
}

void Pipeline::onReply(Reply reply, const std::string &endpoint, Kind kind) {
    crashPoint("answered"); // the CA answered, the outcome is not recorded
    // The request's correlation fields, for the answer to be checked against.
    std::optional<spool::Claim> request;
    if (auto it = inFlight_.find(reply.id); it != inFlight_.end()) {
        latency_[reply.id] =
            static_cast<double>(EventLoop::monotonicNow() - it->second.sentAt) / 1000.0;
        request = std::move(it->second.claim);
        inFlight_.erase(it);
    }
    spool::Outcome outcome{reply.id, endpoint, spool::Transient{""}};
    // An answer that cannot be delivered as it is (another protocol's, a request, a body that
    // is not a PKI message or too large for limits.max_message_size) is kept byte for byte for
    // a person (state review), never thrown away and never answered by sending the request
    // again (the CA may have issued a certificate already).
    const bool answerLike =
        reply.status == 200 || (reply.status > 200 && reply.status < 300 && !reply.body.empty());
    switch (reply.type) {
    case Reply::Type::Response:
        if (auto why = unacceptableAnswer(kind, *reply.response, endpoint))
            outcome.result = spool::Unusable{reply.body, reply.contentType, *why};
        else if (auto other = otherTransaction(request, *reply.response, endpoint))
            outcome.result = spool::Unusable{reply.body, reply.contentType, *other};
        else
            outcome.result = spool::Answer{reply.response->der, reply.response->kind, reply.detail};
        break;
    case Reply::Type::Done:
        // RFC 9811 §3: 201/202 acknowledge pushed announcements, which are never relayed as
        // requests; a request needs an answer.
        outcome.result =
            spool::Permanent{fmt::format("{}: no PKI message for a request", reply.detail)};
        break;
    case Reply::Type::Transient:
        outcome.result = spool::Transient{reply.detail, reply.maxAgeMs, reply.maxAgeKey};
        break;
    case Reply::Type::Handed:
        // Onto the media (a directory endpoint): the answer comes back on the return leg.
        outcome.result = spool::Handed{reply.detail, reply.handedAs, reply.batch, reply.awaitMs};
        break;
    case Reply::Type::Permanent:
        if (answerLike)
            outcome.result = spool::Unusable{reply.body, reply.contentType, reply.detail};
        else
            outcome.result = spool::Permanent{reply.detail};
        break;
    }
    if (reply.resends > 0)
        resent_.emplace_back(reply.id, reply.resends);
    outcomes_.push_back(std::move(outcome));
    // The place it freed takes the next claim now: those are committed already.
    dispatch();
    scheduleRecord();
}

void Pipeline::scheduleRecord() {
    if (recordScheduled_)
        return;
    recordScheduled_ = true;
    loop_.defer([this] {
        recordScheduled_ = false;
        recordWhenDue();
    });
}

// The outcomes in hand are recorded at the end of the turn when nothing else is in flight (a
// lone item waits for nothing), when a batch's worth has come (limits.batch_size), or at most
// recordDueMs after the first of them, so that answers never wait long for a slow exchange.
// Until then they stay in memory while the claims they freed are sent, and the answers that
// follow join the same transaction and the same batch of response files: one commit and one
// round of syncs for many answers instead of one per turn. (A run that dies meanwhile loses
// only what it would lose a moment later too: the outcomes are unrecorded, and their requests
// are sent again as recorded resends.)
void Pipeline::recordWhenDue() {
    constexpr EventLoop::Millis recordDueMs = 10;
    if (outcomes_.empty())
        return;
    if (stopped_ || inFlight_.empty() ||
        outcomes_.size() >= static_cast<std::size_t>(config_.settings.batchSize)) {
        recordOutcomes();
        return;
    }
    if (recordDueTimer_ == 0)
        recordDueTimer_ = loop_.after(recordDueMs, [this] {
            recordDueTimer_ = 0;
            recordOutcomes();
        });
}

void Pipeline::recordOutcomes() {
    cancelTimer(recordDueTimer_);
    if (outcomes_.empty())
        return;
    auto outcomes = std::move(outcomes_);
    outcomes_.clear();
    // One transaction: the outcomes, the names of the response files they lead to, and the
    // claims for the places they free.
    std::vector<spool::State> states;
    std::vector<DeliveryTask> answers;
    std::vector<std::int64_t> answered;
    // What the transaction consumes, to be put back if it cannot commit.
    const auto resent = resent_;
    const std::size_t waitingBefore = waiting_.size();
    try {
        auto unit = store_.unit();
        for (const auto &[id, times] : resent_)
            store_.noteResent(id, times, "a kept-alive connection died after the request was sent",
                              clock_());
        resent_.clear();
        states = store_.record(outcomes, clock_(), policy_);
        for (std::size_t i = 0; i < outcomes.size(); ++i)
            if (states[i] == spool::State::Answered)
                answered.push_back(outcomes[i].itemId);
        if (!answered.empty())
            answers = planDeliveries(store_.deliveriesFor(answered));
        claimReady();
        const auto lazy = flushLazy();
        unit.commit();
        flushed(lazy);
    } catch (const spool::StoreBusy &e) {
        // Another writer held the store past the busy timeout, or its disk is full: the
        // transaction rolled back, so nothing of it happened. The answers in hand are the only
        // copy of what the CA said: they are kept, first in line, and recorded again shortly
        // (DESIGN: no CA answer thrown away); the claims made inside it are void.
        // (The loop runs one thing at a time: what outcomes_ holds now was put there by
        // claimReady() inside the transaction, for claims that are void.)
        outcomes_ = std::move(outcomes);
        waiting_.resize(waitingBefore);
        for (const auto &task : answers)
            responses_.erase(task.deliveryId);
        resent_ = resent;
        if (once_ && recordBackoffMs_ >= 16'000) {
            // A batch run does not wait for ever (cron starts the next one): it says what is
            // lost and defers. The requests stay queued and are sent again (a resend in their
            // history), so nothing is lost but the CA sees them twice.
            spdlog::critical("- {} answer(s) from the CA could not be recorded (the store stayed "
                             "unwritable for about half a minute): their requests will be sent "
                             "again",
                             outcomes_.size());
            throw;
        }
        recordBackoffMs_ =
            std::min<EventLoop::Millis>(recordBackoffMs_ == 0 ? 500 : recordBackoffMs_ * 2, 30'000);
        if (stopped_)
            spdlog::error("- the store cannot be written now ({}): {} outcome(s) kept in memory "
                          "while stopping",
                          e.what(), outcomes_.size());
        else
            spdlog::error("- the store cannot be written now ({}): {} outcome(s) kept in memory, "
                          "recorded again in {} ms",
                          e.what(), outcomes_.size(), recordBackoffMs_);
        if (recordRetryTimer_ == 0 && !stopped_)
            recordRetryTimer_ = loop_.after(recordBackoffMs_, [this] {
                recordRetryTimer_ = 0;
                recordOutcomes();
            });
        return;
    }
    recordBackoffMs_ = 0;
    crashPoint("recorded"); // outcomes and response names committed, no file written
    bool deferred = false;
    for (std::size_t i = 0; i < outcomes.size(); ++i) {
        const auto &outcome = outcomes[i];
        const std::string_view why = outcomeText(outcome);
        if (auto l = latency_.extract(outcome.itemId); !l.empty())
            metrics_.relayed(outcome.endpoint, spool::stateName(states[i]), l.mapped());
        // Counted by what the store decided (a transient failure past retry.max_age is a
        // failure), not by the kind of outcome.
        switch (states[i]) {
        case spool::State::Answered:
            ++report_.answered;
            spdlog::log(perItem(once_), "{}: answered by {}: {}", outcome.itemId, outcome.endpoint,
                        why);
            break;
        case spool::State::Deferred:
            ++report_.deferred;
            deferred = true;
            spdlog::warn("{}: deferred ({}): {}", outcome.itemId, outcome.endpoint, why);
            break;
        case spool::State::Failed:
            ++report_.failed;
            spdlog::error("{}: failed: {}", outcome.itemId, why);
            break;
        case spool::State::Awaiting:
            spdlog::info("{}: handed over to {}: {}", outcome.itemId, outcome.endpoint, why);
            break;
        case spool::State::Review:
            ++report_.failed; // needs a person, like a failure: the run says so (65)
            spdlog::error("{}: the answer from {} cannot be delivered as it is ({}); kept for a "
                          "person: `pkirelay show {}`, then `export` or `deliver --force`",
                          outcome.itemId, outcome.endpoint, why, outcome.itemId);
            break;
        default:
            spdlog::warn("{}: outcome not applied, the item is {}: {}", outcome.itemId,
                         spool::stateName(states[i]), why);
            break;
        }
    }
    // The new claims go out first: the CA answers them while the response files are synced.
    dispatch();
    writeDeliveries(std::move(answers));
    acknowledgeLate(); // the files of the requests answered now, and of the others sent with them
    std::erase_if(retired_, [](const auto &t) { return t->inFlight() == 0; });
    if (deferred)
        armRetryTimer();
    if (queueMayHaveItems_)
        scheduleRelay();
    scheduleFlush();
}

void Pipeline::armRetryTimer() {
    cancelTimer(retryTimer_);
    if (stopped_)
        return;
    const auto next = store_.nextRetry();
    if (!next)
        return;
    retryTimer_ = loop_.after(std::max<Millis>(0, *next - clock_()), [this] {
        retryTimer_ = 0;
        queueMayHaveItems_ = true;
        relay();
        armRetryTimer();
    });
}

void Pipeline::deliverAll() {
    deliveriesWaiting_ = false; // set again by writeDeliveries() for what still cannot be
    std::int64_t after = 0;     // written; paged past what could not be written now
    for (;;) {
        auto page = store_.deliveriesToWrite(static_cast<std::size_t>(config_.settings.batchSize),
                                             after, maxBatchBytes);
        if (page.empty())
            return;
        after = page.back().deliveryId;
        std::vector<DeliveryTask> tasks;
        {
            auto unit = store_.unit();
            tasks = planDeliveries(std::move(page));
            const auto lazy = flushLazy();
            unit.commit();
            flushed(lazy);
        }
        writeDeliveries(std::move(tasks));
    }
}

std::vector<DeliveryTask> Pipeline::planDeliveries(std::vector<spool::Delivery> deliveries) {
    std::vector<DeliveryTask> tasks;
    tasks.reserve(deliveries.size());
    for (auto &d : deliveries) {
        // Once per delivery: one that is being delivered already is not planned again.
        auto [slot, fresh] = responses_.try_emplace(d.deliveryId, std::move(d.response));
        if (!fresh)
            continue;
        tasks.push_back({d.deliveryId,
                         d.itemId,
                         d.arrival,
                         d.output,
                         !d.output.empty(),
                         d.responseKind,
                         slot->second,
                         {}});
    }
    // Choose names and reserve them in the store (in the caller's transaction) before anything
    // is written: a crash between writing and recording rewrites the same file instead of
    // making a second response.
    const auto reserved = [this](std::string_view replyTo, std::string_view output) {
        return store_.outputReserved(replyTo, output);
    };
    for (int round = 0; round < 3; ++round) {
        byResponder(parts_, tasks,
                    [&](Responder &r, std::span<DeliveryTask> group) { r.plan(group, reserved); });
        std::vector<std::pair<std::int64_t, std::string>> names;
        std::vector<std::size_t> which;
        for (std::size_t i = 0; i < tasks.size(); ++i)
            if (!tasks[i].planned && !tasks[i].output.empty()) {
                names.emplace_back(tasks[i].deliveryId, tasks[i].output);
                which.push_back(i);
            }
        if (names.empty())
            break;
        const auto assigned = store_.assignOutputs(names, clock_());
        bool again = false;
        for (std::size_t n = 0; n < assigned.size(); ++n) {
            auto &task = tasks[which[n]];
            if (assigned[n]) {
                task.planned = true;
            } else {
                task.output.clear(); // another delivery holds it: choose again
                again = true;
            }
        }
        if (!again)
            break;
    }
    return tasks;
}

void Pipeline::writeDeliveries(std::vector<DeliveryTask> tasks) {
    if (tasks.empty())
        return;
    std::vector<DeliveryTask> ready;
    for (auto &task : tasks) {
        if (task.planned) {
            ready.push_back(std::move(task));
            continue;
        }
        ++report_.deliveryErrors;
        deliveriesWaiting_ = true;
        const std::string why =
            task.waitReason.empty()
                ? fmt::format("cannot write responses into {} now", task.arrival.replyTo)
                : task.waitReason;
        problem(task, fmt::format("{}; it stays pending", why));
        responses_.erase(task.deliveryId);
    }
    std::vector<DeliveryResult> results;
    std::vector<bool> recorded; // delivered and recorded already (a responder not repeatable)
    results.reserve(ready.size());
    recorded.reserve(ready.size());
    byResponder(parts_, ready, [&](Responder &r, std::span<DeliveryTask> group) {
        if (r.repeatable()) {
            for (auto &result : r.deliver(group)) {
                results.push_back(std::move(result));
                recorded.push_back(false);
            }
            return;
        }
        for (auto &[result, done] : deliverOneByOne(r, group)) {
            results.push_back(std::move(result));
            recorded.push_back(done);
        }
    });
    crashPoint("written"); // response files durable, their delivery not recorded
    for (std::size_t i = 0; i < ready.size(); ++i) {
        const auto &task = ready[i];
        const auto &r = results[i];
        if (r.type == DeliveryResult::Type::Delivered) {
            // Recorded lazily: the file is durable, and a crash before the record finds it
            // there with these very bytes and records it then. (A reply that cannot be
            // repeated was recorded by deliverOneByOne already.)
            if (!recorded[i])
                pendingDelivered_.push_back(task.deliveryId);
            lastProblem_.erase(task.deliveryId);
            ++report_.delivered;
            if (spdlog::should_log(perItem(once_))) { // no text built for a line nobody sees
                if (!r.delivered.empty())
                    spdlog::log(perItem(once_), "{}: {}", task.itemId, printable(r.delivered));
                else
                    spdlog::log(perItem(once_), "{}: response written to {}/{}", task.itemId,
                                task.arrival.replyTo, printable(task.output));
            }
        } else {
            ++report_.deliveryErrors;
            deliveriesWaiting_ = true;
            problem(task, r.type == DeliveryResult::Type::NeedsPerson
                              ? r.detail
                              : fmt::format("writing the response failed: {} (it stays pending)",
                                            r.detail));
        }
        responses_.erase(task.deliveryId);
    }
    scheduleFlush();
}

std::vector<std::pair<DeliveryResult, bool>>
Pipeline::deliverOneByOne(Responder &responder, std::span<const DeliveryTask> tasks) {
    std::vector<std::pair<DeliveryResult, bool>> out;
    out.reserve(tasks.size());
    // One commit per reply: the one that records reply k (delivered, or its mark cleared) also
    // marks reply k+1 as being sent, so every mark is exact and a batch of N replies costs N+1
    // commits, not 2N.
    enum class Mark {
        Marked,    // its send is recorded as begun: it may go
        Delivered, // recorded as delivered already (a record that waited in pendingDelivered_
                   // was written by the transaction that planned it): sending would repeat it
        Busy,      // the store could not be written: not sent
    };
    const auto markFor = [&](std::size_t k) {
        const std::int64_t id = tasks[k].deliveryId;
        return store_.markSending(std::span<const std::int64_t>(&id, 1), clock_()) == 0
                   ? Mark::Delivered
                   : Mark::Marked;
    };
    Mark mark = Mark::Busy;
    std::string busy; // why the store could not be written
    try {
        mark = markFor(0);
    } catch (const spool::StoreBusy &e) {
        busy = e.what();
    }
    for (std::size_t k = 0; k < tasks.size(); ++k) {
        const auto &task = tasks[k];
        const bool last = k + 1 == tasks.size();
        if (mark == Mark::Busy) {
            // Not sent unless the store knows a send began: a stop during an unrecorded send
            // would repeat the reply without a trace.
            out.push_back({{DeliveryResult::Type::Retry,
                            fmt::format("the store cannot be written now ({}): the reply is sent "
                                        "once its sending can be recorded",
                                        busy)},
                           false});
            continue;
        }
        if (mark == Mark::Delivered) {
            const std::string what = fmt::format("reply {} to {} was delivered already",
                                                 task.output, task.arrival.replyTo);
            out.push_back({{DeliveryResult::Type::Delivered, what, what}, true});
            try {
                mark = last ? Mark::Busy : markFor(k + 1);
            } catch (const spool::StoreBusy &e) {
                mark = Mark::Busy;
                busy = e.what();
            }
            continue;
        }
        auto results = responder.deliver(tasks.subspan(k, 1));
        DeliveryResult result = std::move(results.at(0));
        const bool delivered = result.type == DeliveryResult::Type::Delivered;
        if (delivered)
            crashPoint("mailed"); // the server took the reply, its delivery not recorded
        const std::int64_t id = task.deliveryId;
        const std::span<const std::int64_t> ids(&id, 1);
        mark = Mark::Busy;
        try {
            auto unit = store_.unit();
            if (delivered)
                store_.markDelivered(ids, clock_());
            else if (!result.uncertain)
                store_.clearSending(ids); // refused or not reached: the retry is no resend
            // (uncertain: the whole mail went out unanswered; the mark stays, so the next
            // attempt is recorded as a possible resend.)
            const Mark next = last ? Mark::Busy : markFor(k + 1);
            unit.commit();
            mark = next;
            out.push_back({std::move(result), delivered});
        } catch (const spool::StoreBusy &e) {
            // Reply k is recorded lazily with the next transaction; until then its mark says a
            // send began, so a stop before that record makes a resend recorded as one. (A mark
            // that stays after a failed send says more than happened, never less.)
            busy = e.what();
            out.push_back({std::move(result), false});
        }
    }
    return out;
}

void Pipeline::problem(const DeliveryTask &task, const std::string &what) {
    // Once per distinct reason: a folder that stays away is not an error line every rescan.
    auto &last = lastProblem_[task.deliveryId];
    if (last == what) {
        spdlog::debug("{}: {}", task.itemId, printable(what));
        return;
    }
    last = what;
    spdlog::error("{}: {}", task.itemId, printable(what));
    store_.noteDeliveryProblem(task.deliveryId, what, clock_());
}

Pipeline::LazyMarks Pipeline::flushLazy() {
    if (!pendingDelivered_.empty())
        store_.markDelivered(pendingDelivered_, clock_());
    if (!pendingAcks_.empty())
        store_.markAcknowledged(pendingAcks_, clock_());
    return {pendingDelivered_.size(), pendingAcks_.size()};
}

void Pipeline::flushed(LazyMarks written) {
    // Only what the committed transaction wrote: marks added after flushLazy() inside it (an
    // acknowledgement recorded later in the same turn) wait for the next one.
    pendingDelivered_.erase(pendingDelivered_.begin(),
                            pendingDelivered_.begin() +
                                static_cast<std::ptrdiff_t>(written.delivered));
    pendingAcks_.erase(pendingAcks_.begin(),
                       pendingAcks_.begin() + static_cast<std::ptrdiff_t>(written.acks));
}

void Pipeline::scheduleFlush() {
    if (flushScheduled_ || (pendingDelivered_.empty() && pendingAcks_.empty()))
        return;
    flushScheduled_ = true;
    // At the end of the turn, unless a transaction of this turn takes them along first. While
    // exchanges are in flight, the transaction that records their outcomes takes the marks
    // along (they are lazy: see writeDeliveries), rather than a commit and its sync of their own.
    loop_.defer([this] {
        flushScheduled_ = false;
        if (pendingDelivered_.empty() && pendingAcks_.empty())
            return;
        if (!inFlight_.empty() || !outcomes_.empty()) {
            // recordOutcomes() takes them along if an answer comes within lazyMarksMs; if none
            // does (a CA that thinks for a minute), they are committed on their own then. Not
            // later: a file deleted whose 'removed' mark a killed run never wrote is taken, when
            // the same request is dropped again, for that run's own unacknowledged file (deleted,
            // and never answered), and a response written whose 'delivered' mark is missing is
            // written a second time.
            if (lazyMarksTimer_ == 0)
                lazyMarksTimer_ = loop_.after(lazyMarksMs, [this] {
                    lazyMarksTimer_ = 0;
                    commitLazyMarks();
                });
            return;
        }
        commitLazyMarks();
    });
}

void Pipeline::commitLazyMarks() {
    if (pendingDelivered_.empty() && pendingAcks_.empty())
        return; // a record took them along
    try {
        auto unit = store_.unit();
        const auto lazy = flushLazy();
        unit.commit();
        flushed(lazy);
    } catch (const spool::StoreBusy &e) {
        // The marks are kept (flushed() forgets them only after a COMMIT, which can fail
        // too: SQLITE_FULL) and tried again; the next transaction that succeeds takes them
        // along anyway.
        spdlog::warn("- the store cannot be written now ({}); tried again in a second", e.what());
        flushScheduled_ = true;
        loop_.after(1000, [this] {
            flushScheduled_ = false;
            scheduleFlush();
        });
    }
}

void Pipeline::stop(std::string_view why) {
    if (stopped_)
        return;
    // Nothing new is claimed or sent from here on; what arrived is still recorded, and its
    // responses written: an answer in hand is never thrown away.
    stopped_ = true;
    // Another writer may hold the store (an operator's sqlite3, a command that writes). The
    // answers in hand are the only copy of what the CA said, so the stop waits for the store,
    // each attempt for the busy timeout, until stopWaitMs have passed; only then does it give
    // up on them (the requests are sent again by the next run, recorded as resends) and on the
    // steps below (the store then has those items as in flight, which a start puts right).
    const auto giveUpAt = EventLoop::monotonicNow() + stopWaitMs;
    const auto persevere = [&](const auto &step) {
        for (;;) {
            try {
                step();
                return;
            } catch (const spool::StoreBusy &e) {
                if (EventLoop::monotonicNow() >= giveUpAt)
                    throw;
                spdlog::warn("- stopping: the store cannot be written now ({}); waiting for it",
                             e.what());
            }
        }
    };
    recordOutcomes();
    while (!outcomes_.empty() && EventLoop::monotonicNow() < giveUpAt) {
        spdlog::warn("- stopping: {} answer(s) from the CA wait for the store to be writable",
                     outcomes_.size());
        recordOutcomes();
    }
    acknowledgeLate();
    persevere([&] {
        auto unit = store_.unit();
        const auto lazy = flushLazy();
        unit.commit();
        flushed(lazy);
    });
    std::vector<std::int64_t> abandoned;
    for (auto &[name, t] : parts_.transports)
        for (auto id : t->abandon())
            abandoned.push_back(id);
    for (auto &t : retired_)
        for (auto id : t->abandon())
            abandoned.push_back(id);
    std::vector<std::int64_t> unsent; // claimed, never handed to a transport
    for (const auto &w : waiting_)
        unsent.push_back(w.claim.itemId);
    persevere([&] {
        auto unit = store_.unit();
        store_.abandon(abandoned, clock_(), why);
        store_.unclaim(unsent, clock_());
        unit.commit();
    });
    if (!abandoned.empty())
        spdlog::warn("- {} exchange(s) abandoned ({}): queued again, resent by the next run",
                     abandoned.size(), why);
    inFlight_.clear();
    waiting_.clear();
    for (auto &s : parts_.sources)
        s->detach();
    cancelTimers();
}

void Pipeline::reconfigure(const Config &config) {
    acknowledgeLate(); // by the sources that took them, which build() replaces
    for (auto &s : parts_.sources)
        s->detach();
    for (auto &[name, t] : parts_.transports)
        if (t->inFlight() > 0)
            retired_.push_back(std::move(t)); // its exchanges finish; then it goes
    parts_.transports.clear();
    config_ = config;
    build();
    for (auto &[name, t] : parts_.transports)
        t->attach(loop_);
    for (auto &s : parts_.sources)
        s->attach(loop_, [this] { scheduleIntake(false); });
    // Claims waiting for a place go where the new configuration routes them.
    for (auto it = waiting_.begin(); it != waiting_.end();) {
        if (const auto *e = config_.route(it->claim.source, it->claim.kind, it->claim.cmpBody)) {
            it->transport = parts_.transports.at(e->name).get();
            ++it;
        } else {
            outcomes_.push_back(
                {it->claim.itemId, "",
                 spool::Transient{fmt::format("no route: source {} is not in the configuration",
                                              it->claim.source)}});
            it = waiting_.erase(it);
        }
    }
    scheduleIntake(true);
    queueMayHaveItems_ = true;
    scheduleRelay();
    armRetryTimer();
}

} // namespace pkirelay::agent
