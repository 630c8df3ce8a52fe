// The TCP readers and writers of tcp_framing.h. Positions are indexes checked against the
// buffer's size before every read; lengths are checked against the limit before they are added,
// so nothing here can overflow or read out of bounds whatever the bytes say.
#include "lib/transports/tcp_framing.h"

#include <limits>

#include <fmt/format.h>

namespace pkirelay {
namespace {

// One BER identifier and length (X.690 §8.1.2, §8.1.3), or why there is none yet.
struct Header {
    enum class State { Ok, NeedMore, Bad } state = State::NeedMore;
    std::size_t headerLength = 0;
    bool constructed = false;
    bool indefinite = false;
    bool endOfContents = false;
    std::uint64_t length = 0; // saturates at UINT64_MAX (far over any limit)
    std::string reason;
};

Header bad(std::string reason) {
    Header h;
    h.state = Header::State::Bad;
    h.reason = std::move(reason);
    return h;
}

Header readHeader(ByteView b, std::size_t pos) {
    Header h;
    std::size_t p = pos;
    if (p >= b.size())
        return h;
    const std::uint8_t id = b[p++];
    h.constructed = (id & 0x20) != 0;
    if ((id & 0x1f) == 0x1f) {
        // X.690 §8.1.2.4: high tag number, base 128, the first subsequent octet not 0x80.
        for (std::size_t n = 0;; ++n) {
            if (p >= b.size())
                return h;
            const std::uint8_t c = b[p++];
            if (n == 0 && c == 0x80)
                return bad(fmt::format("non-minimal tag number at offset {}", pos));
            if (n >= 4)
                return bad(fmt::format("tag number at offset {} is too long", pos));
            if ((c & 0x80) == 0)
                break;
        }
    }
    if (p >= b.size())
        return h;
    const std::uint8_t l = b[p++];
    if (l < 0x80) {
        h.length = l;
    } else if (l == 0x80) {
        // X.690 §8.1.3.6.1: the indefinite form only for constructed encodings.
        if (!h.constructed)
            return bad(fmt::format("primitive value at offset {} with an indefinite length", pos));
        h.indefinite = true;
    } else if (l == 0xff) {
        return bad(fmt::format("reserved length octet 0xff at offset {} (X.690 §8.1.3.5)", pos));
    } else {
        const std::size_t n = l & 0x7f;
        if (p + n > b.size())
            return h;
        for (std::size_t i = 0; i < n; ++i) {
            if (h.length > (std::numeric_limits<std::uint64_t>::max() >> 8)) {
                h.length = std::numeric_limits<std::uint64_t>::max();
                break;
            }
            h.length = (h.length << 8) | b[p + i];
        }
        p += n;
    }
    // X.690 §8.1.5: end-of-contents is tag 0 with length 0, nothing else.
    if (id == 0x00) {
        if (h.indefinite || h.length != 0)
            return bad(fmt::format("tag 0 at offset {} is not an end-of-contents marker", pos));
        h.endOfContents = true;
    }
    h.headerLength = p - pos;
    h.state = Header::State::Ok;
    return h;
}

Delimited result(Delimited::State state, std::size_t length = 0, std::string reason = {}) {
    Delimited d;
    d.state = state;
    d.length = length;
    d.reason = std::move(reason);
    return d;
}

std::uint32_t be32(const std::uint8_t *p) {
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
           std::uint32_t{p[3]};
}

void putBe32(Bytes &out, std::uint32_t v) {
    out.push_back(static_cast<std::uint8_t>(v >> 24));
    out.push_back(static_cast<std::uint8_t>(v >> 16));
    out.push_back(static_cast<std::uint8_t>(v >> 8));
    out.push_back(static_cast<std::uint8_t>(v));
}

} // namespace

Delimited BerMessageScanner::scan(ByteView b) {
    using S = Delimited::State;
    if (final_)
        return *final_;
    auto finish = [&](Delimited d) {
        final_ = d;
        return d;
    };
    if (!started_) {
        if (b.empty())
            return result(S::NeedMore);
        // RFC 5273 §5: the response is a CMS ContentInfo (or, for a Simple PKI Response, a
        // certs-only SignedData ContentInfo): a SEQUENCE. Anything else is refused at once
        // rather than waited for.
        if (b[0] != 0x30)
            return finish(result(S::Malformed, 0,
                                 fmt::format("a CMC response starts with a SEQUENCE (0x30), not "
                                             "0x{:02x}",
                                             b[0])));
        Header h = readHeader(b, 0);
        if (h.state == Header::State::NeedMore)
            return result(S::NeedMore);
        if (h.state == Header::State::Bad)
            return finish(result(S::Malformed, 0, h.reason));
        started_ = true;
        if (!h.indefinite) {
            if (h.length > maxSize_ || h.headerLength + h.length > maxSize_)
                return finish(result(S::TooLarge, 0,
                                     fmt::format("the response declares {} bytes, over the "
                                                 "limit of {}",
                                                 h.length, maxSize_)));
            pos_ = h.headerLength + static_cast<std::size_t>(h.length); // the end
            depth_ = 0;
        } else {
            pos_ = h.headerLength;
            depth_ = 1;
        }
    }
    if (depth_ == 0) // a definite outer length: its end is known
        return b.size() >= pos_ ? finish(result(S::Complete, pos_)) : result(S::NeedMore);

    // X.690 §8.1.3.6: an indefinite length ends at the end-of-contents octets that match it.
    // Values of definite length inside are skipped by their length (the classifier checks
    // them later); only indefinite ones are entered, at most maxDepth deep.
    for (;;) {
        Header h = readHeader(b, pos_);
        if (h.state == Header::State::Bad)
            return finish(result(S::Malformed, 0, h.reason));
        if (h.state == Header::State::NeedMore)
            break;
        if (h.endOfContents) {
            pos_ += h.headerLength;
            if (--depth_ == 0)
                return finish(result(S::Complete, pos_));
            continue;
        }
        if (h.indefinite) {
            if (++depth_ > maxDepth_)
                return finish(
                    result(S::Malformed, 0,
                           fmt::format("indefinite lengths nested deeper than {} at offset {}",
                                       maxDepth_, pos_)));
            pos_ += h.headerLength;
            continue;
        }
        const std::size_t room = maxSize_ - std::min(maxSize_, pos_ + h.headerLength);
        if (h.length > room)
            return finish(result(S::TooLarge, 0,
                                 fmt::format("the value at offset {} declares {} bytes, which "
                                             "takes the response over the limit of {}",
                                             pos_, h.length, maxSize_)));
        pos_ += h.headerLength + static_cast<std::size_t>(h.length);
    }
    // What is buffered ends inside the message, so the message is longer than the buffer.
    if (b.size() >= maxSize_ || pos_ > maxSize_)
        return finish(result(S::TooLarge, 0,
                             fmt::format("no end of the indefinite-length response within the "
                                         "limit of {} bytes",
                                         maxSize_)));
    return result(S::NeedMore);
}

Bytes encodeCmpFrame(const CmpFrame &frame) {
    Bytes out;
    const bool v10 = frame.framing == CmpFraming::V10;
    const std::size_t overhead = v10 ? 3 : 1;
    out.reserve(4 + overhead + frame.value.size());
    // RFC 2510 §5.2: the length counts everything after itself (type and value); version 10
    // adds its version and flags octets to the count.
    putBe32(out, static_cast<std::uint32_t>(overhead + frame.value.size()));
    if (v10) {
        out.push_back(cmptcp::kVersion10);
        out.push_back(frame.flags);
    }
    out.push_back(frame.type);
    out.insert(out.end(), frame.value.begin(), frame.value.end());
    return out;
}

Delimited cmpFrameBoundary(ByteView b, std::size_t maxValue) {
    using S = Delimited::State;
    if (b.size() < 5)
        return result(S::NeedMore);
    const std::uint32_t length = be32(b.data());
    std::size_t overhead = 0;
    // The fifth byte tells the framings apart: version 10 was chosen above every RFC 2510 type.
    if (b[4] == cmptcp::kVersion10)
        overhead = 3;
    else if (b[4] < cmptcp::kVersion10)
        overhead = 1;
    else
        return result(S::Malformed, 0,
                      fmt::format("byte 4 of a CMP-over-TCP frame is {}: neither an RFC 2510 "
                                  "message type nor version 10",
                                  b[4]));
    if (length < overhead)
        return result(S::Malformed, 0,
                      fmt::format("a CMP-over-TCP frame length of {} is shorter than its own "
                                  "header",
                                  length));
    if (length - overhead > maxValue)
        return result(
            S::TooLarge, 0,
            fmt::format("the frame declares {} bytes, over the limit of {}", length, maxValue));
    const std::size_t total = std::size_t{4} + length;
    return b.size() >= total ? result(S::Complete, total) : result(S::NeedMore);
}

std::optional<CmpFrame> parseCmpFrame(ByteView b) {
    const Delimited d = cmpFrameBoundary(b, std::numeric_limits<std::size_t>::max());
    if (d.state != Delimited::State::Complete || d.length != b.size())
        return std::nullopt;
    CmpFrame f;
    std::size_t p = 4;
    if (b[4] == cmptcp::kVersion10) {
        f.framing = CmpFraming::V10;
        f.flags = b[5];
        f.type = b[6];
        p = 7;
    } else {
        f.framing = CmpFraming::Rfc2510;
        f.type = b[4];
        p = 5;
    }
    f.value.assign(b.begin() + static_cast<std::ptrdiff_t>(p), b.end());
    return f;
}

std::optional<CmpPollRep> parsePollRep(ByteView value) {
    if (value.size() != 8)
        return std::nullopt;
    return CmpPollRep{be32(value.data()), be32(value.data() + 4)};
}

std::optional<std::pair<CmpPollRep, ByteView>> parsePartialMsgRep(ByteView value) {
    if (value.size() < 8)
        return std::nullopt;
    return std::pair{CmpPollRep{be32(value.data()), be32(value.data() + 4)}, value.subspan(8)};
}

Bytes pollReqValue(std::uint32_t reference) {
    Bytes out;
    putBe32(out, reference);
    return out;
}

std::uint64_t pollDelaySeconds(std::uint32_t checkBack, std::uint64_t now) {
    constexpr std::uint32_t kAbsoluteFrom = 1'000'000'000; // 2001-09-09T01:46:40Z
    if (checkBack < kAbsoluteFrom)
        return checkBack;
    return checkBack > now ? checkBack - now : 0;
}

std::string cmpFrameTypeName(CmpFraming framing, std::uint8_t type) {
    using namespace cmptcp;
    switch (type) {
    case 0:
        return framing == CmpFraming::V10 ? "pkiReq" : "pkiMsg";
    case kPollRep:
        return "pollRep";
    case kPollReq:
        return "pollReq";
    case 3:
        return framing == CmpFraming::V10 ? "finRep" : "negPollRep";
    case 4:
        if (framing == CmpFraming::Rfc2510)
            return "partialMsgRep";
        break;
    case 5:
        return framing == CmpFraming::V10 ? "pkiRep" : "finalMsgRep";
    case kErrorMsgRep:
        return "errorMsgRep";
    default:
        break;
    }
    return fmt::format("type {}", type);
}

std::string cmpErrorText(ByteView value) {
    constexpr std::size_t kMax = 300;
    std::string text = printable(asChars(value.first(std::min(value.size(), kMax))));
    if (value.size() > kMax)
        text += "...";
    return text;
}

} // namespace pkirelay
