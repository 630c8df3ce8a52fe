// Finding PKI requests in mail (mime.h): the one place pkirelay parses MIME.
//
// What it trusts: nothing in the input. mimetic parses one entity's header block at a time (its
// fields, unfolding and Content-Type parameters); the bodies are split at their boundaries here,
// not by mimetic, because mimetic's parser and its destructor recurse once per nesting level
// with no bound and it has no limit on part count (../shared/LIBRARIES.md). So depth and part
// count are counted here before anything is parsed, every decoded layer is held to maxSize, and
// base64 goes through the strict decoder of lib/armor.h (mimetic's turns garbage into bytes).
//
// S/MIME: an application/pkcs7-mime part, or a bare .p7m, is looked at by its bytes, not only by
// its label: EnvelopedData is decrypted with the configured key (RFC 8551 §3.3), SignedData
// around id-data is a signed layer (verified against the trust store when one is configured,
// else unwrapped; RFC 8551 §3.4.2), multipart/signed is a detached signature over the exact
// bytes of its first part (RFC 1847 §2.1, RFC 8551 §3.5). A SignedData around id-cct-PKIData is
// a CMC Full PKI Request, the request itself, never a layer (RFC 10002 §3.2). After a layer the
// content may be a MIME entity or bare DER (RFC 10003 §3): both are handled.
#include "mime.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <mimetic/mimetic.h>
#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "lib/text.h"
#include "lib/armor.h"
#include "lib/owned.h"
#include "lib/parse_error.h"

