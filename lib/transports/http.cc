// HttpTransport: POSTs PKI messages with libcurl's multi socket interface, driven by the event
// loop, and turns each exchange into a Reply (../shared/DESIGN.md, "Transports"; outcome rules
// in http.h). It trusts the caller's exchanges (bodies stay valid until the reply) and nothing
// that comes off the wire: response bodies are size-capped and handed to classify(), which
// decides whether they are PKI messages. curl callbacks never throw; every handle is Owned.
#include "lib/transports/http.h"

#include <curl/curl.h>
#include <sys/epoll.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>

#include <fmt/format.h>

#include "lib/owned.h"
#include "lib/text.h"

namespace pkirelay {
namespace {

using CurlEasy = Owned<CURL, ::curl_easy_cleanup>;
using CurlMulti = Owned<CURLM, ::curl_multi_cleanup>;
using CurlSlist = Owned<curl_slist, ::curl_slist_free_all>;

// Reading a response stops here, so a hostile or broken server cannot exhaust memory. It is
// above any classifier limit so that an answer slightly too large is still kept whole.
constexpr std::size_t kMaxResponseSize = 16 * 1024 * 1024;

std::size_t readCap(const HttpEndpoint &ep) {
    return std::max(kMaxResponseSize, ep.maxMessageSize + 64 * 1024);
}

// libcurl's option setters are variadic C functions; check each call so a missing feature
// (CURLOPT_PROTOCOLS_STR needs 7.85) fails loudly instead of silently weakening a request.
template <class T> void setOpt(CURL *easy, CURLoption option, T value, const char *name) {
    if (CURLcode rc = ::curl_easy_setopt(easy, option, value); rc != CURLE_OK)
        throw std::runtime_error(
            fmt::format("curl_easy_setopt({}): {}", name, ::curl_easy_strerror(rc)));
}
#define PKIRELAY_SETOPT(easy, option, value) setOpt(easy, option, value, #option)

template <class T> void setMultiOpt(CURLM *multi, CURLMoption option, T value, const char *name) {
    if (CURLMcode rc = ::curl_multi_setopt(multi, option, value); rc != CURLM_OK)
        throw std::runtime_error(
            fmt::format("curl_multi_setopt({}): {}", name, ::curl_multi_strerror(rc)));
}

// One request on the wire: the response buffer and everything libcurl points into while the
// transfer runs (headers, error buffer), so they live exactly as long as the transfer.
struct Transfer {
    Exchange exchange;
    Transport::OnReply onReply;
    std::size_t cap = kMaxResponseSize;
    CurlEasy easy;
    CurlSlist headers;
    std::string body;
    std::size_t sent = 0; // body bytes handed to libcurl since the last rewind
    int resends = 0;      // times libcurl sent the body again on a new connection
    bool tooLarge = false;
    bool outOfMemory = false;
    char error[CURL_ERROR_SIZE] = {};
};

std::size_t writeBody(char *data, std::size_t size, std::size_t count, void *user) {
    // Never throw into libcurl: any failure is recorded and ends the transfer (returning a
    // short count makes libcurl fail it with CURLE_WRITE_ERROR).
    auto *t = static_cast<Transfer *>(user);
    std::size_t n = size * count;
    if (t->body.empty()) {
        // An announced length over the cap is refused at the first byte instead of after
        // reading up to the cap: nothing of such an answer could be kept whole anyway.
        curl_off_t announced = -1;
        if (::curl_easy_getinfo(t->easy.get(), CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &announced) ==
                CURLE_OK &&
            announced > 0 && static_cast<std::uint64_t>(announced) > t->cap) {
            t->tooLarge = true;
            return 0;
        }
    }
    if (t->body.size() + n > t->cap) {
        t->tooLarge = true;
        return 0;
    }
    try {
        t->body.append(data, n);
    } catch (...) {
        t->outOfMemory = true;
        return 0;
    }
    return n;
}

std::size_t readBody(char *buffer, std::size_t size, std::size_t count, void *user) {
    auto *t = static_cast<Transfer *>(user);
    const ByteView body = t->exchange.body;
    const std::size_t n = std::min(size * count, body.size() - t->sent);
    std::copy_n(body.data() + t->sent, n, buffer);
    t->sent += n;
    return n;
}

int seekBody(void *user, curl_off_t offset, int origin) {
    auto *t = static_cast<Transfer *>(user);
    if (origin != SEEK_SET || offset != 0)
        return CURL_SEEKFUNC_CANTSEEK; // only ever rewound to the start
    if (t->sent > 0)
        ++t->resends; // the body went out (maybe whole) and goes out again
    t->sent = 0;
    return CURL_SEEKFUNC_OK;
}

std::string curlInfoString(CURL *easy, CURLINFO info) {
    char *value = nullptr;
    if (::curl_easy_getinfo(easy, info, &value) != CURLE_OK || value == nullptr)
        return {};
    return value;
}

long curlInfoLong(CURL *easy, CURLINFO info) {
    long value = 0;
    if (::curl_easy_getinfo(easy, info, &value) != CURLE_OK)
        return 0;
    return value;
}

// Applies the outcome rules of http_relay.h to a finished exchange.
Reply makeResult(Transfer &t, CURLcode rc, const HttpEndpoint &ep) {
    Reply r;
    r.id = t.exchange.id;
    r.resends = t.resends;
    CURL *easy = t.easy.get();
    r.status = curlInfoLong(easy, CURLINFO_RESPONSE_CODE);
    r.contentType = curlInfoString(easy, CURLINFO_CONTENT_TYPE);
    std::string head =
        fmt::format("HTTP {} {}", r.status, r.contentType.empty() ? "(no type)" : r.contentType);

    if (t.tooLarge || t.outOfMemory) {
        // The same answer would come again, except from a server in trouble (5xx).
        r.type = r.status >= 500 ? HttpResult::Type::Transient : HttpResult::Type::Permanent;
        r.detail = fmt::format("{}: response too large (over {} bytes)", head, t.cap);
        r.body.assign(t.body.begin(), t.body.end()); // what came, kept for a person
        return r;
    }
    if (rc != CURLE_OK) {
        // No (complete) HTTP response: refused, timed out, TLS failure, reset. RFC 9811 §3: the
        // message must be assumed undelivered, so it is retried. Configuration mistakes (bad
        // URL, unreadable client key) land here too; deferring keeps the item until fixed.
        r.type = HttpResult::Type::Transient;
        r.detail = t.error[0] != '\0' ? std::string(t.error) : ::curl_easy_strerror(rc);

        if (r.status != 0)
            r.detail = fmt::format("{}: {}", head, r.detail);
        return r;
    }

    std::string sized = fmt::format("{}, {} bytes", head, t.body.size());
    std::string notPki;
    r.body.assign(t.body.begin(), t.body.end());
    if (!t.body.empty()) {
        // RFC 9811 §3: a PKI message in a 2xx, 4xx or 5xx body is the answer and is delivered,
        // whatever the status. The relay does not trust the Content-Type for this: the bytes
        // decide.
        ClassifyLimits limits;
        limits.maxSize = ep.maxMessageSize;
        Classification c = classify(r.body, limits);
        if (auto *m = std::get_if<Message>(&c)) {
            r.type = HttpResult::Type::Response;
            r.response = std::move(*m);
            r.detail = sized;
            return r;
        }
        notPki = std::get<Rejection>(c).reason;
    }

    long s = r.status;
    if (s == 201) {
        // RFC 9811 §3: announcement stored (or already present); the content is empty.
        r.type = HttpResult::Type::Done;
    } else if (s == 202) {
        // RFC 9811 §3: accepted for later processing; the sender may try again later.
        r.type = HttpResult::Type::Transient;
    } else if (s >= 500) {
        r.type = HttpResult::Type::Transient;
    } else if (s >= 300 && s < 400) {
        // RFC 9811 §3: redirects are not followed automatically (a stored 301 can be abused);
        // the operator changes the URL.
        r.type = HttpResult::Type::Permanent;
        // curl resolves a relative Location against the endpoint's url, login included: the
        // detail is logged and stored (show, status), so it names the target without it.
        std::string location = curlInfoString(easy, CURLINFO_REDIRECT_URL);
        if (!location.empty())
            sized += ", redirect to " + redactUrl(location) + " not followed";
    } else {
        // 4xx, and 200 (or another 2xx) without a PKI message: the same request would get the
        // same answer.
        r.type = HttpResult::Type::Permanent;
    }
    r.detail = notPki.empty() ? sized : fmt::format("{}: not a PKI message ({})", sized, notPki);
    return r;
}

} // namespace

struct HttpTransport::Impl {
    HttpEndpoint endpoint;
    CurlMulti multi;
    EventLoop *loop = nullptr;
    EventLoop::TimerId timer = 0;
    std::set<curl_socket_t> sockets; // watched in the loop for libcurl
    std::vector<CurlEasy> pool;      // idle easy handles, reset and reused
    // Exchanges in flight, by easy handle: libcurl reports completions by handle.
    std::unordered_map<CURL *, std::unique_ptr<Transfer>> active;
    Stats stats;

