// The classifier (classify.h). Input is untrusted bytes from files, mail and HTTP bodies. The
// whole value is first checked by the DER reader (lengths, depth, trailing bytes); then only the
// fields that routing and correlation need are read, strictly, from the structures of
// RFC 5652 (CMS), RFC 2986 (PKCS#10), RFC 10002 (CMC PKIData/PKIResponse) and RFC 9810 (CMP).
// Nothing is verified or decrypted, and the message bytes are never re-encoded.
#include "classify.h"

#include <algorithm>
#include <array>
#include <limits>

#include <fmt/format.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include "armor.h"
#include "der.h"
#include "owned.h"

namespace pkirelay {
namespace {

using der::Error;
using der::Reader;
using der::Tlv;

// RFC 5652 §3-§9 content types, RFC 10002 §3.2 (id-cct), PROTOCOLS.md §2.2.
constexpr std::string_view kIdData = "1.2.840.113549.1.7.1";
constexpr std::string_view kIdSignedData = "1.2.840.113549.1.7.2";
constexpr std::string_view kIdEnvelopedData = "1.2.840.113549.1.7.3";
constexpr std::string_view kIdAuthData = "1.2.840.113549.1.9.16.1.2";
constexpr std::string_view kIdPkiData = "1.3.6.1.5.5.7.12.2";
constexpr std::string_view kIdPkiResponse = "1.3.6.1.5.5.7.12.3";
constexpr std::string_view kIdCmcArc = "1.3.6.1.5.5.7.7.";

const der::Tag kSeq = der::sequenceTag();
const der::Tag kSet = der::setTag();
const der::Tag kInt = der::universal(der::kInteger);
const der::Tag kOid = der::universal(der::kOid);

struct Found {
    Kind kind;
    std::optional<CmpInfo> cmp;
    std::optional<CmcInfo> cmc;
};

using BioPtr = Owned<BIO, ::BIO_free>;
using X509NamePtr = Owned<X509_NAME, ::X509_NAME_free>;

bool isOctetString(const Tlv &tlv) {
    return tlv.tag.cls == der::TagClass::Universal && tlv.tag.number == der::kOctetString;
}

// An IA5String name (email, DNS, URI) for people: ASCII is all IA5 allows, so printable ASCII is
// kept and everything else, backslash included, is escaped.
std::string ia5Text(ByteView bytes) {
    std::string out;
    for (std::uint8_t c : bytes) {
        if (c >= 0x20 && c < 0x7f && c != '\\')
            out.push_back(static_cast<char>(c));
        else
            out += fmt::format("\\x{:02x}", c);
    }
    return out;
}

// Errors found inside DER nested in an OCTET STRING: the input did not end early there, so
// such an error is never a truncation of the message.
Error nested(const Error &e, std::string_view where) {
    std::string reason = e.reason();
    if (reason.starts_with("truncated: "))
        reason.erase(0, 11);
    return Error(fmt::format("{}: {}", where, reason), e.offset(), false);
}

// ---- Names for people ------------------------------------------------------------------------

// Attribute types whose OpenSSL short name (OBJ_nid2sn, what XN_FLAG_FN_SN prints) is known
// here, by the contents octets of their OBJECT IDENTIFIER.
struct NameAttribute {
    std::string_view oid;
    std::string_view shortName;
};
constexpr std::array<NameAttribute, 10> kNameAttributes = {{
    {"\x55\x04\x03", "CN"},                                   // 2.5.4.3 commonName
    {"\x55\x04\x06", "C"},                                    // 2.5.4.6 countryName
    {"\x55\x04\x07", "L"},                                    // 2.5.4.7 localityName
    {"\x55\x04\x08", "ST"},                                   // 2.5.4.8 stateOrProvinceName
    {"\x55\x04\x0a", "O"},                                    // 2.5.4.10 organizationName
    {"\x55\x04\x0b", "OU"},                                   // 2.5.4.11 organizationalUnitName
    {"\x55\x04\x05", "serialNumber"},                         // 2.5.4.5
    {"\x2a\x86\x48\x86\xf7\x0d\x01\x09\x01", "emailAddress"}, // 1.2.840.113549.1.9.1
    {"\x09\x92\x26\x89\x93\xf2\x2c\x64\x01\x19", "DC"},       // 0.9.2342.19200300.100.1.25
    {"\x09\x92\x26\x89\x93\xf2\x2c\x64\x01\x01", "UID"},      // 0.9.2342.19200300.100.1.1
}};

// A value RFC 4514 §2.4 (and OpenSSL's ASN1_STRFLGS_RFC2253) prints as it is: no character to
// escape anywhere (",+\"\\<>;", controls, bytes above 0x7e), no '#' or space first, no space
// last. The set is kept narrower than that, to characters PrintableString allows (X.680 §41.4)
// plus '@' and '_' outside PrintableString; anything else goes to OpenSSL.
bool plainValue(ByteView v, bool printableString) {
    if (v.empty() || v.front() == ' ' || v.back() == ' ')
        return false;
    for (std::uint8_t c : v) {
        const bool alnum =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        const bool punct = c == ' ' || c == '\'' || c == '(' || c == ')' || c == '-' || c == '.' ||
                           c == '/' || c == ':' || c == '?';
        if (!alnum && !punct && (printableString || (c != '@' && c != '_')))
            return false;
    }
    return true;
}

// The text of a Name whose every RDN is one attribute of kNameAttributes with a plain
// PrintableString, UTF8String or IA5String value, in DER; nullopt for anything else (which
// OpenSSL then prints, or refuses). XN_FLAG_RFC2253: the RDNs last to first (XN_FLAG_DN_REV),
// "," between them, "TYPE=value" with no spaces.
std::optional<std::string> plainNameText(ByteView encoding) {
    try {
        Reader top(encoding);
        const Tlv name = top.next();
        if (!top.atEnd() || !name.is(kSeq) || name.indefinite)
            return std::nullopt;
        std::array<std::pair<std::string_view, ByteView>, 16> parts;
        std::size_t n = 0;
        Reader rdns = top.enter(name);
        while (!rdns.atEnd()) {
            const Tlv rdn = rdns.next();
            if (!rdn.is(kSet) || rdn.indefinite || n == parts.size())
                return std::nullopt;
            Reader set = rdns.enter(rdn);
            const Tlv atv = set.next();
            if (!set.atEnd() || !atv.is(kSeq) || atv.indefinite)
                return std::nullopt; // several attributes in one RDN: '+', OpenSSL's order
            Reader pair = set.enter(atv);
            const Tlv type = pair.next();
            const Tlv value = pair.next();
            if (!pair.atEnd() || !type.is(kOid) || value.tag.cls != der::TagClass::Universal ||
                value.tag.constructed)
                return std::nullopt;
            const bool printable = value.tag.number == 19;
            if (!printable && value.tag.number != der::kUtf8String &&
                value.tag.number != der::kIa5String)
                return std::nullopt;
            const std::string_view oid(reinterpret_cast<const char *>(type.content.data()),
                                       type.content.size());
            const auto known = std::find_if(kNameAttributes.begin(), kNameAttributes.end(),
                                            [&](const auto &a) { return a.oid == oid; });
            if (known == kNameAttributes.end() || !plainValue(value.content, printable))
                return std::nullopt;
            parts[n++] = {known->shortName, value.content};
        }
        if (n == 0)
            return std::nullopt; // the empty Name: OpenSSL says what it prints
        std::string out;
        for (std::size_t i = n; i-- > 0;) {
            if (i != n - 1)
                out.push_back(',');
            out.append(parts[i].first);
            out.push_back('=');
            out.append(reinterpret_cast<const char *>(parts[i].second.data()),
                       parts[i].second.size());
        }
        return out;
    } catch (const Error &) {
        return std::nullopt; // OpenSSL decides
    }
}

} // namespace

std::optional<std::string> nameTextOpenSsl(ByteView encoding) {
    if (encoding.size() > static_cast<std::size_t>(std::numeric_limits<long>::max()))
        return std::nullopt;
    const unsigned char *p = encoding.data();
    ::ERR_clear_error();
    X509NamePtr x(::d2i_X509_NAME(nullptr, &p, static_cast<long>(encoding.size())));
    // d2i accepts trailing garbage (LIBRARIES.md, OpenSSL 1): check it used every byte.
    if (!x || p != encoding.data() + encoding.size()) {
        ::ERR_clear_error();
        return std::nullopt;
    }
    BioPtr bio(::BIO_new(::BIO_s_mem()));
    if (!bio || ::X509_NAME_print_ex(bio.get(), x.get(), 0, XN_FLAG_RFC2253) < 0) {
        ::ERR_clear_error();
        return std::nullopt;
    }
    char *data = nullptr;
    const long len = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, len > 0 ? static_cast<std::size_t>(len) : 0);
}

