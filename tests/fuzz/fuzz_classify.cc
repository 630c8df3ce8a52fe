// libFuzzer driver for the classifier: every input must classify or be rejected, never crash,
// never read out of bounds (run it under ASan/UBSan), and a Message's DER must be the input's own
// bytes or a strict decoding of its armour, and what inspect prints must encode as JSON. Built only
// with clang (meson -Dfuzz=true); see tests/fuzz/README.md for how to run it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <variant>

#include "lib/classify.h"
#include "lib/describe.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
    pkirelay::ClassifyLimits limits;
    limits.maxSize = 1 << 20;
    const auto result = pkirelay::classify({data, size}, limits);
    if (const auto *message = std::get_if<pkirelay::Message>(&result)) {
        // Binary input is relayed byte for byte: the DER must be exactly what came in.
        if (message->encoding == pkirelay::Encoding::Der &&
            (message->der.size() != size ||
             !std::equal(message->der.begin(), message->der.end(), data)))
            std::abort();
        (void)pkirelay::toJson(*message).dump();
        (void)pkirelay::describe(*message);
    } else {
        const auto &rejection = std::get<pkirelay::Rejection>(result);
        if (rejection.reason.empty())
            std::abort();
        (void)pkirelay::toJson(rejection).dump();
    }
    return 0;
}