    explicit Impl(HttpEndpoint ep) : endpoint(std::move(ep)) {
        multi.reset(::curl_multi_init());
        if (!multi)
            throw std::runtime_error("curl_multi_init failed");
        CURLM *m = multi.get();
        setMultiOpt(m, CURLMOPT_SOCKETFUNCTION, onSocket, "CURLMOPT_SOCKETFUNCTION");
        setMultiOpt(m, CURLMOPT_SOCKETDATA, static_cast<void *>(this), "CURLMOPT_SOCKETDATA");
        setMultiOpt(m, CURLMOPT_TIMERFUNCTION, onTimer, "CURLMOPT_TIMERFUNCTION");
        setMultiOpt(m, CURLMOPT_TIMERDATA, static_cast<void *>(this), "CURLMOPT_TIMERDATA");
    }

    ~Impl() {
        detachAll();
        // Nothing of this transport may stay in the loop: its timer and socket callbacks hold
        // it. libcurl's own cleanup (of the multi, after this) then finds loop unset.
        if (loop != nullptr) {
            if (timer != 0)
                loop->cancel(timer);
            for (auto s : sockets)
                loop->unwatch(s);
        }
        loop = nullptr;
    }

    // libcurl tells which sockets to watch for what (CURLMOPT_SOCKETFUNCTION). Never throws.
    static int onSocket(CURL *, curl_socket_t s, int what, void *user, void *) noexcept {
        auto *self = static_cast<Impl *>(user);
        if (self->loop == nullptr)
            return 0;
        try {
            if (what == CURL_POLL_REMOVE) {
                self->loop->unwatch(s);
                self->sockets.erase(s);
                return 0;
            }
            self->sockets.insert(s);
            std::uint32_t events = 0;
            if (what & CURL_POLL_IN)
                events |= EPOLLIN;
            if (what & CURL_POLL_OUT)
                events |= EPOLLOUT;
            self->loop->watch(s, events, [self, s](std::uint32_t ev) {
                int flags = 0;
                if (ev & EPOLLIN)
                    flags |= CURL_CSELECT_IN;
                if (ev & EPOLLOUT)
                    flags |= CURL_CSELECT_OUT;
                if (ev & (EPOLLERR | EPOLLHUP))
                    flags |= CURL_CSELECT_ERR;
                self->action(s, flags);
            });
        } catch (...) {
            return -1; // libcurl fails the transfers on this socket
        }
        return 0;
    }