namespace pkirelay::mail {
namespace {

using Cms = Owned<CMS_ContentInfo, ::CMS_ContentInfo_free>;
using Bio = Owned<BIO, ::BIO_free_all>;
using Pkey = Owned<EVP_PKEY, ::EVP_PKEY_free>;
using Cert = Owned<X509, ::X509_free>;
using Store = Owned<X509_STORE, ::X509_STORE_free>;
// sk_X509_free is a macro; CMS_get0_signers returns a stack whose certificates it does not own.
void freeCertStack(STACK_OF(X509) * s) {
    sk_X509_free(s);
}
using CertStack = Owned<STACK_OF(X509), freeCertStack>;

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

std::string_view trim(std::string_view s) {
    while (!s.empty() &&
           (s.front() == ' ' || s.front() == '\t' || s.front() == '\r' || s.front() == '\n'))
        s.remove_prefix(1);
    while (!s.empty() &&
           (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
        s.remove_suffix(1);
    return s;
}

// RFC 5322 §2.2.3: unfolding removes the CRLF before folding whitespace. Any other CR or LF
// (and other controls but tab) is dropped as well, so no value taken from a request can carry
// a line break into a reply's header.
std::string unfold(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        auto u = static_cast<unsigned char>(c);
        if (c == '\t')
            out += ' ';
        else if (u >= 0x20 && u != 0x7f)
            out += c;
    }
    return std::string(trim(out));
}

std::string opensslErrors() {
    std::string out;
    unsigned long e;
    while ((e = ::ERR_get_error()) != 0) {
        char buf[256];
        ::ERR_error_string_n(e, buf, sizeof buf);
        if (!out.empty())
            out += "; ";
        out += buf;
    }
    return out.empty() ? "no detail from OpenSSL" : out;
}

// --- RFC 2047 encoded words (Subject) ---------------------------------------------------------

void latin1ToUtf8(std::string_view in, std::string &out) {
    for (char c : in) {
        auto u = static_cast<unsigned char>(c);
        if (u < 0x80) {
            out += c;
        } else {
            out += static_cast<char>(0xc0 | (u >> 6));
            out += static_cast<char>(0x80 | (u & 0x3f));
        }
    }
}

int hexValue(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

// One encoded-word "=?charset?B|Q?text?=" (RFC 2047 §2), decoded to UTF-8 where the charset is
// UTF-8, US-ASCII or ISO-8859-1; nullopt when it is not a well-formed encoded word.
std::optional<std::string> decodeWord(std::string_view w) {
    if (w.size() < 8 || !w.starts_with("=?") || !w.ends_with("?="))
        return std::nullopt;
    std::string_view inner = w.substr(2, w.size() - 4);
    auto q1 = inner.find('?');
    if (q1 == std::string_view::npos || q1 + 2 >= inner.size() || inner[q1 + 2] != '?')
        return std::nullopt;
    std::string charset = asciiLower(inner.substr(0, q1));
    if (auto star = charset.find('*'); star != std::string::npos) // RFC 2231 §5 language
        charset.erase(star);
    char enc = static_cast<char>(std::toupper(static_cast<unsigned char>(inner[q1 + 1])));
    std::string_view text = inner.substr(q1 + 3);
    std::string raw;
    if (enc == 'B') {
        auto b = decodeBase64Strict(text);
        if (!b)
            return std::nullopt;
        raw.assign(b->begin(), b->end());
    } else if (enc == 'Q') {
        for (std::size_t i = 0; i < text.size(); ++i) {
            if (text[i] == '_') {
                raw += ' '; // RFC 2047 §4.2 (2)
            } else if (text[i] == '=') {
                if (i + 2 >= text.size())
                    return std::nullopt;
                int h = hexValue(text[i + 1]), l = hexValue(text[i + 2]);
                if (h < 0 || l < 0)
                    return std::nullopt;
                raw += static_cast<char>(h * 16 + l);
                i += 2;
            } else {
                raw += text[i];
            }
        }
    } else {
        return std::nullopt;
    }
    std::string out;
    if (charset == "iso-8859-1" || charset == "latin1")
        latin1ToUtf8(raw, out);
    else
        out = raw; // UTF-8, US-ASCII, or bytes that printable() makes safe later
    return out;
}

// Decodes the encoded words of an unstructured header (RFC 2047 §5 (1)); linear whitespace
// between two adjacent encoded words is dropped (§6.2).
std::string decodeHeaderText(std::string_view v) {
    std::string out;
    bool lastWasWord = false;
    std::string pendingSpace;
    std::size_t i = 0;
    while (i < v.size()) {
        if (v[i] == ' ' || v[i] == '\t') {
            pendingSpace += v[i++];
            continue;
        }
        std::size_t end = v.find_first_of(" \t", i);
        if (end == std::string_view::npos)
            end = v.size();
        std::string_view tok = v.substr(i, end - i);
        if (auto d = decodeWord(tok)) {
            if (!lastWasWord)
                out += pendingSpace;
            out += *d;
            lastWasWord = true;
        } else {
            out += pendingSpace;
            out += tok;
            lastWasWord = false;
        }
        pendingSpace.clear();
        i = end;
    }
    return printable(out);
}

// --- one MIME entity ----------------------------------------------------------------------------

// An entity's header fields as mimetic parsed them, and its body as bytes of the input.
struct Entity {
    std::unique_ptr<mimetic::MimeEntity> me;
    std::string_view body;
    std::string type; // "type/subtype", lower case; text/plain when absent (RFC 2045 §5.2)

    std::string field(std::string_view name) const {
        for (const auto &f : me->header())
            if (iequals(std::string(f.name()), name))
                return unfold(f.value());
        return {};
    }
    bool hasField(std::string_view name) const {
        for (const auto &f : me->header())
            if (iequals(std::string(f.name()), name))
                return true;
        return false;
    }
    std::string ctParam(const char *name) const {
        return unfold(me->header().contentType().param(name));
    }
};

// True when the bytes start like a header block: a field name (RFC 5322 §3.6.8, printable
// ASCII but ':') and a colon on the first line. DER, PEM and bare base64 never do.
bool looksLikeHeaders(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size() && i < 1000) {
        auto c = static_cast<unsigned char>(s[i]);
        if (c == ':')
            return i > 0;
        if (c < 33 || c > 126)
            return false;
        ++i;
    }
    return false;
}

// True when the DER starts as a ContentInfo of signedData (RFC 5652 §3, §5.1): SEQUENCE, its
// length, then OID 1.2.840.113549.1.7.2. A cheap look before OpenSSL parses the whole thing.
bool isSignedData(ByteView der) {
    static constexpr std::uint8_t oid[] = {0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                                           0xf7, 0x0d, 0x01, 0x07, 0x02};
    if (der.size() < 2 + sizeof oid || der[0] != 0x30)
        return false;
    std::size_t at = 2;
    if (der[1] & 0x80) {
        at += der[1] & 0x7f; // long form: that many length octets follow
        if ((der[1] & 0x7f) > 4)
            return false;
    }
    return der.size() >= at + sizeof oid && std::equal(oid, oid + sizeof oid, der.begin() + at);
}

// Splits at the first empty line (CRLF CRLF, or LF LF for mail saved on Unix).
constexpr std::size_t kMaxHeaderBytes = 102400;

Entity parseEntity(std::string_view s) {
    std::size_t headerEnd = s.size(), bodyStart = s.size();
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '\n')
            continue;
        std::size_t j = i + 1;
        if (j < s.size() && s[j] == '\r')
            ++j;
        if (j < s.size() && s[j] == '\n') {
            headerEnd = i + 1;
            bodyStart = j + 1;
            break;
        }
    }
    if (!s.empty() && (s[0] == '\n' || s.starts_with("\r\n"))) { // no header fields at all
        headerEnd = 0;
        bodyStart = s[0] == '\n' ? 1 : 2;
    }
    // mimetic's header parser costs the square of a field's length (a 4 MiB header line is
    // almost a minute of CPU with the event loop blocked): the header block is bounded first,
    // at Postfix's header_size_limit (102400 bytes), far above any real mail's.
    if (headerEnd > kMaxHeaderBytes)
        throw ParseError(fmt::format("a header block of more than {} bytes", kMaxHeaderBytes), 0);
    std::string header(s.substr(0, headerEnd));
    header += "\r\n";
    Entity e;
    // Only the header block goes to mimetic, and its bodies are masked: nothing recurses.
    e.me = std::make_unique<mimetic::MimeEntity>(header.begin(), header.end(),
                                                 mimetic::imBody | mimetic::imChildParts |
                                                     mimetic::imPreamble | mimetic::imEpilogue);
    e.body = s.substr(std::min(bodyStart, s.size()));
    const auto &ct = e.me->header().contentType();
    std::string type = asciiLower(std::string(ct.type())),
                sub = asciiLower(std::string(ct.subtype()));
    e.type = type.empty() ? "text/plain" : type + "/" + sub;
    return e;
}

// RFC 2046 §5.1.1: the parts between "--boundary" delimiter lines; the line break before a
// delimiter belongs to it. Transport padding after a delimiter is allowed. closed says whether
// the close delimiter "--boundary--" was seen.
std::vector<std::string_view> splitMultipart(std::string_view body, std::string_view boundary,
                                             bool &closed, std::size_t maxParts) {
    std::vector<std::string_view> parts;
    closed = false;
    const std::string dash = "--" + std::string(boundary);
    std::size_t partStart = std::string_view::npos;
    std::size_t pos = 0;
    while (pos <= body.size()) {
        std::size_t eol = body.find('\n', pos);
        std::size_t lineEnd = eol == std::string_view::npos ? body.size() : eol;
        std::string_view line = body.substr(pos, lineEnd - pos);
        if (line.ends_with('\r'))
            line.remove_suffix(1);
        if (line.starts_with(dash)) {
            std::string_view rest = line.substr(dash.size());
            bool close = rest.starts_with("--");
            if (close)
                rest.remove_prefix(2);
            if (trim(rest).empty()) {
                if (partStart != std::string_view::npos) {
                    // The part ends before the line break that precedes this delimiter.
                    std::size_t end = pos;
                    if (end > partStart && body[end - 1] == '\n')
                        --end;
                    if (end > partStart && body[end - 1] == '\r')
                        --end;
                    parts.push_back(body.substr(partStart, end - partStart));
                    if (parts.size() > maxParts)
                        return parts;
                }
                if (close) {
                    closed = true;
                    return parts;
                }
                partStart = eol == std::string_view::npos ? body.size() : eol + 1;
            }
        }
        if (eol == std::string_view::npos)
            break;
        pos = eol + 1;
    }
    if (partStart != std::string_view::npos)
        parts.push_back(body.substr(partStart));
    return parts;
}

// RFC 2045 §6.7, decoded strictly: "=XX" with hex digits, "=" at a line end is a soft break,
// trailing whitespace on a line is dropped (rule 3); any other "=" is an error.
std::optional<std::string> decodeQuotedPrintable(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    std::size_t pos = 0;
    while (pos < s.size()) {
        std::size_t eol = s.find('\n', pos);
        bool hasEol = eol != std::string_view::npos;
        std::string_view line = s.substr(pos, (hasEol ? eol : s.size()) - pos);
        if (line.ends_with('\r'))
            line.remove_suffix(1);
        while (!line.empty() && (line.back() == ' ' || line.back() == '\t'))
            line.remove_suffix(1);
        bool soft = false;
        for (std::size_t i = 0; i < line.size(); ++i) {
            if (line[i] != '=') {
                out += line[i];
                continue;
            }
            if (i + 1 == line.size()) {
                soft = true;
                break;
            }
            if (i + 2 >= line.size())
                return std::nullopt;
            int h = hexValue(line[i + 1]), l = hexValue(line[i + 2]);
            if (h < 0 || l < 0)
                return std::nullopt;
            out += static_cast<char>(h * 16 + l);
            i += 2;
        }
        if (hasEol && !soft)
            out += "\r\n";
        pos = hasEol ? eol + 1 : s.size();
    }
    return out;
}

// RFC 2231 §4 extended value "charset'language'percent-encoded" (the name*= of a file).
std::string decode2231(std::string_view v) {
    auto q1 = v.find('\'');
    auto q2 = q1 == std::string_view::npos ? q1 : v.find('\'', q1 + 1);
    if (q2 == std::string_view::npos)
        return std::string(v);
    std::string out;
    for (std::size_t i = q2 + 1; i < v.size(); ++i) {
        if (v[i] == '%' && i + 2 < v.size() && hexValue(v[i + 1]) >= 0 && hexValue(v[i + 2]) >= 0) {
            out += static_cast<char>(hexValue(v[i + 1]) * 16 + hexValue(v[i + 2]));
            i += 2;
        } else {
            out += v[i];
        }
    }
    return out;
}

std::string partName(const Entity &e) {
    const auto &cd = e.me->header().contentDisposition();
    for (const char *p : {"filename", "filename*"}) {
        std::string v = unfold(cd.param(p));
        if (!v.empty())
            return printable(p[8] == '*' ? decode2231(v) : v);
    }
    for (const char *p : {"name", "name*"}) {
        std::string v = e.ctParam(p);
        if (!v.empty())
            return printable(p[4] == '*' ? decode2231(v) : v);
    }
    return {};
}

// --- the walk -----------------------------------------------------------------------------------

struct Context {
    bool verified = false;
    bool decrypted = false;
    std::string signer;
};

class Walker {
public:
    Walker(const Limits &limits, const SmimeConfig &smime, Extracted &out)
        : limits_(limits), smime_(smime), out_(out) {}

