// HttpRelay: POSTs PKI messages with libcurl's multi interface and turns each exchange into an
// HttpResult (../shared/DESIGN.md, "Transports"; outcome rules in http_relay.h).
// It trusts the caller's requests (endpoints outlive perform(), bodies stay valid) and nothing
// that comes off the wire: response bodies are size-capped and handed to classify(), which
// decides whether they are PKI messages. curl callbacks never throw; every handle is Owned.
#include "http_relay.h"

#include <curl/curl.h>

#include <algorithm>
#include <deque>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>

#include <fmt/format.h>

#include "owned.h"

namespace pkirelay {
namespace {

using CurlEasy = Owned<CURL, ::curl_easy_cleanup>;
using CurlMulti = Owned<CURLM, ::curl_multi_cleanup>;
using CurlSlist = Owned<curl_slist, ::curl_slist_free_all>;

// A response larger than this is not a PKI message we would relay (the classifier's own limit
// is smaller); reading stops there so a hostile or broken server cannot exhaust memory.
constexpr std::size_t kMaxResponseSize = 16 * 1024 * 1024;

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
    const HttpRequest *request = nullptr;
    CurlEasy easy;
    CurlSlist headers;
    std::string body;
    bool tooLarge = false;
    bool outOfMemory = false;
    char error[CURL_ERROR_SIZE] = {};
};

std::size_t writeBody(char *data, std::size_t size, std::size_t count, void *user) {
    // Never throw into libcurl: any failure is recorded and ends the transfer (returning a
    // short count makes libcurl fail it with CURLE_WRITE_ERROR).
    auto *t = static_cast<Transfer *>(user);
    std::size_t n = size * count;
    if (t->body.size() + n > kMaxResponseSize) {
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
HttpResult makeResult(Transfer &t, CURLcode rc) {
    HttpResult r;
    r.id = t.request->id;
    CURL *easy = t.easy.get();
    r.httpStatus = curlInfoLong(easy, CURLINFO_RESPONSE_CODE);
    r.contentType = curlInfoString(easy, CURLINFO_CONTENT_TYPE);
    std::string head = fmt::format("HTTP {} {}", r.httpStatus,
                                   r.contentType.empty() ? "(no type)" : r.contentType);

    if (t.tooLarge || t.outOfMemory) {
        // The same answer would come again, except from a server in trouble (5xx).
        r.type = r.httpStatus >= 500 ? HttpResult::Type::Transient : HttpResult::Type::Permanent;
        r.detail = fmt::format("{}: response too large (over {} bytes)", head, kMaxResponseSize);
        return r;
    }
    if (rc != CURLE_OK) {
        // No (complete) HTTP response: refused, timed out, TLS failure, reset. RFC 9811 §3: the
        // message must be assumed undelivered, so it is retried. Configuration mistakes (bad
        // URL, unreadable client key) land here too; deferring keeps the item until fixed.
        r.type = HttpResult::Type::Transient;
        r.detail = t.error[0] != '\0' ? std::string(t.error) : ::curl_easy_strerror(rc);
        if (r.httpStatus != 0)
            r.detail = fmt::format("{}: {}", head, r.detail);
        return r;
    }

    std::string sized = fmt::format("{}, {} bytes", head, t.body.size());
    std::string notPki;
    if (!t.body.empty()) {
        // RFC 9811 §3: a PKI message in a 2xx, 4xx or 5xx body is the answer and is delivered,
        // whatever the status. The relay does not trust the Content-Type for this: the bytes
        // decide.
        Classification c = classify(asBytes(t.body));
        if (auto *m = std::get_if<Message>(&c)) {
            r.type = HttpResult::Type::Response;
            r.response = std::move(*m);
            r.detail = sized;
            return r;
        }
        notPki = std::get<Rejection>(c).reason;
    }

    long s = r.httpStatus;
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
        std::string location = curlInfoString(easy, CURLINFO_REDIRECT_URL);
        if (!location.empty())
            sized += ", redirect to " + location + " not followed";
    } else {
        // 4xx, and 200 (or another 2xx) without a PKI message: the same request would get the
        // same answer.
        r.type = HttpResult::Type::Permanent;
    }
    r.detail = notPki.empty() ? sized : fmt::format("{}: not a PKI message ({})", sized, notPki);
    return r;
}

} // namespace

struct HttpRelay::Impl {
    CurlMulti multi;
    std::vector<CurlEasy> pool; // idle easy handles, reset and reused
    Stats stats;

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
        const HttpRequest &req = *t.request;
        const HttpEndpoint &ep = *req.endpoint;
        CURL *e = t.easy.get();

