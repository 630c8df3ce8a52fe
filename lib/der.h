// A strict, bounded DER/BER reader for untrusted input (../shared/STYLE.md, after Botan's BER
// decoder). It trusts nothing in the bytes: every length is checked against what is left of the
// enclosing value, nesting is limited, and every error names the absolute byte offset in the
// input. It decodes only the framing (X.690 §8.1) plus the few primitive types the classifier
// reads (OID, small INTEGER, OCTET STRING); everything else stays opaque bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "bytes.h"
#include "parse_error.h"

namespace pkirelay::der {

struct Limits {
    unsigned maxDepth = 32; // deepest nesting of constructed values; the outermost is depth 1
};

// truncated() is true when the input ended before a value that was still open (a file still
// being copied in), false for everything else.
using Error = ParseError;

enum class TagClass : std::uint8_t { Universal = 0, Application = 1, Context = 2, Private = 3 };

struct Tag {
    TagClass cls = TagClass::Universal;
    bool constructed = false;
    std::uint32_t number = 0;
    friend bool operator==(const Tag &, const Tag &) = default;
};

// Universal tag numbers used by the classifier (X.680 §8.4).
inline constexpr std::uint32_t kInteger = 2, kBitString = 3, kOctetString = 4, kNull = 5, kOid = 6,
                               kUtf8String = 12, kSequence = 16, kSet = 17, kIa5String = 22,
                               kGeneralizedTime = 24;

constexpr Tag universal(std::uint32_t number, bool constructed = false) {
    return {TagClass::Universal, constructed, number};
}
constexpr Tag sequenceTag() {
    return universal(kSequence, true);
}
constexpr Tag setTag() {
    return universal(kSet, true);
}
constexpr Tag context(std::uint32_t number, bool constructed) {
    return {TagClass::Context, constructed, number};
}

// "SEQUENCE", "OCTET STRING", "[0]", "[APPLICATION 3]", "[UNIVERSAL 30]": for messages.
std::string tagName(const Tag &tag);

// One decoded TLV. Views point into the buffer given to the Reader.
struct Tlv {
    Tag tag;
    std::size_t offset = 0;       // absolute offset of the identifier octet
    std::size_t headerLength = 0; // identifier and length octets
    bool indefinite = false;      // BER indefinite length (X.690 §8.1.3.6)
    ByteView content;             // the contents octets (without end-of-contents)
    ByteView encoding;            // the whole TLV, end-of-contents included

    bool is(const Tag &t) const { return tag == t; }
    std::size_t contentOffset() const { return offset + headerLength; }
    std::size_t end() const { return offset + encoding.size(); }
};

// Reads the values inside one scope (the whole input, or the contents of a constructed value)
// one after the other. Reading a constructed value checks its whole subtree: lengths, depth and
// end-of-contents, so that a Tlv handed out is always well-formed.
class Reader {
public:
    // The top-level scope: `input` holds zero or more values. `baseOffset` is added to every
    // offset (for DER nested inside an OCTET STRING that is not a slice of the input).
    explicit Reader(ByteView input, Limits limits = {}, std::size_t baseOffset = 0);

    bool atEnd() const { return pos_ == end_; }
    std::size_t offset() const; // absolute offset of the next value (or of the scope's end)

    // The next value; throws Error when there is none or it is malformed.
    Tlv next();
    // The next value, named in the error when it is missing.
    Tlv next(std::string_view what);
    // The next value when it has this tag, else nothing is consumed.
    std::optional<Tlv> nextIf(const Tag &tag);
    // The next value, which must have this tag.
    Tlv expect(const Tag &tag, std::string_view what);
    // The tag of the next value without consuming it (nullopt at the end of the scope).
    std::optional<Tag> peekTag() const;

    // A reader over the contents of a constructed value read from this reader (one level deeper).
    // Every Tlv a Reader hands out was checked throughout, so the new reader does not check
    // its values' subtrees again.
    Reader enter(const Tlv &tlv) const;
    // Throws unless the scope is exhausted: "<what> has 2 unexpected extra bytes at offset N".
    void expectEnd(std::string_view what) const;

    unsigned depth() const { return depth_; }
    const Limits &limits() const { return limits_; }

private:
    Reader(const std::uint8_t *base, std::size_t baseOffset, std::size_t pos, std::size_t end,
           unsigned depth, Limits limits, bool endIsInputEnd, bool checked);
    Tlv parseAt(std::size_t pos, std::size_t end, unsigned depth, bool endIsInputEnd) const;
    std::size_t abs(std::size_t pos) const { return baseOffset_ + pos; }

    const std::uint8_t *base_; // start of the buffer; positions are relative to it
    std::size_t baseOffset_;
    std::size_t pos_;
    std::size_t end_;
    unsigned depth_; // depth of the values this reader hands out
    Limits limits_;
    bool endIsInputEnd_; // running out of this scope means the input itself ended
    // The values of this scope were checked throughout when their enclosing value was read (a
    // reader made by enter()): reading a constructed one does not walk its subtree again, so
    // the classifier's descent costs one walk of the message, not one per level.
    bool checked_;
};

// Parses `input` as exactly one value (checking its whole tree); trailing bytes are an error.
Tlv parseOne(ByteView input, Limits limits = {}, std::size_t baseOffset = 0);

// OBJECT IDENTIFIER to dotted decimal (X.690 §8.19); rejects empty and non-minimal encodings.
std::string oidToString(const Tlv &tlv);
// INTEGER that fits in 64 bits (X.690 §8.3); rejects empty and longer contents.
std::int64_t toInt(const Tlv &tlv);
// The contents octets of an INTEGER (two's complement, as encoded), checked non-empty.
Bytes integerBytes(const Tlv &tlv);
// OCTET STRING contents; a BER constructed OCTET STRING is its chunks concatenated (X.690
// §8.7.3). `reader` is the reader the value came from (for depth and offsets).
Bytes octetString(const Tlv &tlv, const Reader &reader);

} // namespace pkirelay::der
