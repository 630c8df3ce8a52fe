// Strict PEM and base64 decoding (armor.h). The structure is checked here byte by byte; the
// decoding itself is OpenSSL's EVP_DecodeBlock, only ever given a validated, padded string.
#include "armor.h"
#include "bytes.h"

#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <openssl/evp.h>

namespace pkirelay::armor {
namespace {

bool isB64(std::uint8_t c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}
bool isSpace(std::uint8_t c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

int b64Value(char c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : 63;
}

// `chars` is the base64 text with line breaks removed; `offsets[i]` is where chars[i] was in
// the input, for messages. openEnded: the data ends where the input ends (bare base64), so an
// incomplete last quantum may be a file still being copied in; in PEM the END line closed it.
Bytes decodeChars(const std::string &chars, const std::vector<std::size_t> &offsets,
                  std::size_t endOffset, bool openEnded) {
    if (chars.empty())
        throw Error("no base64 data", endOffset, openEnded);
    if (chars.size() % 4 != 0)
        throw Error(fmt::format("{}base64 data has {} characters, not a multiple of 4",
                                openEnded ? "truncated: " : "", chars.size()),
                    endOffset, openEnded);
    std::size_t pad = 0;
    for (std::size_t i = 0; i < chars.size(); ++i) {
        if (chars[i] == '=') {
            // RFC 4648 §3.2/§4: padding only closes the final quantum, at most two '='.
            if (i + 2 < chars.size() || (i + 2 == chars.size() && chars[i + 1] != '='))
                throw Error(
                    fmt::format("base64 padding '=' inside the data at offset {}", offsets[i]),
                    offsets[i]);
            ++pad;
        }
    }
    // RFC 4648 §3.5: the bits that padding leaves over must be zero in canonical encodings.
    if (pad > 0) {
        const std::size_t last = chars.size() - pad - 1;
        const int v = b64Value(chars[last]);
        if ((pad == 1 && (v & 0x03)) || (pad == 2 && (v & 0x0f)))
            throw Error(
                fmt::format("base64 character at offset {} has non-zero pad bits", offsets[last]),
                offsets[last]);
    }
    if (chars.size() > 0x7fffffff)
        throw Error("base64 data too large", 0);
    Bytes out(chars.size() / 4 * 3);
    const int n =
        ::EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char *>(chars.data()),
                          static_cast<int>(chars.size()));
    if (n < 0 || static_cast<std::size_t>(n) != out.size())
        throw Error("base64 data rejected by the decoder", 0);
    // EVP_DecodeBlock counts the padded quantum as 3 bytes: drop one per '='.
    out.resize(out.size() - pad);
    return out;
}

} // namespace

bool isBase64Char(std::uint8_t c) {
    return isB64(c);
}

bool looksLikePem(ByteView text) {
    std::size_t i = 0;
    while (i < text.size() && isSpace(text[i]))
        ++i;
    return asChars(text.subspan(i)).starts_with("-----BEGIN ");
}

Bytes decodeBase64(ByteView text) {
    std::string chars;
    std::vector<std::size_t> offsets;
    chars.reserve(text.size());
    offsets.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        const std::uint8_t c = text[i];
        if (c == '\r' || c == '\n')
            continue;
        if (!isB64(c) && c != '=')
            throw Error(fmt::format("byte 0x{:02x} at offset {} is not base64", c, i), i);
        chars.push_back(static_cast<char>(c));
        offsets.push_back(i);
    }
    return decodeChars(chars, offsets, text.size(), true);
}

