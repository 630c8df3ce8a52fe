// The classifier: from untrusted bytes to "which PKI message is this, and how does it correlate",
// or to a precise reason why it is not one. It never verifies signatures or decrypts; it reads
// only what routing, correlation and duplicate detection need (../shared/DESIGN.md, "Message
// kinds"; ../shared/PROTOCOLS.md §2.4, §4 and §8). Parsing is strict and bounded (der.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <variant>

#include "bytes.h"
#include "kinds.h"

namespace pkirelay {

struct ClassifyLimits {
    std::size_t maxSize = 4 * 1024 * 1024; // largest message accepted, in bytes (after decoding)
    unsigned maxDepth = 32;                // deepest nesting of constructed DER/BER values
};

// How the bytes were found: binary DER/BER as RFC 10003 §2 requires, or one of the armoured
// forms accepted as a convenience (decoded strictly).
enum class Encoding { Der, Pem, Base64 };

// CMP PKIHeader/PKIBody data (RFC 9810 §5.1.1, §5.1.2).
struct CmpInfo {
    int pvno = 0;                 // 1 cmp1999, 2 cmp2000, 3 cmp2021
    int bodyType = -1;            // PKIBody CHOICE tag, 0 (ir) .. 26 (pollRep)
    std::string sender;           // GeneralName rendered for people ("CN=x,O=y", "email:..")
    std::string recipient;        //
    Bytes transactionId;          // [4] OCTET STRING, empty when absent
    Bytes senderNonce;            // [5]
    Bytes recipNonce;             // [6]
    Bytes senderKid;              // [2] KeyIdentifier (PBM reference or key id)
    std::optional<int> pkiStatus; // first PKIStatus in ip/cp/kup/rp/error bodies, when present
    std::string statusText;       // its statusString (and an error's errorDetails), "; "-joined,
                                  // as the CA wrote it (untrusted: print with printable())
    std::uint32_t failInfo = 0;   // its PKIFailureInfo bits (bit n = RFC 9810 §5.2.3 value n)
};

// CMC controls read from an unencrypted PKIData/PKIResponse (RFC 10002 §6; PROTOCOLS.md §2.4).
struct CmcInfo {
    std::string contentType;      // "signedData" or "authenticatedData" or "envelopedData"
    Bytes transactionId;          // id-cmc-transactionId (.7.5): INTEGER content octets
    Bytes senderNonce;            // id-cmc-senderNonce (.7.6)
    Bytes recipientNonce;         // id-cmc-recipientNonce (.7.7)
    std::optional<int> status;    // CMCStatusInfoV2 (.7.25) or CMCStatusInfo (.7.1) cMCStatus
    std::string statusText;       // its statusString, as the CA wrote it (untrusted)
    Bytes pendToken;              // pendInfo.pendToken, when status is pending/partial
    Bytes queryPending;           // id-cmc-queryPending (.7.21)
    std::size_t certificates = 0; // certificates in the SignedData (certs-only responses)
};

struct Message {
    Kind kind;
    Encoding encoding = Encoding::Der;
    Bytes der;                  // the message as relayed: the input itself, or the armour's
                                // decoded content; never re-encoded
    std::optional<CmpInfo> cmp; // set when kind == Kind::Cmp
    std::optional<CmcInfo> cmc; // set for CMC Full PKI messages and certs-only responses

    // True when the message goes from an end entity (or RA) towards a CA: a request to relay.
    // CMC requests and enveloped CMC (routed by source) are requests; for CMP it depends on the
    // body type (cmpBodyIsRequest).
    bool isRequest() const;
};

struct Rejection {
    std::string reason;                // one line for people: "truncated: ... (byte 700)"
    std::optional<std::size_t> offset; // where in the input the problem is, when it has a place
    bool truncated = false;            // the input ends before the message does: a file still
                                       // being copied in looks like this
};

using Classification = std::variant<Message, Rejection>;

// Classifies one whole input (a file's bytes, an HTTP body, a MIME part's decoded content).
// Never throws for bad input; throws only std::bad_alloc.
Classification classify(ByteView input, const ClassifyLimits &limits = {});

// PKIBody tag names as in RFC 9810 §5.1.2 ("ir", "ip", ...); "unknown" outside 0..26.
std::string_view cmpBodyName(int bodyType);
// ir, cr, p10cr, popdecr, kur, krr, rr, ccr, genm, certConf, pollReq, and error (which an end
// entity sends to reject a transaction, RFC 9810 §5.3.21): messages to carry towards a CA.
bool cmpBodyIsRequest(int bodyType);

// A DER Name (RFC 5280 §4.1.2.4) as text for people: what OpenSSL's X509_NAME_print_ex prints
// with XN_FLAG_RFC2253 ("CN=x,O=y", RFC 4514 order and escaping), or nullopt when OpenSSL does
// not take the bytes as a Name. nameText builds the text of the names nearly every message
// carries (single-valued RDNs of common attributes, values of plain ASCII) itself, which costs
// a few hundred instructions where d2i_X509_NAME and the print cost tens of thousands, and
// hands every other name to OpenSSL; nameTextOpenSsl always asks OpenSSL (the tests hold the
// two to the same text).
std::optional<std::string> nameText(ByteView encoding);
std::optional<std::string> nameTextOpenSsl(ByteView encoding);

} // namespace pkirelay
