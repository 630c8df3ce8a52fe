// Whether a CA's answer belongs to the request it came back for: the protocol's own correlation
// fields (CMP transactionID and nonces, RFC 9810 §5.1.1; CMC transactionId and nonce controls,
// RFC 10002 §6.6), read by the classifier (classify.h), and for a PKCS#10 answered certs-only,
// which carries neither, the public key the certificate was issued for. One rule for every place an
// answer meets its request: the synchronous transports (agent/pipeline.cc) and the air-gap return
// leg (spool/store.cc), so an answer from another transaction is never delivered as this one's.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

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
    // A PKCS#10 request's subjectPublicKeyInfo, the whole DER value (requestPublicKey); empty
    // for every other kind, and where the check is not wanted (the pipeline's onReply).
    ByteView publicKey;
};

// The subjectPublicKeyInfo of a PKCS#10 CertificationRequest (RFC 2986 §4.1), a view into der;
// empty when der is not one (the classifier has read it already, so this does not fail for a
// stored request).
ByteView requestPublicKey(ByteView der);
// The subjectPublicKeyInfo of each X.509 certificate (RFC 5280 §4.1.2.7) in the certificates
// field of a certs-only SignedData (RFC 5652 §5.1), views into der; other CertificateChoices
// and certificates that do not parse are left out.
std::vector<ByteView> certificatePublicKeys(ByteView der);

// Nothing when answer may be the answer to request; otherwise one line for people saying which
// field does not match, naming the request as `request` ("item 12"). The caller has checked that
// answer is of the request's protocol. An answer without readable controls (certs-only,
// EnvelopedData) to a request without a public key to compare (a CMC Full PKI Request) cannot
// be checked, and passes; so does an EnvelopedData to a PKCS#10. A certs-only answer to a
// PKCS#10 must hold a certificate for the request's key.
std::optional<std::string> answerMismatch(const RequestKeys &request, const Message &answer,
                                          std::string_view requestName);

} // namespace pkirelay
