// Finding PKI requests in mail (mime.h). First commit: the API only.
#include "mime.h"

namespace pkirelay::mail {

Extracted extract(ByteView, const Limits &, const SmimeConfig &) {
    Extracted out;
    out.noRequestReason = "mail extraction not built yet";
    return out;
}

std::optional<Bytes> decodeBase64Strict(std::string_view) {
    return std::nullopt;
}

} // namespace pkirelay::mail
