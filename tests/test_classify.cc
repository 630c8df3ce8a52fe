// Unit tests for the DER reader, the armour decoder, the classifier and `inspect`'s describe().
// Fixtures are made at test time by fixtures/make_fixtures.sh (openssl command line only) into a
// temporary directory; the real messages of other implementations come from
// $PKIRELAY_SHARED/vectors when that directory exists (it does not on a user's clone).
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <openssl/x509.h>

#include "lib/armor.h"
#include "lib/classify.h"
#include "lib/correlate.h"
#include "lib/der.h"
#include "lib/describe.h"
#include "peer.h"

using namespace pkirelay;
namespace fs = std::filesystem;

namespace {

Bytes readFile(const fs::path &path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in);
    return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

Bytes hex(std::string_view h) {
    Bytes out;
    for (std::size_t i = 0; i + 1 < h.size(); i += 2)
        out.push_back(
            static_cast<std::uint8_t>(std::stoi(std::string(h.substr(i, 2)), nullptr, 16)));
    return out;
}

const fs::path &fixtures() {
    return test::madeFixtures();
}

Message asMessage(const Classification &c) {
    if (const auto *r = std::get_if<Rejection>(&c))
        FAIL("rejected: " << r->reason);
    return std::get<Message>(c);
}

Rejection asRejection(const Classification &c) {
    if (const auto *m = std::get_if<Message>(&c))
        FAIL("classified as " << kindInfo(m->kind).id << ", expected a rejection");
    return std::get<Rejection>(c);
}

Message classifyFixture(const std::string &name) {
    return asMessage(classify(readFile(fixtures() / name)));
}

std::optional<fs::path> vectors() {
    const char *shared = std::getenv("PKIRELAY_SHARED");
    fs::path dir = fs::path(shared ? shared : "../../shared") / "vectors";
    if (!fs::is_directory(dir))
        return std::nullopt;
    return dir;
}

} // namespace

// ---- DER reader ------------------------------------------------------------------------------

TEST_CASE("der: short and long form lengths", "[der]") {
    auto t = der::parseOne(hex("0403010203"));
    CHECK(t.is(der::universal(der::kOctetString)));
    CHECK(t.content.size() == 3);
    CHECK(t.headerLength == 2);

    Bytes longForm = hex("048200c8");
    longForm.resize(4 + 200, 0xab);
    t = der::parseOne(longForm);
    CHECK(t.content.size() == 200);
    CHECK(t.headerLength == 4);

    // BER allows non-minimal length octets; 4 length octets is the limit accepted.
    t = der::parseOne(hex("04840000000101"));
    CHECK(t.content.size() == 1);

    try {
        der::parseOne(hex("0485000000000101"));
        FAIL("5 length octets accepted");
    } catch (const der::Error &e) {
        CHECK(e.offset() == 0);
        CHECK_FALSE(e.truncated());
        CHECK_THAT(e.reason(), Catch::Contains("5 octets"));
    }
    CHECK_THROWS_AS(der::parseOne(hex("04ff")), der::Error);
}

TEST_CASE("der: declared length past the end is a truncation with offset", "[der]") {
    Bytes b = hex("308205dc"); // SEQUENCE of 1500 bytes
    b.resize(4 + 696, 0);
    b[4] = 0x05;
    try {
        der::parseOne(b);
        FAIL("accepted");
    } catch (const der::Error &e) {
        CHECK(e.truncated());
        CHECK(e.offset() == 0);
        CHECK(e.reason() ==
              "truncated: the SEQUENCE at offset 0 declares 1500 bytes but only 696 remain");
    }
    // An inner value overrunning its parent is malformed, not truncated.
    try {
        der::parseOne(hex("3003040501"));
        FAIL("accepted");
    } catch (const der::Error &e) {
        CHECK_FALSE(e.truncated());
        CHECK(e.offset() == 2);
    }
}

TEST_CASE("der: indefinite length values and chunked OCTET STRING", "[der]") {
    const Bytes b = hex("30800201052480040261620401630000"
                        "0000");
    auto t = der::parseOne(b);
    CHECK(t.indefinite);
    CHECK(t.encoding.size() == b.size());
    der::Reader top(b);
    top.next();
    der::Reader r = top.enter(t);
    CHECK(der::toInt(r.next()) == 5);
    const auto os = r.next();
    CHECK(os.indefinite);
    CHECK(der::octetString(os, r) == Bytes{'a', 'b', 'c'});
    CHECK(r.atEnd());

    // Missing end-of-contents at the end of input: truncated.
    try {
        der::parseOne(hex("3080020105"));
        FAIL("accepted");
    } catch (const der::Error &e) {
        CHECK(e.truncated());
    }
    // Indefinite length on a primitive value is not BER.
    CHECK_THROWS_AS(der::parseOne(hex("04800000")), der::Error);
    // End-of-contents where no indefinite value is open.
    CHECK_THROWS_AS(der::parseOne(hex("30020000")), der::Error);
}