    // Any content: a MIME entity, or (after an S/MIME layer, or a bare .p7m) DER or armour.
    void content(std::string_view bytes, const std::string &where, int depth, const Context &ctx,
                 bool top = false) {
        if (stopped_)
            return;
        if (++parts_ > limits_.maxParts) {
            problem(where, fmt::format("more than {} MIME parts: the rest of the mail is not read",
                                       limits_.maxParts));
            stopped_ = true;
            return;
        }
        if (depth > limits_.maxDepth) {
            problem(where,
                    fmt::format("nested more than {} levels deep: not read", limits_.maxDepth));
            return;
        }
        if (bytes.size() > limits_.maxSize) {
            problem(where, fmt::format("{} bytes, more than the limit of {}", bytes.size(),
                                       limits_.maxSize));
            return;
        }
        if (top && bytes.starts_with("From ")) {
            // An mbox separator line ("From ann@example.org Tue Dec  1 ..."), which mail
            // programs leave at the top of a saved mail: not a header field.
            auto eol = bytes.find('\n');
            bytes.remove_prefix(eol == std::string_view::npos ? bytes.size() : eol + 1);
        }
        if (!looksLikeHeaders(bytes)) {
            payload(asBytes(bytes), where, depth, ctx, {}, {});
            return;
        }
        Entity e = parseEntity(bytes);
        if (top)
            headers(e);
        entity(e, where, depth, ctx);
    }

