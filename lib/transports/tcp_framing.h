// The byte-level readers and writers of the two TCP transports, with no I/O, so that they can be
// tested and fuzzed alone (tests/fuzz/fuzz_cmc_tcp.cc, fuzz_cmp_tcp.cc):
//
// - CMC over TCP (RFC 5273 §5, RFC 10003 §5): no framing. The response is one BER value whose
//   end is found from its own encoding: a definite outer length says it at once; an indefinite
//   one (CMS allows BER) is walked value by value to its end-of-contents octets.
// - CMP over TCP, the legacy "direct TCP" protocol (port 829), in its two framings: RFC 2510 §5.2
//   (length, type, value) and the later drafts' version 10 (length, version, flags, type, value),
//   told apart by the fifth byte.
//
// Every input is hostile: a declared length larger than the limit is refused before anything
// more is read, nesting is bounded, and each reader says "need more", "complete at N bytes",
// "too large" or "malformed: why" for any prefix of any byte string.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "lib/bytes.h"

namespace pkirelay {

// Where a message ends in what was received so far.
struct Delimited {
    enum class State {
        NeedMore,  // not complete yet: read more
        Complete,  // the first `length` bytes are the message (anything after is not part of it)
        TooLarge,  // the message is, or would become, larger than the limit
        Malformed, // these bytes cannot be the start of a message; reason says why
    } state = State::NeedMore;
    std::size_t length = 0;
    std::string reason; // for TooLarge and Malformed
};

// Finds the end of one BER value (the outer SEQUENCE of a CMS ContentInfo) in a growing buffer
// (RFC 5273 §5: "the DER response is read until its outer length is complete"). Feed it the
// whole buffer received so far each time more arrives: it remembers where it got to, so each
// call costs only what is new. The buffer must only ever grow by appending.
class BerMessageScanner {
public:
    explicit BerMessageScanner(std::size_t maxSize, unsigned maxDepth = 64)
        : maxSize_(maxSize), maxDepth_(maxDepth) {}
    Delimited scan(ByteView buffered);

private:
    std::size_t maxSize_;
    unsigned maxDepth_;
    std::size_t pos_ = 0;  // the next header to read (for an indefinite outer value)
    unsigned depth_ = 0;   // indefinite-length values open at pos_
    bool started_ = false; // the outer header has been read
    std::optional<Delimited> final_;
};

// The two CMP-over-TCP framings (../shared/PROTOCOLS.md §5).
enum class CmpFraming : std::uint8_t {
    Rfc2510, // RFC 2510 §5.2: length (4, big-endian), type (1), value; length counts type+value
    V10,     // draft-ietf-pkix-cmp-tcp: length (4), version 10, flags (1), type (1), value
};

// Message types. RFC 2510 §5.2 and the version 10 drafts number them alike where they agree
// (pollRep 1, pollReq 2, errorMsgRep 6) and differ elsewhere.
namespace cmptcp {
// RFC 2510 §5.2.
inline constexpr std::uint8_t kPkiMsg = 0, kPollRep = 1, kPollReq = 2, kNegPollRep = 3,
                              kPartialMsgRep = 4, kFinalMsgRep = 5, kErrorMsgRep = 6;
// Version 10: pkiReq 0, pollRep 1, pollReq 2, finRep 3, pkiRep 5, errorMsgRep 6.
inline constexpr std::uint8_t kPkiReq = 0, kFinRep = 3, kPkiRep = 5;
inline constexpr std::uint8_t kVersion10 = 10;
// Version 10 flags: bit 0 asks the peer to close the connection after this message.
inline constexpr std::uint8_t kFlagCloseConnection = 0x01;
} // namespace cmptcp

struct CmpFrame {
    CmpFraming framing = CmpFraming::V10;
    std::uint8_t flags = 0; // version 10 only
    std::uint8_t type = 0;
    Bytes value;
};

// The frame's bytes on the wire.
Bytes encodeCmpFrame(const CmpFrame &frame);

// Where the first frame ends in a growing buffer; a value longer than maxValue is TooLarge as
// soon as the length field is in, before the value is read.
Delimited cmpFrameBoundary(ByteView buffered, std::size_t maxValue);

// Parses exactly one whole frame (as cmpFrameBoundary delimited it); nullopt when the bytes are
// not one frame.
std::optional<CmpFrame> parseCmpFrame(ByteView frame);

// pollRep (type 1 in both framings): polling reference and time to check back, 4 octets each.
struct CmpPollRep {
    std::uint32_t reference = 0;
    std::uint32_t checkBack = 0; // as sent; see pollDelaySeconds
};
std::optional<CmpPollRep> parsePollRep(ByteView value);
// partialMsgRep (RFC 2510 type 4): next polling reference, time to check back, PKIMessage.
std::optional<std::pair<CmpPollRep, ByteView>> parsePartialMsgRep(ByteView value);
// pollReq value: the polling reference.
Bytes pollReqValue(std::uint32_t reference);

// How long to wait before polling, in seconds, given the pollRep's time-to-check-back and the
// current time (seconds since 1970). Implementations of RFC 2510 (Wireshark's dissector, the
// SSH toolkit) read it as an absolute UNIX time; a small value can only be a relative delay
// (a time before 2001 is in the past for any server that answers today), so both are accepted.
std::uint64_t pollDelaySeconds(std::uint32_t checkBack, std::uint64_t now);

// A frame type for logs: "pollRep", "errorMsgRep", "type 9".
std::string cmpFrameTypeName(CmpFraming framing, std::uint8_t type);

// An errorMsgRep's value for a log line: its text made printable and cut to a few hundred bytes.
std::string cmpErrorText(ByteView value);

} // namespace pkirelay
