// The transport interface: how a request reaches an endpoint (HTTP(S) now; CMC and CMP over TCP
// and a directory endpoint for removable media later). A transport carries one request at a
// time per exchange and reports each outcome asynchronously, from the event loop, as a Reply:
// a response, a transient failure to retry, or a permanent one. It keeps every byte the peer
// returned in the Reply, whatever they are, so that nothing a CA said is ever thrown away.
//
// Every implementation passes the conformance suite in tests/test_conformance.cc.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "lib/bytes.h"
#include "lib/classify.h"
#include "lib/kinds.h"
#include "lib/loop/event_loop.h"

namespace pkirelay {

struct Exchange {
    std::int64_t id = 0; // the caller's item id, returned with the reply
    Kind kind = Kind::Cmp;
    ByteView body; // must stay valid until the reply is delivered or the exchange abandoned
};

struct Reply {
    std::int64_t id = 0;
    enum class Type {
        Response,  // response holds the classified PKI message
        Done,      // the peer accepted the message and has nothing to return (HTTP 201)
        Transient, // try again later
        Permanent, // the same request would get the same answer
        // Handed over to an asynchronous leg (written onto removable media): the answer comes
        // back later by another route, and the item waits for it (state awaiting).
        Handed,
    } type = Type::Transient;
    std::optional<Message> response; // for Response
    Bytes body;                      // everything the peer returned, as it came
    std::string contentType;         // as the peer labelled it, when it did
    long status = 0;                 // the peer's status code (HTTP status); 0 when none came
    // Times the transport itself sent the request again within this exchange (libcurl on a new
    // connection after a kept-alive one died once the request was out): the peer may have seen
    // it more than once, and the history must say so.
    int resends = 0;
    std::string detail; // one line for the event log
    // For Handed: where the request went (a file name on the media), in which batch, and how
    // long the answer may take before the item fails (0: the store's default).
    std::string handedAs;
    std::int64_t batch = 0;
    std::int64_t awaitMs = 0;
    // For Transient: how long since the item arrived its transient failures at this endpoint
    // are retried before it fails, when the endpoint has its own limit (a directory endpoint:
    // await_max_age_seconds, since a stick away for days is its normal state); 0: the
    // store's retry.max_age. maxAgeKey names the setting, for the reason when the item fails.
    std::int64_t maxAgeMs = 0;
    std::string maxAgeKey;
};

class Transport {
public:
    using OnReply = std::function<void(Reply)>;
    virtual ~Transport() = default;
    virtual const std::string &name() const = 0; // the endpoint's name

    // Connects the transport to the loop that drives its I/O.
    virtual void attach(EventLoop &loop) = 0;
    // Exchanges the transport can start now (it bounds its own connections).
    virtual std::size_t capacity() const = 0;
    virtual std::size_t inFlight() const = 0;
    // Starts an exchange; onReply is called exactly once, from the loop, unless the exchange is
    // abandoned first.
    virtual void send(const Exchange &exchange, OnReply onReply) = 0;
    // Drops every exchange in flight without calling their onReply (shutdown); returns their ids.
    virtual std::vector<std::int64_t> abandon() = 0;
};

} // namespace pkirelay