    bool stopped() const { return stopped_; }

private:
    void problem(const std::string &where, const std::string &what) {
        out_.problems.push_back(where.empty() ? what : where + ": " + what);
    }

    void headers(const Entity &e) {
        Headers &h = out_.headers;
        h.messageId = e.field("Message-ID");
        h.from = e.field("From");
        h.replyTo = e.field("Reply-To");
        h.returnPath = e.field("Return-Path");
        h.subject = decodeHeaderText(e.field("Subject"));
        h.inReplyTo = e.field("In-Reply-To");
        h.references = e.field("References");
        h.date = e.field("Date");

        // RFC 3834 §5: auto-generated mail is never answered (no backscatter, no mail loops).
        std::string why;
        std::string autoSubmitted = asciiLower(e.field("Auto-Submitted"));
        if (auto semi = autoSubmitted.find(';'); semi != std::string::npos)
            autoSubmitted.erase(semi);
        autoSubmitted = std::string(trim(autoSubmitted));
        std::string precedence = asciiLower(std::string(trim(e.field("Precedence"))));
        std::string rp = std::string(trim(h.returnPath));
        auto isDaemon = [](const std::string &from) {
            std::string a = asciiLower(addressOf(from));
            auto at = a.find('@');
            std::string local = a.substr(0, at);
            return local == "mailer-daemon" || local == "postmaster";
        };
        bool listField = false;
        for (const auto &f : e.me->header())
            if (asciiLower(std::string(f.name())).starts_with("list-"))
                listField = true;
        if (!autoSubmitted.empty() && autoSubmitted != "no")
            why = "Auto-Submitted: " + autoSubmitted;
        else if (precedence == "bulk" || precedence == "list" || precedence == "junk")
            why = "Precedence: " + precedence;
        else if (listField)
            why = "mailing-list traffic (List-* header fields)";
        else if (rp == "<>" || rp == "< >")
            why = "null Return-Path (a bounce)";
        else if (e.type == "multipart/report" || e.type == "message/delivery-status" ||
                 e.type == "message/disposition-notification")
            why = "a delivery or disposition report (" + e.type + ")";
        else if (isDaemon(h.from) || (!rp.empty() && isDaemon(rp)))
            why = "sent by a mailer daemon or postmaster";
        h.autoGenerated = why;
    }

