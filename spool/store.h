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
};

// An item claimed for relaying.
struct Claim {
    std::int64_t itemId = 0;
    Kind kind = Kind::Cmp;
    std::string source; // of the first arrival: routing is decided from source and kind
    Bytes der;
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
};
struct Permanent {
    std::string reason;
};
struct Outcome {
    std::int64_t itemId = 0;
    std::string endpoint; // the endpoint that was tried, for the record
    std::variant<Answer, Transient, Permanent> result;
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
    std::vector<Arrival> arrivals;
    std::vector<std::string> deliveryStates; // parallel to arrivals: pending/writing/delivered
    std::vector<Event> events;
};

class StoreError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class Store {
public:
    // Opens or creates the database at path, sets WAL, synchronous=FULL, foreign_keys, and
    // applies the migrations of schemas/ that user_version says are missing.
    static Store open(const std::string &path);
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
    bool knownArrival(std::string_view source, std::string_view origin,
                      std::string_view arrivalSha256) {
        return arrivalSeen(source, origin, arrivalSha256).state != Ledger::Seen::State::New;
    }
    // Records how sources acknowledged arrivals (delivery ids from ingest() or arrivalSeen()).
    void markAcknowledged(std::span<const std::pair<std::int64_t, Source::Ack>> acks, Millis now);

    // True when a delivery wrote (or is writing) a response named `name` into folder replyTo
    // whose bytes hash to sha256: such a file in a watched folder is an answer, not a request.
    // A new request reusing the name of an earlier answer is a new request. One indexed lookup.
    bool isOutput(std::string_view replyTo, std::string_view name, std::string_view sha256);
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
    std::vector<Claim> claim(std::size_t limit, Millis now, Millis leaseUntil,
                             std::size_t maxBytes = 64 * 1024 * 1024);
    // Puts items that were in flight back in the queue (shutdown): their outcome is unknown,
    // so the next send is a recorded resend. One transaction.
    void abandon(std::span<const std::int64_t> itemIds, Millis now, std::string_view why);
    // The earliest next_try of a deferred item, when there is one: when the relay stage wakes.
    std::optional<Millis> nextRetry();

    // Records the outcomes of a batch in one transaction: Answer -> Answered (response stored);
    // Transient -> Deferred with backoff, or Failed once policy.maxAge has passed;
    // Permanent -> Failed. Returns the state each item is in afterwards, in order (an outcome
    // for an item that is no longer Relaying changes nothing and returns its state).
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

    // Operator views.
    std::vector<std::pair<State, std::int64_t>> countByState();
    std::vector<ItemSummary> list(std::optional<State> state, std::size_t limit);
    std::optional<ItemDetail> show(std::int64_t itemId);

private:
    struct Impl;
    explicit Store(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

} // namespace pkirelay::spool
