// The pipeline of `pkirelay run`: sources -> classify -> store -> transports -> store ->
// responders, every stage driven by one event loop and handing over only through the store
// (../shared/DESIGN.md, "Data flow"). Nothing waits for a timer or a pass: a file closed in a
// watched folder is read, stored, claimed and sent in the same turn of the loop; an answer is
// recorded and its response written at once when nothing else is in flight, and otherwise
// together with the answers that follow it within a few milliseconds. A batch is whatever
// became ready together (one transaction, one round of syncs), bounded by limits.batch_size
// and bytes.
//
// The guarantees (also in docs/architecture.md):
// - a source is acknowledged only after the store committed what it handed over;
// - an outcome is recorded before anything acts on it, and a request is sent again only when
//   its earlier outcome was never recorded (a crash, a shutdown mid-exchange): the resend is an
//   event in its history;
// - a response file's name is reserved in the store before it is written, so a crash at any
//   point leaves at most the same file to write again, never a second one.
//
// Batch mode (`run --once`) runs the same stages and stops when nothing is left to do now.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <utility>
#include <vector>

#include "config.h"
#include "metrics.h"
#include "parts.h"
#include "lib/loop/event_loop.h"
#include "lib/responders/responder.h"
#include "lib/sources/source.h"
#include "lib/transports/transport.h"
#include "spool/store.h"

namespace pkirelay::agent {

// sysexits(3) codes, as ../shared/DESIGN.md ("Operating it") promises them to cron and systemd.
enum ExitCode : int {
    ExitOk = 0,
    ExitUsage = 64,
    ExitDataErr = 65,  // EX_DATAERR: something needs a person
    ExitNoInput = 66,  // EX_NOINPUT: a store that should exist is missing or empty
    ExitSoftware = 70, // EX_SOFTWARE: a bug or an unexpected failure
    ExitCantCreat = 73,
    // The store is damaged (SQLITE_CORRUPT, SQLITE_NOTADB, PRAGMA quick_check). sysexits has
    // no code for "data on disk is corrupt": EX_IOERR ("an error occurred while doing I/O on
    // some file") is the nearest, and it keeps corruption apart from EX_SOFTWARE (a bug) and
    // from EX_TEMPFAIL (try again later), which cron is told to ignore.
    ExitStoreCorrupt = 74,
    ExitTempFail = 75, // EX_TEMPFAIL: something is deferred for later
    ExitConfig = 78,   // EX_CONFIG
};

spool::Millis systemClock();

struct RunReport {
    int received = 0;      // new items stored
    int duplicates = 0;    // arrivals of items already stored
    int quarantined = 0;   // rejected inputs stored
    int unmatched = 0;     // responses found without a request
    int stillArriving = 0; // inputs that looked incomplete
    int sourceErrors = 0;  // folders or files that could not be read, acknowledgements failed
    int relayed = 0;       // exchanges with an endpoint
    int answered = 0;
    int deferred = 0;
    int failed = 0;
    int delivered = 0; // response files written
    int deliveryErrors = 0;
    std::int64_t waiting = 0; // items still queued, relaying or deferred at the end

    // The exit status `run --once` reports. Quarantined input and requests the CA refused need
    // a person; a deferral only needs time. So 65 wins over 75.
    int exitCode() const;
    bool quiet() const; // nothing happened: no log line for it
};

class Pipeline {
public:
    // Builds the sources, transports and responder the configuration names. once: batch mode.
    Pipeline(const Config &config, spool::Store &store, EventLoop &loop, Clock clock, bool once);
    ~Pipeline();
    Pipeline(const Pipeline &) = delete;
    Pipeline &operator=(const Pipeline &) = delete;

    // Recovers what an earlier run left (leases, unwritten responses) and starts every stage.
    void start();
    // Batch mode: true when nothing is left to do now (the loop may stop).
    bool finished() const;
    // Stops: records the outcomes that arrived, abandons exchanges in flight (back to the
    // queue, recorded as such) and detaches the sources.
    void stop(std::string_view why);
    // Takes a new configuration (SIGHUP). Exchanges in flight finish on the old transports.
    void reconfigure(const Config &config);

    const RunReport &report() const { return report_; }
    const Metrics &metrics() const { return metrics_; }
    void resetReport() { report_ = {}; }
    std::size_t inFlight() const;
    // Called before a source is acknowledged and at every sweep; throws when the store file is
    // no longer the one this run opened (deleted or replaced under it): a file acknowledged
    // into a store no name reaches is lost with it.
    void setStoreCheck(std::function<void()> check) { storeCheck_ = std::move(check); }

private:
    class StoreLedger;
    struct Claimed {
        spool::Claim claim;
        Transport *transport = nullptr;
        EventLoop::Millis sentAt = 0; // monotonic, for the latency metric
    };

