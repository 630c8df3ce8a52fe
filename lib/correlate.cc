// The answer-to-request check shared by the synchronous transports and the air-gap return leg
// (correlate.h). Each rule quotes the section that makes it.
#include "correlate.h"

#include <algorithm>

#include <fmt/format.h>

namespace pkirelay {

CorrelationKeys correlationKeys(const Message &m) {
    CorrelationKeys k;
    if (m.cmp) {
        k.cmp = true;
        k.transactionId = m.cmp->transactionId;
        k.senderNonce = m.cmp->senderNonce;
        k.recipNonce = m.cmp->recipNonce;
    } else if (m.cmc) {
        k.transactionId = m.cmc->transactionId;
        k.senderNonce = m.cmc->senderNonce;
        k.recipNonce = m.cmc->recipientNonce;
    }
    return k;
}

namespace {

bool same(ByteView a, ByteView b) {
    return std::ranges::equal(a, b);
}

} // namespace

std::optional<std::string> answerMismatch(const RequestKeys &request, const Message &answer,
                                          std::string_view requestName) {
    const CorrelationKeys a = correlationKeys(answer);
    if (request.cmp) {
        if (!answer.cmp)
            return fmt::format("it is no CMP message, so it cannot answer {}", requestName);
        // RFC 9810 §5.1.1: "If a server receives such a request that has the transactionID
        // field set, then it MUST set the transactionID field of the response to the same
        // value. If a server receives such request with a missing transactionID field, then it
        // MAY set transactionID field of the response." So a request without one leaves the
        // answer's free.
        if (!request.transactionId.empty() && !same(a.transactionId, request.transactionId))
            return a.transactionId.empty()
                       ? fmt::format("it has no transactionID, and {} has one (RFC 9810 §5.1.1: "
                                     "the response MUST carry the request's)",
                                     requestName)
                       : fmt::format("its transactionID is not {}'s (RFC 9810 §5.1.1: the "
                                     "response MUST carry the request's)",
                                     requestName);
        // RFC 9810 §5.1.1: "the recipNonce is copied from the senderNonce of the previous
        // message in the transaction". No exception is made for an error message: an errorMsg
        // without a recipNonce (a server that could not read the request's header) cannot be
        // told from an error meant for another request, and a client that checks its nonce
        // (OpenSSL's does) refuses it too. It goes to a person, who can deliver it anyway.
        if (!request.senderNonce.empty() && !same(a.recipNonce, request.senderNonce))
            return a.recipNonce.empty()
                       ? fmt::format("it has no recipNonce, so nothing says it answers {} "
                                     "(RFC 9810 §5.1.1: the recipNonce is copied from the "
                                     "request's senderNonce)",
                                     requestName)
                       : fmt::format("its recipNonce is not {}'s senderNonce (RFC 9810 §5.1.1)",
                                     requestName);
        return std::nullopt;
    }
    if (answer.cmp)
        return fmt::format("a CMP message cannot answer {}, a CMC request", requestName);
    // Only a Full PKI Response has controls to compare; a Simple PKI Response (certs-only) has
    // none, and an EnvelopedData cannot be read without the key (RFC 10002 §3.2.2, §5).
    if (answer.kind != Kind::CmcFullResponse)
        return std::nullopt;
    // RFC 10002 §6.6: servers "include received transaction identifiers in the response", and
    // the recipientNonce control returns the request's senderNonce. A request that carried
    // neither (a Simple PKI Request, or a Full one without these controls) cannot be checked.
    if (!request.transactionId.empty() && !same(a.transactionId, request.transactionId))
        return a.transactionId.empty()
                   ? fmt::format("it has no transactionId control, and {} has one (RFC 10002 "
                                 "§6.6)",
                                 requestName)
                   : fmt::format("its transactionId control is not {}'s (RFC 10002 §6.6)",
                                 requestName);
    if (!request.senderNonce.empty() && !same(a.recipNonce, request.senderNonce))
        return a.recipNonce.empty()
                   ? fmt::format("it has no recipientNonce control, so nothing says it answers "
                                 "{} (RFC 10002 §6.6: it returns the request's senderNonce)",
                                 requestName)
                   : fmt::format("its recipientNonce is not {}'s senderNonce (RFC 10002 §6.6)",
                                 requestName);
    return std::nullopt;
}

} // namespace pkirelay
