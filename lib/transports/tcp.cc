// The TCP transports of tcp.h: a pool of at most maxConnections TcpConnections per endpoint, one
// exchange per connection at a time, and the two dialogs (CMC: one round; CMP: framing
// negotiation and transport-level polling). Replies are delivered from the loop, never from
// inside send(); an abandoned exchange's connection is closed, since its answer may still come.
#include "lib/transports/tcp.h"

#include <algorithm>
#include <ctime>
#include <map>
#include <stdexcept>
#include <variant>

#include <fmt/format.h>

namespace pkirelay {
namespace {

Reply classified(Bytes bytes, std::size_t maxMessageSize, std::string what) {
    Reply r;
    ClassifyLimits limits;
    limits.maxSize = maxMessageSize;
    r.body = std::move(bytes);
    Classification c = classify(r.body, limits);
    if (auto *m = std::get_if<Message>(&c)) {
        r.type = Reply::Type::Response;
        r.response = std::move(*m);
        r.detail = fmt::format("{}, {} bytes", what, r.body.size());
    } else {
        // The same request would get the same answer; the bytes are kept for a person.
        r.type = Reply::Type::Permanent;
        r.detail = fmt::format("{}, {} bytes: not a PKI message ({})", what, r.body.size(),
                               std::get<Rejection>(c).reason);
    }
    return r;
}

Reply permanent(std::string detail, Bytes body = {}) {
    Reply r;
    r.type = Reply::Type::Permanent;
    r.detail = std::move(detail);
    r.body = std::move(body);
    return r;
}

// ---- CMC over TCP -----------------------------------------------------------------------------

class CmcDialog final : public TcpDialog {
public:
    CmcDialog(const Exchange &ex, std::size_t cap, std::size_t maxMessage)
        : body_(ex.body.begin(), ex.body.end()), cap_(cap), maxMessage_(maxMessage) {}

    Step first() override {
        // RFC 5273 §5 / RFC 10003 §5: "no framing": the request's own bytes, and the answer
        // ends where its outer BER value does.
        auto scanner = std::make_shared<BerMessageScanner>(cap_);
        return {body_, [scanner](ByteView b) {
                    return scanner->scan(b);
                }};
    }

    std::variant<Reply, Step> answer(Bytes bytes) override {
        return classified(std::move(bytes), maxMessage_, "CMC over TCP");
    }

private:
    Bytes body_;
    std::size_t cap_, maxMessage_;
};

// ---- CMP over TCP -----------------------------------------------------------------------------

class CmpDialog final : public TcpDialog {
public:
    CmpDialog(const Exchange &ex, std::shared_ptr<std::optional<CmpFraming>> known,
              const TcpEndpoint &ep, std::size_t cap)
        : body_(ex.body.begin(), ex.body.end()), known_(std::move(known)), cap_(cap),
          maxMessage_(ep.maxMessageSize), maxPollWait_(ep.maxPollWait) {}

    Step first() override {
        // Version negotiation (draft-ietf-pkix-cmp-tcp): send the highest version known, 10,
        // unless this server already showed it speaks only RFC 2510.
        framing_ = known_->value_or(CmpFraming::V10);
        return step(cmptcp::kPkiReq, body_);
    }