TEST_CASE("der: high tag numbers", "[der]") {
    auto t = der::parseOne(hex("9f640100")); // [100] primitive
    CHECK(t.tag == der::context(100, false));
    CHECK(der::tagName(t.tag) == "[100]");
    t = der::parseOne(hex("bf8740020500")); // [960] constructed
    CHECK(t.tag == der::context(960, true));
    // Too many tag octets, leading zero octet, and short numbers in long form are refused.
    CHECK_THROWS_AS(der::parseOne(hex("9f81818181010100")), der::Error);
    CHECK_THROWS_AS(der::parseOne(hex("9f80010100")), der::Error);
    CHECK_THROWS_AS(der::parseOne(hex("9f050100")), der::Error);
    // A tag cut off by the end of the input is a truncation.
    try {
        der::parseOne(hex("9f81"));
        FAIL("accepted");
    } catch (const der::Error &e) {
        CHECK(e.truncated());
    }
}

TEST_CASE("der: trailing bytes, depth limit, primitives", "[der]") {
    try {
        der::parseOne(hex("050000aabb"));
        FAIL("accepted");
    } catch (const der::Error &e) {
        CHECK(e.offset() == 2);
        CHECK_THAT(e.reason(), Catch::StartsWith("3 trailing bytes at offset 2"));
    }
    Bytes deep;
    for (int i = 0; i < 40; ++i)
        deep.insert(deep.begin(), {0x30, static_cast<std::uint8_t>(deep.size())});
    CHECK_THROWS_WITH(der::parseOne(deep), Catch::Contains("nesting deeper than 32"));
    CHECK_NOTHROW(der::parseOne(deep, der::Limits{40}));

    CHECK(der::oidToString(der::parseOne(hex("06092a864886f70d010702"))) == "1.2.840.113549.1.7.2");
    CHECK(der::oidToString(der::parseOne(hex("0603883703"))) == "2.999.3");
    CHECK_THROWS_AS(der::oidToString(der::parseOne(hex("0600"))), der::Error);
    CHECK_THROWS_AS(der::oidToString(der::parseOne(hex("06022a86"))), der::Error);
    CHECK_THROWS_AS(der::oidToString(der::parseOne(hex("06032a8001"))), der::Error);
    CHECK(der::toInt(der::parseOne(hex("0201ff"))) == -1);
    CHECK(der::toInt(der::parseOne(hex("02020100"))) == 256);
    CHECK_THROWS_AS(der::toInt(der::parseOne(hex("0209010000000000000000"))), der::Error);
    CHECK_THROWS_AS(der::toInt(der::parseOne(hex("0200"))), der::Error);
    CHECK_THROWS_AS(der::parseOne(Bytes{}), der::Error);
}

// ---- armour ----------------------------------------------------------------------------------

TEST_CASE("armor: strict base64", "[armor]") {
    CHECK(armor::decodeBase64(asBytes("MIIB\r\nAA==\n")) == hex("308201"
                                                                "00"));
    CHECK(armor::decodeBase64(asBytes("AAE=")) == hex("0001"));
    CHECK_THROWS_AS(armor::decodeBase64(asBytes("MII")), armor::Error);       // not 4n
    CHECK_THROWS_AS(armor::decodeBase64(asBytes("MI=B")), armor::Error);      // inner pad
    CHECK_THROWS_AS(armor::decodeBase64(asBytes("AA==AAAA")), armor::Error);  // pad not at end
    CHECK_THROWS_AS(armor::decodeBase64(asBytes("MIIB AA==")), armor::Error); // space
    CHECK_THROWS_AS(armor::decodeBase64(asBytes("AAF=")), armor::Error);      // pad bits
    CHECK_THROWS_AS(armor::decodeBase64(asBytes("\n\n")), armor::Error);      // nothing
    try {
        armor::decodeBase64(asBytes("AAAA*AAA"));
    } catch (const armor::Error &e) {
        CHECK(e.offset() == 4);
    }
}

TEST_CASE("armor: strict PEM", "[armor]") {
    const std::string good = "\n-----BEGIN CMS-----\r\nMIIB\r\nAA==\r\n-----END CMS-----\r\n\n";
    auto pem = armor::decodePem(asBytes(good));
    CHECK(pem.label == "CMS");
    CHECK(pem.data == hex("30820100"));
    const char *bad[] = {
        "junk\n-----BEGIN CMS-----\nAAAA\n-----END CMS-----\n",
        "-----BEGIN CMS-----\nAAAA\n-----END PKCS7-----\n",
        "-----BEGIN CMS-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END CMS-----\n",
        "-----BEGIN CMS-----\nAAAA\n\nAAAA\n-----END CMS-----\n",
        "-----BEGIN CMS-----\nAA*A\n-----END CMS-----\n",
        "-----BEGIN CMS-----\nAAAA\n-----END CMS-----\ntrailing\n",
        "-----BEGIN CMS-----\nAA==\nAAAA\n-----END CMS-----\n",
        "-----BEGIN CMS-----\nAAA\n-----END CMS-----\n",
        "-----BEGIN CMS-----\n-----END CMS-----\n",
        "-----BEGIN -CMS-----\nAAAA\n-----END -CMS-----\n",
    };
    for (const char *text : bad) {
        INFO(text);
        CHECK_THROWS_AS(armor::decodePem(asBytes(text)), armor::Error);
    }
    try {
        armor::decodePem(asBytes("-----BEGIN CMS-----\nAAAA\n"));
        FAIL("accepted");
    } catch (const armor::Error &e) {
        CHECK(e.truncated());
    }
    // RFC 7468 §3: a hyphen or space only between label characters, never two in a row. A label
    // holding "-----END " made the END line ambiguous (found by fuzz_armor, kept as
    // corpus/armor/regress-label-holding-end).
    for (const char *text : {"-----BEGIN A-----END B-----\nTWFu\n-----END A-----END B-----\n",
                             "-----BEGIN A--B-----\nTWFu\n-----END A--B-----\n",
                             "-----BEGIN A  B-----\nTWFu\n-----END A  B-----\n"}) {
        INFO(text);
        CHECK_THROWS_WITH(armor::decodePem(asBytes(text)), Catch::Contains("bad PEM label"));
    }
    CHECK(armor::decodePem(asBytes("-----BEGIN NEW CERTIFICATE-REQUEST-----\nTWFu\n"
                                   "-----END NEW CERTIFICATE-REQUEST-----\n"))
              .data == hex("4d616e"));
}

