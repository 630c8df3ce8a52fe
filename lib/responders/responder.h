// The responder interface: how an answer goes back the way its request came (a response file in
// the request's folder now; an SMTP reply and the media return leg later). Delivery is two
// steps so that a crash can never make two answers for one arrival: plan() chooses where each
// answer goes (a file name, later a Message-ID) and the store records that choice before
// deliver() writes anything; deliver() is idempotent for a recorded choice, so after a crash it
// is simply called again with the same choice.
//
// Every implementation passes the conformance suite in tests/test_conformance.cc.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lib/bytes.h"
#include "lib/kinds.h"
#include "lib/sources/source.h"

namespace pkirelay {

struct DeliveryTask {
    std::int64_t deliveryId = 0;
    std::int64_t itemId = 0;
    Arrival arrival;
    std::string output;   // the choice recorded in the store; empty until plan() made it
    bool planned = false; // output was recorded by an earlier attempt (it may have been written)
    Kind kind = Kind::Cmp;
    ByteView response;
    std::string waitReason; // set by plan() when it could not plan (why, for the log)
};

struct DeliveryResult {
    enum class Type {
        Delivered,   // written and durable
        Retry,       // not now (a folder gone, a disk full): the store keeps it pending
        NeedsPerson, // will not work by waiting (a name taken by a file that is not ours)
    } type = Type::Retry;
    std::string detail;
    // For Delivered: what the log says happened, when it is not a file written into replyTo
    // ("reply <id> sent to ann@example.org"); empty: "response written to FOLDER/NAME".
    std::string delivered = {};
    // For Retry: the delivery may have been made all the same (a whole mail went to the server
    // and its answer never came, RFC 1047). The next attempt is then recorded as a resend.
    bool uncertain = false;
};

class Responder {
public:
    // Asks the store whether another delivery already holds this choice in this place.
    using Reserved = std::function<bool(std::string_view replyTo, std::string_view output)>;
    virtual ~Responder() = default;

    // Chooses an output for every task that has none (task.output), unique among the store's
    // reservations and what is already there. Tasks it cannot plan now keep an empty output.
    virtual void plan(std::span<DeliveryTask> tasks, const Reserved &reserved) = 0;
    // Cleans up what a killed run left half-done (temporary files); called once at start, before
    // anything is delivered. The answers themselves are in the store and delivered again.
    virtual void recover() {}
    // Called on every sweep of a running agent (run.poll_seconds): finishes what a delivery
    // left undone that needs no answer to deliver (a return manifest that was not written).
    virtual void sweep() {}
    // Delivers planned tasks (all at once: the files of a batch are synced together). One
    // result per task.
    virtual std::vector<DeliveryResult> deliver(std::span<const DeliveryTask> tasks) = 0;
    // Whether delivering a recorded choice again is harmless (a file rewritten with the same
    // bytes under the same name). A responder that returns false (a mail sent twice is two
    // mails) gets its tasks one at a time, each marked in the store as being sent before the
    // hand-over and recorded right after it (Store::markSending), so only a stop inside one
    // hand-over can repeat it, and the repeat is recorded.
    virtual bool repeatable() const { return true; }
};

} // namespace pkirelay
