// What `pkirelay inspect` prints (describe.h). It trusts the classifier's output; every byte
// string from the message is shown as lower-case hex, so nothing from the input reaches the
// terminal unescaped except the already-escaped GeneralName renderings.
#include "describe.h"

#include "text.h"

#include <algorithm>
#include <cctype>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace pkirelay {
namespace {

using Lines = std::vector<std::pair<std::string, std::string>>;

std::string render(const Lines &lines) {
    std::size_t width = 0;
    for (const auto &[field, value] : lines)
        width = std::max(width, field.size());
    std::string out;
    for (const auto &[field, value] : lines)
        out += fmt::format("{:<{}} {}\n", field + ":", width + 1, value);
    return out;
}

std::string hexOrNone(const Bytes &bytes) {
    return bytes.empty() ? "(none)" : toHex(bytes);
}

std::string_view encodingName(Encoding e) {
    switch (e) {
    case Encoding::Der:
        return "DER";
    case Encoding::Pem:
        return "PEM";
    case Encoding::Base64:
        return "base64";
    }
    return "?";
}

// The JSON form: the name in lower case ("der", "pem", "base64").
std::string encodingId(Encoding e) {
    return asciiLower(encodingName(e));
}

// RFC 9810 §5.2.3 PKIStatus.
std::string_view pkiStatusName(int status) {
    static constexpr std::string_view names[] = {
        "accepted",          "grantedWithMods",        "rejection",       "waiting",
        "revocationWarning", "revocationNotification", "keyUpdateWarning"};
    if (status < 0 || status >= static_cast<int>(std::size(names)))
        return "unknown";
    return names[status];
}

} // namespace

// RFC 9810 §5.2.3 PKIFailureInfo, by bit number.
std::string failInfoNames(std::uint32_t bits) {
    static constexpr std::string_view names[] = {"badAlg",
                                                 "badMessageCheck",
                                                 "badRequest",
                                                 "badTime",
                                                 "badCertId",
                                                 "badDataFormat",
                                                 "wrongAuthority",
                                                 "incorrectData",
                                                 "missingTimeStamp",
                                                 "badPOP",
                                                 "certRevoked",
                                                 "certConfirmed",
                                                 "wrongIntegrity",
                                                 "badRecipientNonce",
                                                 "timeNotAvailable",
                                                 "unacceptedPolicy",
                                                 "unacceptedExtension",
                                                 "addInfoNotAvailable",
                                                 "badSenderNonce",
                                                 "badCertTemplate",
                                                 "signerNotTrusted",
                                                 "transactionIdInUse",
                                                 "unsupportedVersion",
                                                 "notAuthorized",
                                                 "systemUnavail",
                                                 "systemFailure",
                                                 "duplicateCertReq"};
    std::string out;
    for (std::size_t b = 0; b < 32; ++b)
        if (bits & (1u << b)) {
            if (!out.empty())
                out += ',';
            out += b < std::size(names) ? std::string(names[b]) : fmt::format("bit{}", b);
        }
    return out;
}

namespace {

// RFC 10002 §6.1.1 CMCStatus (1 is reserved).
std::string_view cmcStatusName(int status) {
    switch (status) {
    case 0:
        return "success";
    case 2:
        return "failed";
    case 3:
        return "pending";
    case 4:
        return "noSupport";
    case 5:
        return "confirmRequired";
    case 6:
        return "popRequired";
    case 7:
        return "partial";
    default:
        return "unknown";
    }
}

std::string_view pvnoName(int pvno) {
    switch (pvno) {
    case 1:
        return "cmp1999";
    case 2:
        return "cmp2000";
    case 3:
        return "cmp2021";
    default:
        return "unknown";
    }
}

} // namespace

std::string describe(const Message &message) {
    const KindInfo &info = kindInfo(message.kind);
    Lines lines = {
        {"kind", std::string(info.title)},
        {"direction", message.isRequest() ? "request" : "response"},
        {"encoding", std::string(encodingName(message.encoding))},
        {"size", fmt::format("{} bytes", message.der.size())},
        {"sha256", sha256Hex(message.der)},
        {"file extension", std::string(info.fileExt)},
        {"content type", std::string(info.mimeType)},
    };
    if (const auto &cmp = message.cmp) {
        lines.emplace_back("pvno", fmt::format("{} ({})", cmp->pvno, pvnoName(cmp->pvno)));
        lines.emplace_back("body",
                           fmt::format("{} ({}), {}", cmpBodyName(cmp->bodyType), cmp->bodyType,
                                       cmpBodyIsRequest(cmp->bodyType) ? "request" : "response"));
        lines.emplace_back("sender", cmp->sender.empty() ? "(empty DN)" : printable(cmp->sender));
        lines.emplace_back("recipient",
                           cmp->recipient.empty() ? "(empty DN)" : printable(cmp->recipient));
        lines.emplace_back("transactionID", hexOrNone(cmp->transactionId));
        lines.emplace_back("senderNonce", hexOrNone(cmp->senderNonce));
        lines.emplace_back("recipNonce", hexOrNone(cmp->recipNonce));
        lines.emplace_back("senderKID", hexOrNone(cmp->senderKid));
        if (cmp->pkiStatus)
            lines.emplace_back(
                "status", fmt::format("{} ({})", pkiStatusName(*cmp->pkiStatus), *cmp->pkiStatus));
        if (!cmp->statusText.empty())
            lines.emplace_back("status text", printable(cmp->statusText));
        if (cmp->failInfo != 0)
            lines.emplace_back("failInfo", failInfoNames(cmp->failInfo));
    }
    if (const auto &cmc = message.cmc) {
        lines.emplace_back("cms type", cmc->contentType);
        if (message.kind == Kind::CmcFullRequest || message.kind == Kind::CmcFullResponse) {
            lines.emplace_back("transactionId", hexOrNone(cmc->transactionId));
            lines.emplace_back("senderNonce", hexOrNone(cmc->senderNonce));
            lines.emplace_back("recipientNonce", hexOrNone(cmc->recipientNonce));
            if (cmc->status)
                lines.emplace_back(
                    "status", fmt::format("{} ({})", cmcStatusName(*cmc->status), *cmc->status));
            if (!cmc->statusText.empty())
                lines.emplace_back("status text", printable(cmc->statusText));
            if (!cmc->pendToken.empty())
                lines.emplace_back("pendToken", toHex(cmc->pendToken));
            if (!cmc->queryPending.empty())
                lines.emplace_back("queryPending", toHex(cmc->queryPending));
        }
        if (cmc->contentType == "signedData")
            lines.emplace_back("certificates", std::to_string(cmc->certificates));
    }
    return render(lines);
}

