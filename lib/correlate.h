// Whether a CA's answer belongs to the request it came back for: the protocol's own correlation
// fields (CMP transactionID and nonces, RFC 9810 §5.1.1; CMC transactionId and nonce controls,
// RFC 10002 §6.6), read by the classifier (classify.h). One rule for every place an answer meets
// its request: the synchronous transports (agent/pipeline.cc) and the air-gap return leg
// (spool/store.cc), so an answer from another transaction is never delivered as this one's.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "bytes.h"
#include "classify.h"

namespace pkirelay {

// A message's correlation fields, protocol-neutral (the store's columns hold either protocol's).
// Empty when the message does not carry the field (and for kinds without any: PKCS#10,
// certs-only, EnvelopedData).
struct CorrelationKeys {
    bool cmp = false;
    ByteView transactionId, senderNonce, recipNonce;
};
CorrelationKeys correlationKeys(const Message &m);

// The request's side of the check: what it carried when it was sent.
struct RequestKeys {
    bool cmp = false;
    ByteView transactionId; // CMP transactionID / CMC transactionId content octets; may be empty
    ByteView senderNonce;   // may be empty
};

// Nothing when answer may be the answer to request; otherwise one line for people saying which
// field does not match, naming the request as `request` ("item 12"). The caller has checked that
// answer is of the request's protocol. A request without nonces (PKCS#10, a CMC Simple PKI
// Request) and an answer without readable controls (certs-only, EnvelopedData) cannot be
// checked, and pass.
std::optional<std::string> answerMismatch(const RequestKeys &request, const Message &answer,
                                          std::string_view requestName);

} // namespace pkirelay
