// Text helpers for operators' output and input (text.h).
#include "text.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <limits>

namespace pkirelay {

std::string redactUrl(std::string_view url) {
    const auto scheme = url.find("://");
    if (scheme == std::string_view::npos || scheme == 0)
        return std::string(url);
    for (char c : url.substr(0, scheme))
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '-' || c == '.'))
            return std::string(url);
    const std::size_t start = scheme + 3;
    // RFC 3986 §3.2: the authority ends at the first '/', '?' or '#'; the userinfo is what comes
    // before its last '@' (a password may itself contain an unescaped '@').
    const std::size_t end = std::min(url.find_first_of("/?#", start), url.size());
    const auto authority = url.substr(start, end - start);
    const auto at = authority.rfind('@');
    if (at == std::string_view::npos)
        return std::string(url);
    std::string out(url.substr(0, start));
    out += authority.substr(at + 1);
    out += url.substr(end);
    return out;
}

std::optional<std::int64_t> parseDuration(std::string_view text) {
    if (text.size() < 2)
        return std::nullopt;
    std::int64_t unit = 0;
    switch (text.back()) {
    case 's':
        unit = 1000;
        break;
    case 'm':
        unit = 60 * 1000;
        break;
    case 'h':
        unit = 3600 * 1000;
        break;
    case 'd':
        unit = 86400 * 1000;
        break;
    default:
        return std::nullopt;
    }
    const auto digits = text.substr(0, text.size() - 1);
    std::int64_t n = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
    if (ec != std::errc() || end != digits.data() + digits.size() || n <= 0 ||
        n > std::numeric_limits<std::int64_t>::max() / unit)
        return std::nullopt;
    return n * unit;
}

bool isUtf8(std::string_view text) {
    for (std::size_t i = 0; i < text.size();) {
        const auto c = static_cast<unsigned char>(text[i]);
        if (c < 0x80) {
            ++i;
            continue;
        }
        const std::size_t len = c >= 0xc2 && c <= 0xdf   ? 2
                                : c >= 0xe0 && c <= 0xef ? 3
                                : c >= 0xf0 && c <= 0xf4 ? 4
                                                         : 0;
        if (len == 0 || i + len > text.size())
            return false;
        for (std::size_t k = 1; k < len; ++k)
            if ((static_cast<unsigned char>(text[i + k]) & 0xc0) != 0x80)
                return false;
        const auto c1 = static_cast<unsigned char>(text[i + 1]);
        if ((c == 0xe0 && c1 < 0xa0) || (c == 0xed && c1 >= 0xa0) || (c == 0xf0 && c1 < 0x90) ||
            (c == 0xf4 && c1 >= 0x90))
            return false;
        i += len;
    }
    return true;
}

std::string asciiLower(std::string_view text) {
    std::string out(text);
    for (auto &c : out)
        if (c >= 'A' && c <= 'Z')
            c = static_cast<char>(c - 'A' + 'a');
    return out;
}

} // namespace pkirelay