    std::optional<std::string> decodeBody(const Entity &e, const std::string &where) {
        std::string cte = asciiLower(std::string(trim(e.field("Content-Transfer-Encoding"))));
        if (cte.empty() || cte == "7bit" || cte == "8bit" || cte == "binary")
            return std::string(e.body);
        if (cte == "base64") {
            try {
                Bytes b = armor::decodeBase64(asBytes(stripBlanks(e.body)));
                if (b.size() > limits_.maxSize)
                    throw ParseError("decoded content too large", 0);
                return std::string(asChars(b));
            } catch (const ParseError &err) {
                problem(where, "bad base64: " + err.reason());
                return std::nullopt;
            }
        }
        if (cte == "quoted-printable") {
            auto d = decodeQuotedPrintable(e.body);
            if (!d)
                problem(where, "bad quoted-printable");
            return d;
        }
        problem(where, "unknown Content-Transfer-Encoding " + printable(cte));
        return std::nullopt;
    }

    static std::string stripBlanks(std::string_view s) {
        // RFC 2045 §6.8 lines end in CRLF; spaces and tabs are transport padding, not data.
        std::string out;
        out.reserve(s.size());
        for (char c : s)
            if (c != ' ' && c != '\t')
                out += c;
        return std::string(trim(out));
    }

    static bool namedLikeRequest(const std::string &name) {
        std::string n = asciiLower(name);
        for (const char *ext : {".p10", ".crq", ".pki", ".der", ".csr", ".p7m"})
            if (n.ends_with(ext))
                return true;
        return false;
    }

    void entity(const Entity &e, const std::string &where, int depth, const Context &ctx) {
        const std::string &t = e.type;
        std::string label = where.empty() ? t : where + " (" + t + ")";
        if (t == "multipart/report") {
            problem(label, "a delivery report: what it quotes is not relayed");
            return;
        }
        if (t == "multipart/signed") {
            multipartSigned(e, label, depth, ctx);
            return;
        }
        if (t.starts_with("multipart/")) {
            std::string boundary = e.ctParam("boundary");
            if (boundary.empty() || boundary.size() > 70) {
                problem(label, "multipart without a usable boundary");
                return;
            }
            bool closed = false;
            auto parts = splitMultipart(e.body, boundary, closed,
                                        static_cast<std::size_t>(limits_.maxParts));
            if (!closed) {
                problem(label, "no closing boundary: the mail may be truncated");
                out_.truncated = true;
            }
            for (std::size_t i = 0; i < parts.size() && !stopped_; ++i)
                content(parts[i],
                        where.empty() ? fmt::format("part {}", i + 1)
                                      : fmt::format("{}.{}", where, i + 1),
                        depth + 1, ctx);
            return;
        }
        if (t == "message/rfc822") {
            auto body = decodeBody(e, label);
            if (body)
                content(*body, label, depth + 1, ctx);
            return;
        }
        std::string name = partName(e);
        bool pkcs7 = t == "application/pkcs7-mime" || t == "application/x-pkcs7-mime";
        bool known = pkcs7 || t == "application/pkcs10" || t == "application/x-pkcs10" ||
                     t == "application/pkixcmp" || t == "application/x-pkixcmp" ||
                     t == "application/pkixcmp-poll";
        bool named = (t == "application/octet-stream" || t == "application/x-x509-ca-cert") &&
                     namedLikeRequest(name);
        if (t == "text/plain") {
            // A PEM pasted into the text of a mail is taken when it is one clean request.
            auto body = decodeBody(e, label);
            if (body && armor::looksLikePem(asBytes(*body))) {
                auto c = classify(asBytes(trim(*body)), classifyLimits());
                if (auto *m = std::get_if<Message>(&c); m && m->isRequest())
                    found(std::move(*m), name, t, ctx);
            }
            return;
        }
        if (!known && !named) {
            if (!t.starts_with("text/"))
                problem(label, "not a PKI request type" +
                                   (name.empty() ? std::string() : " (\"" + name + "\")"));
            return;
        }
        auto body = decodeBody(e, label);
        if (!body)
            return;
        payload(asBytes(*body), label, depth, ctx, name, t);
    }

    ClassifyLimits classifyLimits() const {
        ClassifyLimits l;
        l.maxSize = limits_.maxSize;
        return l;
    }

