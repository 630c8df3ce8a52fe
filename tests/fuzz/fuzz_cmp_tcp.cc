// libFuzzer driver for the CMP-over-TCP frame reader and writer (lib/transports/tcp_framing.h):
// for any bytes the boundary is "need more", a Complete length inside the input, "too large" or
// "malformed: why"; a complete frame parses, and encoding the parsed frame gives back exactly
// its bytes; the pollRep and partialMsgRep decoders and the log helpers take any value. Nothing
// may crash or read out of bounds (run it under ASan/UBSan). Built only with clang.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "lib/transports/tcp_framing.h"

using namespace pkirelay;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
    const ByteView input(data, size);
    const Delimited d = cmpFrameBoundary(input, 4096);
    if (d.state == Delimited::State::Complete) {
        if (d.length < 5 || d.length > size)
            std::abort();
        const auto frame = parseCmpFrame(input.first(d.length));
        if (!frame)
            std::abort();
        const Bytes again = encodeCmpFrame(*frame);
        if (again.size() != d.length || !std::equal(again.begin(), again.end(), data))
            std::abort();
        (void)cmpFrameTypeName(frame->framing, frame->type);
        (void)cmpErrorText(frame->value);
        (void)parsePollRep(frame->value);
        if (auto partial = parsePartialMsgRep(frame->value))
            if (partial->second.size() + 8 != frame->value.size())
                std::abort();
    } else if (d.state != Delimited::State::NeedMore && d.reason.empty()) {
        std::abort();
    }
    // A frame that does not end where the input does is never parsed as one.
    if (d.state != Delimited::State::Complete || d.length != size)
        if (parseCmpFrame(input))
            std::abort();
    return 0;
}