    std::variant<Reply, Step> answer(Bytes bytes) override {
        const auto frame = parseCmpFrame(bytes);
        if (!frame)
            return permanent("CMP over TCP: the answer is not one frame", std::move(bytes));
        const std::string typeName = cmpFrameTypeName(frame->framing, frame->type);
        const std::string what =
            fmt::format("CMP over TCP ({}) {}", framingName(frame->framing), typeName);
        if (frame->type == cmptcp::kErrorMsgRep) {
            // A server that does not speak version 10 answers it with an errorMsgRep
            // (VERSION_NEGOTIATION, or its own RFC 2510 error): try RFC 2510 once, on a new
            // connection since such a server may close this one.
            if (framing_ == CmpFraming::V10 && !known_->has_value() && !fellBack_) {
                fellBack_ = true;
                framing_ = CmpFraming::Rfc2510;
                Step s = step(cmptcp::kPkiMsg, body_);
                s.freshConnection = true;
                return s;
            }
            return permanent(fmt::format("{}: the server refused the request: {}", what,
                                         cmpErrorText(frame->value)),
                             frame->value);
        }
        *known_ = frame->framing; // the framing this server answers in
        framing_ = frame->framing;
        const bool v10 = frame->framing == CmpFraming::V10;
        switch (frame->type) {
        case cmptcp::kPkiMsg:      // RFC 2510 pkiMsg (v10 numbers its request pkiReq alike)
        case cmptcp::kFinalMsgRep: // RFC 2510 finalMsgRep, v10 pkiRep
            return classified(frame->value, maxMessage_, what);
        case cmptcp::kPollRep: {
            const auto poll = parsePollRep(frame->value);
            if (!poll)
                return permanent(what + ": malformed (its value is not 8 bytes)", bytes);
            const auto now = static_cast<std::uint64_t>(std::time(nullptr));
            const std::uint64_t wait = pollDelaySeconds(poll->checkBack, now);
            if (wait > static_cast<std::uint64_t>(maxPollWait_.count()) || ++polls_ > kMaxPolls) {
                Reply r;
                r.type = Reply::Type::Transient;
                r.detail =
                    fmt::format("{}: the server asks to check back in {} s (polling "
                                "reference {}), past what pkirelay waits ({} s, {} polls)",
                                what, wait, poll->reference, maxPollWait_.count(), kMaxPolls);
                return r;
            }
            // The transport-level polling of RFC 2510 §5.2: wait as told, then ask with the
            // polling reference.
            Step s = step(cmptcp::kPollReq, pollReqValue(poll->reference));
            s.delayMs = static_cast<std::int64_t>(wait) * 1000;
            return s;
        }
        case 3: { // RFC 2510 negPollRep, v10 finRep: nothing (more) to return
            Reply r;
            r.type = Reply::Type::Done;
            r.detail = what + ": the server has nothing to return";
            return r;
        }
        case cmptcp::kPartialMsgRep:
            if (!v10) {
                const auto partial = parsePartialMsgRep(frame->value);
                if (!partial)
                    return permanent(what + ": malformed (shorter than 8 bytes)", bytes);
                Reply r = classified(Bytes(partial->second.begin(), partial->second.end()),
                                     maxMessage_, what);
                r.detail += fmt::format("; further messages (polling reference {}) are not "
                                        "fetched",
                                        partial->first.reference);
                return r;
            }
            break;
        default:
            break;
        }
        return permanent(what + ": not an answer pkirelay knows", std::move(bytes));
    }

private:
    static constexpr int kMaxPolls = 100;

    static const char *framingName(CmpFraming f) {
        return f == CmpFraming::V10 ? "version 10" : "RFC 2510";
    }

    Step step(std::uint8_t type, Bytes value) {
        CmpFrame f;
        f.framing = framing_;
        f.type = type;
        f.value = std::move(value);
        const std::size_t cap = cap_;
        return {encodeCmpFrame(f), [cap](ByteView b) {
                    return cmpFrameBoundary(b, cap);
                }};
    }

    Bytes body_;
    std::shared_ptr<std::optional<CmpFraming>> known_;
    std::size_t cap_, maxMessage_;
    std::chrono::seconds maxPollWait_;
    CmpFraming framing_ = CmpFraming::V10;
    bool fellBack_ = false;
    int polls_ = 0;
};

} // namespace

// ---- the transport ----------------------------------------------------------------------------

struct TcpTransport::Impl {
    struct Running {
        Exchange exchange;
        OnReply onReply;
        std::unique_ptr<TcpDialog> dialog;
        TcpConnection *connection = nullptr;
        EventLoop::TimerId delay = 0;
        int resends = 0;
    };

    TcpTransport &owner;
    TcpEndpoint ep;
    std::string protocol;
    EventLoop *loop = nullptr;
    std::unique_ptr<TlsContext> tls;
    std::string tlsError; // why the TLS settings could not be loaded
    std::vector<std::unique_ptr<TcpConnection>> connections;
    std::map<std::uint64_t, std::unique_ptr<Running>> running;
    std::uint64_t nextToken = 1;
    std::uint64_t requests = 0;
    std::shared_ptr<bool> alive = std::make_shared<bool>(true);