    // Bytes that are a PKI message or a CMS layer around one.
    void payload(ByteView bytes, const std::string &where, int depth, const Context &ctx,
                 const std::string &name, const std::string &type) {
        // The classifier first: it is cheap, and it alone decides what a PKI message is. OpenSSL
        // parses CMS (d2i_CMS_ContentInfo costs about a millisecond here, most of it decoding
        // the certificates) only where a layer may have to come off: EnvelopedData, or a
        // SignedData the classifier refuses (one around id-data, RFC 8551 §3.4.2).
        auto c = classify(bytes, classifyLimits());
        auto *classified = std::get_if<Message>(&c);
        if (classified == nullptr || classified->kind == Kind::CmcEnveloped) {
            Bytes der;
            ByteView view = bytes;
            if (classified != nullptr) {
                view = classified->der;
            } else if (!bytes.empty() && bytes[0] != 0x30) {
                // Armour (PEM or base64) as a convenience: the layer test needs the DER.
                try {
                    der = armor::looksLikePem(bytes)
                              ? armor::decodePem(bytes).data
                              : armor::decodeBase64(asBytes(trim(asChars(bytes))));
                    view = der;
                } catch (const ParseError &) {
                }
            }
            if ((classified != nullptr || isSignedData(view)) && view.size() <= limits_.maxSize &&
                cmsLayer(view, where, depth, ctx))
                return;
        }
        if (auto *r = std::get_if<Rejection>(&c)) {
            problem(where, "not a PKI message: " + r->reason);
            out_.truncated = out_.truncated || r->truncated;
            return;
        }
        auto &m = std::get<Message>(c);
        if (!m.isRequest()) {
            problem(where,
                    std::string("a ") + std::string(kindInfo(m.kind).title) + ", not a request");
            return;
        }
        Context here = ctx;
        if (m.kind == Kind::CmcFullRequest && !here.verified && !smime_.trustFile.empty())
            verifyOwnSignature(m.der, here);
        found(std::move(m), name, type, here);
    }

    void found(Message m, const std::string &name, const std::string &type, const Context &ctx) {
        if (smime_.requireSigned && !ctx.verified) {
            problem(name.empty() ? type : name,
                    "the request is not under a verified signature (require_signed)");
            return;
        }
        if (ctx.verified && !ctx.signer.empty())
            out_.signer = ctx.signer;
        if (ctx.decrypted)
            out_.decrypted = true;
        verifiedFlags_.push_back(ctx.verified);
        out_.requests.push_back(FoundRequest{std::move(m), name, type});
    }

    // Returns true when the DER is an S/MIME layer that was handled (opened or refused); false
    // when it is to be classified as a PKI message itself.
    bool cmsLayer(ByteView der, const std::string &where, int depth, const Context &ctx) {
        ::ERR_clear_error();
        const unsigned char *p = der.data();
        Cms cms(::d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(der.size())));
        if (!cms || p != der.data() + der.size()) {
            ::ERR_clear_error();
            return false;
        }
        int type = ::OBJ_obj2nid(::CMS_get0_type(cms.get()));
        if (type == NID_pkcs7_enveloped)
            return envelope(cms.get(), where, depth, ctx);
        if (type != NID_pkcs7_signed)
            return false;
        if (::OBJ_obj2nid(::CMS_get0_eContentType(cms.get())) != NID_pkcs7_data)
            return false; // a CMC Full PKI Request or Response: the message itself
        ASN1_OCTET_STRING **ec = ::CMS_get0_content(cms.get());
        if (ec == nullptr || *ec == nullptr) {
            if (sk_CMS_SignerInfo_num(::CMS_get0_SignerInfos(cms.get())) == 0)
                return false; // certs-only: a response, classified as one
            problem(where, "a signature without its content (detached, outside multipart/signed)");
            return true;
        }
        Context inner = ctx;
        std::string body(reinterpret_cast<const char *>(::ASN1_STRING_get0_data(*ec)),
                         static_cast<std::size_t>(::ASN1_STRING_length(*ec)));
        if (!smime_.trustFile.empty()) {
            if (!verify(cms.get(), nullptr, where, inner))
                return true;
        }
        content(body, where + " [signed]", depth + 1, inner);
        return true;
    }

    bool envelope(CMS_ContentInfo *cms, const std::string &where, int depth, const Context &ctx) {
        if (smime_.decryptKeyFile.empty() || smime_.decryptCertFile.empty())
            return false; // relayed as it is: encrypted for the CA (routed by source)
        if (!loadDecryptKey(where))
            return true;
        ::ERR_clear_error();
        Bio out(::BIO_new(::BIO_s_mem()));
        // Without CMS_DEBUG_DECRYPT a wrong key gives random content rather than an error (the
        // MMA countermeasure, RFC 3218 §2.3): the classification of the content then fails.
        if (::CMS_decrypt(cms, key_.get(), cert_.get(), nullptr, out.get(), CMS_BINARY) != 1) {
            unsigned long e = ::ERR_peek_error();
            if (ERR_GET_REASON(e) == CMS_R_NO_MATCHING_RECIPIENT) {
                ::ERR_clear_error();
                return false; // not for us: an encrypted CMC request for the CA itself
            }
            problem(where, "could not decrypt: " + opensslErrors());
            return true;
        }
        char *data = nullptr;
        long n = ::BIO_get_mem_data(out.get(), &data);
        Context inner = ctx;
        inner.decrypted = true;
        content(std::string_view(data, static_cast<std::size_t>(n)), where + " [decrypted]",
                depth + 1, inner);
        return true;
    }