        PKIRELAY_SETOPT(e, CURLOPT_ERRORBUFFER, t.error);
        PKIRELAY_SETOPT(e, CURLOPT_URL, ep.url.c_str());
        PKIRELAY_SETOPT(e, CURLOPT_PROTOCOLS_STR, "http,https");
        PKIRELAY_SETOPT(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
        // RFC 9811 §3: redirects only after considering security; the relay never follows them.
        PKIRELAY_SETOPT(e, CURLOPT_FOLLOWLOCATION, 0L);
        PKIRELAY_SETOPT(e, CURLOPT_NOSIGNAL, 1L);
        PKIRELAY_SETOPT(e, CURLOPT_USERAGENT, "pkirelay/" PKIRELAY_VERSION);

        // RFC 5273 §4 / RFC 10003 §4 and RFC 9811 §3: POST, the binary DER as the body. The size
        // is given, so the body may contain NUL bytes. CURLOPT_POST first: POSTFIELDS alone
        // would work too, but this states the method even for an empty body.
        PKIRELAY_SETOPT(e, CURLOPT_POST, 1L);
        static const char empty[] = "";
        const void *data = req.body.empty() ? static_cast<const void *>(empty) : req.body.data();
        PKIRELAY_SETOPT(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
        PKIRELAY_SETOPT(e, CURLOPT_POSTFIELDS, data);

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

HttpRelay::HttpRelay() : impl_(std::make_unique<Impl>()) {
    impl_->multi.reset(::curl_multi_init());
    if (!impl_->multi)
        throw std::runtime_error("curl_multi_init failed");
}

HttpRelay::~HttpRelay() = default;

HttpRelay::Stats HttpRelay::stats() const {
    return impl_->stats;
}

std::vector<HttpResult>
HttpRelay::perform(std::span<const HttpRequest> requests, unsigned maxInFlight,
                   const std::function<void(const HttpResult &)> &onResult) {
    if (maxInFlight == 0)
        throw std::invalid_argument("HttpRelay::perform: maxInFlight must be at least 1");
    unsigned hostConnections = 0;
    std::map<const HttpEndpoint *, unsigned> perEndpoint; // requests in flight per endpoint
    for (const HttpRequest &r : requests) {
        if (r.endpoint == nullptr)
            throw std::invalid_argument("HttpRelay::perform: request without endpoint");
        if (r.endpoint->maxConnections == 0)
            throw std::invalid_argument("HttpRelay::perform: endpoint " + r.endpoint->name +
                                        " has maxConnections 0");
        if (perEndpoint.emplace(r.endpoint, 0).second)
            hostConnections += r.endpoint->maxConnections;
    }

    CURLM *multi = impl_->multi.get();
    // The relay's own limits below decide what is in flight. These caps only keep libcurl from
    // opening more than that; they are never lower, so libcurl never queues a transfer
    // internally while its timeout runs.
    setMultiOpt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, static_cast<long>(maxInFlight),
                "CURLMOPT_MAX_TOTAL_CONNECTIONS");
    setMultiOpt(multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                static_cast<long>(std::min(maxInFlight, hostConnections)),
                "CURLMOPT_MAX_HOST_CONNECTIONS");
    // Idle connections stay in the multi's cache between perform() calls (keep-alive).
    setMultiOpt(multi, CURLMOPT_MAXCONNECTS, static_cast<long>(std::max(maxInFlight, 16U)),
                "CURLMOPT_MAXCONNECTS");

    std::vector<HttpResult> results;
    results.reserve(requests.size());
    std::deque<const HttpRequest *> waiting;
    for (const HttpRequest &r : requests)
        waiting.push_back(&r);

    // Transfers in flight, by easy handle: libcurl reports completions in any order, and the
    // handle is what it reports, so the handle is the key back to the request (and its id).
    std::unordered_map<CURL *, std::unique_ptr<Transfer>> active;
    // On any exit, including an exception from onResult, no handle may stay in the multi.
    struct Detach {
        Impl &impl;
        std::unordered_map<CURL *, std::unique_ptr<Transfer>> &active;
        ~Detach() {
            for (auto &[easy, t] : active)
                ::curl_multi_remove_handle(impl.multi.get(), easy);
            active.clear();
        }
    } detach{*impl_, active};

    auto dispatch = [&] {
        for (auto it = waiting.begin(); it != waiting.end() && active.size() < maxInFlight;) {
            const HttpRequest *req = *it;
            unsigned &n = perEndpoint[req->endpoint];
            if (n >= req->endpoint->maxConnections) {
                ++it;
                continue;
            }
            auto t = std::make_unique<Transfer>();
            t->request = req;
            t->easy = impl_->acquire();
            impl_->setup(*t);
            CURL *easy = t->easy.get();
            if (CURLMcode rc = ::curl_multi_add_handle(multi, easy); rc != CURLM_OK)
                throw std::runtime_error(
                    fmt::format("curl_multi_add_handle: {}", ::curl_multi_strerror(rc)));
            active.emplace(easy, std::move(t));
            ++n;
            it = waiting.erase(it);
        }
    };

    auto finish = [&](CURL *easy, CURLcode rc) {
        auto node = active.extract(easy);
        if (node.empty())
            throw std::logic_error("HttpRelay: completion for an unknown transfer");
        ::curl_multi_remove_handle(multi, easy);
        Transfer &t = *node.mapped();
        --perEndpoint[t.request->endpoint];
        ++impl_->stats.requests;
        impl_->stats.newConnections +=
            static_cast<std::uint64_t>(curlInfoLong(easy, CURLINFO_NUM_CONNECTS));
        HttpResult result = makeResult(t, rc);
        impl_->pool.push_back(std::move(t.easy));
        results.push_back(std::move(result));
        if (onResult)
            onResult(results.back());
    };

    dispatch();
    while (!active.empty()) {
        int running = 0;
        if (CURLMcode rc = ::curl_multi_perform(multi, &running); rc != CURLM_OK)
            throw std::runtime_error(
                fmt::format("curl_multi_perform: {}", ::curl_multi_strerror(rc)));
        int queued = 0;
        while (CURLMsg *msg = ::curl_multi_info_read(multi, &queued)) {
            if (msg->msg == CURLMSG_DONE)
                finish(msg->easy_handle, msg->data.result);
        }
        dispatch();
        if (!active.empty() && running > 0) {
            // Waits for socket activity or libcurl's next timeout, whichever comes first.
            if (CURLMcode rc = ::curl_multi_poll(multi, nullptr, 0, 1000, nullptr); rc != CURLM_OK)
                throw std::runtime_error(
                    fmt::format("curl_multi_poll: {}", ::curl_multi_strerror(rc)));
        }
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