// ---- classifier: our own fixtures ----------------------------------------------------------

TEST_CASE("classify: fixtures made by the openssl command line", "[classify][fixtures]") {
    SECTION("PKCS#10") {
        const auto m = classifyFixture("p10.der");
        CHECK(m.kind == Kind::CmcSimpleRequest);
        CHECK(m.isRequest());
        CHECK(m.encoding == Encoding::Der);
        CHECK(m.der == readFile(fixtures() / "p10.der"));
    }
    SECTION("CMC Full PKI Request with transactionId and senderNonce") {
        const auto m = classifyFixture("cmc_request.der");
        CHECK(m.kind == Kind::CmcFullRequest);
        CHECK(m.isRequest());
        REQUIRE(m.cmc);
        CHECK(m.cmc->contentType == "signedData");
        CHECK(toHex(m.cmc->transactionId) == "0123456789abcdef42");
        CHECK(toHex(m.cmc->senderNonce) == "00112233445566778899aabbccddeeff");
        CHECK(m.cmc->recipientNonce.empty());
        CHECK_FALSE(m.cmc->status);
        CHECK(m.cmc->certificates == 1);
    }
    SECTION("CMC request with queryPending") {
        const auto m = classifyFixture("cmc_query.der");
        CHECK(m.kind == Kind::CmcFullRequest);
        CHECK(asChars(m.cmc->queryPending) == "pend-token");
    }
    SECTION("CMC Full PKI Response, success") {
        const auto m = classifyFixture("cmc_response.der");
        CHECK(m.kind == Kind::CmcFullResponse);
        CHECK_FALSE(m.isRequest());
        REQUIRE(m.cmc);
        CHECK(m.cmc->status == 0);
        CHECK(toHex(m.cmc->transactionId) == "0123456789abcdef42");
        CHECK(toHex(m.cmc->recipientNonce) == "00112233445566778899aabbccddeeff");
        CHECK(toHex(m.cmc->senderNonce) == "ffeeddccbbaa99887766554433221100");
        CHECK(m.cmc->pendToken.empty());
    }
    SECTION("CMC Full PKI Response, pending with pendToken") {
        const auto m = classifyFixture("cmc_pending.der");
        CHECK(m.kind == Kind::CmcFullResponse);
        CHECK(m.cmc->status == 3);
        CHECK(asChars(m.cmc->pendToken) == "pend-token");
    }
    SECTION("certs-only") {
        const auto m = classifyFixture("certs_only.p7c");
        CHECK(m.kind == Kind::CmcSimpleResponse);
        CHECK_FALSE(m.isRequest());
        REQUIRE(m.cmc);
        CHECK(m.cmc->certificates == 2);
    }
    SECTION("EnvelopedData") {
        const auto m = classifyFixture("enveloped.der");
        CHECK(m.kind == Kind::CmcEnveloped);
        CHECK(m.isRequest());
        CHECK(m.cmc->contentType == "envelopedData");
    }
    SECTION("CMP ir, ip, certConf, pkiConf: transactionID as asn1parse shows it, nonce chain") {
        const auto ir = classifyFixture("cmp_ir.der");
        const auto ip = classifyFixture("cmp_ip.der");
        const auto cc = classifyFixture("cmp_certConf.der");
        const auto pc = classifyFixture("cmp_pkiconf.der");
        for (const auto *m : {&ir, &ip, &cc, &pc}) {
            CHECK(m->kind == Kind::Cmp);
            REQUIRE(m->cmp);
            CHECK(m->cmp->pvno == 2);
            CHECK(m->cmp->transactionId == ir.cmp->transactionId);
            CHECK(m->cmp->senderNonce.size() == 16);
            CHECK(asChars(m->cmp->senderKid) == "1234");
        }
        const auto txid = readFile(fixtures() / "cmp_ir.txid");
        CHECK(toHex(ir.cmp->transactionId) + "\n" == asChars(txid));
        CHECK(ir.cmp->bodyType == 0);
        CHECK(ip.cmp->bodyType == 1);
        CHECK(cc.cmp->bodyType == 24);
        CHECK(pc.cmp->bodyType == 19);
        CHECK(ir.isRequest());
        CHECK_FALSE(ip.isRequest());
        CHECK(cc.isRequest());
        CHECK_FALSE(pc.isRequest());
        CHECK(ir.cmp->recipNonce.empty());
        CHECK(ip.cmp->recipNonce == ir.cmp->senderNonce);
        CHECK(cc.cmp->recipNonce == ip.cmp->senderNonce);
        CHECK(ip.cmp->pkiStatus == 0);
        CHECK_FALSE(ir.cmp->pkiStatus);
        CHECK(ir.cmp->sender == "CN=fixture-ee");
        CHECK(ip.cmp->sender == "CN=Fixture CA,O=pkirelay fixtures");
    }
    SECTION("CMP p10cr/cp and error") {
        CHECK(classifyFixture("cmp_p10cr.der").cmp->bodyType == 4);
        const auto cp = classifyFixture("cmp_cp.der");
        CHECK(cp.cmp->bodyType == 3);
        CHECK(cp.cmp->pkiStatus == 0);
        const auto err = classifyFixture("cmp_error.der");
        CHECK(err.cmp->bodyType == 23);
        CHECK(err.cmp->pkiStatus == 2); // rejection
        // PKIStatusInfo.statusString and ErrorMsgContent.errorDetails, as the server wrote them
        // (OpenSSL's mock server with -send_error), and failInfo badRequest (bit 2).
        CHECK(err.cmp->statusText.find("error processing message") != std::string::npos);
        CHECK(err.cmp->failInfo == (1u << 2));
        CHECK(failInfoNames(err.cmp->failInfo) == "badRequest");
    }
    SECTION("PEM and bare base64 copies decode to the DER bytes") {
        const auto pem = classifyFixture("cmc_request.pem");
        CHECK(pem.kind == Kind::CmcFullRequest);
        CHECK(pem.encoding == Encoding::Pem);
        CHECK(pem.der == readFile(fixtures() / "cmc_request.der"));
        const auto b64 = classifyFixture("cmp_ir.b64");
        CHECK(b64.kind == Kind::Cmp);
        CHECK(b64.encoding == Encoding::Base64);
        CHECK(b64.der == readFile(fixtures() / "cmp_ir.der"));
    }
}