std::string describe(const Rejection &rejection) {
    Lines lines = {{"rejected", printable(rejection.reason)}};
    if (rejection.offset)
        lines.emplace_back("offset", std::to_string(*rejection.offset));
    lines.emplace_back("truncated", rejection.truncated ? "yes" : "no");
    return render(lines);
}

nlohmann::json toJson(const Message &message) {
    const KindInfo &info = kindInfo(message.kind);
    nlohmann::json j = {
        {"rejected", false},
        {"kind", info.id},
        {"title", info.title},
        {"request", message.isRequest()},
        {"encoding", encodingId(message.encoding)},
        {"size", message.der.size()},
        {"sha256", sha256Hex(message.der)},
        {"file_extension", info.fileExt},
        {"content_type", info.mimeType},
    };
    if (const auto &cmp = message.cmp) {
        j["cmp"] = {
            {"pvno", cmp->pvno},
            {"body_type", cmp->bodyType},
            {"body", cmpBodyName(cmp->bodyType)},
            {"sender", printable(cmp->sender)},
            {"recipient", printable(cmp->recipient)},
            {"transaction_id", toHex(cmp->transactionId)},
            {"sender_nonce", toHex(cmp->senderNonce)},
            {"recip_nonce", toHex(cmp->recipNonce)},
            {"sender_kid", toHex(cmp->senderKid)},
            {"pki_status", cmp->pkiStatus ? nlohmann::json(*cmp->pkiStatus) : nullptr},
            {"pki_status_name",
             cmp->pkiStatus ? nlohmann::json(pkiStatusName(*cmp->pkiStatus)) : nullptr},
            {"status_text", printable(cmp->statusText)},
            {"fail_info", failInfoNames(cmp->failInfo)},
        };
    }
    if (const auto &cmc = message.cmc) {
        j["cmc"] = {
            {"content_type", cmc->contentType},
            {"transaction_id", toHex(cmc->transactionId)},
            {"sender_nonce", toHex(cmc->senderNonce)},
            {"recipient_nonce", toHex(cmc->recipientNonce)},
            {"status", cmc->status ? nlohmann::json(*cmc->status) : nullptr},
            {"status_name", cmc->status ? nlohmann::json(cmcStatusName(*cmc->status)) : nullptr},
            {"status_text", printable(cmc->statusText)},
            {"pend_token", toHex(cmc->pendToken)},
            {"query_pending", toHex(cmc->queryPending)},
            {"certificates", cmc->certificates},
        };
    }
    return j;
}

nlohmann::json toJson(const Rejection &rejection) {
    return {
        {"rejected", true},
        {"reason", printable(rejection.reason)},
        {"offset", rejection.offset ? nlohmann::json(*rejection.offset) : nullptr},
        {"truncated", rejection.truncated},
    };
}

std::string statusSummary(const Message &message) {
    if (const auto &cmp = message.cmp) {
        if (!cmp->pkiStatus && cmp->statusText.empty())
            return {};
        std::string out = fmt::format("CMP {}", cmpBodyName(cmp->bodyType));
        if (cmp->pkiStatus)
            out +=
                fmt::format(", PKIStatus {} ({})", pkiStatusName(*cmp->pkiStatus), *cmp->pkiStatus);
        if (cmp->failInfo != 0)
            out += fmt::format(", failInfo {}", failInfoNames(cmp->failInfo));
        if (!cmp->statusText.empty())
            out += fmt::format(": \"{}\"", printable(cmp->statusText));
        return out;
    }
    if (const auto &cmc = message.cmc; cmc && cmc->status) {
        std::string out =
            fmt::format("CMC status {} ({})", cmcStatusName(*cmc->status), *cmc->status);
        if (!cmc->statusText.empty())
            out += fmt::format(": \"{}\"", printable(cmc->statusText));
        return out;
    }
    return {};
}

} // namespace pkirelay
