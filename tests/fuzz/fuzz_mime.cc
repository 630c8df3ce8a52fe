// libFuzzer driver for the mail extraction (lib/mail/mime.h): a whole mail in, requests out.
// extract() must never throw or crash on any input, stay within its limits, and what it returns
// must hold together: every request is a classified request, a reason is given exactly when
// there is none. A request it finds, wrapped again as an on-disk response entity (compose.h),
// must come back out as the same bytes. Built only with clang (meson -Dfuzz=true); see
// tests/fuzz/README.md.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "lib/mail/compose.h"
#include "lib/mail/mime.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
    using namespace pkirelay;
    mail::Limits limits;
    limits.maxSize = 1 << 20;
    const mail::Extracted found = mail::extract({data, size}, limits, {});
    if (found.requests.empty() == found.noRequestReason.empty())
        std::abort();
    if (found.requests.size() > static_cast<std::size_t>(limits.maxParts))
        std::abort();
    for (const auto &r : found.requests) {
        if (!r.message.isRequest() || r.message.der.empty())
            std::abort();
        const std::string entity = mail::composeEntity(r.message.kind, r.message.der, r.partName);
        const auto again = mail::extract(asBytes(entity), limits, {});
        if (again.requests.size() != 1 || again.requests[0].message.der != r.message.der)
            std::abort();
    }
    return 0;
}
