// libFuzzer driver for the DER/BER reader alone (lib/der.h): any bytes must either be read as a
// sequence of well-formed values or be refused with a der::Error, never crash, hang or read out
// of bounds (run it under ASan/UBSan). It walks every value the reader hands out, enters every
// constructed one and decodes the primitive types the classifier uses, and checks that each Tlv
// lies inside the input where its offsets say. Built only with clang (meson -Dfuzz=true); see
// tests/fuzz/README.md for how to run it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "lib/der.h"

namespace {

using namespace pkirelay;

const std::uint8_t *inputBegin = nullptr;
std::size_t inputSize = 0;

// A Tlv must be a slice of the input at the offset it reports, its contents inside it.
void checkTlv(const der::Tlv &tlv) {
    if (tlv.encoding.data() != inputBegin + tlv.offset || tlv.end() > inputSize ||
        tlv.headerLength < 2 || tlv.encoding.size() < tlv.headerLength ||
        tlv.content.data() != tlv.encoding.data() + tlv.headerLength ||
        tlv.content.size() + tlv.headerLength + (tlv.indefinite ? 2 : 0) != tlv.encoding.size())
        std::abort();
    if (tlv.indefinite && !tlv.tag.constructed)
        std::abort();
}

void walk(der::Reader &reader) {
    while (!reader.atEnd()) {
        const std::size_t before = reader.offset();
        const auto peeked = reader.peekTag();
        const der::Tlv tlv = reader.next();
        checkTlv(tlv);
        if (!peeked || *peeked != tlv.tag || tlv.offset != before ||
            reader.offset() != before + tlv.encoding.size())
            std::abort();
        (void)der::tagName(tlv.tag);
        // Each primitive decoder either succeeds or throws der::Error; which one does not matter.
        try {
            if (tlv.is(der::universal(der::kOid)))
                (void)der::oidToString(tlv);
            else if (tlv.is(der::universal(der::kInteger))) {
                (void)der::integerBytes(tlv);
                (void)der::toInt(tlv);
            } else if (tlv.tag.number == der::kOctetString &&
                       tlv.tag.cls == der::TagClass::Universal) {
                const Bytes octets = der::octetString(tlv, reader);
                if (octets.size() > tlv.content.size())
                    std::abort();
            }
        } catch (const der::Error &) {
        }
        if (tlv.tag.constructed) {
            der::Reader inner = reader.enter(tlv);
            if (inner.depth() != reader.depth() + 1 || inner.depth() > reader.limits().maxDepth + 1)
                std::abort();
            walk(inner);
            inner.expectEnd("the value");
        }
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
    inputBegin = data;
    inputSize = size;
    try {
        der::Reader reader({data, size});
        walk(reader);
    } catch (const der::Error &e) {
        // An error names a place in the input (its end, for truncation) and a reason.
        if (e.reason().empty() || e.offset() > size)
            std::abort();
    }
    try {
        (void)der::parseOne({data, size});
    } catch (const der::Error &) {
    }
    return 0;
}
