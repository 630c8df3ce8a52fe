// Byte buffers and their printable forms. Messages are opaque bytes everywhere except in the
// classifier, so one alias and a hex helper serve the whole program.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pkirelay {

using Bytes = std::vector<std::uint8_t>;
using ByteView = std::span<const std::uint8_t>;

// Lower-case hex without separators ("0a1b").
std::string toHex(ByteView bytes);

inline ByteView asBytes(std::string_view s) {
    return {reinterpret_cast<const std::uint8_t *>(s.data()), s.size()};
}

inline std::string_view asChars(ByteView b) {
    return {reinterpret_cast<const char *>(b.data()), b.size()};
}

// Text from a message or a folder, made safe to print and to put in JSON: valid UTF-8 stays as
// it is, while control characters and bytes that are not valid UTF-8 become "\xNN". Names in
// hostile messages and files must not drive a terminal or break a JSON encoder.
std::string printable(std::string_view text);

// SHA-256 of the bytes, as lower-case hex: the content hash of an item in the store.
std::string sha256Hex(ByteView bytes);

} // namespace pkirelay