// ---- classifier: real messages of other implementations --------------------------------------

TEST_CASE("classify: public vectors as their README says", "[classify][vectors]") {
    const auto dir = vectors();
    if (!dir) {
        WARN("no shared vectors directory (PKIRELAY_SHARED): skipped");
        return;
    }
    struct Expect {
        const char *file;
        Kind kind;
        int body;
        int pvno;
    };
    const Expect expected[] = {
        {"cmp_cp_eguven_pvno2.der", Kind::Cmp, 3, 2},
        {"cmp_certConf_insta_pvno3.der", Kind::Cmp, 24, 3},
        {"cmc_pkidata_microsoft.der", Kind::CmcFullRequest, -1, 0},
        {"cmc_pkidata_sunet_0.der", Kind::CmcFullRequest, -1, 0},
        {"cmc_pkidata_sunet_1.der", Kind::CmcFullRequest, -1, 0},
        {"cmc_pkidata_sunet_2.der", Kind::CmcFullRequest, -1, 0},
        {"cmc_pkidata_sunet_3.der", Kind::CmcFullRequest, -1, 0},
        {"openssl_cmp/65-test_cmp_vfy_data__IR_protected.der", Kind::Cmp, 0, 2},
        {"openssl_cmp/65-test_cmp_vfy_data__IR_unprotected.der", Kind::Cmp, 0, 2},
        {"openssl_cmp/65-test_cmp_vfy_data__IP_waitingStatus_PBM.der", Kind::Cmp, 1, 2},
        {"openssl_cmp/65-test_cmp_lib_data__IR_rmprotection.der", Kind::Cmp, 1, 2},
        {"openssl_cmp/65-test_cmp_msg_data__pkcs10.der", Kind::CmcSimpleRequest, -1, 0},
    };
    for (const auto &e : expected) {
        INFO(e.file);
        const Bytes bytes = readFile(*dir / e.file);
        const auto m = asMessage(classify(bytes));
        CHECK(m.kind == e.kind);
        CHECK(m.der == bytes);
        if (e.kind == Kind::Cmp) {
            REQUIRE(m.cmp);
            CHECK(m.cmp->bodyType == e.body);
            CHECK(m.cmp->pvno == e.pvno);
        }
        if (std::string_view(e.file).find("sunet") != std::string_view::npos) {
            REQUIRE(m.cmc);
            // 128 octets in these samples (PROTOCOLS.md §2.4 says 16; the bytes say 128).
            CHECK(m.cmc->senderNonce.size() == 128);
        }
        if (std::string_view(e.file).find("waitingStatus") != std::string_view::npos)
            CHECK(m.cmp->pkiStatus == 3);
    }
}

// ---- classifier: damaged input ---------------------------------------------------------------

