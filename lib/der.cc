// The DER/BER reader (der.h). Input is untrusted: positions are size_t indexes checked against
// the end of the enclosing scope before every read, never pointers walked past an end. Lengths
// are at most 4 octets (4 GiB, far above any message limit), so they cannot overflow size_t.
#include "der.h"

#include <charconv>

#include <fmt/format.h>

namespace pkirelay::der {
namespace {

// X.690 §8.1.2.4: a high tag number takes at most this many subsequent octets here (2^28 tags
// are far beyond anything in PKIX; the bound keeps the arithmetic in 32 bits).
constexpr std::size_t kMaxTagOctets = 4;
// X.690 §8.1.3.5: long-form lengths. More than 4 length octets would declare more than 4 GiB.
constexpr std::size_t kMaxLengthOctets = 4;

std::string_view universalName(std::uint32_t n) {
    switch (n) {
    case 1:
        return "BOOLEAN";
    case kInteger:
        return "INTEGER";
    case kBitString:
        return "BIT STRING";
    case kOctetString:
        return "OCTET STRING";
    case kNull:
        return "NULL";
    case kOid:
        return "OBJECT IDENTIFIER";
    case 10:
        return "ENUMERATED";
    case kUtf8String:
        return "UTF8String";
    case kSequence:
        return "SEQUENCE";
    case kSet:
        return "SET";
    case 19:
        return "PrintableString";
    case kIa5String:
        return "IA5String";
    case 23:
        return "UTCTime";
    case kGeneralizedTime:
        return "GeneralizedTime";
    default:
        return {};
    }
}

} // namespace

std::string tagName(const Tag &tag) {
    switch (tag.cls) {
    case TagClass::Universal: {
        auto name = universalName(tag.number);
        if (!name.empty())
            return std::string(name);
        return fmt::format("[UNIVERSAL {}]", tag.number);
    }
    case TagClass::Application:
        return fmt::format("[APPLICATION {}]", tag.number);
    case TagClass::Context:
        return fmt::format("[{}]", tag.number);
    case TagClass::Private:
        return fmt::format("[PRIVATE {}]", tag.number);
    }
    return "?";
}

Reader::Reader(ByteView input, Limits limits, std::size_t baseOffset)
    : Reader(input.data(), baseOffset, 0, input.size(), 1, limits, true, false) {}

Reader::Reader(const std::uint8_t *base, std::size_t baseOffset, std::size_t pos, std::size_t end,
               unsigned depth, Limits limits, bool endIsInputEnd, bool checked)
    : base_(base), baseOffset_(baseOffset), pos_(pos), end_(end), depth_(depth), limits_(limits),
      endIsInputEnd_(endIsInputEnd), checked_(checked) {}

std::size_t Reader::offset() const {
    return abs(pos_);
}

Tlv Reader::parseAt(std::size_t pos, std::size_t end, unsigned depth, bool endIsInputEnd) const {
    const std::size_t start = pos;
    auto cutOff = [&](std::string_view what) {
        if (endIsInputEnd)
            return Error(fmt::format("truncated: the input ends inside the {} of the value at "
                                     "offset {}",
                                     what, abs(start)),
                         abs(end), true);
        return Error(fmt::format("the {} of the value at offset {} runs past the end of its "
                                 "enclosing value (offset {})",
                                 what, abs(start), abs(end)),
                     abs(start));
    };
    if (pos >= end)
        throw cutOff("identifier");

    // Identifier octets (X.690 §8.1.2).
    const std::uint8_t first = base_[pos++];
    if (first == 0x00)
        throw Error(fmt::format("end-of-contents octets at offset {} outside an indefinite-length "
                                "value",
                                abs(start)),
                    abs(start));
    Tag tag;
    tag.cls = static_cast<TagClass>(first >> 6);
    tag.constructed = (first & 0x20) != 0;
    tag.number = first & 0x1f;
    if (tag.number == 0x1f) {
        // §8.1.2.4.2: base-128, high bit set on all but the last octet; the first subsequent
        // octet must not be 0x80 (leading zero bits), and numbers below 31 use the short form.
        std::uint32_t number = 0;
        for (std::size_t i = 0;; ++i) {
            if (pos >= end)
                throw cutOff("tag");
            if (i == kMaxTagOctets)
                throw Error(fmt::format("the tag number at offset {} has more than {} octets",
                                        abs(start), kMaxTagOctets),
                            abs(start));
            const std::uint8_t b = base_[pos++];
            if (i == 0 && b == 0x80)
                throw Error(
                    fmt::format("the tag number at offset {} has a leading zero octet", abs(start)),
                    abs(start));
            number = (number << 7) | (b & 0x7f);
            if ((b & 0x80) == 0)
                break;
        }
        if (number < 0x1f)
            throw Error(fmt::format("the tag number {} at offset {} uses the multi-octet form",
                                    number, abs(start)),
                        abs(start));
        tag.number = number;
    }
    // The tag's name is only for error text: built when an error is thrown, never on the way
    // through a well-formed value (the classifier reads every message this way).
    const auto name = [&tag] {
        return tagName(tag);
    };

    if (tag.constructed && !checked_ && depth > limits_.maxDepth)
        throw Error(fmt::format("nesting deeper than {} levels: the {} at offset {}",
                                limits_.maxDepth, name(), abs(start)),
                    abs(start));

    // Length octets (X.690 §8.1.3).
    if (pos >= end)
        throw cutOff("length");
    const std::uint8_t l = base_[pos++];
    Tlv tlv;
    tlv.tag = tag;
    tlv.offset = abs(start);
    if (l == 0x80) {
        // §8.1.3.6.1: the indefinite form is only for constructed encodings.
        if (!tag.constructed)
            throw Error(fmt::format("the primitive {} at offset {} has an indefinite length",
                                    name(), abs(start)),
                        abs(start));
        tlv.indefinite = true;
        tlv.headerLength = pos - start;
        // The contents are values up to end-of-contents (two zero octets), found by reading
        // them; they share the enclosing scope's end.
        Reader children(base_, baseOffset_, pos, end, depth + 1, limits_, endIsInputEnd, checked_);
        for (;;) {
            if (children.pos_ >= end) {
                if (endIsInputEnd)
                    throw Error(fmt::format("truncated: the {} at offset {} has an indefinite "
                                            "length and the input ends before its "
                                            "end-of-contents",
                                            name(), abs(start)),
                                abs(end), true);
                throw Error(fmt::format("the {} at offset {} has an indefinite length and no "
                                        "end-of-contents before the end of its enclosing value",
                                        name(), abs(start)),
                            abs(start));
            }
            if (base_[children.pos_] == 0x00) {
                if (children.pos_ + 1 >= end)
                    throw cutOff("end-of-contents");
                if (base_[children.pos_ + 1] != 0x00)
                    throw Error(
                        fmt::format("malformed end-of-contents at offset {}", abs(children.pos_)),
                        abs(children.pos_));
                tlv.content = {base_ + pos, children.pos_ - pos};
                tlv.encoding = {base_ + start, children.pos_ + 2 - start};
                return tlv;
            }
            children.next();
        }
    }
    if (l == 0xff)
        throw Error(fmt::format("the {} at offset {} has the reserved length octet 0xff", name(),
                                abs(start)),
                    abs(start));
    std::uint64_t length = l;
    if (l & 0x80) {
        const std::size_t n = l & 0x7f;
        if (n > kMaxLengthOctets)
            throw Error(fmt::format("the {} at offset {} has a length of {} octets (at most {} "
                                    "are accepted)",
                                    name(), abs(start), n, kMaxLengthOctets),
                        abs(start));
        length = 0;
        for (std::size_t i = 0; i < n; ++i) {
            if (pos >= end)
                throw cutOff("length");
            length = (length << 8) | base_[pos++];
        }
    }
    const std::size_t remaining = end - pos;
    if (length > remaining) {
        if (endIsInputEnd)
            throw Error(fmt::format("truncated: the {} at offset {} declares {} bytes but only {} "
                                    "remain",
                                    name(), abs(start), length, remaining),
                        abs(start), true);
        throw Error(fmt::format("the {} at offset {} declares {} bytes but only {} remain in its "
                                "enclosing value",
                                name(), abs(start), length, remaining),
                    abs(start));
    }
    tlv.headerLength = pos - start;
    tlv.content = {base_ + pos, static_cast<std::size_t>(length)};
    tlv.encoding = {base_ + start, tlv.headerLength + static_cast<std::size_t>(length)};
    if (tag.constructed && !checked_) {
        // Check the whole subtree now, so every Tlv handed out is well-formed throughout.
        Reader children(base_, baseOffset_, pos, pos + length, depth + 1, limits_, false, false);
        while (!children.atEnd())
            children.next();
    }
    return tlv;
}

Tlv Reader::next() {
    if (atEnd()) {
        if (endIsInputEnd_)
            throw Error(fmt::format("truncated: the input ends at offset {} where a value should "
                                    "start",
                                    abs(pos_)),
                        abs(pos_), true);
        throw Error(fmt::format("a value is missing at offset {}", abs(pos_)), abs(pos_));
    }
    Tlv tlv = parseAt(pos_, end_, depth_, endIsInputEnd_);
    pos_ += tlv.encoding.size();
    return tlv;
}

Tlv Reader::next(std::string_view what) {
    if (atEnd() && !endIsInputEnd_)
        throw Error(fmt::format("{} is missing at offset {}", what, abs(pos_)), abs(pos_));
    return next();
}

std::optional<Tag> Reader::peekTag() const {
    if (atEnd())
        return std::nullopt;
    // Parsing validates the value; peeking is rare enough (optional fields) not to matter.
    return parseAt(pos_, end_, depth_, endIsInputEnd_).tag;
}

std::optional<Tlv> Reader::nextIf(const Tag &tag) {
    if (atEnd())
        return std::nullopt;
    Tlv tlv = parseAt(pos_, end_, depth_, endIsInputEnd_);
    if (!tlv.is(tag))
        return std::nullopt;
    pos_ += tlv.encoding.size();
    return tlv;
}

Tlv Reader::expect(const Tag &tag, std::string_view what) {
    Tlv tlv = next(what);
    if (!tlv.is(tag))
        throw Error(fmt::format("{} at offset {} should be a {} but is a {}", what, tlv.offset,
                                tagName(tag), tagName(tlv.tag)),
                    tlv.offset);
    return tlv;
}

Reader Reader::enter(const Tlv &tlv) const {
    if (!tlv.tag.constructed)
        throw Error(
            fmt::format("the {} at offset {} is not constructed", tagName(tlv.tag), tlv.offset),
            tlv.offset);
    const auto pos = static_cast<std::size_t>(tlv.content.data() - base_);
    return Reader(base_, baseOffset_, pos, pos + tlv.content.size(), depth_ + 1, limits_,
                  tlv.indefinite && endIsInputEnd_, true);
}

void Reader::expectEnd(std::string_view what) const {
    if (!atEnd())
        throw Error(fmt::format("{} has {} unexpected bytes at offset {} after its last field",
                                what, end_ - pos_, abs(pos_)),
                    abs(pos_));
}

Tlv parseOne(ByteView input, Limits limits, std::size_t baseOffset) {
    Reader reader(input, limits, baseOffset);
    if (reader.atEnd())
        throw Error("truncated: the input is empty", baseOffset, true);
    Tlv tlv = reader.next();
    if (!reader.atEnd()) {
        const std::size_t extra = input.size() - tlv.encoding.size();
        throw Error(fmt::format("{} trailing bytes at offset {} after the {} that starts at "
                                "offset {}",
                                extra, tlv.end(), tagName(tlv.tag), tlv.offset),
                    tlv.end());
    }
    return tlv;
}

std::string oidToString(const Tlv &tlv) {
    if (!tlv.is(universal(kOid)))
        throw Error(fmt::format("expected an OBJECT IDENTIFIER at offset {}, found a {}",
                                tlv.offset, tagName(tlv.tag)),
                    tlv.offset);
    if (tlv.content.empty())
        throw Error(fmt::format("empty OBJECT IDENTIFIER at offset {}", tlv.offset), tlv.offset);
    std::string out;
    std::uint64_t value = 0;
    std::size_t octets = 0;
    bool firstArc = true;
    for (std::size_t i = 0; i < tlv.content.size(); ++i) {
        const std::uint8_t b = tlv.content[i];
        // X.690 §8.19.2: each subidentifier is minimal, so it never starts with 0x80.
        if (octets == 0 && b == 0x80)
            throw Error(fmt::format("non-minimal subidentifier in the OBJECT IDENTIFIER at offset "
                                    "{}",
                                    tlv.offset),
                        tlv.offset);
        if (++octets > 9) // 63 bits
            throw Error(fmt::format("an arc of the OBJECT IDENTIFIER at offset {} is too large",
                                    tlv.offset),
                        tlv.offset);
        value = (value << 7) | (b & 0x7f);
        if (b & 0x80)
            continue;
        // std::to_chars, not fmt: every message's OIDs pass here on the way to a comparison.
        char digits[24];
        if (firstArc) {
            // §8.19.4: the first subidentifier packs the first two arcs.
            const std::uint64_t top = value < 40 ? 0 : value < 80 ? 1 : 2;
            out.push_back(static_cast<char>('0' + top));
            out.push_back('.');
            out.append(digits, std::to_chars(digits, digits + sizeof digits, value - top * 40).ptr);
            firstArc = false;
        } else {
            out.push_back('.');
            out.append(digits, std::to_chars(digits, digits + sizeof digits, value).ptr);
        }
        value = 0;
        octets = 0;
    }
    if (octets != 0)
        throw Error(fmt::format("the OBJECT IDENTIFIER at offset {} ends inside a subidentifier",
                                tlv.offset),
                    tlv.offset);
    return out;
}

std::int64_t toInt(const Tlv &tlv) {
    const Bytes bytes = integerBytes(tlv);
    if (bytes.size() > 8)
        throw Error(fmt::format("the INTEGER at offset {} is too large ({} octets)", tlv.offset,
                                bytes.size()),
                    tlv.offset);
    // Two's complement, big-endian (X.690 §8.3.3): start from the sign, shift in the octets.
    std::uint64_t value = (bytes[0] & 0x80) ? ~std::uint64_t{0} : 0;
    for (std::uint8_t b : bytes)
        value = (value << 8) | b;
    return static_cast<std::int64_t>(value);
}

Bytes integerBytes(const Tlv &tlv) {
    if (!tlv.is(universal(kInteger)))
        throw Error(fmt::format("expected an INTEGER at offset {}, found a {}", tlv.offset,
                                tagName(tlv.tag)),
                    tlv.offset);
    if (tlv.content.empty())
        throw Error(fmt::format("empty INTEGER at offset {}", tlv.offset), tlv.offset);
    return Bytes(tlv.content.begin(), tlv.content.end());
}

Bytes octetString(const Tlv &tlv, const Reader &reader) {
    if (tlv.is(universal(kOctetString)))
        return Bytes(tlv.content.begin(), tlv.content.end());
    if (!tlv.is(universal(kOctetString, true)))
        throw Error(fmt::format("expected an OCTET STRING at offset {}, found a {}", tlv.offset,
                                tagName(tlv.tag)),
                    tlv.offset);
    // BER constructed form (§8.7.3.2): the value is the concatenation of the chunks, each an
    // OCTET STRING itself. The reader's depth limit bounds the recursion.
    Bytes out;
    Reader chunks = reader.enter(tlv);
    while (!chunks.atEnd()) {
        const Tlv chunk = chunks.next();
        Bytes part = octetString(chunk, chunks);
        out.insert(out.end(), part.begin(), part.end());
    }
    return out;
}

} // namespace pkirelay::der