    // libcurl asks to be called back after timeoutMs (CURLMOPT_TIMERFUNCTION); -1 cancels.
    // It must not be called from here, so the loop calls it in a later turn.
    static int onTimer(CURLM *, long timeoutMs, void *user) noexcept {
        auto *self = static_cast<Impl *>(user);
        if (self->loop == nullptr)
            return 0;
        try {
            if (self->timer != 0)
                self->loop->cancel(self->timer);
            self->timer = 0;
            if (timeoutMs >= 0)
                self->timer = self->loop->after(timeoutMs, [self] {
                    self->timer = 0;
                    self->action(CURL_SOCKET_TIMEOUT, 0);
                });
        } catch (...) {
            return -1;
        }
        return 0;
    }

    void action(curl_socket_t s, int flags) {
        int running = 0;
        if (CURLMcode rc = ::curl_multi_socket_action(multi.get(), s, flags, &running);
            rc != CURLM_OK)
            throw std::runtime_error(
                fmt::format("curl_multi_socket_action: {}", ::curl_multi_strerror(rc)));
        int queued = 0;
        while (CURLMsg *msg = ::curl_multi_info_read(multi.get(), &queued))
            if (msg->msg == CURLMSG_DONE)
                finish(msg->easy_handle, msg->data.result);
    }

    void finish(CURL *easy, CURLcode rc) {
        auto node = active.extract(easy);
        if (node.empty())
            throw std::logic_error("HttpTransport: completion for an unknown transfer");
        ::curl_multi_remove_handle(multi.get(), easy);
        Transfer &t = *node.mapped();
        ++stats.requests;
        stats.newConnections +=
            static_cast<std::uint64_t>(curlInfoLong(easy, CURLINFO_NUM_CONNECTS));
        Reply reply = makeResult(t, rc, endpoint);
        pool.push_back(std::move(t.easy));
        // Last, and with nothing of ours borrowed: the callback may send again.
        auto onReply = std::move(t.onReply);
        node.mapped().reset();
        onReply(std::move(reply));
    }

