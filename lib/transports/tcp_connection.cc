// TcpConnection and TlsContext (tcp_connection.h): a small state machine per connection driven
// by the EventLoop (closed -> connecting -> TLS handshake -> writing -> reading -> idle), with
// every socket, SSL and SSL_CTX handle Owned. Callbacks never throw into the loop's caller with
// a half-updated state: a round ends in exactly one call of its done, made last.
#include "lib/transports/tcp_connection.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "lib/armor.h"
#include "lib/file_io.h"
#include "lib/owned.h"

namespace pkirelay {
namespace {

using SslCtx = Owned<SSL_CTX, ::SSL_CTX_free>;
using Ssl = Owned<SSL, ::SSL_free>;
using Bio = Owned<BIO, ::BIO_free_all>;
using PKey = Owned<EVP_PKEY, ::EVP_PKEY_free>;
using AddrInfo = Owned<addrinfo, ::freeaddrinfo>;

// Drains OpenSSL's error queue into one line (../shared/LIBRARIES.md: stale entries mislead
// later checks, so every failure empties it).
std::string opensslErrors() {
    std::string out;
    while (unsigned long e = ::ERR_get_error()) {
        char buf[256];
        ::ERR_error_string_n(e, buf, sizeof buf);
        out += (out.empty() ? "" : "; ") + std::string(buf);
    }
    return out.empty() ? "no detail from OpenSSL" : out;
}

Bytes spkiOf(EVP_PKEY *key) {
    unsigned char *der = nullptr;
    const int n = ::i2d_PUBKEY(key, &der);
    if (n <= 0)
        return {};
    Bytes out(der, der + n);
    ::OPENSSL_free(der);
    return out;
}

Bytes sha256(ByteView b) {
    Bytes out(32);
    unsigned int n = 0;
    if (::EVP_Digest(b.data(), b.size(), out.data(), &n, ::EVP_sha256(), nullptr) != 1)
        throw std::runtime_error("SHA-256: " + opensslErrors());
    return out;
}

bool isIpLiteral(const std::string &host) {
    in6_addr a6{};
    in_addr a4{};
    return ::inet_pton(AF_INET6, host.c_str(), &a6) == 1 ||
           ::inet_pton(AF_INET, host.c_str(), &a4) == 1;
}

} // namespace

// ---- TlsContext -------------------------------------------------------------------------------

struct TlsContext::Impl {
    SslCtx ctx;
    std::vector<Bytes> pinHashes; // SHA-256 of accepted SubjectPublicKeyInfo
    Bytes pinSpki;                // or the one accepted key itself
};

TlsContext::TlsContext(const TlsOptions &o) : impl_(std::make_unique<Impl>()), options_(o) {
    ::ERR_clear_error();
    impl_->ctx.reset(::SSL_CTX_new(::TLS_client_method()));
    SSL_CTX *ctx = impl_->ctx.get();
    if (ctx == nullptr)
        throw std::runtime_error("SSL_CTX_new: " + opensslErrors());
    // BCP 195 (RFC 9325 §3.1.1): TLS 1.2 at least.
    const int min = o.minVersion == "1.3" ? TLS1_3_VERSION : TLS1_2_VERSION;
    if (o.minVersion != "1.2" && o.minVersion != "1.3")
        throw std::runtime_error("tls_min_version must be \"1.2\" or \"1.3\", not \"" +
                                 o.minVersion + "\"");
    ::SSL_CTX_set_min_proto_version(ctx, min);
    // Partial and moved writes: the request is written from a buffer that stays put, but a
    // non-blocking SSL_write may need to be repeated after WANT_WRITE.
    ::SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (!o.caFile.empty() || !o.caPath.empty()) {
        if (::SSL_CTX_load_verify_locations(ctx, o.caFile.empty() ? nullptr : o.caFile.c_str(),
                                            o.caPath.empty() ? nullptr : o.caPath.c_str()) != 1)
            throw std::runtime_error(fmt::format(
                "cannot load CA {}: {}", o.caFile.empty() ? o.caPath : o.caFile, opensslErrors()));
    } else if (::SSL_CTX_set_default_verify_paths(ctx) != 1) {
        throw std::runtime_error("cannot load the system's trust store: " + opensslErrors());
    }
    ::SSL_CTX_set_verify(ctx, o.verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);
    if (!o.clientCert.empty()) {
        if (::SSL_CTX_use_certificate_chain_file(ctx, o.clientCert.c_str()) != 1)
            throw std::runtime_error(
                fmt::format("cannot load client_cert {}: {}", o.clientCert, opensslErrors()));
        if (::SSL_CTX_use_PrivateKey_file(ctx, o.clientKey.c_str(), SSL_FILETYPE_PEM) != 1)
            throw std::runtime_error(
                fmt::format("cannot load client_key {}: {}", o.clientKey, opensslErrors()));
        if (::SSL_CTX_check_private_key(ctx) != 1)
            throw std::runtime_error("client_key does not match client_cert: " + opensslErrors());
    }
    // The pin, in curl's CURLOPT_PINNEDPUBLICKEY forms, so that HTTP and TCP endpoints take the
    // same value: "sha256//BASE64" (several separated by ';') or a public key file.
    const std::string &pin = o.pinnedPublicKey;
    if (pin.rfind("sha256//", 0) == 0) {
        std::size_t start = 0;
        while (start < pin.size()) {
            std::size_t end = pin.find(';', start);
            if (end == std::string::npos)
                end = pin.size();
            std::string one = pin.substr(start, end - start);
            if (one.rfind("sha256//", 0) != 0)
                throw std::runtime_error("pinned_public_key: each pin starts with sha256//");
            Bytes hash;
            try {
                hash = armor::decodeBase64(asBytes(std::string_view(one).substr(8)));
            } catch (const std::exception &) {
            }
            if (hash.size() != 32)
                throw std::runtime_error("pinned_public_key: " + one +
                                         " is not sha256// and 32 bytes in base64");
            impl_->pinHashes.push_back(std::move(hash));
            start = end + 1;
        }
    } else if (!pin.empty()) {
        const FileRead read = readFile(pin, 1 << 20);
        const Bytes &file = read.bytes;
        PKey key;
        if (asChars(file).find("-----BEGIN") != std::string_view::npos) {
            Bio bio(::BIO_new_mem_buf(file.data(), static_cast<int>(file.size())));
            key.reset(::PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
        } else {
            const unsigned char *p = file.data();
            key.reset(::d2i_PUBKEY(nullptr, &p, static_cast<long>(file.size())));
        }
        if (!key)
            throw std::runtime_error("pinned_public_key: " + pin +
                                     " holds no public key: " + opensslErrors());
        impl_->pinSpki = spkiOf(key.get());
    }
}

TlsContext::~TlsContext() = default;

void *TlsContext::get() const {
    return impl_->ctx.get();
}

bool TlsContext::pinMatches(ByteView spki) const {
    if (impl_->pinHashes.empty() && impl_->pinSpki.empty())
        return true;
    if (!impl_->pinSpki.empty())
        return std::equal(spki.begin(), spki.end(), impl_->pinSpki.begin(), impl_->pinSpki.end());
    const Bytes h = sha256(spki);
    for (const Bytes &pin : impl_->pinHashes)
        if (pin == h)
            return true;
    return false;
}

// ---- TcpConnection ----------------------------------------------------------------------------

struct TcpConnection::Impl {
    enum class Phase { Closed, Connecting, Handshaking, Writing, Reading, Idle };

    EventLoop &loop;
    const TcpEndpoint &ep;
    const TlsContext *tls;
    Phase phase = Phase::Closed;
    Fd fd;
    Ssl ssl;
    std::uint64_t connects = 0;

    // The round in progress.
    Bytes request;
    std::size_t written = 0;
    Delimit delimit;
    Done done;
    Bytes buffer;
    bool reused = false;  // the round started on a kept connection
    bool retried = false; // and was moved to a fresh one already
    int resends = 0;
    EventLoop::TimerId roundTimer = 0, connectTimer = 0, idleTimer = 0;
    std::vector<sockaddr_storage> addresses;
    std::vector<socklen_t> addressLengths;
    std::size_t nextAddress = 0;
    std::string connectError;

    Impl(EventLoop &l, const TcpEndpoint &e, const TlsContext *t) : loop(l), ep(e), tls(t) {}
    ~Impl() {
        cancelTimers();
        closeSocket();
    }

    void cancel(EventLoop::TimerId &id) {
        if (id != 0)
            loop.cancel(id);
        id = 0;
    }
    void cancelTimers() {
        cancel(roundTimer);
        cancel(connectTimer);
        cancel(idleTimer);
    }

    void closeSocket() {
        if (fd.get() >= 0)
            loop.unwatch(fd.get());
        cancel(connectTimer);
        cancel(idleTimer);
        ssl.reset();
        fd = Fd();
        phase = Phase::Closed;
    }

    // ---- the end of a round: exactly one call of done, last ----
    void finish(TcpConnection::Outcome out, bool keep) {
        cancel(roundTimer);
        out.resends = resends;
        if (keep)
            goIdle();
        else
            closeSocket();
        auto d = std::move(done);
        done = nullptr;
        delimit = nullptr;
        d(std::move(out));
    }

    void fail(std::string detail, bool connectFailed, bool timedOut = false) {
        TcpConnection::Outcome out;
        out.detail = std::move(detail);
        out.connectFailed = connectFailed;
        out.timedOut = timedOut;
        out.bytes = std::move(buffer);
        finish(std::move(out), false);
    }

    // The connection broke while the request was being written or its answer awaited.
    void broken(const std::string &why) {
        const bool mayHaveReached = written > 0;
        closeSocket();
        if (reused && !retried && buffer.empty()) {
            // RFC 5273 §5: a server may close an idle connection at any time. On a kept
            // connection that is what this most likely is, so the request goes out once more
            // on a fresh connection; when some of it was already written the server may have
            // seen it, and the outcome says so.
            retried = true;
            reused = false;
            if (mayHaveReached)
                ++resends;
            written = 0;
            startConnect();
            return;
        }
        fail(buffer.empty()
                 ? why
                 : fmt::format("{} after {} bytes of an incomplete answer", why, buffer.size()),
             !mayHaveReached);
    }

    // ---- idle ----
    // Whether a kept connection is still usable: the server has not closed it, and has not
    // sent anything unasked (which would be mistaken for the next answer).
    bool stillOpen() {
        if (phase != Phase::Idle)
            return false;
        if (ssl) {
            // Reading processes what TLS sends by itself (TLS 1.3 session tickets) and reports
            // a close_notify or EOF.
            std::uint8_t probe[1];
            ::ERR_clear_error();
            const int n = ::SSL_read(ssl.get(), probe, sizeof probe);
            if (n > 0)
                return false;
            const int err = ::SSL_get_error(ssl.get(), n);
            ::ERR_clear_error();
            return err == SSL_ERROR_WANT_READ;
        }
        std::uint8_t probe;
        const ssize_t n = ::recv(fd.get(), &probe, 1, MSG_PEEK | MSG_DONTWAIT);
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }

    void goIdle() {
        phase = Phase::Idle;
        loop.watch(fd.get(), EPOLLIN, [this](std::uint32_t) {
            if (!stillOpen())
                closeSocket(); // the server closed it (or broke the protocol): forget it
        });
        cancel(idleTimer);
        idleTimer = loop.after(ep.idleTimeout.count(), [this] {
            idleTimer = 0;
            closeSocket();
        });
    }

    // ---- a round ----
    void start(Bytes req, Delimit d, Done cb) {
        request = std::move(req);
        delimit = std::move(d);
        done = std::move(cb);
        written = 0;
        buffer.clear();
        retried = false;
        resends = 0;
        roundTimer = loop.after(ep.timeout.count(), [this] {
            roundTimer = 0;
            onTimeout();
        });
        if (phase == Phase::Idle && stillOpen()) {
            cancel(idleTimer);
            reused = true;
            startWrite();
            return;
        }
        closeSocket();
        reused = false;
        startConnect();
    }

    void onTimeout() {
        const bool mayHaveReached = written > 0;
        std::string what = phase == Phase::Connecting || phase == Phase::Closed
                               ? fmt::format("no connection to {}:{} within {} ms", ep.host,
                                             ep.port, ep.timeout.count())
                           : phase == Phase::Handshaking
                               ? fmt::format("TLS handshake with {}:{} not done within {} ms",
                                             ep.host, ep.port, ep.timeout.count())
                               : fmt::format("no complete answer within {} ms ({} bytes read)",
                                             ep.timeout.count(), buffer.size());
        fail(std::move(what), !mayHaveReached, true);
    }

    // ---- connect ----
    void startConnect() {
        if (addresses.empty()) {
            // getaddrinfo blocks; an address literal (the usual case for a CA on a private
            // network) resolves without any lookup. A host name is resolved once per
            // connection, by the system's resolver.
            addrinfo hints{};
            hints.ai_family = AF_UNSPEC;
            hints.ai_socktype = SOCK_STREAM;
            addrinfo *res = nullptr;
            const std::string port = std::to_string(ep.port);
            if (int rc = ::getaddrinfo(ep.host.c_str(), port.c_str(), &hints, &res); rc != 0) {
                fail(fmt::format("cannot resolve {}: {}", ep.host, ::gai_strerror(rc)), true);
                return;
            }
            AddrInfo owned(res);
            for (addrinfo *a = res; a != nullptr; a = a->ai_next) {
                sockaddr_storage ss{};
                std::memcpy(&ss, a->ai_addr, a->ai_addrlen);
                addresses.push_back(ss);
                addressLengths.push_back(a->ai_addrlen);
            }
        }
        nextAddress = 0;
        connectError.clear();
        tryNextAddress();
    }

    void tryNextAddress() {
        while (nextAddress < addresses.size()) {
            const auto &addr = addresses[nextAddress];
            const socklen_t len = addressLengths[nextAddress];
            ++nextAddress;
            Fd s(::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
            if (s.get() < 0) {
                connectError = std::string("socket: ") + std::strerror(errno);
                continue;
            }
            // Requests go out whole at once; Nagle would only delay the last segment.
            int one = 1;
            ::setsockopt(s.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (::connect(s.get(), reinterpret_cast<const sockaddr *>(&addr), len) == 0) {
                fd = std::move(s);
                connected();
                return;
            }
            if (errno != EINPROGRESS) {
                connectError =
                    fmt::format("connect to {}:{}: {}", ep.host, ep.port, std::strerror(errno));
                continue;
            }
            fd = std::move(s);
            phase = Phase::Connecting;
            loop.watch(fd.get(), EPOLLOUT, [this](std::uint32_t) { onConnectReady(); });
            connectTimer = loop.after(ep.connectTimeout.count(), [this] {
                connectTimer = 0;
                connectError = fmt::format("connect to {}:{} timed out after {} ms", ep.host,
                                           ep.port, ep.connectTimeout.count());
                closeSocket();
                tryNextAddress();
            });
            return;
        }
        fail(connectError.empty() ? "no address to connect to" : connectError, true);
    }

    void onConnectReady() {
        int err = 0;
        socklen_t len = sizeof err;
        if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err != 0) {
            connectError =
                fmt::format("connect to {}:{}: {}", ep.host, ep.port, std::strerror(err));
            closeSocket();
            tryNextAddress();
            return;
        }
        cancel(connectTimer);
        connected();
    }

    void connected() {
        ++connects;
        if (tls != nullptr)
            startHandshake();
        else
            startWrite();
    }

    // ---- TLS ----
    void startHandshake() {
        ::ERR_clear_error();
        ssl.reset(::SSL_new(static_cast<SSL_CTX *>(tls->get())));
        if (!ssl || ::SSL_set_fd(ssl.get(), fd.get()) != 1) {
            fail("TLS setup: " + opensslErrors(), true);
            return;
        }
        const TlsOptions &o = tls->options();
        if (!isIpLiteral(ep.host))
            ::SSL_set_tlsext_host_name(ssl.get(), ep.host.c_str()); // SNI (RFC 6066 §3)
        if (o.verify) {
            // RFC 9525: the name the client was configured with must be in the certificate:
            // a DNS name, or an IP address for an address literal.
            X509_VERIFY_PARAM *param = ::SSL_get0_param(ssl.get());
            ::X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            const int ok = isIpLiteral(ep.host)
                               ? ::X509_VERIFY_PARAM_set1_ip_asc(param, ep.host.c_str())
                               : ::X509_VERIFY_PARAM_set1_host(param, ep.host.c_str(), 0);
            if (ok != 1) {
                fail("TLS host name check setup: " + opensslErrors(), true);
                return;
            }
        }
        ::SSL_set_connect_state(ssl.get());
        phase = Phase::Handshaking;
        driveHandshake();
    }

    // Watches for what OpenSSL wants next; false when the error is not "try again".
    bool waitFor(int sslError, void (Impl::*next)()) {
        std::uint32_t events = 0;
        if (sslError == SSL_ERROR_WANT_READ)
            events = EPOLLIN;
        else if (sslError == SSL_ERROR_WANT_WRITE)
            events = EPOLLOUT;
        else
            return false;
        loop.watch(fd.get(), events, [this, next](std::uint32_t) { (this->*next)(); });
        return true;
    }

    void driveHandshake() {
        ::ERR_clear_error();
        const int rc = ::SSL_connect(ssl.get());
        if (rc == 1) {
            X509 *cert = ::SSL_get0_peer_certificate(ssl.get());
            if (cert == nullptr) {
                fail("TLS: the server sent no certificate", true);
                return;
            }
            if (!tls->pinMatches(spkiOf(::X509_get0_pubkey(cert)))) {
                fail(fmt::format("TLS: the public key of {}:{} is not the pinned one", ep.host,
                                 ep.port),
                     true);
                return;
            }
            startWrite();
            return;
        }
        const int err = ::SSL_get_error(ssl.get(), rc);
        if (waitFor(err, &Impl::driveHandshake))
            return;
        std::string why;
        const long verify = ::SSL_get_verify_result(ssl.get());
        if (verify != X509_V_OK)
            why = fmt::format("certificate verify failed: {}",
                              ::X509_verify_cert_error_string(verify));
        else
            why = opensslErrors();
        fail(fmt::format("TLS handshake with {}:{}: {}", ep.host, ep.port, why), true);
    }

    // ---- write, then read ----
    void startWrite() {
        phase = Phase::Writing;
        driveWrite();
    }

    void driveWrite() {
        while (written < request.size()) {
            const std::size_t left = request.size() - written;
            if (ssl) {
                ::ERR_clear_error();
                const int n = ::SSL_write(ssl.get(), request.data() + written,
                                          static_cast<int>(std::min<std::size_t>(left, 1 << 20)));
                if (n > 0) {
                    written += static_cast<std::size_t>(n);
                    continue;
                }
                const int err = ::SSL_get_error(ssl.get(), n);
                if (waitFor(err, &Impl::driveWrite))
                    return;
                broken("TLS write failed: " + opensslErrors());
                return;
            }
            const ssize_t n = ::send(fd.get(), request.data() + written, left, MSG_NOSIGNAL);
            if (n > 0) {
                written += static_cast<std::size_t>(n);
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                loop.watch(fd.get(), EPOLLOUT, [this](std::uint32_t) { driveWrite(); });
                return;
            }
            broken(std::string("send: ") + std::strerror(errno));
            return;
        }
        phase = Phase::Reading;
        loop.watch(fd.get(), EPOLLIN, [this](std::uint32_t) { driveRead(); });
    }

    void driveRead() {
        std::uint8_t chunk[16384];
        for (;;) {
            ssize_t n = 0;
            std::string eofWhy;
            if (ssl) {
                ::ERR_clear_error();
                const int r = ::SSL_read(ssl.get(), chunk, sizeof chunk);
                if (r <= 0) {
                    const int err = ::SSL_get_error(ssl.get(), r);
                    if (waitFor(err, &Impl::driveRead))
                        return;
                    eofWhy = err == SSL_ERROR_ZERO_RETURN
                                 ? "the server closed the connection"
                                 : "the connection broke: " + opensslErrors();
                }
                n = r;
            } else {
                n = ::recv(fd.get(), chunk, sizeof chunk, 0);
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                    return; // still watched for EPOLLIN
                if (n == 0)
                    eofWhy = "the server closed the connection";
                else if (n < 0)
                    eofWhy = std::string("the connection broke: ") + std::strerror(errno);
            }
            if (n <= 0) {
                broken(eofWhy);
                return;
            }
            buffer.insert(buffer.end(), chunk, chunk + n);
            const Delimited d = delimit(buffer);
            if (d.state == Delimited::State::NeedMore)
                continue;
            TcpConnection::Outcome out;
            out.form = d.state;
            if (d.state == Delimited::State::Complete) {
                out.ok = true;
                // Bytes after the answer were never asked for: the connection is not reused,
                // so they cannot be taken for the next answer.
                const bool extra = buffer.size() > d.length;
                buffer.resize(d.length);
                out.bytes = std::move(buffer);
                finish(std::move(out), !extra);
                return;
            }
            out.bytes = std::move(buffer);
            out.detail = d.reason;
            finish(std::move(out), false);
            return;
        }
    }
};

TcpConnection::TcpConnection(EventLoop &loop, const TcpEndpoint &endpoint, const TlsContext *tls)
    : impl_(std::make_unique<Impl>(loop, endpoint, tls)) {}

TcpConnection::~TcpConnection() = default;

bool TcpConnection::busy() const {
    return static_cast<bool>(impl_->done);
}

bool TcpConnection::open() const {
    return impl_->phase == Impl::Phase::Idle;
}

void TcpConnection::round(Bytes request, Delimit delimit, Done done) {
    if (busy())
        throw std::logic_error("TcpConnection: a round is already running");
    impl_->start(std::move(request), std::move(delimit), std::move(done));
}

void TcpConnection::close() {
    impl_->cancelTimers();
    impl_->closeSocket();
    impl_->done = nullptr;
    impl_->delimit = nullptr;
}

std::uint64_t TcpConnection::connectsMade() const {
    return impl_->connects;
}

} // namespace pkirelay
