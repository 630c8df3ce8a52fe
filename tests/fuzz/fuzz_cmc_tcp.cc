// libFuzzer driver for the CMC-over-TCP response reader (BerMessageScanner in
// lib/transports/tcp_framing.h): any byte stream, in any chunking, must end in the same verdict
// as the whole of it read at once, a Complete length must lie inside the input, and nothing may
// crash, hang or read out of bounds (run it under ASan/UBSan). The first input byte picks the
// chunk sizes, the second the size limit. Built only with clang (meson -Dfuzz=true).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "lib/transports/tcp_framing.h"

using namespace pkirelay;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
    if (size < 2)
        return 0;
    const std::size_t step = 1 + data[0] % 61;
    const std::size_t limit = 64 + std::size_t{data[1]} * 64;
    const ByteView input(data + 2, size - 2);

    BerMessageScanner whole(limit, 16);
    const Delimited once = whole.scan(input);

    BerMessageScanner chunked(limit, 16);
    Delimited d;
    std::size_t n = 0;
    do {
        n = std::min(input.size(), n + step);
        d = chunked.scan(input.first(n));
    } while (d.state == Delimited::State::NeedMore && n < input.size());

    if (d.state != once.state)
        std::abort();
    if (d.state == Delimited::State::Complete &&
        (d.length != once.length || d.length == 0 || d.length > input.size() || d.length > limit))
        std::abort();
    if ((d.state == Delimited::State::TooLarge || d.state == Delimited::State::Malformed) &&
        d.reason.empty())
        std::abort();
    return 0;
}