Pem decodePem(ByteView text) {
    const std::string_view s = asChars(text);
    std::size_t pos = 0;
    while (pos < s.size() && isSpace(s[pos]))
        ++pos;

    // Reads one line from pos: returns it without its line break (CRLF or LF) and without
    // trailing blanks (RFC 7468 §3 allows WSP before eol). nullopt-like empty + noEol when the
    // text ends without a line break.
    auto readLine = [&](std::size_t &p, bool &hadEol) {
        const std::size_t start = p;
        const std::size_t nl = s.find('\n', p);
        std::size_t stop = nl == std::string_view::npos ? s.size() : nl;
        hadEol = nl != std::string_view::npos;
        p = hadEol ? nl + 1 : s.size();
        if (stop > start && s[stop - 1] == '\r')
            --stop;
        while (stop > start && (s[stop - 1] == ' ' || s[stop - 1] == '\t'))
            --stop;
        return s.substr(start, stop - start);
    };

    const std::size_t beginOffset = pos;
    bool eol = false;
    const std::string_view begin = readLine(pos, eol);
    constexpr std::string_view kBegin = "-----BEGIN ", kEnd = "-----END ", kDashes = "-----";
    if (!begin.starts_with(kBegin) || !begin.ends_with(kDashes) ||
        begin.size() < kBegin.size() + kDashes.size())
        throw Error(fmt::format("no PEM BEGIN line at offset {}", beginOffset), beginOffset);
    const std::string_view label =
        begin.substr(kBegin.size(), begin.size() - kBegin.size() - kDashes.size());
    // RFC 7468 §3: label = [ labelchar *( ["-" / SP] labelchar ) ], labelchar printable ASCII
    // but hyphen: a hyphen or a space only inside, and never two of them in a row (so a label
    // cannot hold "-----", and the END line is never ambiguous).
    bool labelOk = label.empty() || (label.front() != '-' && label.front() != ' ' &&
                                     label.back() != '-' && label.back() != ' ');
    for (std::size_t i = 0; i < label.size(); ++i) {
        const char c = label[i];
        labelOk = labelOk && c >= 0x20 && c <= 0x7e;
        if (i > 0 && (c == '-' || c == ' ') && (label[i - 1] == '-' || label[i - 1] == ' '))
            labelOk = false;
    }
    if (!labelOk)
        throw Error(fmt::format("bad PEM label in the BEGIN line at offset {}", beginOffset),
                    beginOffset);

    std::string chars;
    std::vector<std::size_t> offsets;
    for (;;) {
        if (pos >= s.size())
            throw Error(fmt::format("truncated: the PEM block '{}' at offset {} has no END line",
                                    label, beginOffset),
                        s.size(), true);
        const std::size_t lineOffset = pos;
        const std::string_view line = readLine(pos, eol);
        // The last line of the input, cut short inside the END line: a file still being copied.
        const std::string expected = fmt::format("-----END {}-----", label);
        if (!eol && pos == s.size() && line.starts_with("-") && line != expected &&
            std::string_view(expected).starts_with(line))
            throw Error(fmt::format("truncated: the PEM block '{}' at offset {} ends inside its "
                                    "END line",
                                    label, beginOffset),
                        s.size(), true);
        if (line.starts_with(kEnd)) {
            if (line != expected)
                throw Error(fmt::format("PEM END line at offset {} does not match BEGIN label "
                                        "'{}'",
                                        lineOffset, label),
                            lineOffset);
            break;
        }
        if (line.empty())
            throw Error(fmt::format("empty line at offset {} inside PEM", lineOffset), lineOffset);
        if (line.find(':') != std::string_view::npos)
            // Quote at most a short, printable prefix: the line is hostile input.
            throw Error(
                fmt::format("PEM header at offset {} ('{}'): encrypted or RFC 1421 "
                            "PEM is not accepted",
                            lineOffset,
                            printable(line.substr(0, std::min<std::size_t>(line.find(':'), 40)))),
                lineOffset);
        for (std::size_t i = 0; i < line.size(); ++i) {
            const auto c = static_cast<std::uint8_t>(line[i]);
            if (!isB64(c) && c != '=')
                throw Error(fmt::format("byte 0x{:02x} at offset {} inside PEM is not base64", c,
                                        lineOffset + i),
                            lineOffset + i);
            chars.push_back(line[i]);
            offsets.push_back(lineOffset + i);
        }
    }
    for (std::size_t i = pos; i < s.size(); ++i)
        if (!isSpace(s[i]))
            throw Error(fmt::format("text after the PEM END line at offset {}", i), i);
    return Pem{std::string(label), decodeChars(chars, offsets, pos, false)};
}

} // namespace pkirelay::armor
