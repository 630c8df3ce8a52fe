// Unit tests of lib/transports/tcp_framing.h: where a CMC response ends on a TCP stream (a
// definite length, an indefinite-length BER walk, made by the openssl command line), the limits,
// and the two CMP-over-TCP framings byte for byte.
#include <catch2/catch.hpp>

#include <filesystem>
#include <string>

#include "lib/classify.h"
#include "lib/transports/tcp_framing.h"
#include "peer.h"

using namespace pkirelay;
using namespace pkirelay::test;
using S = Delimited::State;

namespace {

Bytes hex(std::string_view h) {
    Bytes out;
    for (std::size_t i = 0; i + 1 < h.size(); i += 2)
        out.push_back(
            static_cast<std::uint8_t>(std::stoi(std::string(h.substr(i, 2)), nullptr, 16)));
    return out;
}

// Feeds the scanner one byte more each time, as a server dripping its answer would.
Delimited drip(ByteView all, std::size_t limit) {
    BerMessageScanner s(limit);
    Delimited d;
    for (std::size_t n = 1; n <= all.size(); ++n) {
        d = s.scan(all.first(n));
        if (d.state != S::NeedMore)
            return d;
    }
    return d;
}

// A certs-only response (definite lengths) and a signed CMS in indefinite-length BER
// (`openssl cms -sign -stream` writes BER with indefinite lengths), both by openssl.
struct Fixtures {
    TempDir dir;
    Bytes definite, indefinite;
    Fixtures() {
        const std::string key = dir / "k.pem", crt = dir / "c.pem";
        runOk({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-nodes", "-keyout", key, "-out", crt, "-subj", "/CN=framing", "-days", "2"});
        runOk({"openssl", "crl2pkcs7", "-nocrl", "-certfile", crt, "-outform", "DER", "-out",
               dir / "co.der"});
        // A CMC Full PKI Response (RFC 10002 §3.2.2: PKIResponse, here with empty lists and
        // a 3000-byte otherMsgSequence padding it past one segment), signed in streaming mode.
        writeFile(dir / "resp.cnf", "asn1=SEQUENCE:resp\n[resp]\ncontrols=SEQUENCE:empty\n"
                                    "cms=SEQUENCE:empty\nother=SEQUENCE:other\n[empty]\n"
                                    "[other]\nm=SEQUENCE:msg\n[msg]\nid=INTEGER:1\n"
                                    "type=OID:1.2.3.4\nvalue=FORMAT:HEX,OCTETSTRING:" +
                                        std::string(6000, 'a') + "\n");
        runOk({"openssl", "asn1parse", "-genconf", dir / "resp.cnf", "-noout", "-out",
               dir / "resp.der"});
        runOk({"openssl", "cms", "-sign", "-stream", "-binary", "-nodetach", "-in",
               dir / "resp.der", "-econtent_type", "1.3.6.1.5.5.7.12.3", "-signer", crt, "-inkey",
               key, "-outform", "DER", "-out", dir / "indef.der"});
        definite = readFile(dir / "co.der");
        indefinite = readFile(dir / "indef.der");
    }
};

} // namespace

TEST_CASE("cmc tcp: a definite-length response ends where its outer length says", "[tcp]") {
    Fixtures f;
    REQUIRE(f.definite.size() > 100);
    REQUIRE(f.definite[1] != 0x80);
    BerMessageScanner s(1 << 20);
    CHECK(s.scan(ByteView(f.definite).first(1)).state == S::NeedMore);
    CHECK(s.scan(ByteView(f.definite).first(50)).state == S::NeedMore);
    Bytes more = f.definite;
    more.push_back(0x30); // the start of whatever follows is not part of it
    const Delimited d = s.scan(more);
    CHECK(d.state == S::Complete);
    CHECK(d.length == f.definite.size());
    CHECK(drip(f.definite, 1 << 20).length == f.definite.size());
}

TEST_CASE("cmc tcp: an indefinite-length BER response is walked to its end-of-contents", "[tcp]") {
    Fixtures f;
    REQUIRE(f.indefinite.size() > 3000);
    REQUIRE(f.indefinite[1] == 0x80); // openssl really wrote the indefinite form
    const Delimited d = drip(f.indefinite, 1 << 20);
    CHECK(d.state == S::Complete);
    CHECK(d.length == f.indefinite.size());
    // Every prefix is "need more", never complete early.
    for (std::size_t n = 1; n < f.indefinite.size(); n += 97) {
        BerMessageScanner s(1 << 20);
        CHECK(s.scan(ByteView(f.indefinite).first(n)).state == S::NeedMore);
    }
    // The classifier reads the same bytes as the CMC message they are.
    const Classification c = classify(f.indefinite);
    REQUIRE(std::holds_alternative<Message>(c));
    CHECK(std::get<Message>(c).kind == Kind::CmcFullResponse);
}

TEST_CASE("cmc tcp: the limits: a declared length over it, a response that never ends", "[tcp]") {
    // A SEQUENCE declaring 16 MiB: refused from its header alone.
    BerMessageScanner big(1 << 20);
    const Delimited d = big.scan(hex("3084010000000102"));
    CHECK(d.state == S::TooLarge);
    CHECK(d.reason.find("16777216") != std::string::npos);
    // An indefinite SEQUENCE that goes on and on: refused once the limit is passed.
    Bytes endless = hex("3080");
    while (endless.size() < 5000)
        for (std::uint8_t b : hex("0403616263"))
            endless.push_back(b);
    BerMessageScanner s(4096);
    CHECK(s.scan(ByteView(endless).first(4000)).state == S::NeedMore);
    CHECK(s.scan(endless).state == S::TooLarge);
    // An inner definite value that runs past the limit is refused from its header.
    BerMessageScanner inner(4096);
    CHECK(inner.scan(hex("3080048300ffff")).state == S::TooLarge);
    // Exactly at the limit is fine.
    Bytes exact = hex("30820ffc");
    exact.resize(4096, 0);
    CHECK(BerMessageScanner(4096).scan(exact).state == S::Complete);
}

TEST_CASE("cmc tcp: malformed starts are refused at once", "[tcp]") {
    CHECK(BerMessageScanner(4096).scan(hex("48545450")).state == S::Malformed); // "HTTP"
    CHECK(BerMessageScanner(4096).scan(hex("30ff")).state == S::Malformed);
    CHECK(BerMessageScanner(4096).scan(hex("30800480")).state == S::Malformed); // primitive indef
    CHECK(BerMessageScanner(4096).scan(hex("30800001")).state == S::Malformed); // bad EOC
    Bytes deep;
    for (int i = 0; i < 100; ++i)
        for (std::uint8_t b : hex("3080"))
            deep.push_back(b);
    const Delimited d = BerMessageScanner(4096, 16).scan(deep);
    CHECK(d.state == S::Malformed);
    CHECK(d.reason.find("deeper") != std::string::npos);
    // Nested indefinite values, each closed: complete at the last end-of-contents.
    const Bytes nested = hex("3080"
                             "3080"
                             "020101"
                             "0000"
                             "a080"
                             "0000"
                             "0000"
                             "ff");
    const Delimited n = BerMessageScanner(4096).scan(nested);
    CHECK(n.state == S::Complete);
    CHECK(n.length == nested.size() - 1);
}

TEST_CASE("cmp tcp: RFC 2510 §5.2 frames: length, type, value", "[tcp]") {
    CmpFrame f{CmpFraming::Rfc2510, 0, cmptcp::kPkiMsg, hex("300100")};
    const Bytes wire = encodeCmpFrame(f);
    CHECK(wire == hex("0000000400300100"));
    const Delimited d = cmpFrameBoundary(wire, 1024);
    CHECK(d.state == S::Complete);
    CHECK(d.length == wire.size());
    CHECK(cmpFrameBoundary(ByteView(wire).first(7), 1024).state == S::NeedMore);
    const auto back = parseCmpFrame(wire);
    REQUIRE(back);
    CHECK(back->framing == CmpFraming::Rfc2510);
    CHECK(back->type == cmptcp::kPkiMsg);
    CHECK(back->value == hex("300100"));
    // pollRep and pollReq: polling reference and time to check back, 4 octets each.
    const auto rep = parseCmpFrame(hex("00000009"
                                       "01"
                                       "0000002a"
                                       "00000005"));
    REQUIRE(rep);
    CHECK(cmpFrameTypeName(rep->framing, rep->type) == "pollRep");
    const auto poll = parsePollRep(rep->value);
    REQUIRE(poll);
    CHECK(poll->reference == 42);
    CHECK(poll->checkBack == 5);
    CHECK(encodeCmpFrame({CmpFraming::Rfc2510, 0, cmptcp::kPollReq, pollReqValue(42)}) ==
          hex("00000005"
              "02"
              "0000002a"));
    CHECK_FALSE(parsePollRep(hex("0000")));
}

TEST_CASE("cmp tcp: version 10 frames: length, version, flags, type, value", "[tcp]") {
    CmpFrame f{CmpFraming::V10, cmptcp::kFlagCloseConnection, cmptcp::kPkiReq, hex("3000")};
    const Bytes wire = encodeCmpFrame(f);
    CHECK(wire == hex("00000005"
                      "0a"
                      "01"
                      "00"
                      "3000"));
    const auto back = parseCmpFrame(wire);
    REQUIRE(back);
    CHECK(back->framing == CmpFraming::V10);
    CHECK(back->flags == 1);
    CHECK(back->type == cmptcp::kPkiReq);
    CHECK(back->value == hex("3000"));
    CHECK(cmpFrameTypeName(CmpFraming::V10, cmptcp::kPkiRep) == "pkiRep");
    CHECK(cmpFrameTypeName(CmpFraming::Rfc2510, cmptcp::kFinalMsgRep) == "finalMsgRep");
    CHECK(cmpFrameTypeName(CmpFraming::V10, cmptcp::kErrorMsgRep) == "errorMsgRep");
}

TEST_CASE("cmp tcp: oversize, short and unknown frames", "[tcp]") {
    // 4 GiB declared: refused from the first five bytes.
    const Delimited big = cmpFrameBoundary(hex("ffffffff00"), 1 << 20);
    CHECK(big.state == S::TooLarge);
    CHECK(cmpFrameBoundary(hex("0000000000"), 1024).state == S::Malformed);   // no type octet
    CHECK(cmpFrameBoundary(hex("000000020a00"), 1024).state == S::Malformed); // v10, too short
    CHECK(cmpFrameBoundary(hex("000000010b"), 1024).state == S::Malformed);   // version 11
    CHECK(cmpFrameBoundary(hex("30820100"), 1024).state == S::NeedMore);      // bare DER
    CHECK_FALSE(parseCmpFrame(hex("0000000200300000")));                      // trailing bytes
    CHECK(cmpErrorText(asBytes("bad\x01version")) == "bad\\x01version");
}

TEST_CASE("cmp tcp: time-to-check-back is absolute UNIX time, or a delay when small", "[tcp]") {
    CHECK(pollDelaySeconds(5, 1'800'000'000) == 5);
    CHECK(pollDelaySeconds(1'800'000'010, 1'800'000'000) == 10);
    CHECK(pollDelaySeconds(1'700'000'000, 1'800'000'000) == 0); // already past
}
