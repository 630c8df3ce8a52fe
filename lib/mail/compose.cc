// Writing mail (compose.h): replies and response entities, byte by byte.
//
// Why not mimetic here: its writer breaks base64 and text bodies with bare LF while headers get
// CRLF, and its boundary generator reseeds the global rand() (../shared/LIBRARIES.md). Mail
// that libcurl sends must be CRLF everywhere (it dot-stuffs only after CRLF, RFC 5321 §4.5.2),
// so the few fixed shapes below are written directly, and every line is ours: values that come
// from a request are reduced to one line of printable characters before they go in.
//
// The boundary is derived from the content (a SHA-256 of the text and the response, so it cannot
// occur in either, RFC 2046 §5.1.1): the same reply is the same bytes but for Date and
// Message-ID, which is what the golden-file test holds it to.
#include "compose.h"

#include <array>
#include <cctype>
#include <stdexcept>
#include <ctime>

#include <fmt/format.h>
#include <openssl/rand.h>

namespace pkirelay::mail {
namespace {

constexpr std::string_view kCrlf = "\r\n";

// One header value: no CR, LF or other control (no header injection), at most 900 bytes.
std::string headerValue(std::string_view v) {
    std::string out;
    for (char c : v) {
        auto u = static_cast<unsigned char>(c);
        if (c == '\t' || c == '\r' || c == '\n')
            out += ' ';
        else if (u >= 0x20 && u != 0x7f)
            out += c;
    }
    while (!out.empty() && out.back() == ' ')
        out.pop_back();
    std::size_t start = out.find_first_not_of(' ');
    out.erase(0, start == std::string::npos ? out.size() : start);
    if (out.size() > 900)
        out.resize(900);
    return out;
}

bool isAscii(std::string_view s) {
    for (char c : s)
        if (static_cast<unsigned char>(c) >= 0x80)
            return false;
    return true;
}

std::string base64(ByteView data) {
    static constexpr char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((data.size() + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 2 < data.size(); i += 3) {
        std::uint32_t v = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
        out += alphabet[(v >> 18) & 63];
        out += alphabet[(v >> 12) & 63];
        out += alphabet[(v >> 6) & 63];
        out += alphabet[v & 63];
    }
    if (i + 1 == data.size()) {
        std::uint32_t v = data[i] << 16;
        out += alphabet[(v >> 18) & 63];
        out += alphabet[(v >> 12) & 63];
        out += "==";
    } else if (i + 2 == data.size()) {
        std::uint32_t v = (data[i] << 16) | (data[i + 1] << 8);
        out += alphabet[(v >> 18) & 63];
        out += alphabet[(v >> 12) & 63];
        out += alphabet[(v >> 6) & 63];
        out += '=';
    }
    return out;
}

// RFC 2045 §6.8: encoded lines are no more than 76 characters, each ending in CRLF.
std::string base64Lines(ByteView data) {
    std::string b = base64(data), out;
    out.reserve(b.size() + b.size() / 76 * 2 + 2);
    for (std::size_t i = 0; i < b.size(); i += 76) {
        out.append(b, i, 76);
        out += kCrlf;
    }
    return out;
}

// RFC 2047 §5 (1): a Subject that is not ASCII goes as UTF-8 "B" encoded words of at most 75
// characters, split at character boundaries, folded onto continuation lines.
std::string encodeSubject(const std::string &s) {
    if (isAscii(s))
        return s;
    std::string out;
    std::size_t i = 0;
    while (i < s.size()) {
        std::size_t n = std::min<std::size_t>(45, s.size() - i);
        while (i + n < s.size() && (static_cast<unsigned char>(s[i + n]) & 0xc0) == 0x80)
            --n; // never split a UTF-8 sequence
        if (n == 0)
            n = 1;
        if (!out.empty())
            out += "\r\n ";
        out += "=?UTF-8?B?" + base64(asBytes(std::string_view(s).substr(i, n))) + "?=";
        i += n;
    }
    return out;
}

// Folds a list of message ids (References, RFC 5322 §3.6.4) at the spaces between them so that
// no line gets longer than 78 characters where that is possible.
std::string foldIds(std::string_view name, const std::string &ids) {
    std::string out(name);
    out += ':';
    std::size_t col = out.size();
    std::size_t i = 0;
    while (i < ids.size()) {
        std::size_t sp = ids.find(' ', i);
        std::string_view id =
            std::string_view(ids).substr(i, sp == std::string::npos ? sp : sp - i);
        if (!id.empty()) {
            if (col + 1 + id.size() > 78 && col > name.size() + 1) {
                out += "\r\n";
                col = 0;
            }
            out += ' ';
            out += id;
            col += 1 + id.size();
        }
        if (sp == std::string::npos)
            break;
        i = sp + 1;
    }
    out += kCrlf;
    return out;
}

// A name= the user's mail program can save: letters, digits, '.', '-', '_' only.
std::string safeName(Kind kind, std::string_view name) {
    std::string out;
    for (char c : name)
        if (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_')
            out += c;
    if (out.empty() || out.front() == '.' || out.size() > 64)
        return std::string(kindInfo(kind).mailName);
    return out;
}

// Text lines to CRLF, for a text/plain body.
std::string crlfText(std::string_view text) {
    std::string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '\r')
            continue;
        if (text[i] == '\n')
            out += kCrlf;
        else
            out += text[i];
    }
    if (!out.ends_with(kCrlf))
        out += kCrlf;
    return out;
}

// The attachment's header fields and body (RFC 10003 §3: the MIME type of its kind with
// smime-type where it has one, a name with the kind's extension; base64 as S/MIME does).
std::string attachment(Kind kind, ByteView response, std::string_view name) {
    std::string n = safeName(kind, name);
    std::string out =
        fmt::format("Content-Type: {};\r\n name=\"{}\"\r\n", kindInfo(kind).mimeType, n);
    out += "Content-Transfer-Encoding: base64\r\n";
    out += fmt::format("Content-Disposition: attachment; filename=\"{}\"\r\n", n);
    out += kCrlf;
    out += base64Lines(response);
    return out;
}

// Wraps a paragraph at 72 columns (at spaces; a longer word stays whole).
std::string wrap(std::string_view text) {
    std::string out, line;
    std::size_t i = 0;
    while (i < text.size()) {
        std::size_t sp = text.find(' ', i);
        std::string_view word = text.substr(i, sp == std::string_view::npos ? sp : sp - i);
        if (!line.empty() && line.size() + 1 + word.size() > 72) {
            out += line + "\n";
            line.clear();
        }
        if (!word.empty()) {
            if (!line.empty())
                line += ' ';
            line += word;
        }
        if (sp == std::string_view::npos)
            break;
        i = sp + 1;
    }
    if (!line.empty())
        out += line + "\n";
    return out;
}

} // namespace

std::string composeReply(const ReplySpec &spec, std::string_view date, std::string_view messageId) {
    std::string text = crlfText(spec.text);
    std::string digestInput = text;
    digestInput.append(asChars(spec.response));
    const std::string boundary = "=_pkirelay_" + sha256Hex(asBytes(digestInput)).substr(0, 32);

    std::string m;
    m += "From: " + headerValue(spec.from) + "\r\n";
    m += "To: " + headerValue(spec.to) + "\r\n";
    m += "Subject: " + encodeSubject(headerValue(spec.subject)) + "\r\n";
    m += "Date: " + headerValue(date) + "\r\n";
    m += "Message-ID: " + headerValue(messageId) + "\r\n";
    if (auto v = headerValue(spec.inReplyTo); !v.empty())
        m += "In-Reply-To: " + v + "\r\n";
    if (auto v = headerValue(spec.references); !v.empty())
        m += foldIds("References", v);
    // RFC 3834 §5.1: marks the reply as automatic, so that well-behaved responders do not answer.
    m += "Auto-Submitted: auto-replied\r\n";
    m += "MIME-Version: 1.0\r\n";
    m += "Content-Type: multipart/mixed;\r\n boundary=\"" + boundary + "\"\r\n";
    m += kCrlf;
    m += "This is a MIME message: a short text and the CA's response as an attachment.\r\n";
    m += "--" + boundary + "\r\n";
    if (isAscii(text)) {
        m += "Content-Type: text/plain; charset=us-ascii\r\n";
        m += "Content-Transfer-Encoding: 7bit\r\n\r\n";
        m += text;
    } else {
        m += "Content-Type: text/plain; charset=utf-8\r\n";
        m += "Content-Transfer-Encoding: base64\r\n\r\n";
        m += base64Lines(asBytes(text));
    }
    m += "--" + boundary + "\r\n";
    m += attachment(spec.kind, spec.response, spec.attachmentName);
    m += "--" + boundary + "--\r\n";
    return m;
}

std::string composeEntity(Kind kind, ByteView response, std::string_view attachmentName) {
    std::string m = "MIME-Version: 1.0\r\n";
    m += attachment(kind, response, attachmentName);
    return m;
}

std::string replyText(const ReplyFacts &facts) {
    std::string ref = headerValue(facts.requestRef);
    std::string what = ref.empty() ? "Your request" : "Your request " + ref;
    std::string detail = headerValue(facts.detail);
    std::string body;
    switch (facts.outcome) {
    case Outcome::Issued:
        body = wrap(what + " was granted by the certification authority. Its response, which "
                           "holds your certificate, is attached.");
        break;
    case Outcome::Rejected:
        body = wrap(what + " was rejected by the certification authority.");
        if (!detail.empty())
            body += wrap("The reason it gave: " + detail);
        body += wrap("Its response is attached.");
        break;
    case Outcome::Waiting:
        body = wrap(what + " is waiting for the certification authority.");
        body += wrap(detail.empty() ? "Ask again later, as its attached response says."
                                    : "Ask again " + detail + ".");
        body += wrap("Its response is attached.");
        break;
    case Outcome::Answered:
        body = wrap(what + " was answered by the certification authority. Its response is "
                           "attached.");
        if (!detail.empty())
            body += wrap(detail);
        break;
    }
    body += "\n";
    body += wrap("This is an automatic reply from pkirelay, the enrollment relay. Replies to it "
                 "are not read.");
    return body;
}

std::string rfc5322Date(std::int64_t unixSeconds) {
    // RFC 5322 §3.3, written from fixed English names: strftime would follow the locale.
    static constexpr std::array<const char *, 7> days = {"Sun", "Mon", "Tue", "Wed",
                                                         "Thu", "Fri", "Sat"};
    static constexpr std::array<const char *, 12> months = {
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    std::time_t t = static_cast<std::time_t>(unixSeconds);
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    return fmt::format("{}, {:02d} {} {:04d} {:02d}:{:02d}:{:02d} +0000", days[tm.tm_wday % 7],
                       tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                       tm.tm_sec);
}

std::string newMessageId(std::string_view domain) {
    std::array<unsigned char, 16> r{};
    if (::RAND_bytes(r.data(), static_cast<int>(r.size())) != 1)
        throw std::runtime_error("RAND_bytes failed: no Message-ID can be made");
    std::string d;
    for (char c : domain)
        if (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-')
            d += c;
    if (d.empty())
        d = "pkirelay.invalid";
    return "<" + toHex(ByteView(r.data(), r.size())) + ".pkirelay@" + d + ">";
}

} // namespace pkirelay::mail