    Impl(TcpTransport &o, TcpEndpoint e, std::string p)
        : owner(o), ep(std::move(e)), protocol(std::move(p)) {
        if (ep.tls.enabled) {
            try {
                tls = std::make_unique<TlsContext>(ep.tls);
            } catch (const std::exception &e) {
                // Reported with every exchange, as the HTTP transport does with an unreadable
                // client key: the items wait (transient) until the files are fixed.
                tlsError = e.what();
            }
        }
    }

    ~Impl() {
        *alive = false;
        for (auto &[token, r] : running)
            if (r->delay != 0 && loop != nullptr)
                loop->cancel(r->delay);
        running.clear();
        connections.clear();
    }

    unsigned maxConnections() const { return std::max(1U, ep.maxConnections); }

    // A kept connection when there is one (RFC 5273 §5: reuse is recommended), else a closed
    // slot, else a new one; there is always one, since capacity() bounds the exchanges.
    TcpConnection &pick(bool fresh) {
        TcpConnection *open = nullptr, *closed = nullptr;
        for (auto &c : connections) {
            if (c->busy())
                continue;
            if (c->open() && open == nullptr)
                open = c.get();
            if (!c->open() && closed == nullptr)
                closed = c.get();
        }
        TcpConnection *best = fresh && closed != nullptr ? closed : open != nullptr ? open : closed;
        if (best == nullptr) {
            if (connections.size() >= maxConnections())
                throw std::logic_error("TcpTransport: no free connection");
            connections.push_back(std::make_unique<TcpConnection>(*loop, ep, tls.get()));
            best = connections.back().get();
        }
        if (fresh)
            best->close();
        return *best;
    }

    void runStep(std::uint64_t token, TcpDialog::Step step) {
        auto it = running.find(token);
        if (it == running.end())
            return;
        Running &r = *it->second;
        if (step.delayMs > 0) {
            const std::int64_t delay = step.delayMs;
            step.delayMs = 0;
            r.delay = loop->after(delay, [this, token, s = std::move(step)]() mutable {
                if (auto i = running.find(token); i != running.end())
                    i->second->delay = 0;
                runStep(token, std::move(s));
            });
            return;
        }
        TcpConnection &c = pick(step.freshConnection);
        r.connection = &c;
        c.round(std::move(step.request), std::move(step.delimit),
                [this, token](TcpConnection::Outcome o) { onOutcome(token, std::move(o)); });
    }

    void onOutcome(std::uint64_t token, TcpConnection::Outcome o) {
        auto it = running.find(token);
        if (it == running.end())
            return;
        Running &r = *it->second;
        r.connection = nullptr;
        r.resends += o.resends;
        if (!o.ok) {
            complete(token, failure(std::move(o)));
            return;
        }
        auto next = r.dialog->answer(std::move(o.bytes));
        if (auto *reply = std::get_if<Reply>(&next))
            complete(token, std::move(*reply));
        else
            runStep(token, std::move(std::get<TcpDialog::Step>(next)));
    }

    Reply failure(TcpConnection::Outcome o) {
        Reply r;
        r.body = std::move(o.bytes);
        const std::string where = fmt::format("{} {}:{}", protocol, ep.host, ep.port);
        if (o.form == Delimited::State::TooLarge) {
            r.type = Reply::Type::Permanent;
            r.detail = fmt::format("{}: answer too large: {}", where, o.detail);
        } else if (o.form == Delimited::State::Malformed) {
            r.type = Reply::Type::Permanent;
            r.detail = fmt::format("{}: not a valid answer: {}", where, o.detail);
        } else {
            // No complete answer: refused, reset, timed out, TLS failure. RFC 9811 §3 (and
            // plain sense for CMC): the request must be assumed undelivered, so it is retried.
            r.type = Reply::Type::Transient;
            r.detail = fmt::format("{}: {}", where, o.detail);
        }
        return r;
    }

