// Small text helpers for what pkirelay prints and parses for operators: URLs with their
// credentials removed before they reach a log, durations such as "7d" on the command line, and
// a UTF-8 check that tells --json when a name can be given exactly.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pkirelay {

// The URL without the userinfo of its authority (RFC 3986 §3.2.1: "user:password@"), which
// must never be printed: "https://u:p@ca.example/x" -> "https://ca.example/x". Anything that
// does not look like scheme://authority is returned unchanged.
std::string redactUrl(std::string_view url);

// "30s", "15m", "12h", "7d" (a positive whole number and one unit) as milliseconds; nullopt for
// anything else, or for a value that does not fit.
std::optional<std::int64_t> parseDuration(std::string_view text);

// True when text is well-formed UTF-8 (RFC 3629 §4: no overlong forms, no surrogates, nothing
// above U+10FFFF).
bool isUtf8(std::string_view text);

// ASCII lower case (names, schemes, MIME types, file extensions: all case-insensitive ASCII).
std::string asciiLower(std::string_view text);

} // namespace pkirelay