std::optional<std::string> nameText(ByteView encoding) {
    if (auto text = plainNameText(encoding))
        return text;
    return nameTextOpenSsl(encoding);
}

namespace {

// RFC 5280 §4.2.1.6 GeneralName, IMPLICIT tags (PKIX1Implicit88); directoryName [4] is
// explicit because Name is a CHOICE.
std::string generalName(const Tlv &tlv, const Reader &parent, std::string_view what) {
    if (tlv.tag.cls != der::TagClass::Context)
        throw Error(fmt::format("the {} at offset {} is a {}, not a GeneralName", what, tlv.offset,
                                der::tagName(tlv.tag)),
                    tlv.offset);
    switch (tlv.tag.number) {
    case 1:
        return "email:" + ia5Text(tlv.content);
    case 2:
        return "dns:" + ia5Text(tlv.content);
    case 6:
        return "uri:" + ia5Text(tlv.content);
    case 7:
        if (!tlv.tag.constructed && tlv.content.size() == 4)
            return fmt::format("ip:{}.{}.{}.{}", tlv.content[0], tlv.content[1], tlv.content[2],
                               tlv.content[3]);
        return "ip:" + toHex(tlv.content);
    case 8:
        if (!tlv.tag.constructed) {
            Tlv oid = tlv;
            oid.tag = kOid;
            return "rid:" + der::oidToString(oid);
        }
        break;
    case 4: {
        Reader r = parent.enter(tlv);
        // The names of the parts are only for error text: built when an error is thrown.
        const auto part = [what] {
            return fmt::format("the {} directoryName", what);
        };
        const Tlv name = r.atEnd() ? r.next(part()) : r.next();
        if (!name.is(kSeq)) // as Reader::expect says it
            throw Error(fmt::format("{} at offset {} should be a {} but is a {}", part(),
                                    name.offset, der::tagName(kSeq), der::tagName(name.tag)),
                        name.offset);
        if (!r.atEnd())
            r.expectEnd(part());
        if (auto text = nameText(name.encoding))
            return std::move(*text);
        throw Error(
            fmt::format("the {} directoryName at offset {} is not a valid Name", what, name.offset),
            name.offset);
    }
    default:
        break;
    }
    return fmt::format("[{}] {}", tlv.tag.number, toHex(tlv.content));
}

// ---- CMP (RFC 9810 §5.1) -------------------------------------------------------------------

// PKIStatusInfo ::= SEQUENCE { status PKIStatus, statusString PKIFreeText OPTIONAL, failInfo
// PKIFailureInfo OPTIONAL } (RFC 9810 §5.2.3); PKIFreeText ::= SEQUENCE SIZE (1..MAX) OF
// UTF8String (§5.1.1). The text is what a CA says to a person ("bad POP", "not authorized"):
// `pkirelay show` prints it, so it is kept (bounded), not interpreted.
struct CmpStatus {
    std::optional<int> status;
    std::string text;
    std::uint32_t failInfo = 0;
};

constexpr std::size_t maxStatusText = 1024;

void appendText(std::string &to, ByteView utf8) {
    if (to.size() >= maxStatusText)
        return;
    if (!to.empty())
        to += "; ";
    to.append(asChars(utf8).substr(0, maxStatusText - std::min(to.size(), maxStatusText)));
}

CmpStatus readStatusInfo(Reader &r, const Tlv &statusInfo) {
    CmpStatus out;
    Reader s = r.enter(statusInfo);
    const std::int64_t v = der::toInt(s.expect(kInt, "PKIStatus"));
    out.status = static_cast<int>(std::clamp<std::int64_t>(v, -1, 1000));
    if (auto text = s.nextIf(kSeq)) {
        Reader t = s.enter(*text);
        while (!t.atEnd()) {
            const Tlv line = t.next();
            if (line.is(der::universal(der::kUtf8String)))
                appendText(out.text, line.content);
        }
    }
    if (auto bits = s.nextIf(der::universal(der::kBitString)); bits && bits->content.size() > 1) {
        // X.690 §8.6: the first octet counts the unused bits; bit 0 is the first octet's MSB.
        for (std::size_t i = 1; i < bits->content.size() && i <= 4; ++i)
            for (int b = 0; b < 8; ++b)
                if (bits->content[i] & (0x80 >> b))
                    out.failInfo |= 1u << ((i - 1) * 8 + static_cast<std::size_t>(b));
    }
    return out;
}

// The first PKIStatusInfo of the bodies that carry one (RFC 9810 §5.3.4 CertRepMessage, §5.3.10
// RevRepContent, §5.3.21 ErrorMsgContent, whose errorDetails text is added to the status text).
// Read leniently: a body we cannot read has no status.
CmpStatus cmpStatus(int bodyType, const Tlv &body, const Reader &parent) {
    try {
        Reader b = parent.enter(body);
        const Tlv content = b.expect(kSeq, "PKIBody content");
        Reader c = b.enter(content);
        switch (bodyType) {
        case 1:
        case 3:
        case 8:
        case 14: {                           // ip, cp, kup, ccp: CertRepMessage
            c.nextIf(der::context(1, true)); // caPubs
            const Tlv responses = c.expect(kSeq, "response");
            Reader rs = c.enter(responses);
            if (rs.atEnd())
                return {};
            const Tlv certResponse = rs.expect(kSeq, "CertResponse");
            Reader cr = rs.enter(certResponse);
            cr.expect(kInt, "certReqId");
            const Tlv statusInfo = cr.expect(kSeq, "PKIStatusInfo");
            return readStatusInfo(cr, statusInfo);
        }
        case 12: { // rp: RevRepContent { status SEQUENCE OF PKIStatusInfo, ... }
            const Tlv list = c.expect(kSeq, "status");
            Reader l = c.enter(list);
            if (l.atEnd())
                return {};
            const Tlv statusInfo = l.expect(kSeq, "PKIStatusInfo");
            return readStatusInfo(l, statusInfo);
        }
        case 23: { // error: ErrorMsgContent { pKIStatusInfo, errorCode INTEGER OPTIONAL,
                   //   errorDetails PKIFreeText OPTIONAL }
            const Tlv statusInfo = c.expect(kSeq, "PKIStatusInfo");
            CmpStatus out = readStatusInfo(c, statusInfo);
            c.nextIf(kInt);
            if (auto details = c.nextIf(kSeq)) {
                Reader d = c.enter(*details);
                while (!d.atEnd()) {
                    const Tlv line = d.next();
                    if (line.is(der::universal(der::kUtf8String)))
                        appendText(out.text, line.content);
                }
            }
            return out;
        }
        default:
            return {};
        }
    } catch (const Error &) {
        return {};
    }
}

Found classifyCmp(Reader msg) {
    CmpInfo info;
    const Tlv header = msg.expect(kSeq, "PKIHeader");
    Reader h = msg.enter(header);
    const Tlv pvno = h.expect(kInt, "pvno");
    const std::int64_t version = der::toInt(pvno);
    if (version < 1 || version > 3)
        throw Error(
            fmt::format("pvno {} at offset {} is not a CMP version (1..3)", version, pvno.offset),
            pvno.offset);
    info.pvno = static_cast<int>(version);
    info.sender = generalName(h.next("sender"), h, "sender");
    info.recipient = generalName(h.next("recipient"), h, "recipient");
    // Optional header fields [0]..[8], EXPLICIT, in order (RFC 9810 §5.1.1).
    int last = -1;
    while (!h.atEnd()) {
        const Tlv field = h.next();
        if (field.tag.cls != der::TagClass::Context || !field.tag.constructed ||
            field.tag.number > 8)
            throw Error(fmt::format("unexpected {} at offset {} in the PKIHeader",
                                    der::tagName(field.tag), field.offset),
                        field.offset);
        const int n = static_cast<int>(field.tag.number);
        if (n <= last)
            throw Error(
                fmt::format("PKIHeader field [{}] at offset {} is out of order", n, field.offset),
                field.offset);
        last = n;
        Reader f = h.enter(field);
        // Error text is built only when there is an error.
        const Tlv value =
            f.atEnd() ? f.next(fmt::format("the value of PKIHeader field [{}]", n)) : f.next();
        if (!f.atEnd())
            f.expectEnd(fmt::format("PKIHeader field [{}]", n));
        switch (n) {
        case 2:
            info.senderKid = der::octetString(value, f);
            break;
        case 4:
            info.transactionId = der::octetString(value, f);
            break;
        case 5:
            info.senderNonce = der::octetString(value, f);
            break;
        case 6:
            info.recipNonce = der::octetString(value, f);
            break;
        default:
            break;
        }
    }
    const Tlv body = msg.next("PKIBody");
    if (body.tag.cls != der::TagClass::Context || !body.tag.constructed)
        throw Error(fmt::format("the PKIBody at offset {} is a {}, not a body tag [0]..[26]",
                                body.offset, der::tagName(body.tag)),
                    body.offset);
    if (body.tag.number > 26)
        throw Error(fmt::format("PKIBody tag [{}] at offset {} is not a CMP body type (0..26)",
                                body.tag.number, body.offset),
                    body.offset);
    {
        Reader b = msg.enter(body);
        b.next("the PKIBody content");
        b.expectEnd("the PKIBody");
    }
    info.bodyType = static_cast<int>(body.tag.number);
    msg.nextIf(der::context(0, true)); // protection
    msg.nextIf(der::context(1, true)); // extraCerts
    msg.expectEnd("the PKIMessage");
    CmpStatus status = cmpStatus(info.bodyType, body, msg);
    info.pkiStatus = status.status;
    info.statusText = std::move(status.text);
    info.failInfo = status.failInfo;
    return {Kind::Cmp, std::move(info), std::nullopt};
}

// ---- PKCS#10 (RFC 2986 §4) -----------------------------------------------------------------

Found classifyPkcs10(Reader req) {
    const Tlv cri = req.expect(kSeq, "CertificationRequestInfo");
    Reader c = req.enter(cri);
    const Tlv version = c.expect(kInt, "version");
    if (der::toInt(version) != 0)
        throw Error(fmt::format("PKCS#10 version at offset {} is not 0", version.offset),
                    version.offset);
    c.expect(kSeq, "subject Name");
    c.expect(kSeq, "subjectPKInfo");
    c.expect(der::context(0, true), "attributes [0]");
    c.expectEnd("the CertificationRequestInfo");
    req.expect(kSeq, "signatureAlgorithm");
    req.expect(der::universal(der::kBitString), "signature");
    req.expectEnd("the CertificationRequest");
    return {Kind::CmcSimpleRequest, std::nullopt, std::nullopt};
}

// ---- CMC PKIData / PKIResponse (RFC 10002 §3.2, §6) ----------------------------------------

void readStatus(Reader &values, CmcInfo &info, bool v2) {
    const Tlv si = values.expect(kSeq, v2 ? "CMCStatusInfoV2" : "CMCStatusInfo");
    Reader s = values.enter(si);
    const std::int64_t status = der::toInt(s.expect(kInt, "cMCStatus"));
    s.expect(kSeq, "bodyList");
    if (auto text = s.nextIf(der::universal(der::kUtf8String))) // statusString
        appendText(info.statusText, text->content);
    if (!s.atEnd()) {
        const Tlv other = s.next();
        // otherInfo CHOICE { failInfo INTEGER, pendInfo SEQUENCE { pendToken OCTET STRING,
        // pendTime }, extendedFailInfo SEQUENCE { OID, ANY } } (RFC 10002 §6.1.1-2).
        if (other.is(kSeq)) {
            Reader o = s.enter(other);
            const Tlv first = o.next("the first field of otherInfo");
            if (isOctetString(first))
                info.pendToken = der::octetString(first, o);
        } else if (!other.is(kInt)) {
            throw Error(fmt::format("unexpected {} at offset {} as otherInfo of a status",
                                    der::tagName(other.tag), other.offset),
                        other.offset);
        }
    }
    s.expectEnd(v2 ? "the CMCStatusInfoV2" : "the CMCStatusInfo");
    info.status = static_cast<int>(std::clamp<std::int64_t>(status, -1, 1000000));
}

void readPkiData(ByteView content, std::size_t baseOffset, const der::Limits &limits, bool response,
                 CmcInfo &info) {
    const std::string_view what = response ? "PKIResponse" : "PKIData";
    const Tlv top = der::parseOne(content, limits, baseOffset);
    if (!top.is(kSeq))
        throw Error(fmt::format("the {} at offset {} is a {}, not a SEQUENCE", what, top.offset,
                                der::tagName(top.tag)),
                    top.offset);
    // parseOne checked the whole value: entering it from a reader over the same bytes does not
    // walk it again.
    const Reader outer(content, limits, baseOffset);
    Reader p = outer.enter(top);
    const Tlv controls = p.expect(kSeq, "controlSequence");
    if (!response)
        p.expect(kSeq, "reqSequence");
    p.expect(kSeq, "cmsSequence");
    p.expect(kSeq, "otherMsgSequence");
    if (!p.atEnd())
        p.expectEnd(fmt::format("the {}", what));

    bool haveV2 = false;
    Reader cs = p.enter(controls);
    while (!cs.atEnd()) {
        const Tlv ta = cs.expect(kSeq, "TaggedAttribute");
        Reader t = cs.enter(ta);
        t.expect(kInt, "bodyPartID");
        const Tlv typeTlv = t.expect(kOid, "attrType");
        const std::string type = der::oidToString(typeTlv);
        const Tlv valuesTlv = t.expect(kSet, "attrValues");
        t.expectEnd("the TaggedAttribute");
        if (!type.starts_with(kIdCmcArc))
            continue; // unknown controls are none of a transport's business
        const std::string_view n = std::string_view(type).substr(kIdCmcArc.size());
        Reader v = t.enter(valuesTlv);
        auto firstValue = [&](std::string_view name) {
            return v.atEnd() ? v.next(fmt::format("the value of the {} control at offset {}", name,
                                                  ta.offset))
                             : v.next();
        };
        if (n == "5") {
            info.transactionId = der::integerBytes(firstValue("transactionId"));
        } else if (n == "6") {
            info.senderNonce = der::octetString(firstValue("senderNonce"), v);
        } else if (n == "7") {
            info.recipientNonce = der::octetString(firstValue("recipientNonce"), v);
        } else if (n == "21") {
            info.queryPending = der::octetString(firstValue("queryPending"), v);
        } else if (n == "25") {
            if (!haveV2) {
                info.pendToken.clear();
                readStatus(v, info, true);
                haveV2 = true;
            }
        } else if (n == "1") {
            if (!haveV2 && !info.status)
                readStatus(v, info, false);
        }
    }
}

// ---- CMS (RFC 5652) ------------------------------------------------------------------------

struct Encap {
    std::string type;
    std::size_t offset = 0;
    std::optional<Tlv> eContent;  // the OCTET STRING
    std::optional<Reader> reader; // the reader eContent came from
};

// EncapsulatedContentInfo (RFC 5652 §5.2).
Encap readEncap(Reader &parent, const Tlv &encapTlv) {
    Encap encap;
    Reader e = parent.enter(encapTlv);
    const Tlv type = e.expect(kOid, "eContentType");
    encap.type = der::oidToString(type);
    encap.offset = type.offset;
    const auto wrapper = e.nextIf(der::context(0, true));
    e.expectEnd("the EncapsulatedContentInfo");
    if (wrapper) {
        Reader w = e.enter(*wrapper);
        const Tlv content = w.next("eContent");
        w.expectEnd("eContent [0]");
        if (!isOctetString(content))
            throw Error(fmt::format("eContent at offset {} is a {}, not an OCTET STRING",
                                    content.offset, der::tagName(content.tag)),
                        content.offset);
        encap.eContent = content;
        encap.reader = w;
    }
    return encap;
}

// PKIData or PKIResponse inside eContent; the kind follows from eContentType.
Found fullPki(const Encap &encap, std::string_view cmsType, const der::Limits &limits,
              std::size_t certificates) {
    const bool response = encap.type == kIdPkiResponse;
    CmcInfo info;
    info.contentType = std::string(cmsType);
    info.certificates = certificates;
    if (!encap.eContent)
        throw Error(fmt::format("the {} at offset {} has no eContent (detached content cannot "
                                "be relayed)",
                                response ? "PKIResponse" : "PKIData", encap.offset),
                    encap.offset);
    const Tlv &os = *encap.eContent;
    try {
        if (!os.tag.constructed) {
            readPkiData(os.content, os.contentOffset(), limits, response, info);
        } else {
            // BER chunked OCTET STRING: offsets inside count from the start of the chunks.
            const Bytes joined = der::octetString(os, *encap.reader);
            readPkiData(joined, os.contentOffset(), limits, response, info);
        }
    } catch (const Error &e) {
        throw nested(e, fmt::format("in the {} (eContent at offset {})",
                                    response ? "PKIResponse" : "PKIData", os.offset));
    }
    return {response ? Kind::CmcFullResponse : Kind::CmcFullRequest, std::nullopt, std::move(info)};
}

std::size_t countValues(Reader &parent, const Tlv &tlv) {
    Reader r = parent.enter(tlv);
    std::size_t n = 0;
    while (!r.atEnd()) {
        r.next();
        ++n;
    }
    return n;
}

// SignedData (RFC 5652 §5.1).
Found classifySignedData(Reader s, const der::Limits &limits) {
    s.expect(kInt, "SignedData version");
    s.expect(kSet, "digestAlgorithms");
    const Tlv encapTlv = s.expect(kSeq, "encapContentInfo");
    std::size_t certificates = 0;
    if (auto certs = s.nextIf(der::context(0, true)))
        certificates = countValues(s, *certs);
    s.nextIf(der::context(1, true)); // crls
    const Tlv signers = s.expect(kSet, "signerInfos");
    s.expectEnd("the SignedData");
    const Encap encap = readEncap(s, encapTlv);
    if (encap.type == kIdPkiData || encap.type == kIdPkiResponse)
        return fullPki(encap, "signedData", limits, certificates);
    if (encap.type == kIdData) {
        // RFC 10002 §4.1: a Simple PKI Response is a degenerate SignedData, no content and no
        // signers, only certificates (and CRLs).
        if (!encap.eContent && countValues(s, signers) == 0) {
            CmcInfo info;
            info.contentType = "signedData";
            info.certificates = certificates;
            return {Kind::CmcSimpleResponse, std::nullopt, std::move(info)};
        }
        throw Error(fmt::format("unknown content type in the SignedData (id-data with content "
                                "or signers, not certs-only): {}",
                                encap.type),
                    encap.offset);
    }
    throw Error(fmt::format("unknown content type in the SignedData: {}", encap.type),
                encap.offset);
}

// AuthenticatedData (RFC 5652 §9.1).
Found classifyAuthData(Reader a, const der::Limits &limits) {
    a.expect(kInt, "AuthenticatedData version");
    a.nextIf(der::context(0, true)); // originatorInfo
    a.expect(kSet, "recipientInfos");
    a.expect(kSeq, "macAlgorithm");
    a.nextIf(der::context(1, true)); // digestAlgorithm
    const Tlv encapTlv = a.expect(kSeq, "encapContentInfo");
    a.nextIf(der::context(2, true)); // authAttrs
    const Tlv mac = a.next("mac");
    if (!isOctetString(mac))
        throw Error(fmt::format("mac at offset {} is a {}, not an OCTET STRING", mac.offset,
                                der::tagName(mac.tag)),
                    mac.offset);
    a.nextIf(der::context(3, true)); // unauthAttrs
    a.expectEnd("the AuthenticatedData");
    const Encap encap = readEncap(a, encapTlv);
    if (encap.type == kIdPkiData || encap.type == kIdPkiResponse)
        return fullPki(encap, "authenticatedData", limits, 0);
    throw Error(fmt::format("unknown content type in the AuthenticatedData: {}", encap.type),
                encap.offset);
}

// EnvelopedData (RFC 5652 §6.1): only its shape is checked; the inner kind is unknowable.
Found classifyEnvelopedData(Reader e) {
    e.expect(kInt, "EnvelopedData version");
    e.nextIf(der::context(0, true)); // originatorInfo
    e.expect(kSet, "recipientInfos");
    e.expect(kSeq, "encryptedContentInfo");
    e.nextIf(der::context(1, true)); // unprotectedAttrs
    e.expectEnd("the EnvelopedData");
    CmcInfo info;
    info.contentType = "envelopedData";
    return {Kind::CmcEnveloped, std::nullopt, std::move(info)};
}

// ContentInfo (RFC 5652 §3).
Found classifyContentInfo(Reader ci, const der::Limits &limits) {
    const Tlv typeTlv = ci.expect(kOid, "contentType");
    const std::string type = der::oidToString(typeTlv);
    if (type != kIdSignedData && type != kIdAuthData && type != kIdEnvelopedData)
        throw Error(fmt::format("unknown content type in the CMS ContentInfo: {}", type),
                    typeTlv.offset);
    const Tlv wrapper = ci.expect(der::context(0, true), "content [0]");
    ci.expectEnd("the ContentInfo");
    Reader w = ci.enter(wrapper);
    const Tlv content = w.expect(kSeq, "the content of the ContentInfo");
    w.expectEnd("content [0]");
    Reader body = w.enter(content);
    if (type == kIdSignedData)
        return classifySignedData(body, limits);
    if (type == kIdAuthData)
        return classifyAuthData(body, limits);
    return classifyEnvelopedData(body);
}

Found classifyDer(ByteView input, const der::Limits &limits) {
    const Tlv outer = der::parseOne(input, limits);
    if (!outer.is(kSeq))
        throw Error(fmt::format("not DER: the value at offset 0 is a {}, not a SEQUENCE",
                                der::tagName(outer.tag)),
                    0);
    // parseOne checked the whole value: entering it from a reader over the same bytes does not
    // walk it again.
    const Reader top(input, limits);
    Reader r = top.enter(outer);
    // PROTOCOLS.md §8: sniff by the shape of the first elements.
    const auto first = r.peekTag();
    if (first == kOid)
        return classifyContentInfo(r, limits);
    if (first == kSeq) {
        Reader probe = r;
        const Tlv inner = probe.next();
        Reader i = probe.enter(inner);
        const auto t = i.peekTag();
        if (t == kInt) {
            const Tlv v = i.next();
            const auto t2 = i.peekTag();
            if (v.content.size() == 1 && v.content[0] == 0 && t2 == kSeq)
                return classifyPkcs10(r);
            if (t2 && t2->cls == der::TagClass::Context)
                return classifyCmp(r);
        }
        if (t == der::context(0, true))
            throw Error("a signed structure with a version [0] (an X.509 certificate?), not a "
                        "PKI message",
                        0);
    }
    throw Error("a SEQUENCE that is not a CMS ContentInfo, PKCS#10 request or CMP PKIMessage", 0);
}

Rejection reject(const Error &e, std::string_view prefix = {}) {
    return Rejection{std::string(prefix) + e.reason(), e.offset(), e.truncated()};
}

Classification classifyBinary(ByteView der, Bytes owned, Encoding encoding,
                              const ClassifyLimits &limits, std::string_view prefix) {
    try {
        Found found = classifyDer(der, der::Limits{limits.maxDepth});
        Message m{found.kind, encoding, std::move(owned), std::move(found.cmp),
                  std::move(found.cmc)};
        if (m.der.empty())
            m.der.assign(der.begin(), der.end());
        return m;
    } catch (const Error &e) {
        return reject(e, prefix);
    }
}

// PROTOCOLS.md §5/§8: a length-prefixed CMP-over-TCP frame (RFC 2510 §5.2 or the draft's
// version 10 framing) starts with a 4-byte length of what follows.
bool isTcpFrame(ByteView input) {
    if (input.size() < 5)
        return false;
    const std::uint64_t len =
        (std::uint64_t{input[0]} << 24) | (input[1] << 16) | (input[2] << 8) | input[3];
    return len == input.size() - 4 && (input[4] == 10 || input[4] <= 6);
}

bool isText(ByteView input) {
    for (std::uint8_t c : input)
        if (!(c >= 0x20 && c < 0x7f) && c != '\r' && c != '\n' && c != '\t')
            return false;
    return true;
}

} // namespace

