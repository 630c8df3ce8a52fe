// The store: pkirelay's persistent queue in SQLite. Every stage hands over only through it, and
// every promise of ../shared/DESIGN.md ("The store: what is promised") is kept here:
// - WAL mode with synchronous=FULL, so a committed item survives power loss; sources acknowledge
//   (delete/move) only after ingest() returned.
// - every write is one BEGIN IMMEDIATE transaction over a whole batch (one fsync per batch);
// - one row per unique message (item), one row per arrival of it (delivery), and an event log;
// - the same bytes, or for CMP the same transactionID+senderNonce, are one item: a duplicate
//   arrival gets the recorded response, the CA does not see the request twice;
// - a request is sent again only when a lease expired with the outcome unrecorded, and that
//   resend is an event in the item's history.
// Time is always passed in (Unix milliseconds), so tests jump the clock instead of sleeping.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "lib/bytes.h"
#include "lib/classify.h"
#include "lib/kinds.h"
#include "lib/sources/source.h"

namespace pkirelay::spool {

namespace sql {
class Transaction;
}

using Millis = std::int64_t; // Unix time in milliseconds

// Item states. Kept as text in the database (CHECK-constrained) so that `sqlite3` shows them.
enum class State {
    Queued,      // stored, waiting to be relayed (next_try <= now)
    Relaying,    // claimed by a relay stage until lease_until
    Deferred,    // a transient failure; retried at next_try
    Answered,    // the CA's response is stored; deliveries write it out
    Failed,      // gave up: permanent failure, or retries exhausted (reason recorded)
    Quarantined, // not a PKI message we may relay (reason recorded); never sent
    Held,        // an operator put it aside (pkirelay hold)
    Awaiting,    // carried over an asynchronous leg (removable media); answer comes later
    Unmatched,   // a response that arrived without a request to match it to (kept for matching)
    Review,      // needs a person: the CA's answer could not be accepted (kept byte for byte),
                 // or the stored request no longer matches its hash; never claimed or resent
};

std::string_view stateName(State state);
std::optional<State> stateFromName(std::string_view name);

// Arrivals and submissions are the source interface's (lib/sources/source.h).
using pkirelay::Arrival;
using pkirelay::Submission;

struct Ingested {
    std::int64_t itemId = 0;
    std::int64_t deliveryId = 0;
    bool duplicate = false; // the item existed already; this is one more arrival of it
    State state = State::Queued;
    // The return leg (Submission::returnLeg): matched says the answer was recorded for itemId
    // (the request it answers), whose arrivals now get it; otherwise itemId is the quarantined
    // answer. why says which, for the log.
    bool matched = false;
    std::string why = {};
    // Not matched because its name claims an item that is no request of this agent: another
    // agent's answer on a shared stick, left on the media for it (the source does not remove
    // it) and recorded here once.
    bool foreign = false;
};

// An item claimed for relaying.
struct Claim {
    std::int64_t itemId = 0;
    Kind kind = Kind::Cmp;
    std::string source; // of the first arrival: routing is decided from source and kind
    int cmpBody = -1;   // CMP PKIBody tag (routing rules may match it); -1 for CMC
    Bytes der;
    // Its correlation fields as stored (empty when it has none), so that the answer can be
    // checked against them (lib/correlate.h, answerMismatch).
    Bytes transactionId, senderNonce;
    int attempts = 0; // sends so far, including this one
    Millis firstSeen = 0;
};

struct Answer {
    Bytes body;               // the CA's response, byte for byte
    std::optional<Kind> kind; // nullopt when there is nothing to deliver (e.g. HTTP 201)
    std::string detail;       // e.g. "HTTP 200 application/pkixcmp"
};
struct Transient {
    std::string reason;
    // The endpoint's own limit on the item's age (Reply::maxAgeMs), used instead of
    // RetryPolicy::maxAge when set: a directory endpoint's failures (the stick not plugged in)
    // count against its await_max_age, not retry.max_age.
    Millis maxAge = 0;
    std::string maxAgeKey = {}; // the setting that says so, for the reason
};
struct Permanent {
    std::string reason;
};
// An answer the relay could not accept: it does not parse, is the wrong kind for the request,
// or is larger than the classifier takes. No byte a CA returned is thrown away (DESIGN.md, "The
// store"): record() keeps the body and puts the item in Review, where it is never resent.
struct Unusable {
    Bytes body;
    std::string contentType;
    std::string reason;
};
// The request went onto an asynchronous leg (a directory endpoint writing removable media):
// the item waits (Awaiting) until its answer comes back on the return leg, or fails once
// awaitMs has passed. The file written is recorded (media_file) for `pkirelay media status`.
struct Handed {
    std::string detail;
    std::string name; // the file name on the media
    std::int64_t batch = 0;
    Millis awaitMs = 0;
};
struct Outcome {
    std::int64_t itemId = 0;
    std::string endpoint; // the endpoint that was tried, for the record
    std::variant<Answer, Transient, Permanent, Unusable, Handed> result;
};

// Exponential backoff for transient failures, up to a maximum age (DESIGN.md, "Failures").
struct RetryPolicy {
    Millis initial = 30'000;
    double factor = 2.0;
    Millis maxDelay = 3'600'000;
    Millis maxAge = 86'400'000; // after this long since first seen, the item fails
    Millis delayAfter(int attempts) const;
};

// A response to write out for one arrival.
struct Delivery {
    std::int64_t deliveryId = 0;
    std::int64_t itemId = 0;
    Arrival arrival;
    std::string output; // the name chosen for the response file; empty until assigned
    Kind responseKind = Kind::Cmp;
    Bytes response;
};

struct Event {
    Millis at = 0;
    std::string what;   // short verb: "received", "relayed", "deferred", "answered", ...
    std::string detail; // one line for people
};

struct ItemSummary {
    std::int64_t id = 0;
    State state = State::Queued;
    std::optional<Kind> kind;
    std::string source;
    std::string origin;
    int attempts = 0;
    std::string reason;
    Millis createdAt = 0;
    Millis updatedAt = 0;
};

struct ItemDetail {
    ItemSummary summary;
    std::string sha256;
    std::uint64_t size = 0;
    std::string endpoint;
    Bytes transactionId, senderNonce, recipNonce;
    std::optional<int> cmpBody;
    std::optional<Millis> nextTry;
    std::optional<Kind> responseKind;
    std::string responseDetail; // e.g. "HTTP 200 application/pkixcmp", or why not accepted
    std::optional<std::uint64_t> responseSize; // nullopt when no answer is stored
    std::vector<Arrival> arrivals;
    std::vector<std::string> deliveryStates; // parallel to arrivals: pending/writing/delivered
    std::vector<Event> events;
};

class StoreError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The database file is damaged (SQLITE_CORRUPT, SQLITE_NOTADB, or PRAGMA quick_check found a
// problem). Unlike a busy or full store this does not pass with time: it needs a person, so it
// is kept apart from the StoreErrors that mean "try again later".
class StoreCorrupt : public StoreError {
public:
    using StoreError::StoreError;
};

// The store is busy (another writer holds it past the busy timeout) or its disk is full: this
// passes with time, so a run that meets it defers (EX_TEMPFAIL), never fails for good.
class StoreBusy : public StoreError {
public:
    using StoreError::StoreError;
};

// OpenMode::MustExist found no store: the file is missing, empty (0 bytes) or has no schema.
// Taking it as new would relay every kept request to the CA again.
class StoreMissing : public StoreError {
public:
    using StoreError::StoreError;
};

enum class OpenMode {
    CreateIfMissing, // a missing or empty file becomes a new, empty store
    MustExist,       // a missing, empty or schema-less file is refused (StoreMissing)
};

// A relaying item whose stored DER no longer hashes to its recorded sha256 (claim() moved it to
// Review instead of returning it).
struct Damaged {
    std::int64_t itemId = 0;
    std::string recorded; // the sha256 column
    std::string actual;   // the hash of the bytes read now
};

// What `pkirelay media status` shows: per directory endpoint, what is out on the media (items
// awaiting their answer), what came back, what failed waiting, and the oldest outstanding.
struct MediaBatch {
    std::string endpoint;
    std::int64_t batch = 0;
    Millis writtenAt = 0;
    std::int64_t files = 0, returned = 0, outstanding = 0; // outstanding: item still awaiting
};
struct MediaFileRow {
    std::string endpoint;
    std::int64_t batch = 0;
    std::string name;
    std::int64_t itemId = 0;
    std::uint64_t size = 0;
    std::string sha256;
    State state = State::Awaiting; // of the item now
    Millis writtenAt = 0;
    std::optional<Millis> returnedAt;
    std::string returnedAs;
};
struct MediaStatus {
    std::int64_t awaiting = 0;            // items out on the media, waiting for their answer
    std::int64_t returned = 0;            // answers that came back and were matched
    std::int64_t expired = 0;             // items that failed waiting (await_max_age_seconds)
    std::int64_t quarantinedReturns = 0;  // answers on the return leg that were refused
    std::optional<std::int64_t> oldestId; // the oldest item still awaiting
    Millis oldestSince = 0;               // when it was written onto the media
    Millis oldestDeadline = 0;            // when it fails if nothing comes back
    std::vector<MediaBatch> batches;      // newest first, at most 50
};

// What `pkirelay status` shows.
struct EndpointError {
    std::string endpoint;
    std::int64_t itemId = 0;
    State state = State::Deferred;
    std::string reason;
    Millis at = 0;
};
struct StoreStatus {
    // Every state, in enum order. Relaying counts only items whose lease is still running (really
    // in flight); orphaned counts the relaying items whose lease has run out (a run died; the
    // next run queues them again).
    std::vector<std::pair<State, std::int64_t>> counts;
    std::int64_t orphaned = 0;
    std::optional<std::int64_t> oldestWaitingId; // queued, deferred or relaying
    Millis oldestWaitingSince = 0;               // its created_at
    std::vector<EndpointError> lastErrors;       // per endpoint, the newest deferred/failed item
};

struct ListFilter {
    std::optional<State> state;
    std::string source; // empty: any
    std::optional<Kind> kind;
    std::optional<Millis> createdBefore; // --older-than: created_at < this
    std::optional<Millis> createdAfter;  // --newer-than: created_at > this
    std::size_t limit = 50;
};
struct ListPage {
    std::vector<ItemSummary> items; // newest first
    bool truncated = false;         // more items matched than the limit
};

// The result of an operator command for one item.
struct Change {
    std::int64_t itemId = 0;
    bool changed = false;
    std::optional<State> state; // afterwards; nullopt when there is no such item
    std::string why;            // when not changed
};

// The bytes kept for an item: the request (or a quarantined input) and the CA's answer.
struct StoredBytes {
    std::int64_t itemId = 0;
    State state = State::Queued;
    std::optional<Kind> kind;         // nullopt when quarantined
    Bytes request;                    // may be empty when a quarantined file was too large
    std::optional<Bytes> response;    // nullopt when no answer is stored
    std::optional<Kind> responseKind; // nullopt when the answer was not accepted
    std::string responseDetail;
};

class Store {
public:
    // Opens or creates the database at path, sets WAL, synchronous=FULL, foreign_keys, checks
    // it (PRAGMA quick_check: StoreCorrupt when damaged) and applies the migrations of schemas/
    // that user_version says are missing. Any later call that finds the file damaged throws
    // StoreCorrupt; other failures (busy, full, cannot open) are plain StoreErrors.
    static Store open(const std::string &path);
    static Store open(const std::string &path, OpenMode mode);
    // Opens an existing store read-only (SQLITE_OPEN_READONLY), for the operator views: never
    // creates, never migrates, never writes, works while a run writes, and works when its folder
    // is not writable. A missing or empty store is StoreMissing; an older schema is a
    // StoreError that says the next run brings it up to date.
    static Store openReadOnly(const std::string &path);
    Store(Store &&) noexcept;
    Store &operator=(Store &&) noexcept;
    ~Store();

    // Groups the calls made while it lives into one transaction (one fsync): each write below
    // joins it instead of committing on its own. Nothing is durable before commit(); a Unit
    // destroyed without commit() rolls everything back.
    class Unit {
    public:
        ~Unit();
        Unit(Unit &&) noexcept;
        void commit();

    private:
        friend class Store;
        explicit Unit(std::unique_ptr<sql::Transaction> tx);
        std::unique_ptr<sql::Transaction> tx_;
    };
    Unit unit();

    // Stores a batch of arrivals in one transaction. Returns one Ingested per submission, in
    // order. Duplicates (same DER hash, or CMP transactionID+senderNonce) attach a delivery to
    // the existing item; a duplicate of a Failed item puts it back in the queue.
    std::vector<Ingested> ingest(std::span<const Submission> batch, Millis now);

    // What the store knows of the latest arrival of exactly these bytes under this name from
    // this source (the Ledger a source asks, lib/sources/source.h): new, stored but never
    // acknowledged, or kept in place. One indexed lookup.
    Ledger::Seen arrivalSeen(std::string_view source, std::string_view origin,
                             std::string_view arrivalSha256);
    // The position last recorded for a source with one of its submissions (Submission::cursor;
    // ingest() writes it in the same transaction), or empty.
    std::string sourceCursor(std::string_view source);
    // True when any arrival of these bytes under this name from this source was stored.
    bool arrivalKnown(std::string_view source, std::string_view origin,
                      std::string_view arrivalSha256);
    // How many stored inputs of this source counted against this sender (Submission::rateSender;
    // ingest() records them) after since. ingest() forgets what is older than
    // kSenderRateWindowMs. One indexed count.
    std::int64_t sentSince(std::string_view source, std::string_view sender, Millis since);
    // Records how sources acknowledged arrivals (delivery ids from ingest() or arrivalSeen()).
    void markAcknowledged(std::span<const std::pair<std::int64_t, Source::Ack>> acks, Millis now);

    // True when a delivery wrote (or is writing) a response named `name` into folder replyTo
    // whose bytes hash to sha256: such a file in a watched folder is an answer, not a request.
    // A new request reusing the name of an earlier answer is a new request. One indexed lookup.
    bool isOutput(std::string_view replyTo, std::string_view name, std::string_view sha256);
    // The request files of an endpoint's batch whose items are out on the media (awaiting), as
    // recorded when they were written: name, size, SHA-256 (the directory endpoint writes a
    // lost manifest again from these). One indexed lookup.
    struct MediaFileOut {
        std::string name;
        std::uint64_t size = 0;
        std::string sha256;
    };
    std::vector<MediaFileOut> mediaFilesOut(std::string_view endpoint, std::int64_t batch);
    // True when an unfinished delivery holds this response file name in this folder.
    bool outputReserved(std::string_view replyTo, std::string_view name);

    // Puts items whose relaying lease expired by expiredBy (default: now) back in the queue (an
    // event says the CA may see the request again), stamped with now. Returns how many. A caller
    // that holds the run lock knows every lease is void and passes the largest time.
    int requeueExpiredLeases(Millis now);
    int requeueExpiredLeases(Millis now, Millis expiredBy);

    // Claims up to limit ready items (Queued, or Deferred with next_try <= now), oldest first,
    // and about maxBytes of them (always at least one), moving them to Relaying until
    // leaseUntil and counting the attempt. One transaction.
    // An item whose stored DER no longer hashes to its recorded sha256 is not returned: it goes
    // to Review ("stored bytes damaged", an event says so) and, when damaged is given, is
    // appended there so the caller can log it loudly.
    std::vector<Claim> claim(std::size_t limit, Millis now, Millis leaseUntil,
                             std::size_t maxBytes = 64 * 1024 * 1024,
                             std::vector<Damaged> *damaged = nullptr);
    // Puts items that were in flight back in the queue (shutdown): their outcome is unknown,
    // so the next send is a recorded resend. One transaction.
    void abandon(std::span<const std::int64_t> itemIds, Millis now, std::string_view why);
    // Records that a transport sent an item's request again within one attempt (the peer may
    // have seen it more than once): counted as sends, and an event says so. Joins the caller's
    // transaction.
    void noteResent(std::int64_t itemId, int times, std::string_view why, Millis now);
    // Gives claims back that were never handed to a transport (shutdown): queued again as if
    // never claimed, the attempt not counted, no resend recorded. One transaction.
    void unclaim(std::span<const std::int64_t> itemIds, Millis now);
    // The earliest next_try of a deferred item, when there is one: when the relay stage wakes.
    std::optional<Millis> nextRetry();
    // Whether another connection (an operator command: deliver --force, retry, release)
    // committed since the last call; the first call only takes the baseline. PRAGMA
    // data_version, so one cheap read.
    bool changedElsewhere();
    // The whole-store check (PRAGMA quick_check, which reads every page: its cost grows with
    // the history held) runs at open only when the last one that passed is older than
    // kFullCheckSeconds, so a pass from cron does not pay for the whole history each minute;
    // a daemon calls this on its sweeps to be held to the same interval. Damage a query meets
    // in between is reported at once anyway (StoreCorrupt). Throws StoreCorrupt.
    static constexpr std::int64_t kFullCheckSeconds = 3600;
    void checkWholeIfDue();

    // Records the outcomes of a batch in one transaction: Answer -> Answered (response stored);
    // Transient -> Deferred with backoff, or Failed once policy.maxAge has passed;
    // Permanent -> Failed; Unusable -> Review (the body kept as the response, with no kind,
    // response_detail the reason). Returns the state each item is in afterwards, in order (an
    // outcome for an item that is no longer Relaying changes nothing and returns its state).
    std::vector<State> record(std::span<const Outcome> outcomes, Millis now,
                              const RetryPolicy &policy);

    // Deliveries whose item is Answered with a response and that are not yet delivered, in id
    // order, starting after afterId (so a caller can page past deliveries it could not write),
    // and about maxBytes of responses (always at least one). A sweep: its cost grows with the
    // number of undelivered arrivals, so the pipeline runs it at start and on a timer, and
    // otherwise asks deliveriesFor() the items it just saw answered.
    std::vector<Delivery> deliveriesToWrite(std::size_t limit, std::int64_t afterId = 0,
                                            std::size_t maxBytes = 64 * 1024 * 1024);
    // The undelivered deliveries of these items, when they are answered. Indexed by item.
    std::vector<Delivery> deliveriesFor(std::span<const std::int64_t> itemIds);
    // Records the chosen response file names before the files are written (state writing), so a
    // crash between write and commit rewrites the same file instead of making a second one.
    // A name another unfinished delivery holds in the same folder is not assigned: the result
    // says, per name, whether it was (false: choose again).
    std::vector<bool> assignOutputs(std::span<const std::pair<std::int64_t, std::string>> names,
                                    Millis now);
    // Records why a delivery is waiting (a folder gone, a name taken by someone else's file),
    // as an event, once per distinct reason.
    void noteDeliveryProblem(std::int64_t deliveryId, std::string_view detail, Millis now);
    void markDelivered(std::span<const std::int64_t> deliveryIds, Millis now);
    // For a responder whose deliveries cannot be repeated harmlessly (a mail sent twice is two
    // mails): records, before the hand-over, that sending has begun (schema 9, sent_at). A
    // delivery that already carries that mark was interrupted after an earlier hand-over and
    // before its record, so this send may be a second one: that is written as a "resend"
    // event of the item. One transaction. Returns how many of them it marked: a delivery
    // already recorded as delivered (or unknown) is not marked, and must not be sent again.
    std::size_t markSending(std::span<const std::int64_t> deliveryIds, Millis now);
    // Clears the mark of a send that certainly did not hand the delivery over (the server
    // refused it, or could not be reached), so that the next attempt is an ordinary retry.
    void clearSending(std::span<const std::int64_t> deliveryIds);

    // --- The air-gap chain (issue 17).
    // Awaiting items whose deadline (next_try) has passed fail, each with its reason and an
    // event ("no answer came back"). Returns their ids. One transaction.
    std::vector<std::int64_t> expireAwaiting(Millis now);
    MediaStatus mediaStatus(Millis now);
    // The media files of these batches (all when empty), for the transfer report.
    std::vector<MediaFileRow> mediaFiles(std::string_view endpoint,
                                         std::optional<std::int64_t> batch);

    // Operator views.
    std::vector<std::pair<State, std::int64_t>> countByState();
    // Items still to relay (queued, relaying, deferred): indexed, so its cost follows the
    // backlog, not the history.
    std::int64_t countWaiting();
    std::vector<ItemSummary> list(std::optional<State> state, std::size_t limit);
    std::optional<ItemDetail> show(std::int64_t itemId);

    // --- Operator commands (pkirelay status, list, retry, hold, release, purge, export,
    // deliver). They never need the run lock: each write is one short BEGIN IMMEDIATE, and an
    // item in flight (relaying) is never touched. A store opened read-only refuses the writes.
    StoreStatus status(Millis now);
    ListPage list(const ListFilter &filter);
    // Failed or Review items back to Queued (the CA sees the request again; an event each).
    std::vector<Change> retry(std::span<const std::int64_t> ids, Millis now);
    std::vector<Change> retryFailed(Millis now); // every Failed item
    // Queued or Deferred -> Held; Held -> Queued.
    std::vector<Change> hold(std::span<const std::int64_t> ids, Millis now);
    std::vector<Change> release(std::span<const std::int64_t> ids, Millis now);
    // Deletes the items in a final state (answered with every delivery delivered, failed,
    // quarantined) last changed before `before`, with their deliveries and events. Returns how
    // many items went.
    std::int64_t purge(Millis before, Millis now);
    std::optional<StoredBytes> storedBytes(std::int64_t itemId);
    // A Review item's stored answer, classified by the caller as kind, becomes the answer to
    // deliver: the item is Answered and the next run writes it out for every arrival.
    Change forceDeliver(std::int64_t itemId, Kind kind, std::string_view how, Millis now);

private:
    struct Impl;
    explicit Store(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

} // namespace pkirelay::spool
