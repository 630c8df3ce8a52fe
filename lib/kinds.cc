// The kind table. Values come from ../shared/DESIGN.md's table, which follows RFC 10003 (CMC
// transport: extensions .p10/.crq/.p7c/.crp, smime-type spelled CMC-Request/CMC-Response) and
// the IANA registration of application/pkixcmp (extension .pki).
#include "kinds.h"

#include <algorithm>
#include <iterator>

namespace pkirelay {
namespace {

constexpr KindInfo table[] = {
    {Kind::CmcSimpleRequest, "cmc-simple-request", "CMC Simple PKI Request (PKCS#10)", ".p10",
     "application/pkcs10", "request.p10"},
    {Kind::CmcFullRequest, "cmc-full-request", "CMC Full PKI Request", ".crq",
     "application/pkcs7-mime; smime-type=CMC-Request", "request.p7m"},
    {Kind::CmcSimpleResponse, "cmc-simple-response", "CMC Simple PKI Response (certs-only)", ".p7c",
     "application/pkcs7-mime; smime-type=certs-only", "response.p7c"},
    {Kind::CmcFullResponse, "cmc-full-response", "CMC Full PKI Response", ".crp",
     "application/pkcs7-mime; smime-type=CMC-Response", "response.p7m"},
    {Kind::CmcEnveloped, "cmc-enveloped", "CMC, encrypted (CMS EnvelopedData)", ".p7m",
     "application/pkcs7-mime; smime-type=enveloped-data", "message.p7m"},
    {Kind::Cmp, "cmp", "CMP PKIMessage", ".pki", "application/pkixcmp", "message.pki"},
};

} // namespace

const KindInfo &kindInfo(Kind kind) {
    // The table is indexed by the enum; the static_assert keeps the two in step.
    static_assert(std::size(table) == static_cast<std::size_t>(Kind::Cmp) + 1);
    return table[static_cast<std::size_t>(kind)];
}

std::optional<Kind> kindFromId(std::string_view id) {
    auto it = std::find_if(std::begin(table), std::end(table),
                           [&](const KindInfo &k) { return k.id == id; });
    if (it == std::end(table))
        return std::nullopt;
    return it->kind;
}

} // namespace pkirelay
