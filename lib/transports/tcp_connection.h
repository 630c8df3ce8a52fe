// One client TCP connection on the EventLoop, optionally TLS (OpenSSL), for the TCP transports:
// a non-blocking connect with a timeout, the TLS handshake with verification and host name check
// on unless turned off, an optional pinned server public key, and then request/response rounds,
// one at a time (RFC 10003 §5: no pipelining; the client waits for the whole response). The
// connection stays open between rounds for reuse (RFC 5273 §5 recommends it) and notices when
// the server closes it while idle, which a server may do at any time.
//
// It trusts the endpoint settings and nothing from the peer: what is read is bounded by the
// round's delimiter (tcp_framing.h), which says where the answer ends or why it cannot be one.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "lib/bytes.h"
#include "lib/loop/event_loop.h"
#include "lib/transports/tcp_framing.h"

namespace pkirelay {

struct TlsOptions {
    bool enabled = false;
    std::string caFile;             // PEM bundle; empty with caPath empty: the system's trust store
    std::string caPath;             // a hashed certificate directory (c_rehash / openssl rehash)
    bool verify = true;             // certificate chain and host name; off only when configured so
    std::string clientCert;         // PEM (chain) file for mutual TLS; empty when unused
    std::string clientKey;          // PEM private key file
    std::string pinnedPublicKey;    // "sha256//BASE64[;sha256//...]" or a PEM/DER public key file
    std::string minVersion = "1.2"; // "1.2" or "1.3" (BCP 195)
};

struct TcpEndpoint {
    std::string name; // for logs and the store
    std::string host; // name or address literal (IPv6 without brackets)
    std::uint16_t port = 0;
    std::chrono::milliseconds connectTimeout{10'000};
    std::chrono::milliseconds timeout{60'000};      // one round: connect, send, whole answer
    std::chrono::milliseconds idleTimeout{120'000}; // our side closes an idle connection then
    TlsOptions tls;
    unsigned maxConnections = 1;
    std::size_t maxMessageSize = 4 * 1024 * 1024; // answers are classified with this limit
    std::chrono::seconds maxPollWait{600};        // CMP transport-level polling: longest wait
};

// The TLS client settings of one endpoint (an SSL_CTX), shared by its connections.
class TlsContext {
public:
    // Throws std::runtime_error naming what could not be loaded.
    explicit TlsContext(const TlsOptions &options);
    ~TlsContext();
    TlsContext(const TlsContext &) = delete;
    TlsContext &operator=(const TlsContext &) = delete;
    void *get() const; // SSL_CTX*
    const TlsOptions &options() const { return options_; }
    // Checks the server's public key (DER SubjectPublicKeyInfo) against the pin; true when no
    // pin is set.
    bool pinMatches(ByteView spki) const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    TlsOptions options_;
};

class TcpConnection {
public:
    using Delimit = std::function<Delimited(ByteView buffered)>;
    struct Outcome {
        bool ok = false; // bytes is the whole answer, as the delimiter found it
        Bytes bytes;     // the answer, or whatever came before a failure (kept for a person)
        Delimited::State form = Delimited::State::NeedMore; // TooLarge/Malformed: the answer's
        bool timedOut = false;
        bool connectFailed = false; // nothing of the request left this host
        int resends = 0;            // the request went out again on a fresh connection
        std::string detail;         // one line: why it failed, or what was read
    };
    using Done = std::function<void(Outcome)>;

    TcpConnection(EventLoop &loop, const TcpEndpoint &endpoint, const TlsContext *tls);
    ~TcpConnection();
    TcpConnection(const TcpConnection &) = delete;
    TcpConnection &operator=(const TcpConnection &) = delete;

    bool busy() const;
    bool open() const; // connected (and TLS established) and idle: reusable
    // Sends request (connecting first when not open) and reads one answer that delimit marks
    // complete; done is called exactly once, from the loop, unless close() comes first. A
    // reused connection the server closed before it saw anything is replaced silently; when it
    // died after the request may have reached the server, the request is sent once more on a
    // fresh connection and Outcome::resends says so.
    void round(Bytes request, Delimit delimit, Done done);
    // Closes now; a round in progress is dropped without calling its done.
    void close();

    // Connections opened (TCP connects that succeeded) since construction.
    std::uint64_t connectsMade() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace pkirelay