    bool loadDecryptKey(const std::string &where) {
        if (key_ && cert_)
            return true;
        ::ERR_clear_error();
        Bio kb(::BIO_new_file(smime_.decryptKeyFile.c_str(), "r"));
        if (kb)
            key_.reset(::PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr));
        Bio cb(::BIO_new_file(smime_.decryptCertFile.c_str(), "r"));
        if (cb)
            cert_.reset(::PEM_read_bio_X509(cb.get(), nullptr, nullptr, nullptr));
        if (!key_ || !cert_) {
            problem(where, "the decryption key or certificate cannot be read: " + opensslErrors());
            key_.reset();
            cert_.reset();
            return false;
        }
        return true;
    }

    X509_STORE *trustStore(const std::string &where) {
        if (store_)
            return store_.get();
        ::ERR_clear_error();
        store_.reset(::X509_STORE_new());
        if (!store_ || ::X509_STORE_load_file(store_.get(), smime_.trustFile.c_str()) != 1) {
            problem(where, "the trust store cannot be read: " + opensslErrors());
            store_.reset();
            return nullptr;
        }
        return store_.get();
    }

    // Verifies a signed layer; with detached, over those bytes. Sets ctx.verified and signer.
    bool verify(CMS_ContentInfo *cms, BIO *detached, const std::string &where, Context &ctx) {
        X509_STORE *store = trustStore(where);
        if (store == nullptr)
            return false;
        ::ERR_clear_error();
        // CMS_BINARY: the bytes are digested as they are; canonical CRLF is the caller's choice
        // (multipartSigned tries the bytes as received, then in canonical form).
        if (::CMS_verify(cms, nullptr, store, detached, nullptr, CMS_BINARY) != 1) {
            lastVerifyError_ = opensslErrors();
            return false;
        }
        verifyCtxFrom(cms, ctx);
        return true;
    }

    // A CMC Full PKI Request signed with a certificate the trust store knows (an RA's) counts as
    // signed; one signed by the enrollee's new key alone cannot verify and stays unverified.
    void verifyOwnSignature(const Bytes &der, Context &ctx) {
        const unsigned char *p = der.data();
        Cms cms(::d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(der.size())));
        if (!cms)
            return;
        X509_STORE *store = trustStore("");
        if (store == nullptr)
            return;
        ::ERR_clear_error();
        Bio sink(::BIO_new(::BIO_s_null()));
        if (::CMS_verify(cms.get(), nullptr, store, nullptr, sink.get(), CMS_BINARY) == 1)
            verifyCtxFrom(cms.get(), ctx);
        ::ERR_clear_error();
    }

    static void verifyCtxFrom(CMS_ContentInfo *cms, Context &ctx) {
        ctx.verified = true;
        CertStack signers(::CMS_get0_signers(cms));
        if (signers && sk_X509_num(signers.get()) > 0) {
            char buf[512];
            ::X509_NAME_oneline(::X509_get_subject_name(sk_X509_value(signers.get(), 0)), buf,
                                sizeof buf);
            ctx.signer = printable(buf);
        }
    }

    static std::string toCrlf(std::string_view s) {
        std::string out;
        out.reserve(s.size() + s.size() / 32);
        for (std::size_t i = 0; i < s.size(); ++i) {
            if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r'))
                out += '\r';
            out += s[i];
        }
        return out;
    }

    // RFC 1847 §2.1 / RFC 8551 §3.5.3: two parts, the signed entity and its detached signature.
    void multipartSigned(const Entity &e, const std::string &label, int depth, const Context &ctx) {
        std::string boundary = e.ctParam("boundary");
        if (boundary.empty() || boundary.size() > 70) {
            problem(label, "multipart/signed without a usable boundary");
            return;
        }
        bool closed = false;
        auto parts = splitMultipart(e.body, boundary, closed, 2);
        if (parts.size() != 2 || !closed) {
            problem(label, "multipart/signed needs exactly two parts and a closing boundary");
            return;
        }
        parts_ += 2;
        Context inner = ctx;
        if (!smime_.trustFile.empty()) {
            Entity sigPart = parseEntity(parts[1]);
            if (sigPart.type != "application/pkcs7-signature" &&
                sigPart.type != "application/x-pkcs7-signature") {
                problem(label, "the second part is " + sigPart.type + ", not a signature");
                return;
            }
            auto sig = decodeBody(sigPart, label + " signature");
            if (!sig)
                return;
            const auto *p = reinterpret_cast<const unsigned char *>(sig->data());
            ::ERR_clear_error();
            Cms cms(::d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(sig->size())));
            if (!cms) {
                problem(label, "the signature is not CMS: " + opensslErrors());
                return;
            }
            bool ok = false;
            for (const std::string &form : {std::string(parts[0]), toCrlf(parts[0])}) {
                Bio data(::BIO_new_mem_buf(form.data(), static_cast<int>(form.size())));
                if (verify(cms.get(), data.get(), label, inner)) {
                    ok = true;
                    break;
                }
            }
            if (!ok) {
                problem(label, "the signature does not verify, its content is not used: " +
                                   lastVerifyError_);
                return;
            }
        }
        content(parts[0], label + " [signed]", depth + 1, inner);
    }

    const Limits &limits_;
    const SmimeConfig &smime_;
    Extracted &out_;
    int parts_ = 0;
    bool stopped_ = false;
    Pkey key_;
    Cert cert_;
    Store store_;
    std::string lastVerifyError_;
    std::vector<bool> verifiedFlags_; // per request found: under a verified signature

