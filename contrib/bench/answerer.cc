// The benchmark's CA: a loopback HTTP/1.1 responder that answers every POST with the template
// answer of its kind (make_templates.sh) made to belong to that request, fast enough that the
// CA is not what the benchmark measures (one thread, epoll, kept-alive connections).
//   answerer TEMPLATE-DIR PORT-FILE [PORT]
// listens on 127.0.0.1:PORT (default 0: a free port), writes the port to PORT-FILE once it
// listens, and answers until SIGTERM or SIGINT, when it prints what it answered on stderr.
//   POST /cmp  a CMP PKIMessage     -> rsp_cmp.der (ip) with the request's transactionID, its
//                                      senderNonce as recipNonce, and a senderNonce of its own
//   POST /cmc  a CMC Full PKI Req.  -> rsp_cmc.der (Full PKI Response), the same with the
//                                      transactionId, recipientNonce and senderNonce controls
//   POST /p10  a PKCS#10            -> rsp_p10.der (certs-only) whose first certificate takes
//                                      the request's subject and public key
// Every value is copied in place at the same length, found by a minimal DER walk of both the
// request and the template, so the answer stays well-formed DER. Signatures and MACs over the
// changed bytes no longer verify: pkirelay relays answers without checking them, only their
// correlation fields (lib/correlate.h). A request whose field is missing or of another length
// than the template's is refused with 400 and counted. Built by run.sh with g++ -O2; not
// installed; trusts nothing it reads but serves only loopback.
#include <array>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench_util.h"

