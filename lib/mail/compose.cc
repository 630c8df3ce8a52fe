// Writing mail (compose.h). First commit: the API only.
#include "compose.h"

namespace pkirelay::mail {

std::string composeReply(const ReplySpec &, std::string_view, std::string_view) {
    return {};
}
std::string composeEntity(Kind, ByteView, std::string_view) {
    return {};
}
std::string replyText(const ReplyFacts &) {
    return {};
}
std::string rfc5322Date(std::int64_t) {
    return {};
}
std::string newMessageId(std::string_view) {
    return {};
}

} // namespace pkirelay::mail