namespace {

std::vector<Bytes> realMessages() {
    std::vector<Bytes> out;
    for (const char *name : {"cmp_ir.der", "cmc_request.der", "p10.der", "certs_only.p7c",
                             "cmc_pending.der", "enveloped.der", "cmp_ip.der"})
        out.push_back(readFile(fixtures() / name));
    if (auto dir = vectors()) {
        out.push_back(readFile(*dir / "cmp_cp_eguven_pvno2.der"));
        out.push_back(readFile(*dir / "cmc_pkidata_microsoft.der"));
    }
    return out;
}

} // namespace

TEST_CASE("classify: every prefix of a real message is a truncation", "[classify][damage]") {
    for (const Bytes &full : realMessages()) {
        REQUIRE(std::holds_alternative<Message>(classify(full)));
        for (std::size_t n = 0; n < full.size(); ++n) {
            const auto c = classify(ByteView(full).first(n));
            const auto *r = std::get_if<Rejection>(&c);
            INFO("prefix " << n << " of " << full.size());
            REQUIRE(r);
            REQUIRE(r->truncated);
            REQUIRE_THAT(r->reason, Catch::StartsWith("truncated: "));
        }
    }
}

TEST_CASE("classify: appended garbage is rejected at the right offset", "[classify][damage]") {
    for (Bytes bytes : realMessages()) {
        const std::size_t size = bytes.size();
        bytes.insert(bytes.end(), {0x00, 0x01, 0x02});
        const auto r = asRejection(classify(bytes));
        CHECK_FALSE(r.truncated);
        CHECK(r.offset == size);
        CHECK_THAT(r.reason,
                   Catch::StartsWith("3 trailing bytes at offset " + std::to_string(size)));
    }
}

TEST_CASE("classify: flipped bytes never crash, length changes are rejected",
          "[classify][damage]") {
    for (const Bytes &full : realMessages()) {
        // Every single-byte change: classification must come back (a value, never a crash).
        for (std::size_t i = 0; i < full.size(); ++i) {
            for (std::uint8_t x : {0x01, 0x80, 0xff}) {
                Bytes b = full;
                b[i] ^= x;
                (void)classify(b);
            }
        }
    }
    // The outer length one less: the last field overruns it (not a truncation); one more:
    // the input ends first (a truncation).
    Bytes b = readFile(fixtures() / "cmp_ir.der");
    REQUIRE(b[1] == 0x82);
    Bytes shorter = b;
    shorter[3] -= 1;
    const auto rs = asRejection(classify(shorter));
    CHECK_FALSE(rs.truncated);
    CHECK(rs.offset.has_value());
    Bytes longer = b;
    longer[3] += 1;
    CHECK(asRejection(classify(longer)).truncated);
    // The PKIHeader's length one less: the header ends inside a field, not a truncation.
    Bytes inner = b;
    REQUIRE(inner[4] == 0x30);
    inner[inner[5] == 0x81 ? 6 : 5] -= 1;
    const auto r = asRejection(classify(inner));
    CHECK_FALSE(r.truncated);
    CHECK(r.offset.has_value());
}

TEST_CASE("classify: limits, non-DER input and structural rejections", "[classify][damage]") {
    const Bytes ir = readFile(fixtures() / "cmp_ir.der");
    ClassifyLimits small;
    small.maxSize = ir.size() - 1;
    CHECK_THAT(asRejection(classify(ir, small)).reason, Catch::StartsWith("too large"));
    small.maxSize = ir.size();
    CHECK(std::holds_alternative<Message>(classify(ir, small)));

    Bytes deep;
    for (int i = 0; i < 40; ++i)
        deep.insert(deep.begin(), {0x30, static_cast<std::uint8_t>(deep.size())});
    CHECK_THAT(asRejection(classify(deep)).reason, Catch::Contains("nesting deeper"));

    CHECK(asRejection(classify(hex("0401ff"))).reason ==
          "not DER: first byte 0x04 is not a SEQUENCE");
    CHECK(asRejection(classify(Bytes{})).truncated);

    // CMP over TCP: 4-byte length of the rest, then a type byte (RFC 2510 §5.2) or 10.
    const std::size_t frameLength = ir.size() + 3;
    Bytes frame = {0,
                   0,
                   static_cast<std::uint8_t>(frameLength >> 8),
                   static_cast<std::uint8_t>(frameLength),
                   10,
                   0,
                   0};
    frame.insert(frame.end(), ir.begin(), ir.end());
    CHECK(asRejection(classify(frame)).reason.starts_with("a CMP-over-TCP frame"));

    // Bad armour, as a whole input.
    CHECK_THAT(asRejection(classify(asBytes("-----BEGIN CMS-----\nProc-Type: 4,ENCRYPTED\nAAAA\n"
                                            "-----END CMS-----\n")))
                   .reason,
               Catch::StartsWith("not clean PEM: PEM header"));
    CHECK(asRejection(classify(asBytes("-----BEGIN CMS-----\nMIIB\n"))).truncated);
    CHECK_THAT(asRejection(classify(asBytes("MIIB AA==\n"))).reason,
               Catch::StartsWith("not DER, and not clean base64"));
    CHECK_THAT(asRejection(classify(asBytes("AAAA\n"))).reason, Catch::Contains("is not DER"));

    // Well-formed DER of the wrong shapes.
    CHECK_THAT(
        asRejection(classify(hex("300b06092a864886f70d010701"))).reason,
        Catch::Contains("unknown content type in the CMS ContentInfo: 1.2.840.113549.1.7.1"));
    CHECK_THAT(asRejection(classify(hex("3000"))).reason, Catch::Contains("not a CMS"));
    // A CMP header with pvno 5, and a body tag [27].
    CHECK_THAT(asRejection(classify(hex("3011300b020105a4023000a4023000a0023000"))).reason,
               Catch::Contains("pvno 5"));
    CHECK_THAT(asRejection(classify(hex("3011300b020102a4023000a4023000bb023000"))).reason,
               Catch::Contains("not a CMP body type"));
}