namespace {

using bench::die;
using bench::Fd;
using bench::slurp;

using Bytes = std::span<const std::uint8_t>;

[[noreturn]] void dieTemplate(const std::string &what) {
    std::fprintf(stderr, "answerer: template %s\n", what.c_str());
    std::exit(1);
}

// ---- a minimal DER walk (X.690 §8.1): single-octet tags, definite lengths ----

struct Tlv {
    std::uint8_t tag = 0;
    size_t start = 0, body = 0, end = 0; // where the TLV, its contents and the next TLV begin
};

// The TLV at `at`, which must end by `limit`. X.690 §8.1.2.4: a tag number of 31 or more takes
// further octets (none of the structures walked here has one); §8.1.3.6: the indefinite form is
// not DER (§10.1); lengths over four octets are beyond any message here.
std::optional<Tlv> tlvAt(Bytes d, size_t at, size_t limit) {
    if (at + 2 > limit || (d[at] & 0x1f) == 0x1f)
        return std::nullopt;
    Tlv t;
    t.tag = d[at];
    t.start = at;
    size_t len = d[at + 1], p = at + 2;
    if (len & 0x80) {
        size_t n = len & 0x7f;
        if (n == 0 || n > 4 || p + n > limit)
            return std::nullopt;
        len = 0;
        for (size_t i = 0; i < n; ++i)
            len = len << 8 | d[p + i];
        p += n;
    }
    if (len > limit - p)
        return std::nullopt;
    t.body = p;
    t.end = p + len;
    return t;
}

// The whole buffer as one TLV of `tag`; trailing bytes are an error (STYLE.md, after Botan).
std::optional<Tlv> whole(Bytes d, std::uint8_t tag) {
    auto t = tlvAt(d, 0, d.size());
    if (!t || t->tag != tag || t->end != d.size())
        return std::nullopt;
    return t;
}

// The n-th child of a constructed TLV, if it has `tag`.
std::optional<Tlv> child(Bytes d, const std::optional<Tlv> &parent, size_t n, std::uint8_t tag) {
    if (!parent || !(parent->tag & 0x20))
        return std::nullopt;
    size_t at = parent->body;
    for (size_t i = 0;; ++i) {
        auto c = tlvAt(d, at, parent->end);
        if (!c)
            return std::nullopt;
        if (i == n)
            return c->tag == tag ? c : std::nullopt;
        at = c->end;
    }
}

// Every child of a constructed TLV, in order; empty when it is malformed.
std::vector<Tlv> children(Bytes d, const std::optional<Tlv> &parent) {
    std::vector<Tlv> out;
    if (!parent || !(parent->tag & 0x20))
        return out;
    for (size_t at = parent->body; at < parent->end;) {
        auto c = tlvAt(d, at, parent->end);
        if (!c)
            return {};
        out.push_back(*c);
        at = c->end;
    }
    return out;
}

// ---- the correlation fields of each kind ----

// A run of bytes in a message; len 0 when the message does not carry it.
struct Field {
    size_t off = 0, len = 0;
};
Field contents(const std::optional<Tlv> &t) {
    return t ? Field{t->body, t->end - t->body} : Field{};
}
Field tlvBytes(const std::optional<Tlv> &t) {
    return t ? Field{t->start, t->end - t->start} : Field{};
}

// Slots shared by requests and answers; which ones each kind fills is said where it is read.
enum Slot { TransactionId, SenderNonce, RecipNonce, Subject, PublicKey, Slots };
using Fields = std::array<Field, Slots>;

// RFC 9810 §5.1.1: PKIMessage ::= SEQUENCE { header PKIHeader, ... }; in the PKIHeader
// (EXPLICIT TAGS, Appendix A) transactionID [4], senderNonce [5], recipNonce [6] each hold an
// OCTET STRING.
Fields cmpFields(Bytes d) {
    Fields f;
    auto header = child(d, whole(d, 0x30), 0, 0x30);
    for (const Tlv &c : children(d, header)) {
        Slot s = c.tag == 0xa4 ? TransactionId : c.tag == 0xa5 ? SenderNonce : RecipNonce;
        if (c.tag >= 0xa4 && c.tag <= 0xa6)
            f[s] = contents(child(d, c, 0, 0x04));
    }
    return f;
}

// The SignedData of a ContentInfo (RFC 5652 §3, §5.1): SEQUENCE { contentType, [0] EXPLICIT
// SignedData }.
std::optional<Tlv> signedData(Bytes d) {
    return child(d, child(d, whole(d, 0x30), 1, 0xa0), 0, 0x30);
}

// RFC 10002 §3.2: a Full PKI Request's PKIData and a Full PKI Response's PKIResponse both begin
// with their controls, SEQUENCE OF TaggedAttribute { bodyPartID, attrType, attrValues SET }, and
// travel as the eContent OCTET STRING of the SignedData's EncapsulatedContentInfo (RFC 5652
// §5.2). §6.6: transactionId is an INTEGER (id-cmc 5), senderNonce (id-cmc 6) and
// recipientNonce (id-cmc 7) OCTET STRINGs.
Fields cmcFields(Bytes d) {
    static const std::uint8_t idCmc[] = {0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x07};
    Fields f;
    auto eContent = child(d, child(d, child(d, signedData(d), 2, 0x30), 1, 0xa0), 0, 0x04);
    if (!eContent)
        return f;
    // The eContent's octets are themselves DER; walked in place, offsets stay the message's.
    auto body = tlvAt(d, eContent->body, eContent->end);
    if (!body || body->tag != 0x30 || body->end != eContent->end)
        return f;
    for (const Tlv &attr : children(d, child(d, body, 0, 0x30))) {
        auto type = child(d, attr, 1, 0x06);
        if (!type || type->end - type->body != sizeof idCmc + 1 ||
            std::memcmp(&d[type->body], idCmc, sizeof idCmc) != 0)
            continue;
        std::uint8_t arc = d[type->end - 1];
        if (arc == 5)
            f[TransactionId] = contents(child(d, child(d, attr, 2, 0x31), 0, 0x02));
        else if (arc == 6 || arc == 7)
            f[arc == 6 ? SenderNonce : RecipNonce] =
                contents(child(d, child(d, attr, 2, 0x31), 0, 0x04));
    }
    return f;
}

// RFC 2986 §4.1: CertificationRequestInfo { version, subject Name, subjectPKInfo, ... }, the
// whole Name and SubjectPublicKeyInfo TLVs.
Fields p10Fields(Bytes d) {
    Fields f;
    auto info = child(d, whole(d, 0x30), 0, 0x30);
    f[Subject] = tlvBytes(child(d, info, 1, 0x30));
    f[PublicKey] = tlvBytes(child(d, info, 2, 0x30));
    return f;
}

// RFC 10002 §4.1 certs-only: a SignedData whose certificates [0] IMPLICIT (RFC 5652 §5.1) come
// after version, digestAlgorithms and encapContentInfo; in the first one's TBSCertificate
// (RFC 5280 §4.1) the subject and subjectPublicKeyInfo follow [0] version, serialNumber,
// signature, issuer and validity.
Fields certsOnlyFields(Bytes d) {
    Fields f;
    auto tbs = child(d, child(d, child(d, signedData(d), 3, 0xa0), 0, 0x30), 0, 0x30);
    size_t first = child(d, tbs, 0, 0xa0) ? 1 : 0; // version is DEFAULT v1, so may be absent
    f[Subject] = tlvBytes(child(d, tbs, first + 4, 0x30));
    f[PublicKey] = tlvBytes(child(d, tbs, first + 5, 0x30));
    return f;
}

// ---- kinds: the template answer and what goes into it ----

struct Copy {
    const char *what;
    Slot from;
    size_t to, len;
    bool invert; // the answer's own nonce: the request's inverted, fresh for each request
};

struct Kind {
    std::string_view path;
    Fields (*requestFields)(Bytes);
    std::string head; // status line and headers, up to the body
    std::string answer;
    std::vector<Copy> copies;
    unsigned long answered = 0, refused = 0;
};

Bytes bytesOf(std::string_view s) {
    return {reinterpret_cast<const std::uint8_t *>(s.data()), s.size()};
}

// Loads a template answer and finds where each request value goes; a template without a field
// is a mistake in make_templates.sh, and stops the answerer before it serves anything.
Kind makeKind(std::string_view path, const std::string &file, const char *contentType,
              Fields (*requestFields)(Bytes), Fields (*answerFields)(Bytes),
              std::vector<std::pair<Slot, Slot>> into) {
    Kind k{path, requestFields, "", slurp(file), {}};
    k.head = std::string("HTTP/1.1 200 OK\r\nContent-Type: ") + contentType +
             "\r\nContent-Length: " + std::to_string(k.answer.size()) + "\r\n";
    Fields a = answerFields(bytesOf(k.answer));
    static const char *names[] = {"transaction ID", "sender nonce", "recipient nonce", "subject",
                                  "public key"};
    for (auto [to, from] : into) {
        if (a[to].len == 0)
            dieTemplate(file + " has no " + names[to]);
        // The answer's own senderNonce is the request's inverted: fresh for every request, as
        // RFC 9810 §5.1.1 and RFC 10002 §6.6 want a responder's nonce to be.
        k.copies.push_back({names[from], from, a[to].off, a[to].len, to == SenderNonce});
    }
    return k;
}

// Writes kind k's answer to `req` at the end of `out`, or says why it cannot.
std::optional<std::string> answer(Kind &k, Bytes req, std::string &out) {
    Fields f = k.requestFields(req);
    for (const Copy &c : k.copies)
        if (f[c.from].len != c.len)
            return std::string("the request's ") + c.what +
                   (f[c.from].len == 0 ? " is missing"
                                       : " is " + std::to_string(f[c.from].len) +
                                             " octets, the template's " + std::to_string(c.len));
    size_t at = out.size();
    out += k.answer;
    for (const Copy &c : k.copies)
        for (size_t i = 0; i < c.len; ++i)
            out[at + c.to + i] =
                static_cast<char>(c.invert ? ~req[f[c.from].off + i] : req[f[c.from].off + i]);
    return std::nullopt;
}

// ---- HTTP/1.1 (RFC 9112) over epoll ----

constexpr size_t maxHead = 16 * 1024, maxBody = 1 << 20, maxPendingOut = 256 * 1024;

struct Conn {
    Fd fd;
    std::string in, out;
    size_t inPos = 0, outPos = 0;
    bool closeAfter = false, continued = false, writing = false;
    explicit Conn(int f) : fd(f) {}
};

struct Server {
    std::vector<Kind> kinds;
    int ep = -1;
    std::vector<std::unique_ptr<Conn>> conns; // by file descriptor
    unsigned long badHttp = 0, notFound = 0, logged = 0;