Classification classify(ByteView input, const ClassifyLimits &limits) {
    if (input.empty())
        return Rejection{"truncated: the input is empty", 0, true};
    if (input[0] == 0x30) {
        if (input.size() > limits.maxSize)
            return Rejection{
                fmt::format("too large: {} bytes, the limit is {}", input.size(), limits.maxSize),
                std::nullopt, false};
        return classifyBinary(input, {}, Encoding::Der, limits, {});
    }
    if (isTcpFrame(input))
        return Rejection{fmt::format("a CMP-over-TCP frame, not a bare PKIMessage (type byte "
                                     "0x{:02x})",
                                     input[4]),
                         0, false};
    const bool pem = armor::looksLikePem(input);
    if (pem || (armor::isBase64Char(input[0]) && isText(input))) {
        // Base64 needs 4 characters for 3 bytes plus line breaks; allow for that and a PEM
        // frame before decoding, then apply the limit to the decoded bytes.
        const std::size_t textMax = limits.maxSize > std::numeric_limits<std::size_t>::max() / 2
                                        ? std::numeric_limits<std::size_t>::max()
                                        : limits.maxSize * 3 / 2 + 4096;
        if (input.size() > textMax)
            return Rejection{
                fmt::format("too large: {} bytes of text, the limit is {}", input.size(), textMax),
                std::nullopt, false};
        Bytes decoded;
        try {
            decoded = pem ? armor::decodePem(input).data : armor::decodeBase64(input);
        } catch (const ParseError &e) {
            return Rejection{fmt::format("{}: {}",
                                         pem ? "not clean PEM" : "not DER, and not clean base64",
                                         e.reason()),
                             e.offset(), e.truncated()};
        }
        const std::string_view form = pem ? "PEM" : "base64";
        if (decoded.size() > limits.maxSize)
            return Rejection{fmt::format("too large: the {} holds {} bytes, the limit is {}", form,
                                         decoded.size(), limits.maxSize),
                             std::nullopt, false};
        if (decoded.empty() || decoded[0] != 0x30)
            return Rejection{fmt::format("the {} content is not DER: first byte 0x{:02x} is not "
                                         "a SEQUENCE",
                                         form, decoded.empty() ? 0 : decoded[0]),
                             0, false};
        // A moved vector keeps its buffer, so the view stays valid inside `owned`.
        const ByteView view = decoded;
        return classifyBinary(view, std::move(decoded), pem ? Encoding::Pem : Encoding::Base64,
                              limits, fmt::format("in the decoded {}: ", form));
    }
    return Rejection{fmt::format("not DER: first byte 0x{:02x} is not a SEQUENCE", input[0]), 0,
                     false};
}

