// The kinds of PKI message pkirelay carries, and for each the facts the transports need:
// file extension, MIME type, mail attachment name. One table, read by the classifier, the
// relays, the response writer and `inspect` (../shared/DESIGN.md, "Message kinds").
#pragma once

#include <optional>
#include <string_view>

namespace pkirelay {

enum class Kind {
    CmcSimpleRequest,  // PKCS#10 CertificationRequest
    CmcFullRequest,    // SignedData/AuthenticatedData around id-cct-PKIData
    CmcSimpleResponse, // certs-only SignedData
    CmcFullResponse,   // SignedData/AuthenticatedData around id-cct-PKIResponse
    CmcEnveloped,      // EnvelopedData: inner kind unknown without the key
    Cmp,               // PKIMessage (RFC 9810)
};

struct KindInfo {
    Kind kind;
    std::string_view id;       // stable name used in config, the store and --json
    std::string_view title;    // for people
    std::string_view fileExt;  // RFC 10003 §2 / IANA application/pkixcmp: written on responses
    std::string_view mimeType; // RFC 10003 §3-4, RFC 9811 §3: Content-Type when sent
    std::string_view mailName; // the name= of a mail attachment (RFC 10003 §3)
};

const KindInfo &kindInfo(Kind kind);
std::optional<Kind> kindFromId(std::string_view id);

} // namespace pkirelay