TEST_CASE("classify: names and directions of CMP bodies", "[classify]") {
    CHECK(cmpBodyName(0) == "ir");
    CHECK(cmpBodyName(19) == "pkiconf");
    CHECK(cmpBodyName(24) == "certConf");
    CHECK(cmpBodyName(26) == "pollRep");
    CHECK(cmpBodyName(27) == "unknown");
    CHECK(cmpBodyName(-1) == "unknown");
    int requests = 0;
    for (int i = 0; i <= 26; ++i)
        requests += cmpBodyIsRequest(i) ? 1 : 0;
    CHECK(requests == 12);
    CHECK_FALSE(cmpBodyIsRequest(15)); // ckuann
}

// nameText builds the text of plain names itself and leaves the rest to OpenSSL: both must give
// OpenSSL's X509_NAME_print_ex text (XN_FLAG_RFC2253) for every name, and refuse the same bytes.
TEST_CASE("classify: a Name's text is OpenSSL's, with or without OpenSSL", "[classify][names]") {
    struct Entry {
        const char *field;
        int type; // MBSTRING_UTF8, or a V_ASN1_* string type written as it is
        std::string value;
    };
    const auto encode = [](const std::vector<std::vector<Entry>> &rdns) {
        X509_NAME *name = ::X509_NAME_new();
        REQUIRE(name != nullptr);
        for (const auto &rdn : rdns)
            for (const auto &e : rdn) {
                INFO(e.field << "=" << e.value);
                // set 0 starts an RDN, -1 adds to the one before (a multi-valued RDN)
                REQUIRE(::X509_NAME_add_entry_by_txt(
                            name, e.field, e.type,
                            reinterpret_cast<const unsigned char *>(e.value.data()),
                            static_cast<int>(e.value.size()), -1,
                            &e == &rdn.front() ? 0 : -1) == 1);
            }
        unsigned char *der = nullptr;
        const int n = ::i2d_X509_NAME(name, &der);
        ::X509_NAME_free(name);
        REQUIRE(n > 0);
        Bytes out(der, der + n);
        ::OPENSSL_free(der);
        return out;
    };
    const int utf8 = MBSTRING_UTF8, ps = V_ASN1_PRINTABLESTRING, ia5 = V_ASN1_IA5STRING;
    const std::vector<std::vector<std::vector<Entry>>> names = {
        {{{"CN", utf8, "bench-ee"}}},
        {{{"O", utf8, "pkirelay bench"}}, {{"CN", utf8, "Bench CA"}}},
        {{{"C", ps, "DE"}},
         {{"ST", utf8, "Bayern"}},
         {{"L", utf8, "Munich"}},
         {{"OU", utf8, "PKI (test)"}},
         {{"CN", ps, "a-b.c/d:e?f'g"}}},
        {{{"DC", ia5, "example"}}, {{"DC", ia5, "com"}}, {{"UID", utf8, "user_1"}}},
        {{{"emailAddress", ia5, "ee@example.com"}}, {{"serialNumber", ps, "0042"}}},
        {{{"CN", ps, "user@example.com"}}}, // '@' is not PrintableString's: OpenSSL decides
        // Everything OpenSSL escapes or prints its own way, at the start, inside and at the
        // end.
        {{{"CN", utf8, "a,b"}}},
        {{{"CN", utf8, "a+b"}}},
        {{{"CN", utf8, "a=b"}}},
        {{{"CN", utf8, "a\"b;c<d>e\\f"}}},
        {{{"CN", utf8, "#start"}}},
        {{{"CN", utf8, " lead"}}},
        {{{"CN", utf8, "trail "}}},
        {{{"CN", utf8, "tab\there"}}},
        {{{"CN", utf8, "caf\xc3\xa9"}}},
        {{{"CN", utf8, "x"}, {"O", utf8, "y"}}}, // a multi-valued RDN
        {{{"2.5.4.42", utf8, "Given"}}},         // a type outside the table
        {{{"1.2.3.4.5", utf8, "unknown"}}},      // a type OpenSSL has no name for
        {{{"CN", V_ASN1_T61STRING, "t61"}}},
        {{{"CN", V_ASN1_BMPSTRING, std::string("\0a\0b", 4)}}},
        {}, // the empty Name
    };
    for (const auto &rdns : names) {
        const Bytes der = encode(rdns);
        const auto ours = nameText(der);
        const auto theirs = nameTextOpenSsl(der);
        INFO("name " << toHex(der));
        REQUIRE(theirs.has_value());
        CHECK(ours == theirs);
    }
    // What OpenSSL refuses, nameText refuses: not a Name, trailing bytes, a broken SET.
    // The last is an empty value, which the API above cannot make.
    for (const char *h :
         {"3100", "300531033003", "3003310130", "30063104300206", "300b3109300706035504030c00ff",
          "3003020101", "300b3109300706035504030c00"}) {
        const Bytes der = hex(h);
        INFO("bytes " << h);
        CHECK(nameText(der) == nameTextOpenSsl(der));
    }
}

