// The TCP transports (../shared/DESIGN.md, "Transports"), each a Transport over TcpConnections:
//
// - CmcTcpTransport: CMC over TCP (RFC 5273 §5, RFC 10003 §5), IANA port 5318 (pkix-cmc). The
//   DER request is written as it is, with nothing around it; the answer is read until its outer
//   BER value is complete. Connections are reused for the next request, one request at a time.
// - CmpTcpTransport: the legacy CMP "direct TCP" protocol, port 829, for old CAs only. Version
//   10 framing is tried first; an errorMsgRep to it makes the transport fall back to the RFC
//   2510 §5.2 framing (and remember that for the endpoint). A transport-level pollRep is waited
//   out and answered with a pollReq as the server says; an errorMsgRep is a permanent failure
//   with the server's text.
//
// Outcome rules, alike for both and in line with the HTTP transport: an answer that classifies
// as a PKI message is the response (every byte kept); no connection, a reset, a timeout or a TLS
// failure is transient (the request is assumed undelivered, RFC 9811 §3); an answer over the size
// limit, one that is not a PKI message, or malformed framing is permanent, with what came kept.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lib/transports/tcp_connection.h"
#include "lib/transports/transport.h"

namespace pkirelay {

inline constexpr std::uint16_t kCmcTcpPort = 5318; // RFC 6402 §2.1: pkix-cmc
inline constexpr std::uint16_t kCmpTcpPort = 829;  // pkix-3-ca-ra

// One exchange's conversation: the steps it sends and what each answer means. The transport
// runs the steps on a connection and turns connection failures into replies itself.
class TcpDialog {
public:
    struct Step {
        Bytes request;
        TcpConnection::Delimit delimit;
        std::int64_t delayMs = 0;     // wait this long before sending (polling)
        bool freshConnection = false; // do not reuse the connection (after a protocol error)
    };
    virtual ~TcpDialog() = default;
    virtual Step first() = 0;
    // The answer to the last step: the exchange's reply (its id is filled in by the transport)
    // or the next step.
    virtual std::variant<Reply, Step> answer(Bytes answer) = 0;
};

class TcpTransport : public Transport {
public:
    ~TcpTransport() override;
    TcpTransport(const TcpTransport &) = delete;
    TcpTransport &operator=(const TcpTransport &) = delete;

    const std::string &name() const override;
    void attach(EventLoop &loop) override;
    std::size_t capacity() const override;
    std::size_t inFlight() const override;
    void send(const Exchange &exchange, OnReply onReply) override;
    std::vector<std::int64_t> abandon() override;

    const TcpEndpoint &endpoint() const;

    struct Stats {
        std::uint64_t requests = 0;       // exchanges finished (any outcome)
        std::uint64_t newConnections = 0; // TCP connections opened for them
    };
    Stats stats() const;

protected:
    TcpTransport(TcpEndpoint endpoint, std::string protocol);
    virtual std::unique_ptr<TcpDialog> dialog(const Exchange &exchange) = 0;
    // Size cap for reading an answer: above the classifier's limit, so that an answer a little
    // too large is still kept whole for a person.
    std::size_t readCap() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

class CmcTcpTransport final : public TcpTransport {
public:
    explicit CmcTcpTransport(TcpEndpoint endpoint);

protected:
    std::unique_ptr<TcpDialog> dialog(const Exchange &exchange) override;
};

class CmpTcpTransport final : public TcpTransport {
public:
    explicit CmpTcpTransport(TcpEndpoint endpoint);
    // The framing the server is known to speak: nullopt until an answer came.
    std::optional<CmpFraming> framing() const { return *framing_; }

protected:
    std::unique_ptr<TcpDialog> dialog(const Exchange &exchange) override;

private:
    // Shared with the dialogs, which may outlive a reload of the transport only as long as
    // their exchange.
    std::shared_ptr<std::optional<CmpFraming>> framing_ =
        std::make_shared<std::optional<CmpFraming>>();
};

} // namespace pkirelay
