// The stages of `pkirelay run`, driven through the store: scan the directory sources (classify,
// ingest, then acknowledge), relay what is ready over HTTP, write the answers as response files.
// Each stage takes what is ready up to a bound and records the outcome of the whole batch in one
// transaction; each can be interrupted and resumes from what the store says.
#pragma once

#include <functional>

#include "config.h"
#include "lib/http_relay.h"
#include "spool/store.h"

namespace pkirelay::agent {

// sysexits(3) codes, as ../shared/DESIGN.md ("Operating it") promises them to cron and systemd.
enum ExitCode : int {
    ExitOk = 0,
    ExitDataErr = 65,  // EX_DATAERR: something was quarantined
    ExitSoftware = 70, // EX_SOFTWARE: a bug or an unexpected failure
    ExitCantCreat = 73,
    ExitTempFail = 75, // EX_TEMPFAIL: something is deferred for later
    ExitConfig = 78,   // EX_CONFIG
};

using Clock = std::function<spool::Millis()>;
spool::Millis systemClock();

struct RunReport {
    int received = 0;      // new items stored
    int duplicates = 0;    // arrivals of items already stored
    int quarantined = 0;   // rejected inputs stored this run
    int unmatched = 0;     // responses found without a request
    int stillArriving = 0; // truncated files young enough to be still copied in
    int sourceErrors = 0;  // folders that could not be read
    int relayed = 0;       // exchanges with an endpoint
    int answered = 0;
    int deferred = 0;
    int failed = 0;
    int delivered = 0; // response files written
    int deliveryErrors = 0;
    std::int64_t waiting = 0; // items still queued, relaying or deferred when the run ended
};

class Runner {
public:
    // stopRequested is asked between relay batches: a pass asked to stop records what it has
    // and leaves the rest queued.
    Runner(
        const Config &config, spool::Store &store, Clock clock,
        std::function<bool()> stopRequested = [] { return false; });

    // One pass: recover, scan every source, relay until nothing is ready, deliver.
    RunReport runOnce();

    // The exit status `run --once` reports for a pass.
    static int exitCode(const RunReport &report);

private:
    void scanSource(const SourceConfig &source, RunReport &report);
    void relayReady(RunReport &report);
    void deliverAnswers(RunReport &report);
    bool stopRequested() const { return stopRequested_(); }

    const Config &config_;
    spool::Store &store_;
    Clock clock_;
    std::function<bool()> stopRequested_;
    HttpRelay relay_;
    std::vector<HttpEndpoint> endpoints_; // parallel to config_.endpoints
};

} // namespace pkirelay::agent