    void detachAll() {
        for (auto &[easy, t] : active)
            ::curl_multi_remove_handle(multi.get(), easy);
        active.clear();
    }

    unsigned appliedConnections = 0; // what the multi's caps were last set for

    void applyLimits() {
        if (appliedConnections == endpoint.maxConnections)
            return; // set once, and again only when the endpoint's setting changed
        appliedConnections = endpoint.maxConnections;
        CURLM *m = multi.get();
        const long n = static_cast<long>(std::max(1U, endpoint.maxConnections));
        // The transport's own capacity() decides what is in flight; these caps only keep libcurl
        // from opening more than that, never fewer, so libcurl never queues a transfer
        // internally while its timeout runs. Idle connections stay cached (keep-alive).
        setMultiOpt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, n, "CURLMOPT_MAX_TOTAL_CONNECTIONS");
        setMultiOpt(m, CURLMOPT_MAX_HOST_CONNECTIONS, n, "CURLMOPT_MAX_HOST_CONNECTIONS");
        setMultiOpt(m, CURLMOPT_MAXCONNECTS, std::max(n, 4L), "CURLMOPT_MAXCONNECTS");
    }

    CurlEasy acquire() {
        if (!pool.empty()) {
            CurlEasy easy = std::move(pool.back());
            pool.pop_back();
            // Reset clears the options but keeps the handle's caches (DNS, TLS sessions).
            ::curl_easy_reset(easy.get());
            return easy;
        }
        CurlEasy easy(::curl_easy_init());
        if (!easy)
            throw std::runtime_error("curl_easy_init failed");
        return easy;
    }

