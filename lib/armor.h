// Strict decoding of the armoured forms a PKI message may arrive in as a convenience: PEM
// (RFC 7468) and bare base64 (RFC 4648 §4, with line breaks). The input is untrusted text:
// anything that is not clean armour is refused with a reason and an offset, never guessed at
// (mimetic's lenient decoder skips garbage, so it must not be used for this).
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

#include "bytes.h"
#include "parse_error.h"

namespace pkirelay::armor {

// Offsets are in the armoured text; truncated() means e.g. a PEM block without its END line.
using Error = ParseError;

struct Pem {
    std::string label; // "CMS", "CERTIFICATE REQUEST", ...
    Bytes data;
};

// True when the text, after leading whitespace, starts with "-----BEGIN ".
// One character of the base64 alphabet (RFC 4648 §4), padding excluded.
bool isBase64Char(std::uint8_t c);

bool looksLikePem(ByteView text);

// One PEM block: whitespace only around it, matching BEGIN/END labels, only base64 lines in
// between (RFC 7468 §3 strict form); RFC 1421 headers (Proc-Type, DEK-Info) are refused.
Pem decodePem(ByteView text);
// Bare base64: alphabet and CR/LF only, '=' padding only at the very end, a multiple of 4
// characters once line breaks are removed, zero pad bits (RFC 4648 §3.5).
Bytes decodeBase64(ByteView text);

} // namespace pkirelay::armor