    void close(int fd) { conns[static_cast<size_t>(fd)].reset(); }

    void watch(Conn &c, bool writing) {
        if (c.writing == writing)
            return;
        c.writing = writing;
        epoll_event ev{};
        ev.events = writing ? EPOLLOUT : EPOLLIN;
        ev.data.fd = c.fd.fd;
        if (::epoll_ctl(ep, EPOLL_CTL_MOD, c.fd.fd, &ev) != 0)
            die("epoll_ctl");
    }

    void accept(int listener) {
        for (;;) {
            int fd = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
                    return;
                die("accept");
            }
            int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (conns.size() <= static_cast<size_t>(fd))
                conns.resize(static_cast<size_t>(fd) + 1);
            conns[static_cast<size_t>(fd)] = std::make_unique<Conn>(fd);
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.fd = fd;
            if (::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0)
                die("epoll_ctl");
        }
    }

    // A response that ends the connection: the request cannot be framed, or is refused early.
    static void fail(Conn &c, const char *status, std::string_view why) {
        c.out += std::string("HTTP/1.1 ") + status +
                 "\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: " +
                 std::to_string(why.size() + 1) + "\r\n\r\n";
        c.out += why;
        c.out += '\n';
        c.closeAfter = true;
    }

    static bool startsWithNoCase(std::string_view s, std::string_view prefix) {
        return s.size() >= prefix.size() &&
               ::strncasecmp(s.data(), prefix.data(), prefix.size()) == 0;
    }