    void complete(std::uint64_t token, Reply reply) {
        auto node = running.extract(token);
        if (node.empty())
            return;
        Running &r = *node.mapped();
        reply.id = r.exchange.id;
        reply.resends += r.resends;
        ++requests;
        auto onReply = std::move(r.onReply);
        node.mapped().reset();
        onReply(std::move(reply)); // last: the callback may send again
    }
};

TcpTransport::TcpTransport(TcpEndpoint endpoint, std::string protocol)
    : impl_(std::make_unique<Impl>(*this, std::move(endpoint), std::move(protocol))) {}

TcpTransport::~TcpTransport() = default;

const std::string &TcpTransport::name() const {
    return impl_->ep.name;
}

const TcpEndpoint &TcpTransport::endpoint() const {
    return impl_->ep;
}

void TcpTransport::attach(EventLoop &loop) {
    if (impl_->loop != nullptr && impl_->loop != &loop)
        throw std::logic_error("TcpTransport: attached to a second loop");
    impl_->loop = &loop;
}

std::size_t TcpTransport::capacity() const {
    const std::size_t max = impl_->maxConnections();
    return impl_->running.size() >= max ? 0 : max - impl_->running.size();
}

std::size_t TcpTransport::inFlight() const {
    return impl_->running.size();
}

std::size_t TcpTransport::readCap() const {
    return std::max<std::size_t>(16 * 1024 * 1024, impl_->ep.maxMessageSize + 64 * 1024);
}

void TcpTransport::send(const Exchange &exchange, OnReply onReply) {
    Impl &m = *impl_;
    if (m.loop == nullptr)
        throw std::logic_error("TcpTransport: send before attach");
    if (capacity() == 0)
        throw std::logic_error("TcpTransport: send over capacity");
    const std::uint64_t token = m.nextToken++;
    auto r = std::make_unique<Impl::Running>();
    r->exchange = exchange;
    r->onReply = std::move(onReply);
    r->dialog = dialog(exchange);
    TcpDialog::Step first = r->dialog->first();
    m.running.emplace(token, std::move(r));
    // Started from the loop, so that even an immediate failure is a reply from the loop and
    // never a call back into the caller of send().
    m.loop->defer([alive = m.alive, &m, token, s = std::move(first)]() mutable {
        if (!*alive)
            return;
        if (!m.tlsError.empty()) {
            Reply reply;
            reply.type = Reply::Type::Transient;
            reply.detail = fmt::format("{} TLS settings: {}", m.protocol, m.tlsError);
            m.complete(token, std::move(reply));
            return;
        }
        m.runStep(token, std::move(s));
    });
}

std::vector<std::int64_t> TcpTransport::abandon() {
    std::vector<std::int64_t> ids;
    for (auto &[token, r] : impl_->running) {
        ids.push_back(r->exchange.id);
        if (r->delay != 0)
            impl_->loop->cancel(r->delay);
        if (r->connection != nullptr)
            r->connection->close(); // its answer may still come; never read it as another's
    }
    impl_->running.clear();
    return ids;
}

TcpTransport::Stats TcpTransport::stats() const {
    Stats s;
    s.requests = impl_->requests;
    for (const auto &c : impl_->connections)
        s.newConnections += c->connectsMade();
    return s;
}

CmcTcpTransport::CmcTcpTransport(TcpEndpoint endpoint)
    : TcpTransport(std::move(endpoint), "cmc-tcp") {}

std::unique_ptr<TcpDialog> CmcTcpTransport::dialog(const Exchange &exchange) {
    return std::make_unique<CmcDialog>(exchange, readCap(), endpoint().maxMessageSize);
}

CmpTcpTransport::CmpTcpTransport(TcpEndpoint endpoint)
    : TcpTransport(std::move(endpoint), "cmp-tcp") {}

std::unique_ptr<TcpDialog> CmpTcpTransport::dialog(const Exchange &exchange) {
    return std::make_unique<CmpDialog>(exchange, framing_, endpoint(), readCap());
}

} // namespace pkirelay
