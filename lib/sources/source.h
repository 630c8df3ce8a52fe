// The source interface: where requests come from (a watched folder now; an IMAP mailbox and the
// media return leg later). A source finds inputs, hands each one over as a Submission, and
// acknowledges it (deletes or moves the file, moves the mail) only once the store has committed
// it (../shared/DESIGN.md, "The store: what is promised"). A source never talks to another
// stage: what it needs to know of the store it asks through a Ledger.
//
// Every implementation passes the conformance suite in tests/test_conformance.cc.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lib/bytes.h"
#include "lib/classify.h"
#include "lib/loop/event_loop.h"

namespace pkirelay {

// One arrival of an item: where it came from and where its answer goes.
struct Arrival {
    std::string source;  // configured source name
    std::string origin;  // the file's name in the source folder (later: a mail's Message-ID)
    std::string replyTo; // the folder the response file is written to (later: a mail address)
    // What the responder needs of the request beyond replyTo (a mail's Message-ID, Subject and
    // References, one "Name: value" line each, for threading the reply); empty for files.
    std::string context = {};
};

// What a source hands to the store for one input.
struct Submission {
    Arrival arrival;
    std::string arrivalSha256; // hash of the raw input as found (for known-arrival checks)
    // sha256Hex(message->der) when the source has it already (the input is the message's DER
    // itself, so it is arrivalSha256); empty: the store hashes the message.
    std::string messageSha256 = {};
    std::uint64_t size = 0;         // of the raw input
    std::optional<Message> message; // the classified message, or nullopt when rejected
    bool relay = true;              // false: a message that is not a request (-> Unmatched)
    std::string rejectReason;       // when message is nullopt: why (-> Quarantined)
    Bytes rejectedBytes;            // the raw input of a rejected file, kept for `show`; may be
                                    // empty when it was too large to read
    // The source leaves its input where it is (after = "keep"): storing it is acknowledging it.
    bool acknowledgedWhenStored = false;
    // The source's position once this input is stored (an IMAP mailbox's "UIDVALIDITY/UID"),
    // recorded in the same transaction as the input; empty: nothing to record.
    std::string cursor = {};
    // The return leg of removable media (a media-return source): the message claims, by its
    // name, to answer a request written onto the media; the store matches it to that request
    // and confirms it by the protocol, or quarantines it (spool/store.h, Ingested::matched).
    bool returnLeg = false;
    // The sender this input counts against for a per-sender rate limit (a mail source's
    // rate_limit_per_hour), lower-cased; empty: not counted. The store records it in the same
    // transaction as the input, so the count outlives the process and a crash neither loses nor
    // doubles it. A mail with several requests sets it on its first submission only.
    std::string rateSender = {};
};

// The window of the per-sender rate limit (Submission::rateSender, Ledger::sentSince): one hour.
// The store forgets what is older.
constexpr std::int64_t kSenderRateWindowMs = 3'600'000;

// What the store knows of inputs, as a source needs to ask it.
class Ledger {
public:
    virtual ~Ledger() = default;
    struct Seen {
        enum class State {
            New,            // never stored, or stored and acknowledged by removal: a new arrival
            Unacknowledged, // stored, but the source never acknowledged it: acknowledge it now
            Kept,           // stored and left in place on purpose (keep mode): nothing to do
        } state = State::New;
        std::int64_t deliveryId = 0; // for Unacknowledged
    };
    virtual Seen arrival(std::string_view source, std::string_view origin,
                         std::string_view sha256) = 0;
    // True when `name` in folder replyTo is a response pkirelay wrote there with these bytes.
    virtual bool isOurResponse(std::string_view replyTo, std::string_view name,
                               std::string_view sha256) = 0;
    // The position last recorded with a submission of this source (Submission::cursor), or
    // empty.
    virtual std::string cursor(std::string_view source) {
        (void)source;
        return {};
    }
    // True when an arrival of exactly these bytes under this name was ever stored, however it
    // was acknowledged since (the media source tells a file listed in a manifest that was
    // processed and removed from one that never came).
    virtual bool everStored(std::string_view /*source*/, std::string_view /*origin*/,
                            std::string_view /*sha256*/) {
        return false;
    }
    // How many inputs of this source that counted against this sender (Submission::rateSender)
    // were stored after `since` (Unix ms). Only what the store committed, or holds in the
    // caller's open transaction, is counted: a source adds what it hands over in the same take.
    virtual std::int64_t sentSince(std::string_view /*source*/, std::string_view /*sender*/,
                                   std::int64_t /*since*/) {
        return 0;
    }
};

// What one take() found.
struct Taken {
    std::vector<Submission> submissions;
    std::vector<std::uint64_t> tokens; // parallel to submissions: the source's handles
    // Inputs stored earlier and never acknowledged (a run died in between): the source's handle
    // and the store's delivery id. They are acknowledged now, not stored again.
    std::vector<std::pair<std::uint64_t, std::int64_t>> unacknowledged;
    bool more = false;     // the source had more ready than the bounds allowed: take again
    int stillArriving = 0; // inputs that look incomplete and are looked at again later
    int errors = 0;        // inputs or folders that could not be read (logged by the source)
};

class Source {
public:
    virtual ~Source() = default;
    virtual const std::string &name() const = 0;

    // Connects the source to the loop. wake() is called whenever the source may have new input
    // (an inotify event, a timer, a folder that came back); the pipeline then calls take().
    virtual void attach(EventLoop &loop, std::function<void()> wake) = 0;
    virtual void detach() = 0;

    // Takes what is ready now: at most maxItems inputs and about maxBytes of them. full asks for
    // a complete look (a rescan of the folder), not only at what events reported.
    virtual Taken take(Ledger &ledger, std::size_t maxItems, std::size_t maxBytes, bool full) = 0;

    // Acknowledges inputs the store now holds (tokens from take()). Returns, per token, what
    // became of the input; one that could not be acknowledged (it changed since it was read, a
    // move failed) is logged and looked at again by a later take().
    enum class Ack {
        Failed,  // still there, not acknowledged (counted as an error: the run is not done)
        Kept,    // left in place on purpose (keep mode, a file too large to store whole)
        Removed, // deleted or moved away: the same input appearing again is a new arrival
    };
    virtual std::vector<Ack> acknowledge(const std::vector<std::uint64_t> &tokens) = 0;

    // False while the source cannot be read (a folder that does not exist, a stick pulled).
    virtual bool available() const = 0;
};

} // namespace pkirelay