    static bool hasToken(std::string_view v, std::string_view token) {
        for (size_t i = 0; i + token.size() <= v.size(); ++i)
            if (::strncasecmp(v.data() + i, token.data(), token.size()) == 0)
                return true;
        return false;
    }

    // Answers every complete request in c.in, until one ends the connection or too much output
    // is pending (it is taken up again once that is written).
    void process(Conn &c) {
        while (!c.closeAfter && c.out.size() - c.outPos < maxPendingOut) {
            std::string_view in(c.in.data() + c.inPos, c.in.size() - c.inPos);
            size_t headEnd = in.find("\r\n\r\n");
            if (headEnd == std::string_view::npos) {
                if (in.size() > maxHead)
                    ++badHttp, fail(c, "431 Request Header Fields Too Large", "header too long");
                break;
            }
            std::string_view head = in.substr(0, headEnd + 2);
            size_t eol = head.find("\r\n");
            std::string_view line = head.substr(0, eol);
            size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
            if (sp1 == std::string_view::npos || sp2 == sp1) {
                ++badHttp, fail(c, "400 Bad Request", "bad request line");
                break;
            }
            std::string_view method = line.substr(0, sp1);
            std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
            std::string_view version = line.substr(sp2 + 1);
            // RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with keep-alive.
            bool keepAlive = version == "HTTP/1.1";
            size_t length = 0;
            bool haveLength = false, chunked = false, expect = false;
            for (size_t p = eol + 2; p < head.size();) {
                size_t e = head.find("\r\n", p);
                std::string_view h = head.substr(p, e - p);
                p = e + 2;
                size_t colon = h.find(':');
                if (colon == std::string_view::npos)
                    continue;
                std::string_view v = h.substr(colon + 1);
                while (!v.empty() && (v.front() == ' ' || v.front() == '\t'))
                    v.remove_prefix(1);
                std::string_view name = h.substr(0, colon);
                if (name.size() == 14 && startsWithNoCase(name, "content-length")) {
                    char *endp = nullptr;
                    std::string num(v);
                    unsigned long long n = std::strtoull(num.c_str(), &endp, 10);
                    if (num.empty() || *endp != '\0' || n > maxBody) {
                        ++badHttp, fail(c, "413 Content Too Large", "bad or large Content-Length");
                        break;
                    }
                    length = n, haveLength = true;
                } else if (name.size() == 17 && startsWithNoCase(name, "transfer-encoding")) {
                    chunked = true;
                } else if (name.size() == 10 && startsWithNoCase(name, "connection")) {
                    if (hasToken(v, "close"))
                        keepAlive = false;
                    else if (hasToken(v, "keep-alive"))
                        keepAlive = true;
                } else if (name.size() == 6 && startsWithNoCase(name, "expect")) {
                    expect = hasToken(v, "100-continue");
                }
            }
            if (c.closeAfter) // a bad Content-Length
                break;
            if (chunked) { // every client of the benchmark sends a Content-Length
                ++badHttp, fail(c, "501 Not Implemented", "chunked bodies are not read here");
                break;
            }
            if (method == "POST" && !haveLength) {
                ++badHttp, fail(c, "411 Length Required", "POST without Content-Length");
                break;
            }
            if (in.size() - headEnd - 4 < length) {
                // RFC 9110 §10.1.1: a client that waits for 100 (Continue) gets it.
                if (expect && !c.continued)
                    c.out += "HTTP/1.1 100 Continue\r\n\r\n", c.continued = true;
                break;
            }
            c.inPos += headEnd + 4 + length;
            c.continued = false;
            c.closeAfter = !keepAlive;
            Bytes body = bytesOf(in.substr(headEnd + 4, length));
            if (size_t q = target.find('?'); q != std::string_view::npos)
                target = target.substr(0, q);
            Kind *k = nullptr;
            for (Kind &kind : kinds)
                if (kind.path == target)
                    k = &kind;
            if (!k || method != "POST") {
                ++notFound;
                respondPlain(c, k ? "405 Method Not Allowed" : "404 Not Found",
                             k ? "only POST is answered" : "POST to /cmp, /cmc or /p10");
                continue;
            }
            size_t at = c.out.size();
            c.out += k->head;
            if (c.closeAfter)
                c.out += "Connection: close\r\n";
            c.out += "\r\n";
            if (auto why = answer(*k, body, c.out)) {
                c.out.resize(at);
                ++k->refused;
                if (logged++ < 10)
                    std::fprintf(stderr, "answerer: refused a request to %.*s: %s\n",
                                 static_cast<int>(k->path.size()), k->path.data(), why->c_str());
                respondPlain(c, "400 Bad Request", *why);
                continue;
            }
            ++k->answered;
        }
        if (c.inPos == c.in.size())
            c.in.clear(), c.inPos = 0;
        else if (c.inPos > 64 * 1024)
            c.in.erase(0, c.inPos), c.inPos = 0;
    }