public:
    bool allVerified() const {
        return std::all_of(verifiedFlags_.begin(), verifiedFlags_.end(), [](bool b) { return b; });
    }
};

} // namespace

std::optional<Bytes> decodeBase64Strict(std::string_view text) {
    std::string clean;
    clean.reserve(text.size());
    for (char c : text)
        if (c != ' ' && c != '\t')
            clean += c;
    try {
        return armor::decodeBase64(asBytes(trim(clean)));
    } catch (const ParseError &) {
        return std::nullopt;
    }
}

std::string addressOf(std::string_view value) {
    std::string v = unfold(value);
    auto lt = v.rfind('<');
    if (lt != std::string::npos) {
        auto gt = v.find('>', lt);
        if (gt != std::string::npos)
            return std::string(trim(std::string_view(v).substr(lt + 1, gt - lt - 1)));
    }
    // "a@b (comment)" or a bare address: the first word that holds an '@'.
    std::string_view sv = v;
    while (!sv.empty()) {
        auto sp = sv.find_first_of(" \t,");
        std::string_view w = sv.substr(0, sp);
        if (w.find('@') != std::string_view::npos)
            return std::string(w);
        if (sp == std::string_view::npos)
            break;
        sv.remove_prefix(sp + 1);
    }
    return std::string(trim(v));
}

std::optional<Bytes> singlePartBody(ByteView entity, const Limits &limits) {
    try {
        std::string_view s = asChars(entity);
        if (entity.size() > limits.maxSize || !looksLikeHeaders(s))
            return std::nullopt;
        Entity e = parseEntity(s);
        if (e.type.starts_with("multipart/") || e.type.starts_with("message/"))
            return std::nullopt;
        std::string cte = asciiLower(std::string(trim(e.field("Content-Transfer-Encoding"))));
        if (cte == "base64")
            return decodeBase64Strict(e.body);
        if (cte.empty() || cte == "binary" || cte == "8bit" || cte == "7bit")
            return Bytes(e.body.begin(), e.body.end());
    } catch (const std::exception &) {
    }
    return std::nullopt;
}

bool isMailFileName(std::string_view name) {
    std::string n = asciiLower(name);
    return n.ends_with(".eml") || n.ends_with(".p7m");
}

Extracted extract(ByteView entity, const Limits &limits, const SmimeConfig &smime) {
    Extracted out;
    try {
        if (entity.size() > limits.maxSize) {
            out.noRequestReason = fmt::format("the mail holds {} bytes, more than the limit of {}",
                                              entity.size(), limits.maxSize);
            return out;
        }
        if (smime.requireSigned && smime.trustFile.empty())
            out.problems.push_back("require_signed without a trust store: nothing can verify");
        Walker w(limits, smime, out);
        w.content(asChars(entity), "", 0, Context{}, true);
        out.signatureVerified = !out.requests.empty() && w.allVerified();
    } catch (const std::bad_alloc &) {
        throw;
    } catch (const std::exception &e) {
        // mimetic throws on nothing documented, but a parser of hostile input is held to "never
        // throws": whatever escapes is recorded as a problem of this mail.
        out.problems.push_back(std::string("the mail could not be parsed: ") + e.what());
    }
    if (out.requests.empty()) {
        out.noRequestReason =
            out.noRequestReason.empty() ? "no PKI request in the mail" : out.noRequestReason;
        if (!out.problems.empty())
            out.noRequestReason += " (" + out.problems.front() + ")";
    }
    return out;
}

} // namespace pkirelay::mail