    void setup(Transfer &t) {
        const Exchange &req = t.exchange;
        const HttpEndpoint &ep = endpoint;
        CURL *e = t.easy.get();

        PKIRELAY_SETOPT(e, CURLOPT_ERRORBUFFER, t.error);
        PKIRELAY_SETOPT(e, CURLOPT_URL, ep.url.c_str());
        PKIRELAY_SETOPT(e, CURLOPT_PROTOCOLS_STR, "http,https");
        const bool https = ep.url.size() >= 8 && ::curl_strnequal(ep.url.c_str(), "https://", 8);
        PKIRELAY_SETOPT(e, CURLOPT_REDIR_PROTOCOLS_STR, https ? "https" : "http,https");
        // RFC 9811 §3.1: redirects only after considering security (a stored 301 can be
        // abused): followed only when the endpoint says so, and then the POST stays a POST
        // (CURL_REDIR_POST_ALL) with its body, as the CA expects a PKI message.
        PKIRELAY_SETOPT(e, CURLOPT_FOLLOWLOCATION, ep.followRedirects ? 1L : 0L);
        if (ep.followRedirects) {
            PKIRELAY_SETOPT(e, CURLOPT_MAXREDIRS, 5L);
            PKIRELAY_SETOPT(e, CURLOPT_POSTREDIR, static_cast<long>(CURL_REDIR_POST_ALL));
        }
        if (!ep.proxy.empty())
            PKIRELAY_SETOPT(e, CURLOPT_PROXY, ep.proxy.c_str());
        PKIRELAY_SETOPT(e, CURLOPT_NOSIGNAL, 1L);
        PKIRELAY_SETOPT(e, CURLOPT_USERAGENT, "pkirelay/" PKIRELAY_VERSION);

        // RFC 5273 §4 / RFC 10003 §4 and RFC 9811 §3: POST, the binary DER as the body. The size
        // is given, so the body may contain NUL bytes. CURLOPT_POST first: POSTFIELDS alone
        // would work too, but this states the method even for an empty body.
        PKIRELAY_SETOPT(e, CURLOPT_POST, 1L);
        // The body is read through a callback, not CURLOPT_POSTFIELDS, so that libcurl cannot
        // send it twice unseen: when a kept-alive connection dies after the request went out,
        // libcurl retries on a fresh connection by rewinding the body (a server that closed
        // an idle connection looks the same). seekBody lets it, and counts it, and the reply
        // says so: the CA may have seen the request twice, and the history records that.
        PKIRELAY_SETOPT(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
        PKIRELAY_SETOPT(e, CURLOPT_READFUNCTION, readBody);
        PKIRELAY_SETOPT(e, CURLOPT_READDATA, static_cast<void *>(&t));
        PKIRELAY_SETOPT(e, CURLOPT_SEEKFUNCTION, seekBody);
        PKIRELAY_SETOPT(e, CURLOPT_SEEKDATA, static_cast<void *>(&t));

        // Content-Type from the kind table: RFC 9811 §3 requires application/pkixcmp on every
        // PKIMessage, RFC 10003 §4 the CMC types. An empty Expect: stops libcurl's
        // 100-continue above 1 MiB, which HTTP/1.0 servers such as OpenSSL's never answer.
        // Connection: keep-alive is for HTTP/1.0 servers (RFC 9112 Appendix C.2.2): after an
        // HTTP/1.0 answer libcurl sends its next request on that connection as HTTP/1.0, and
        // without the header OpenSSL's server then closes the connection after answering.
        // With keepAlive off, Connection: close makes the server end the connection itself
        // after answering (see HttpEndpoint::keepAlive for why OpenSSL's server needs that).
        std::string contentType = fmt::format("Content-Type: {}", kindInfo(req.kind).mimeType);
        const char *connection = ep.keepAlive ? "Connection: keep-alive" : "Connection: close";
        for (const char *h : {contentType.c_str(), "Expect:", connection}) {
            curl_slist *next = ::curl_slist_append(t.headers.get(), h);
            if (next == nullptr)
                throw std::bad_alloc();
            t.headers.release();
            t.headers.reset(next);
        }
        PKIRELAY_SETOPT(e, CURLOPT_HTTPHEADER, t.headers.get());

        // Error bodies are kept and read (CURLOPT_FAILONERROR stays off): RFC 9811 §3 puts
        // CMP error messages into 4xx/5xx responses.
        PKIRELAY_SETOPT(e, CURLOPT_WRITEFUNCTION, writeBody);
        PKIRELAY_SETOPT(e, CURLOPT_WRITEDATA, static_cast<void *>(&t));

        PKIRELAY_SETOPT(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(ep.connectTimeout.count()));
        PKIRELAY_SETOPT(e, CURLOPT_TIMEOUT_MS, static_cast<long>(ep.timeout.count()));
        if (!ep.keepAlive)
            PKIRELAY_SETOPT(e, CURLOPT_FORBID_REUSE, 1L);

        PKIRELAY_SETOPT(e, CURLOPT_SSL_VERIFYPEER, ep.verifyTls ? 1L : 0L);
        PKIRELAY_SETOPT(e, CURLOPT_SSL_VERIFYHOST, ep.verifyTls ? 2L : 0L);
        if (!ep.caFile.empty())
            PKIRELAY_SETOPT(e, CURLOPT_CAINFO, ep.caFile.c_str());
        if (!ep.caPath.empty())
            PKIRELAY_SETOPT(e, CURLOPT_CAPATH, ep.caPath.c_str());
        if (!ep.pinnedPublicKey.empty())
            PKIRELAY_SETOPT(e, CURLOPT_PINNEDPUBLICKEY, ep.pinnedPublicKey.c_str());
        // BCP 195: TLS 1.2 at least, or 1.3 when configured.
        PKIRELAY_SETOPT(e, CURLOPT_SSLVERSION,
                        ep.tlsMinVersion == "1.3" ? static_cast<long>(CURL_SSLVERSION_TLSv1_3)
                                                  : static_cast<long>(CURL_SSLVERSION_TLSv1_2));
        if (!ep.clientCert.empty()) {
            PKIRELAY_SETOPT(e, CURLOPT_SSLCERTTYPE, "PEM");
            PKIRELAY_SETOPT(e, CURLOPT_SSLCERT, ep.clientCert.c_str());
        }
        if (!ep.clientKey.empty()) {
            PKIRELAY_SETOPT(e, CURLOPT_SSLKEYTYPE, "PEM");
            PKIRELAY_SETOPT(e, CURLOPT_SSLKEY, ep.clientKey.c_str());
        }
    }
};

HttpTransport::HttpTransport(HttpEndpoint endpoint)
    : impl_(std::make_unique<Impl>(std::move(endpoint))) {}

HttpTransport::~HttpTransport() = default;

const std::string &HttpTransport::name() const {
    return impl_->endpoint.name;
}

HttpEndpoint &HttpTransport::endpoint() {
    return impl_->endpoint;
}

void HttpTransport::attach(EventLoop &loop) {
    if (impl_->loop != nullptr && impl_->loop != &loop)
        throw std::logic_error("HttpTransport: attached to a second loop");
    impl_->loop = &loop;
}

std::size_t HttpTransport::capacity() const {
    const std::size_t max = std::max(1U, impl_->endpoint.maxConnections);
    return impl_->active.size() >= max ? 0 : max - impl_->active.size();
}

std::size_t HttpTransport::inFlight() const {
    return impl_->active.size();
}

void HttpTransport::send(const Exchange &exchange, OnReply onReply) {
    if (impl_->loop == nullptr)
        throw std::logic_error("HttpTransport: send before attach");
    impl_->applyLimits();
    auto t = std::make_unique<Transfer>();
    t->exchange = exchange;
    t->onReply = std::move(onReply);
    t->cap = readCap(impl_->endpoint);
    t->easy = impl_->acquire();
    impl_->setup(*t);
    CURL *easy = t->easy.get();
    impl_->active.emplace(easy, std::move(t));
    if (CURLMcode rc = ::curl_multi_add_handle(impl_->multi.get(), easy); rc != CURLM_OK) {
        impl_->active.erase(easy);
        throw std::runtime_error(
            fmt::format("curl_multi_add_handle: {}", ::curl_multi_strerror(rc)));
    }
}

std::vector<std::int64_t> HttpTransport::abandon() {
    std::vector<std::int64_t> ids;
    for (const auto &[easy, t] : impl_->active)
        ids.push_back(t->exchange.id);
    impl_->detachAll();
    return ids;
}

HttpTransport::Stats HttpTransport::stats() const {
    return impl_->stats;
}

HttpRelay::HttpRelay() = default;
HttpRelay::~HttpRelay() = default;

HttpTransport::Stats HttpRelay::stats() const {
    HttpTransport::Stats total;
    for (const auto &[ep, t] : transports_) {
        total.requests += t->stats().requests;
        total.newConnections += t->stats().newConnections;
    }
    return total;
}

std::vector<HttpResult>
HttpRelay::perform(std::span<const HttpRequest> requests, unsigned maxInFlight,
                   const std::function<void(const HttpResult &)> &onResult) {
    if (maxInFlight == 0)
        throw std::invalid_argument("HttpRelay::perform: maxInFlight must be at least 1");
    for (const HttpRequest &r : requests) {
        if (r.endpoint == nullptr)
            throw std::invalid_argument("HttpRelay::perform: request without endpoint");
        if (r.endpoint->maxConnections == 0)
            throw std::invalid_argument("HttpRelay::perform: endpoint " + r.endpoint->name +
                                        " has maxConnections 0");
        auto &t = transports_[r.endpoint];
        if (!t) {
            t = std::make_unique<HttpTransport>(*r.endpoint);
            t->attach(loop_);
        }
        t->endpoint() = *r.endpoint; // the caller may have changed it since the last batch
    }
    std::vector<HttpResult> results;
    results.reserve(requests.size());
    std::deque<const HttpRequest *> waiting;
    for (const HttpRequest &r : requests)
        waiting.push_back(&r);
    std::size_t inFlight = 0;
    auto dispatch = [&] {
        for (auto it = waiting.begin(); it != waiting.end() && inFlight < maxInFlight;) {
            HttpTransport &t = *transports_.at((*it)->endpoint);
            if (t.capacity() == 0) {
                ++it;
                continue;
            }
            const HttpRequest &req = **it;
            t.send({req.id, req.kind, req.body}, [&](Reply reply) {
                --inFlight;
                results.push_back(std::move(reply));
                if (onResult)
                    onResult(results.back());
            });
            ++inFlight;
            it = waiting.erase(it);
        }
    };
    // On any exit, including an exception from onResult, nothing stays in flight.
    struct Abandon {
        std::map<const HttpEndpoint *, std::unique_ptr<HttpTransport>> &transports;
        ~Abandon() {
            for (auto &[ep, t] : transports)
                t->abandon();
        }
    } abandon{transports_};
    dispatch();
    while (inFlight > 0) {
        loop_.turn();
        dispatch();
    }
    return results;
}

void httpGlobalInit() {
    static std::once_flag once;
    std::call_once(once, [] {
        if (CURLcode rc = ::curl_global_init(CURL_GLOBAL_DEFAULT); rc != CURLE_OK)
            throw std::runtime_error(fmt::format("curl_global_init: {}", ::curl_easy_strerror(rc)));
    });
}

} // namespace pkirelay