// ---- describe (what `inspect` prints)
// --------------------------------------------------------

TEST_CASE("describe: text and JSON for messages and rejections", "[describe]") {
    const auto ir = classifyFixture("cmp_ir.der");
    const std::string text = describe(ir);
    CHECK_THAT(text, Catch::StartsWith("kind:           CMP PKIMessage\n"));
    CHECK_THAT(text, Catch::Contains("\npvno:           2 (cmp2000)\n"));
    CHECK_THAT(text, Catch::Contains("\nbody:           ir (0), request\n"));
    CHECK_THAT(text, Catch::Contains("\ntransactionID:  " + toHex(ir.cmp->transactionId) + "\n"));
    CHECK_THAT(text, Catch::Contains("\nrecipNonce:     (none)\n"));
    CHECK_THAT(text, Catch::Contains("\nsender:         CN=fixture-ee\n"));
    CHECK_THAT(text, Catch::Contains("\nencoding:       DER\n"));
    CHECK_THAT(text, Catch::Contains("\nsha256:         " + sha256Hex(ir.der) + "\n"));
    CHECK_THAT(text, Catch::Contains("\nfile extension: .pki\n"));
    CHECK_THAT(text, Catch::Contains("\ncontent type:   application/pkixcmp\n"));

    const auto ip = classifyFixture("cmp_ip.der");
    CHECK_THAT(describe(ip), Catch::Contains("\nstatus:         accepted (0)\n"));

    const auto pending = classifyFixture("cmc_pending.der");
    CHECK_THAT(describe(pending), Catch::Contains("status:         pending (3)\n"));
    CHECK_THAT(describe(pending), Catch::Contains("pendToken:      70656e642d746f6b656e\n"));

    auto j = toJson(ir);
    CHECK(j["kind"] == "cmp");
    CHECK(j["rejected"] == false);
    CHECK(j["encoding"] == "der");
    CHECK(j["size"] == ir.der.size());
    CHECK(j["cmp"]["body"] == "ir");
    CHECK(j["cmp"]["body_type"] == 0);
    CHECK(j["cmp"]["transaction_id"] == toHex(ir.cmp->transactionId));
    CHECK(j["cmp"]["pki_status"].is_null());
    j = toJson(pending);
    CHECK(j["kind"] == "cmc-full-response");
    CHECK(j["cmc"]["status"] == 3);
    CHECK(j["cmc"]["status_name"] == "pending");
    CHECK(j["cmc"]["transaction_id"] == "0123456789abcdef42");

    const Rejection r{"truncated: the SEQUENCE at offset 0 declares 1500 bytes but only 700 remain",
                      0, true};
    CHECK(describe(r) == "rejected:  truncated: the SEQUENCE at offset 0 declares 1500 bytes but "
                         "only 700 remain\noffset:    0\ntruncated: yes\n");
    j = toJson(r);
    CHECK(j["rejected"] == true);
    CHECK(j["offset"] == 0);
    CHECK(j["truncated"] == true);
    CHECK(toJson(Rejection{"x", std::nullopt, false})["offset"].is_null());
}

TEST_CASE("printable escapes control bytes and invalid UTF-8, keeps valid UTF-8", "[printable]") {
    using pkirelay::printable;
    CHECK(printable("CN=plain") == "CN=plain");
    CHECK(printable("CN=J\xc3\xbcrgen") == "CN=J\xc3\xbcrgen"); // U+00FC
    CHECK(printable("\x1b[31mred") == "\\x1b[31mred");          // terminal escape
    CHECK(printable("a\xff"
                    "b") == "a\\xffb");                    // not UTF-8
    CHECK(printable("\xc0\xaf") == "\\xc0\\xaf");          // overlong '/'
    CHECK(printable("\xed\xa0\x80") == "\\xed\\xa0\\x80"); // a surrogate
    CHECK(printable("\xe2\x82") == "\\xe2\\x82");          // cut short
    CHECK(printable(std::string_view("nul\0", 4)) == "nul\\x00");
}

TEST_CASE("a CMP name that is not UTF-8 still describes and encodes as JSON", "[describe]") {
    // Found by tests/fuzz/fuzz_classify: nlohmann::json throws on invalid UTF-8 when dumping.
    // PKIMessage { PKIHeader { pvno 2, sender [1] rfc822Name "a\xff\x1b", recipient NULL-DN },
    //              genm [21] {} }
    const pkirelay::Bytes der = {0x30, 0x12, 0x30, 0x0c, 0x02, 0x01, 0x02, 0x81, 0x03, 0x61,
                                 0xff, 0x1b, 0xa4, 0x02, 0x30, 0x00, 0xb5, 0x02, 0x30, 0x00};
    const auto result = pkirelay::classify(der);
    REQUIRE(std::holds_alternative<pkirelay::Message>(result));
    const auto &message = std::get<pkirelay::Message>(result);
    CHECK(message.cmp->bodyType == 21);
    const std::string json = pkirelay::toJson(message).dump();
    CHECK(json.find("\\\\xff") != std::string::npos);
    CHECK(pkirelay::describe(message).find('\x1b') == std::string::npos);
}