    static void respondPlain(Conn &c, const char *status, std::string_view why) {
        c.out +=
            std::string("HTTP/1.1 ") + status +
            "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(why.size() + 1) +
            "\r\n" + (c.closeAfter ? "Connection: close\r\n" : "") + "\r\n";
        c.out += why;
        c.out += '\n';
    }

    // Writes what is pending; false when the connection is done with.
    bool flush(Conn &c) {
        while (c.outPos < c.out.size()) {
            ssize_t n =
                ::send(c.fd.fd, c.out.data() + c.outPos, c.out.size() - c.outPos, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN) {
                    watch(c, true);
                    return true;
                }
                return false;
            }
            c.outPos += static_cast<size_t>(n);
        }
        c.out.clear(), c.outPos = 0;
        watch(c, false);
        return !c.closeAfter;
    }

    void readable(Conn &c) {
        char buf[64 * 1024];
        for (;;) {
            ssize_t n = ::recv(c.fd.fd, buf, sizeof buf, 0);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                close(c.fd.fd);
                return;
            }
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                break;
            }
            c.in.append(buf, static_cast<size_t>(n));
            if (static_cast<size_t>(n) < sizeof buf)
                break;
        }
        process(c);
        if (!flush(c))
            close(c.fd.fd);
    }

    void writable(Conn &c) {
        if (!flush(c)) {
            close(c.fd.fd);
            return;
        }
        if (!c.writing) { // drained: take up requests held back while output was pending
            process(c);
            if (!flush(c))
                close(c.fd.fd);
        }
    }
};

} // namespace

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        std::fprintf(stderr, "usage: answerer TEMPLATE-DIR PORT-FILE [PORT]\n");
        return 64;
    }
    std::string dir = argv[1];
    Server s;
    // Content-Type per kind: RFC 9811 §3 for CMP, RFC 10003 §4 for CMC.
    s.kinds.push_back(makeKind(
        "/cmp", dir + "/rsp_cmp.der", "application/pkixcmp", cmpFields, cmpFields,
        {{TransactionId, TransactionId}, {RecipNonce, SenderNonce}, {SenderNonce, SenderNonce}}));
    s.kinds.push_back(makeKind(
        "/cmc", dir + "/rsp_cmc.der", "application/pkcs7-mime; smime-type=CMC-Response", cmcFields,
        cmcFields,
        {{TransactionId, TransactionId}, {RecipNonce, SenderNonce}, {SenderNonce, SenderNonce}}));
    s.kinds.push_back(makeKind("/p10", dir + "/rsp_p10.der",
                               "application/pkcs7-mime; smime-type=certs-only", p10Fields,
                               certsOnlyFields, {{Subject, Subject}, {PublicKey, PublicKey}}));

    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    if (::sigprocmask(SIG_BLOCK, &sigs, nullptr) != 0)
        die("sigprocmask");
    Fd sfd(::signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC));
    Fd listener(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (sfd.fd < 0 || listener.fd < 0)
        die("socket");
    int one = 1;
    ::setsockopt(listener.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK); // loopback only
    addr.sin_port = htons(static_cast<std::uint16_t>(argc == 4 ? std::atoi(argv[3]) : 0));
    socklen_t alen = sizeof addr;
    if (::bind(listener.fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0 ||
        ::listen(listener.fd, 1024) != 0 ||
        ::getsockname(listener.fd, reinterpret_cast<sockaddr *>(&addr), &alen) != 0)
        die("listen on 127.0.0.1");
    Fd ep(::epoll_create1(EPOLL_CLOEXEC));
    if (ep.fd < 0)
        die("epoll_create1");
    s.ep = ep.fd;
    for (int fd : {listener.fd, sfd.fd}) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = fd;
        if (::epoll_ctl(ep.fd, EPOLL_CTL_ADD, fd, &ev) != 0)
            die("epoll_ctl");
    }
    // The port file appears whole (rename), once the socket listens: its reader may connect.
    std::string portFile = argv[2], tmp = portFile + ".tmp";
    {
        std::ofstream pf(tmp);
        pf << ntohs(addr.sin_port) << "\n";
        if (!pf.flush())
            die("write " + tmp);
    }
    if (::rename(tmp.c_str(), portFile.c_str()) != 0)
        die("rename " + tmp);

    std::array<epoll_event, 256> events;
    for (;;) {
        int n = ::epoll_wait(ep.fd, events.data(), static_cast<int>(events.size()), -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; ++i) {
            int fd = events[static_cast<size_t>(i)].data.fd;
            if (fd == listener.fd) {
                s.accept(fd);
                continue;
            }
            if (fd == sfd.fd) {
                unsigned long total = 0, refused = 0;
                for (const Kind &k : s.kinds)
                    total += k.answered, refused += k.refused;
                std::fprintf(stderr,
                             "answerer: %lu answered (cmp %lu, cmc %lu, p10 %lu), %lu refused, "
                             "%lu not found, %lu bad HTTP\n",
                             total, s.kinds[0].answered, s.kinds[1].answered, s.kinds[2].answered,
                             refused, s.notFound, s.badHttp);
                return 0;
            }
            Conn *c = static_cast<size_t>(fd) < s.conns.size()
                          ? s.conns[static_cast<size_t>(fd)].get()
                          : nullptr;
            if (!c)
                continue; // closed by an earlier event of this round
            std::uint32_t e = events[static_cast<size_t>(i)].events;
            if (e & (EPOLLERR | EPOLLHUP) && !(e & EPOLLIN))
                s.close(fd);
            else if (c->writing)
                s.writable(*c);
            else
                s.readable(*c);
        }
    }
}
