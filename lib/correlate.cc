// The answer-to-request check shared by the synchronous transports and the air-gap return leg
// (correlate.h). Each rule quotes the section that makes it.
#include "correlate.h"

#include <algorithm>

#include <fmt/format.h>

#include "der.h"

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

constexpr der::Tag kSeq = der::sequenceTag();

// The subjectPublicKeyInfo of one Certificate (RFC 5280 §4.1): TBSCertificate ::= SEQUENCE {
// version [0] EXPLICIT DEFAULT v1, serialNumber, signature, issuer, validity, subject,
// subjectPublicKeyInfo, ... }.
ByteView certificateKey(const der::Reader &parent, const der::Tlv &cert) {
    der::Reader c = parent.enter(cert);
    const der::Tlv tbs = c.expect(kSeq, "tbsCertificate");
    der::Reader t = c.enter(tbs);
    t.nextIf(der::context(0, true)); // version
    t.expect(der::universal(der::kInteger), "serialNumber");
    t.expect(kSeq, "signature");
    t.expect(kSeq, "issuer");
    t.expect(kSeq, "validity");
    t.expect(kSeq, "subject");
    return t.expect(kSeq, "subjectPublicKeyInfo").encoding;
}

// What each protocol calls its two correlation fields, and the rule that binds them, for the
// lines that say which one does not match.
struct FieldNames {
    std::string_view transaction, transactionRule;
    std::string_view nonce, nonceShort, nonceRule, nonceAbsentRule;
};
constexpr FieldNames kCmpFields{"transactionID",
                                "RFC 9810 §5.1.1: the response MUST carry the request's",
                                "recipNonce",
                                "recipNonce",
                                "RFC 9810 §5.1.1",
                                "RFC 9810 §5.1.1: the recipNonce is copied from the request's "
                                "senderNonce"};
constexpr FieldNames kCmcFields{"transactionId control",
                                "RFC 10002 §6.6",
                                "recipientNonce control",
                                "recipientNonce",
                                "RFC 10002 §6.6",
                                "RFC 10002 §6.6: it returns the request's "
                                "senderNonce"};

// The transaction identifier the request carried must come back, and its senderNonce as the
// answer's recipient nonce; a request without the one or the other leaves that field free.
std::optional<std::string> fieldsMismatch(const RequestKeys &request, const CorrelationKeys &a,
                                          const FieldNames &n, std::string_view requestName) {
    if (!request.transactionId.empty() && !same(a.transactionId, request.transactionId))
        return a.transactionId.empty() ? fmt::format("it has no {}, and {} has one ({})",
                                                     n.transaction, requestName, n.transactionRule)
                                       : fmt::format("its {} is not {}'s ({})", n.transaction,
                                                     requestName, n.transactionRule);
    if (!request.senderNonce.empty() && !same(a.recipNonce, request.senderNonce))
        return a.recipNonce.empty()
                   ? fmt::format("it has no {}, so nothing says it answers {} ({})", n.nonce,
                                 requestName, n.nonceAbsentRule)
                   : fmt::format("its {} is not {}'s senderNonce ({})", n.nonceShort, requestName,
                                 n.nonceRule);
    return std::nullopt;
}

} // namespace

ByteView requestPublicKey(ByteView der) {
    // CertificationRequest ::= SEQUENCE { certificationRequestInfo SEQUENCE { version,
    // subject, subjectPKInfo, attributes [0] }, ... } (RFC 2986 §4).
    try {
        const der::Tlv top = der::parseOne(der);
        if (!top.is(kSeq))
            return {};
        const der::Reader r(der);
        der::Reader req = r.enter(top);
        const der::Tlv cri = req.expect(kSeq, "certificationRequestInfo");
        der::Reader c = req.enter(cri);
        c.expect(der::universal(der::kInteger), "version");
        c.expect(kSeq, "subject");
        return c.expect(kSeq, "subjectPKInfo").encoding;
    } catch (const der::Error &) {
        return {};
    }
}

std::vector<ByteView> certificatePublicKeys(ByteView der) {
    // ContentInfo { contentType, content [0] EXPLICIT SignedData { version, digestAlgorithms,
    // encapContentInfo, certificates [0] IMPLICIT CertificateSet OPTIONAL, ... } } (RFC 5652
    // §3, §5.1); a CertificateChoices that is a plain SEQUENCE is an X.509 Certificate.
    std::vector<ByteView> keys;
    try {
        const der::Tlv top = der::parseOne(der);
        if (!top.is(kSeq))
            return keys;
        const der::Reader r(der);
        der::Reader ci = r.enter(top);
        ci.expect(der::universal(der::kOid), "contentType");
        const der::Tlv content = ci.expect(der::context(0, true), "content");
        der::Reader explicitContent = ci.enter(content);
        const der::Tlv sd = explicitContent.expect(kSeq, "SignedData");
        der::Reader s = explicitContent.enter(sd);
        s.expect(der::universal(der::kInteger), "version");
        s.expect(der::setTag(), "digestAlgorithms");
        s.expect(kSeq, "encapContentInfo");
        const auto certs = s.nextIf(der::context(0, true));
        if (!certs)
            return keys;
        der::Reader set = s.enter(*certs);
        while (!set.atEnd()) {
            const der::Tlv cert = set.next();
            if (!cert.is(kSeq))
                continue;
            try {
                keys.push_back(certificateKey(set, cert));
            } catch (const der::Error &) {
                // Not a certificate this can read: it carries no key to compare.
            }
        }
    } catch (const der::Error &) {
    }
    return keys;
}

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
        // answer's free. And "the recipNonce is copied from the senderNonce of the previous
        // message in the transaction". No exception is made for an error message: an errorMsg
        // without a recipNonce (a server that could not read the request's header) cannot be
        // told from an error meant for another request, and a client that checks its nonce
        // (OpenSSL's does) refuses it too. It goes to a person, who can deliver it anyway.
        return fieldsMismatch(request, a, kCmpFields, requestName);
    }
    if (answer.cmp)
        return fmt::format("a CMP message cannot answer {}, a CMC request", requestName);
    // A Simple PKI Response carries no transactionId and no nonce (RFC 10002 §4.1: a
    // degenerate SignedData with only certificates): what binds it to a PKCS#10 is the key.
    // The certificate issued for the request carries the request's subjectPKInfo (RFC 2986
    // §4.1) as its subjectPublicKeyInfo (RFC 5280 §4.1.2.7); an answer with no certificate
    // for that key was issued for another request.
    if (answer.kind == Kind::CmcSimpleResponse && !request.publicKey.empty()) {
        const auto keys = certificatePublicKeys(answer.der);
        if (std::ranges::none_of(keys, [&](ByteView k) { return same(k, request.publicKey); }))
            return fmt::format("none of its {} certificate{} is for {}'s public key (a "
                               "certs-only answer to a PKCS#10 carries the certificate issued "
                               "for the request's subjectPublicKeyInfo, RFC 2986 §4.1)",
                               keys.size(), keys.size() == 1 ? "" : "s", requestName);
        return std::nullopt;
    }
    // Only a Full PKI Response has controls to compare; a Simple PKI Response (certs-only) has
    // none, and an EnvelopedData cannot be read without the key (RFC 10002 §3.2.2, §5).
    if (answer.kind != Kind::CmcFullResponse)
        return std::nullopt;
    // RFC 10002 §6.6: servers "include received transaction identifiers in the response", and
    // the recipientNonce control returns the request's senderNonce. A request that carried
    // neither (a Simple PKI Request, or a Full one without these controls) cannot be checked.
    return fieldsMismatch(request, a, kCmcFields, requestName);
}

} // namespace pkirelay