    // What a source took and the store committed, to be acknowledged (intake()).
    struct LateAck {
        Source *source = nullptr;
        std::vector<std::uint64_t> tokens;
        std::vector<std::int64_t> deliveries;
        std::vector<bool> recordedAck; // the ack is already in the store (kept in place)
    };

    void build();
    void acknowledge(const LateAck &ack);
    void acknowledgeLate(); // the acknowledgements left for later, now
    void scheduleIntake(bool full);
    void intake();
    void scheduleRelay();
    void relay();
    // These two join the caller's transaction (spool::Store::Unit).
    void claimReady();
    std::vector<DeliveryTask> planDeliveries(std::vector<spool::Delivery> deliveries);
    void dispatch();
    void onReply(Reply reply, const std::string &endpoint, Kind kind);
    // Records the outcomes in hand now, or leaves them for the answers still in flight
    // (see its definition for when which).
    void scheduleRecord();
    void recordWhenDue();
    void recordOutcomes();
    void armRetryTimer();
    void deliverAll();
    void writeDeliveries(std::vector<DeliveryTask> tasks);
    // The tasks of a responder that is not repeatable(), one at a time: each marked as being
    // sent before its hand-over and recorded right after it. Per task: the result and whether
    // its delivery is recorded already.
    std::vector<std::pair<DeliveryResult, bool>>
    deliverOneByOne(Responder &responder, std::span<const DeliveryTask> tasks);
    // Records written responses and acknowledgements that were left for a later transaction
    // (losing them in a crash is harmless: see writeDeliveries), in the caller's transaction,
    // and says how many it wrote; flushed() forgets those once that transaction committed (a
    // COMMIT that fails, SQLITE_FULL, leaves them to be written again).
    struct LazyMarks {
        std::size_t delivered = 0, acks = 0;
    };
    LazyMarks flushLazy();
    void flushed(LazyMarks written);
    void problem(const DeliveryTask &task, const std::string &what);
    void scheduleFlush();
    void cancelTimer(EventLoop::TimerId &id); // if set; then 0
    void cancelTimers();                      // every timer of the pipeline's
    void commitLazyMarks();                   // the lazy marks in a transaction of their own
    void sweep();
    void expireAwaiting(); // the air-gap chain: awaiting items past their deadline fail

    Config config_;
    spool::Store &store_;
    EventLoop &loop_;
    Clock clock_;
    bool once_;
    std::function<void()> storeCheck_;
    std::unique_ptr<StoreLedger> ledger_;
    Parts parts_;
    std::vector<std::unique_ptr<Transport>> retired_; // replaced by a reload, still in flight
    spool::RetryPolicy policy_;
    spool::Millis lease_ = 0;

    bool intakeScheduled_ = false;
    bool intakeFull_ = false;
    bool relayScheduled_ = false;
    bool queueMayHaveItems_ = true;
    bool recordScheduled_ = false;
    bool stopped_ = false;
    bool deliveriesWaiting_ = false;           // a delivery could not be written: tried again later
    std::vector<bool> wasAvailable_;           // per source, as the last intake saw it
    std::deque<Claimed> waiting_;              // claimed, not yet sent (their transport was full)
    std::map<std::int64_t, Claimed> inFlight_; // by item id
    std::vector<spool::Outcome> outcomes_;     // arrived, not yet recorded
    std::vector<std::pair<std::int64_t, int>> resent_; // sent again by a transport, by item
    std::map<std::int64_t, Bytes> responses_;    // response bytes of planned deliveries, by id
    std::vector<std::int64_t> pendingDelivered_; // written, not yet recorded
    std::vector<std::pair<std::int64_t, Source::Ack>> pendingAcks_; // likewise
    bool flushScheduled_ = false;
    std::map<std::int64_t, std::string> lastProblem_; // by delivery: what was last reported
    EventLoop::TimerId retryTimer_ = 0;
    EventLoop::TimerId recordRetryTimer_ = 0; // outcomes the store could not take yet
    EventLoop::TimerId recordDueTimer_ = 0;   // outcomes waiting for a slow exchange: the bound
    std::vector<LateAck> acksLater_;          // committed, acknowledged once the answers are in
    EventLoop::TimerId lateAckTimer_ = 0;
    EventLoop::TimerId lazyMarksTimer_ = 0; // lazy marks waiting for a record: the bound
    EventLoop::Millis recordBackoffMs_ = 0;
    EventLoop::TimerId sweepTimer_ = 0;
    RunReport report_;
    Metrics metrics_;
    std::map<std::int64_t, double> latency_; // by item: seconds from send to reply, until recorded
};

} // namespace pkirelay::agent
