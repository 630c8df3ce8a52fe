// The HTTP(S) transport: PKI messages POSTed with libcurl's multi interface: POST with the
// Content-Type of the message's kind (RFC 10003 §4 for CMC, RFC 9811 §3 for CMP), several requests
// in flight, connections kept alive and reused. The outcome of each exchange is a value the store
// records: a response to deliver, a transient failure to retry, or a permanent one.
//
// Outcome rules (../shared/DESIGN.md, "Transports" and "Failures"):
// - 200 with a body that classifies as a PKI message: the response.
// - any 4xx/5xx whose body is a PKI message: also the response (RFC 9811 §3: a CMP server may
//   carry an error PKIMessage with an error status; it is delivered, not retried).
// - 201 with an empty body (CMP announcements): done, nothing to deliver; 202: transient.
// - connection refused, timeouts, TLS failures, 5xx without a PKI body: transient.
// - 4xx without a PKI body, 200 whose body is not a PKI message: permanent.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "lib/bytes.h"
#include "lib/classify.h"
#include "lib/kinds.h"
#include "lib/loop/event_loop.h"
#include "lib/transports/transport.h"

namespace pkirelay {

struct HttpEndpoint {
    std::string name; // for logs and the store
    std::string url;  // used as given (http:// or https://)
    std::chrono::milliseconds connectTimeout{10'000};
    std::chrono::milliseconds timeout{60'000}; // whole exchange
    std::string caFile;                        // empty: the system's trust store
    bool verifyTls = true;                     // off only when the config says so for this endpoint
    std::string clientCert, clientKey;         // mutual TLS, PEM files; empty when unused
    std::string caPath;                        // hashed CA directory; empty when unused
    std::string pinnedPublicKey;       // curl's CURLOPT_PINNEDPUBLICKEY: sha256//... or a key file
    std::string tlsMinVersion = "1.2"; // "1.2" or "1.3"
    std::string proxy;                 // empty: libcurl's default (the *_proxy variables)
    // RFC 9811 §3.1: redirects only after considering security; off unless configured. When
    // on, POST stays POST, and an https URL is never redirected to http.
    bool followRedirects = false;
    unsigned maxConnections = 4; // parallel connections to this endpoint
    // Reuse connections between exchanges. Off sends "Connection: close" and never reuses:
    // OpenSSL 3.0's `openssl cmp -port` server cancels a CMP transaction when a kept-alive
    // connection closes (apps/cmp.c, cmp_server), so a certConf relayed later on a new
    // connection is refused; and, single-threaded, while a transaction is open it reads only
    // from that kept-alive connection and leaves every other connection waiting.
    bool keepAlive = true;
    // Answers are classified with this limit (limits.max_message_size); a larger body is still
    // read, up to a hard cap, and kept, so that nothing the CA returned is thrown away.
    std::size_t maxMessageSize = 4 * 1024 * 1024;
};

// The HTTP(S) transport of one endpoint, driven by an EventLoop through libcurl's multi socket
// interface (CURLMOPT_SOCKETFUNCTION / CURLMOPT_TIMERFUNCTION, as curl's ephiperfifo.c does):
// it never blocks, keeps its connections between exchanges, and runs at most
// endpoint.maxConnections exchanges at once.
class HttpTransport final : public Transport {
public:
    explicit HttpTransport(HttpEndpoint endpoint);
    ~HttpTransport() override;
    HttpTransport(const HttpTransport &) = delete;
    HttpTransport &operator=(const HttpTransport &) = delete;

    const std::string &name() const override;
    void attach(EventLoop &loop) override;
    std::size_t capacity() const override;
    std::size_t inFlight() const override;
    void send(const Exchange &exchange, OnReply onReply) override;
    std::vector<std::int64_t> abandon() override;

    // The endpoint's settings; changes apply to exchanges started afterwards.
    HttpEndpoint &endpoint();

    // Counters since construction, for metrics and for tests that check keep-alive.
    struct Stats {
        std::uint64_t requests = 0;       // exchanges finished (any outcome)
        std::uint64_t newConnections = 0; // connections opened for them (CURLINFO_NUM_CONNECTS)
    };
    Stats stats() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

using HttpResult = Reply;

struct HttpRequest {
    std::int64_t id = 0; // the caller's item id, returned with the result
    const HttpEndpoint *endpoint = nullptr;
    Kind kind = Kind::Cmp; // decides the Content-Type
    ByteView body;         // must stay valid until perform() returns
};

// Blocking batches over HttpTransports with a loop of their own: for tests and tools that want
// "send these, give me the results". It keeps one transport (and so its connections) per
// endpoint between perform() calls.
class HttpRelay {
public:
    HttpRelay();
    ~HttpRelay();
    HttpRelay(const HttpRelay &) = delete;
    HttpRelay &operator=(const HttpRelay &) = delete;

    // Sends all requests, at most maxInFlight at once overall (and each endpoint's
    // maxConnections per endpoint), and returns one result per request in completion order.
    // onResult, when given, is called as each one completes.
    std::vector<HttpResult> perform(std::span<const HttpRequest> requests, unsigned maxInFlight,
                                    const std::function<void(const HttpResult &)> &onResult = {});
    HttpTransport::Stats stats() const;

private:
    EventLoop loop_;
    std::map<const HttpEndpoint *, std::unique_ptr<HttpTransport>> transports_;
};

// curl_global_init, once, before any thread starts (../shared/LIBRARIES.md).
void httpGlobalInit();

} // namespace pkirelay