bool Message::isRequest() const {
    switch (kind) {
    case Kind::CmcSimpleRequest:
    case Kind::CmcFullRequest:
    case Kind::CmcEnveloped: // routed by source; from a client it is a request
        return true;
    case Kind::CmcSimpleResponse:
    case Kind::CmcFullResponse:
        return false;
    case Kind::Cmp:
        return cmp && cmpBodyIsRequest(cmp->bodyType);
    }
    return false;
}

std::string_view cmpBodyName(int bodyType) {
    // RFC 9810 §5.1.2, in tag order.
    static constexpr std::array<std::string_view, 27> names = {
        "ir",   "ip",     "cr",    "cp",       "p10cr",   "popdecc", "popdecr",
        "kur",  "kup",    "krr",   "krp",      "rr",      "rp",      "ccr",
        "ccp",  "ckuann", "cann",  "rann",     "crlann",  "pkiconf", "nested",
        "genm", "genp",   "error", "certConf", "pollReq", "pollRep"};
    if (bodyType < 0 || bodyType >= static_cast<int>(names.size()))
        return "unknown";
    return names[static_cast<std::size_t>(bodyType)];
}

bool cmpBodyIsRequest(int bodyType) {
    switch (bodyType) {
    case 0:  // ir
    case 2:  // cr
    case 4:  // p10cr
    case 6:  // popdecr
    case 7:  // kur
    case 9:  // krr
    case 11: // rr
    case 13: // ccr
    case 21: // genm
    case 23: // error: an end entity rejecting a transaction (RFC 9810 §5.3.21)
    case 24: // certConf
    case 25: // pollReq
        return true;
    default:
        return false;
    }
}

} // namespace pkirelay