// ---- answer to request (lib/correlate.h) ------------------------------------------------------

namespace {

pkirelay::RequestKeys requestKeys(const Message &m) {
    const auto k = pkirelay::correlationKeys(m);
    return {k.cmp, k.transactionId, k.senderNonce,
            m.kind == pkirelay::Kind::CmcSimpleRequest ? pkirelay::requestPublicKey(m.der)
                                                       : pkirelay::ByteView{}};
}

} // namespace

TEST_CASE("correlate: an answer matches its own request and no other", "[correlate][fixtures]") {
    using pkirelay::answerMismatch;
    const Message ir = classifyFixture("cmp_ir.der"), ip = classifyFixture("cmp_ip.der");
    const Message p10cr = classifyFixture("cmp_p10cr.der"), cp = classifyFixture("cmp_cp.der");
    const Message cr = classifyFixture("cmp_cr.der"), error = classifyFixture("cmp_error.der");
    // The openssl mock server's answers to the requests of their transactions.
    CHECK_FALSE(answerMismatch(requestKeys(ir), ip, "item 1"));
    CHECK_FALSE(answerMismatch(requestKeys(p10cr), cp, "item 1"));
    CHECK_FALSE(answerMismatch(requestKeys(cr), error, "item 1"));
    // Another transaction's answer.
    const auto other = answerMismatch(requestKeys(ir), cp, "item 7");
    REQUIRE(other);
    CHECK(other->find("transactionID is not item 7's") != std::string::npos);

    SECTION("RFC 9810 §5.1.1: recipNonce must be the request's senderNonce, errors too") {
        Message e = error;
        e.cmp->recipNonce.clear();
        const auto why = answerMismatch(requestKeys(cr), e, "item 2");
        REQUIRE(why);
        CHECK(why->find("no recipNonce") != std::string::npos);
        e.cmp->recipNonce = {1, 2, 3};
        CHECK(answerMismatch(requestKeys(cr), e, "item 2")->find("recipNonce is not") !=
              std::string::npos);
    }
    SECTION("a request without a transactionID leaves the answer's free (MAY set)") {
        Message r = ir;
        r.cmp->transactionId.clear();
        CHECK_FALSE(answerMismatch(requestKeys(r), ip, "item 3"));
        r.cmp->senderNonce.clear(); // nothing to check at all
        CHECK_FALSE(answerMismatch(requestKeys(r), cp, "item 3"));
    }

    const Message full = classifyFixture("cmc_request.der");
    const Message response = classifyFixture("cmc_response.der");
    const Message pending = classifyFixture("cmc_pending.der");
    const Message certsOnly = classifyFixture("certs_only.p7c");
    CHECK_FALSE(answerMismatch(requestKeys(full), response, "item 4"));
    CHECK_FALSE(answerMismatch(requestKeys(full), pending, "item 4"));
    // A Simple PKI Response has no controls to compare: it cannot be checked.
    CHECK_FALSE(answerMismatch(requestKeys(full), certsOnly, "item 4"));
    // A PKCS#10 has none either: the certificate for its key binds a certs-only answer to it
    // (certs_only.p7c holds ee.crt, issued for p10.der's key, and the CA's own).
    const Message p10 = classifyFixture("p10.der");
    CHECK_FALSE(pkirelay::requestPublicKey(p10.der).empty());
    CHECK(pkirelay::certificatePublicKeys(certsOnly.der).size() == 2);
    CHECK_FALSE(answerMismatch(requestKeys(p10), certsOnly, "item 5"));
    {
        // Only the CA's certificate: issued for another key, so the answer of another request.
        const auto why =
            answerMismatch(requestKeys(p10), classifyFixture("certs_only_ca.p7c"), "item 5");
        REQUIRE(why);
        CHECK(why->find("none of its 1 certificate is for item 5's public key") !=
              std::string::npos);
    }

    SECTION("RFC 10002 §6.6: the transactionId and recipientNonce controls of the request") {
        Message r = response;
        r.cmc->recipientNonce = {9, 9};
        CHECK(answerMismatch(requestKeys(full), r, "item 4")->find("recipientNonce is not") !=
              std::string::npos);
        r.cmc->recipientNonce.clear();
        CHECK(answerMismatch(requestKeys(full), r, "item 4")->find("no recipientNonce") !=
              std::string::npos);
        r = response;
        r.cmc->transactionId = {1};
        CHECK(answerMismatch(requestKeys(full), r, "item 4")->find("transactionId control") !=
              std::string::npos);
    }
    // Across protocols nothing matches.
    CHECK(answerMismatch(requestKeys(ir), response, "item 6"));
    CHECK(answerMismatch(requestKeys(full), ip, "item 6"));
}
