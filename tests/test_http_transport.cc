// HttpRelay against real peers on 127.0.0.1: OpenSSL 3.0's mock CMP server (`openssl cmp
// -port 0`), the CMC responder (cmc_responder.py, openssl CLI underneath), a port that refuses
// and a listener that never answers. Requests are made by the `openssl` command line, never by
// pkirelay's own code. Tests tagged [classify] need the real classifier (lib/classify.cc) to
// recognise the response bodies; the others check transport and outcome mapping only.
#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "lib/transports/http.h"
#include "peer.h"

using namespace pkirelay;
using namespace pkirelay::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Type = HttpResult::Type;

namespace {

constexpr auto kPeerStart = 20s; // deadline for a peer's ready line

// Credentials and requests made once per run by the openssl command line (PROTOCOLS.md §7.3).
struct Fixtures {
    TempDir dir;
    Bytes ir;        // ir asking for implicit confirmation: the transaction ends with the ip
    Bytes irOpen;    // ir without it: the server then waits for a certConf
    Bytes cmcFull;   // CMC Full PKI Request (signed PKIData with transactionId and senderNonce)
    Bytes cmcSimple; // PKCS#10

    Fixtures() {
        httpGlobalInit();
        for (const char *name : {"server", "rsp", "cmc"})
            runOk({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                   "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                   dir / (name + std::string(".key")), "-out", dir / (name + std::string(".crt")),
                   "-subj", std::string("/CN=relay-test-") + name, "-days", "2"});
        // The client writes its request file before it finds the server unreachable (§7.3); a
        // bound socket that does not listen refuses at once.
        LoopbackSocket closed(false);
        std::string unreachable = "127.0.0.1:" + std::to_string(closed.port()) + "/pkix/";
        for (bool implicit : {true, false}) {
            std::string out = dir / (implicit ? "ir.der" : "ir_open.der");
            std::vector<std::string> cmd = {"openssl",      "cmp",
                                            "-config",      "",
                                            "-cmd",         "ir",
                                            "-server",      unreachable,
                                            "-msg_timeout", "1",
                                            "-ref",         "1234",
                                            "-secret",      "pass:1234-5678",
                                            "-newkey",      dir / "rsp.key",
                                            "-subject",     "/CN=relay-test",
                                            "-srvcert",     dir / "server.crt",
                                            "-certout",     dir / "unused.crt",
                                            "-reqout",      out};
            if (implicit)
                cmd.push_back("-implicit_confirm");
            run(cmd, 30s); // fails by design: nobody answers
            (implicit ? ir : irOpen) = readFile(out);
        }
        writeFile(dir / "pkidata.cnf", "asn1=SEQUENCE:pkidata\n"
                                       "[pkidata]\ncontrols=SEQUENCE:controls\n"
                                       "reqs=SEQUENCE:empty\ncms=SEQUENCE:empty\n"
                                       "other=SEQUENCE:empty\n[empty]\n"
                                       "[controls]\nc1=SEQUENCE:tid\nc2=SEQUENCE:nonce\n"
                                       "[tid]\nid=INTEGER:1\ntype=OID:1.3.6.1.5.5.7.7.5\n"
                                       "vals=SET:tidval\n[tidval]\nv=INTEGER:12345\n"
                                       "[nonce]\nid=INTEGER:2\ntype=OID:1.3.6.1.5.5.7.7.6\n"
                                       "vals=SET:nonceval\n[nonceval]\n"
                                       "v=FORMAT:HEX,OCTETSTRING:0102030405060708\n");
        runOk({"openssl", "asn1parse", "-genconf", dir / "pkidata.cnf", "-noout", "-out",
               dir / "pkidata.der"});
        runOk({"openssl", "cms", "-sign", "-binary", "-in", dir / "pkidata.der", "-econtent_type",
               "1.3.6.1.5.5.7.12.2", "-nodetach", "-outform", "DER", "-signer", dir / "cmc.crt",
               "-inkey", dir / "cmc.key", "-out", dir / "full.der"});
        cmcFull = readFile(dir / "full.der");
        runOk({"openssl", "req", "-new", "-key", dir / "cmc.key", "-subj", "/CN=relay-p10",
               "-outform", "DER", "-out", dir / "p10.der"});
        cmcSimple = readFile(dir / "p10.der");
    }
};

Fixtures &fixtures() {
    static Fixtures f;
    return f;
}

// OpenSSL's mock CMP server on a free port; it prints "ACCEPT [::]:<port> PID=<pid>".
struct CmpServer {
    std::unique_ptr<Peer> peer;
    std::uint16_t port = 0;

    explicit CmpServer(const std::vector<std::string> &extra = {}) {
        Fixtures &f = fixtures();
        std::vector<std::string> cmd = {"openssl",     "cmp",
                                        "-config",     "",
                                        "-port",       "0",
                                        "-srv_cert",   f.dir / "server.crt",
                                        "-srv_key",    f.dir / "server.key",
                                        "-srv_secret", "pass:1234-5678",
                                        "-srv_ref",    "1234",
                                        "-rsp_cert",   f.dir / "rsp.crt"};
        cmd.insert(cmd.end(), extra.begin(), extra.end());
        peer = std::make_unique<Peer>(cmd);
        std::string line = peer->waitForLine(
            [](std::string_view l) { return l.substr(0, 7) == "ACCEPT "; }, kPeerStart);
        auto colon = line.find("]:");
        REQUIRE(colon != std::string::npos);
        port = static_cast<std::uint16_t>(std::stoi(line.substr(colon + 2)));
    }
    std::string url(const std::string &path = "/pkix/") const {
        return "http://127.0.0.1:" + std::to_string(port) + path;
    }
};

// cmc_responder.py on a free port; it prints "LISTENING <port>".
struct CmcResponder {
    std::unique_ptr<Peer> peer;
    std::uint16_t port = 0;

    explicit CmcResponder(const std::vector<std::string> &extra = {}) {
        std::vector<std::string> cmd = {"python3",
                                        std::filesystem::absolute("cmc_responder.py").string()};
        cmd.insert(cmd.end(), extra.begin(), extra.end());
        peer = std::make_unique<Peer>(cmd);
        std::string line = peer->waitForLine(
            [](std::string_view l) { return l.substr(0, 10) == "LISTENING "; }, kPeerStart);
        port = static_cast<std::uint16_t>(std::stoi(line.substr(10)));
    }
    std::string url(const std::string &path = "/cmc") const {
        return "http://127.0.0.1:" + std::to_string(port) + path;
    }
};

HttpEndpoint endpoint(std::string url, std::chrono::milliseconds timeout = 10s) {
    HttpEndpoint ep;
    ep.name = "test";
    ep.url = std::move(url);
    ep.connectTimeout = 5s;
    ep.timeout = timeout;
    return ep;
}

HttpResult one(HttpRelay &relay, const HttpEndpoint &ep, Kind kind, const Bytes &body) {
    HttpRequest req{42, &ep, kind, body};
    auto results = relay.perform({&req, 1}, 4);
    REQUIRE(results.size() == 1);
    CHECK(results[0].id == 42);
    INFO(results[0].detail);
    return results[0];
}

std::vector<std::string> lines(const std::string &path) {
    std::ifstream in(path);
    std::vector<std::string> out;
    for (std::string l; std::getline(in, l);)
        out.push_back(l);
    return out;
}

std::string typeName(Type t) {
    switch (t) {
    case Type::Response:
        return "Response";
    case Type::Done:
        return "Done";
    case Type::Transient:
        return "Transient";
    case Type::Permanent:
        return "Permanent";
    case Type::Handed:
        return "Handed";
    }
    return "?";
}

} // namespace

// ---- CMP: OpenSSL's mock server -----------------------------------------------------------

TEST_CASE("CMP ir relayed to OpenSSL's mock server comes back as an ip", "[cmp][classify]") {
    CmpServer server({"-grant_implicitconf"});
    HttpRelay relay;
    HttpEndpoint ep = endpoint(server.url());
    HttpResult r = one(relay, ep, Kind::Cmp, fixtures().ir);
    INFO(r.detail << "\n" << server.peer->transcript());
    CHECK(r.status == 200);
    CHECK(r.contentType == "application/pkixcmp");
    REQUIRE(r.type == Type::Response); // [classify]
    REQUIRE(r.response);
    CHECK(r.response->kind == Kind::Cmp);
    REQUIRE(r.response->cmp);
    CHECK(r.response->cmp->bodyType == 1); // ip
}

TEST_CASE("CMP error message from the server is a response to deliver", "[cmp][classify]") {
    // `-send_error`: HTTP 200 with an error PKIMessage (PROTOCOLS.md §7.2).
    CmpServer server({"-send_error"});
    HttpRelay relay;
    HttpEndpoint ep = endpoint(server.url());
    HttpResult r = one(relay, ep, Kind::Cmp, fixtures().ir);
    CHECK(r.status == 200);
    REQUIRE(r.type == Type::Response); // [classify]
    REQUIRE(r.response->cmp);
    CHECK(r.response->cmp->bodyType == 23); // error
}

TEST_CASE("CMP server answers 404 on a path it does not serve: permanent", "[cmp]") {
    CmpServer server;
    HttpRelay relay;
    HttpEndpoint ep = endpoint(server.url("/other"));
    HttpResult r = one(relay, ep, Kind::Cmp, fixtures().ir);
    CHECK(r.status == 404);
    CHECK(r.type == Type::Permanent);
    CHECK(r.detail.find("HTTP 404") == 0);
}

// OpenSSL 3.0's mock server is single-threaded and answers HTTP/1.0 with keep-alive. While a
// transaction is open (ir answered, certConf expected) it reads only from that connection, so
// other connections wait; once a transaction has ended it closes the connection itself.
TEST_CASE("OpenSSL's mock server with several requests in flight", "[cmp][keepalive]") {
    Fixtures &f = fixtures();
    HttpRelay relay;
    std::vector<HttpRequest> reqs;
    auto make = [&](const HttpEndpoint &ep, const Bytes &body) {
        reqs.clear();
        for (int i = 0; i < 3; ++i)
            reqs.push_back({i, &ep, Kind::Cmp, body});
    };
    auto count = [](const std::vector<HttpResult> &rs, long status) {
        return std::count_if(rs.begin(), rs.end(),
                             [&](const HttpResult &r) { return r.status == status; });
    };

    SECTION("open transactions: the other connections wait, and time out as transient") {
        CmpServer server;
        HttpEndpoint ep = endpoint(server.url(), 1500ms);
        make(ep, f.irOpen);
        auto start = Clock::now();
        auto rs = relay.perform(reqs, 8);
        auto elapsed = Clock::now() - start;
        REQUIRE(rs.size() == 3);
        CHECK(count(rs, 200) == 1);
        for (const auto &r : rs) {
            INFO(r.id << " " << typeName(r.type) << " " << r.detail);
            if (r.status != 200) {
                CHECK(r.type == Type::Transient);
                CHECK(r.status == 0);
            }
        }
        CHECK(elapsed < 5s); // the timeout fired; nothing hangs
        // The kept-alive connection is reused by the next perform(), so it is served.
        auto again = relay.perform({reqs.data(), 1}, 8);
        CHECK(again.at(0).status == 200);
    }
    SECTION("open transactions, one connection per endpoint: served one after another") {
        CmpServer server;
        HttpEndpoint ep = endpoint(server.url(), 5s);
        ep.maxConnections = 1;
        make(ep, f.irOpen);
        auto rs = relay.perform(reqs, 8);
        CHECK(count(rs, 200) == 3);
        // The connection stays open across requests (HTTP/1.0 keep-alive, see transports/http.cc).
        CHECK(relay.stats().newConnections == 1);
    }
    SECTION("open transactions, keepAlive off: every connection is served in turn") {
        CmpServer server;
        HttpEndpoint ep = endpoint(server.url(), 5s);
        ep.keepAlive = false;
        make(ep, f.irOpen);
        auto rs = relay.perform(reqs, 8);
        CHECK(count(rs, 200) == 3);
        CHECK(relay.stats().newConnections == 3);
    }
    SECTION("finished transactions: the server closes each connection, all are served") {
        CmpServer server({"-grant_implicitconf"});
        HttpEndpoint ep = endpoint(server.url(), 5s);
        make(ep, f.ir);
        auto rs = relay.perform(reqs, 8);
        CHECK(count(rs, 200) == 3);
        // And a second round: libcurl finds the closed connections and opens new ones.
        rs = relay.perform(reqs, 8);
        CHECK(count(rs, 200) == 3);
    }
}

// ---- CMC: cmc_responder.py ------------------------------------------------------------------

TEST_CASE("CMC Full PKI Request gets a Full PKI Response", "[cmc][classify]") {
    CmcResponder responder;
    HttpRelay relay;
    HttpEndpoint ep = endpoint(responder.url());
    HttpResult r = one(relay, ep, Kind::CmcFullRequest, fixtures().cmcFull);
    CHECK(r.status == 200);
    CHECK(r.contentType == "application/pkcs7-mime; smime-type=CMC-Response");
    REQUIRE(r.type == Type::Response); // [classify]
    CHECK(r.response->kind == Kind::CmcFullResponse);
    REQUIRE(r.response->cmc);
    CHECK(toHex(r.response->cmc->recipientNonce) == "0102030405060708");
    CHECK(toHex(r.response->cmc->transactionId) == "3039"); // 12345
    CHECK(r.response->cmc->status == 0);                    // success
}

TEST_CASE("CMC Simple PKI Request gets a certs-only response", "[cmc][classify]") {
    CmcResponder responder;
    HttpRelay relay;
    HttpEndpoint ep = endpoint(responder.url());
    HttpResult r = one(relay, ep, Kind::CmcSimpleRequest, fixtures().cmcSimple);
    CHECK(r.status == 200);
    CHECK(r.contentType == "application/pkcs7-mime; smime-type=certs-only");
    REQUIRE(r.type == Type::Response); // [classify]
    CHECK(r.response->kind == Kind::CmcSimpleResponse);
}

TEST_CASE("Status codes without a PKI body map to outcomes", "[cmc]") {
    HttpRelay relay;
    auto withStatus = [&](int status) {
        CmcResponder responder({"--fail-status", std::to_string(status)});
        HttpEndpoint ep = endpoint(responder.url());
        HttpResult r = one(relay, ep, Kind::CmcSimpleRequest, fixtures().cmcSimple);
        CHECK(r.status == status);
        CHECK(!r.response);
        return r.type;
    };
    CHECK(withStatus(503) == Type::Transient);
    CHECK(withStatus(500) == Type::Transient);
    CHECK(withStatus(400) == Type::Permanent);
    CHECK(withStatus(404) == Type::Permanent);
    CHECK(withStatus(200) == Type::Permanent); // 200 without a PKI message
    CHECK(withStatus(201) == Type::Done);      // RFC 9811 §3: announcement stored
    CHECK(withStatus(202) == Type::Transient); // RFC 9811 §3: accepted, try later
}

TEST_CASE("The Content-Type comes from the kind; the responder refuses others", "[cmc]") {
    TempDir tmp;
    CmcResponder responder({"--log", tmp / "log"});
    HttpRelay relay;
    HttpEndpoint ep = endpoint(responder.url());
    // Enveloped CMC goes out as smime-type=enveloped-data, which this responder does not take.
    HttpResult r = one(relay, ep, Kind::CmcEnveloped, fixtures().cmcFull);
    CHECK(r.status == 415);
    CHECK(r.type == Type::Permanent);
    one(relay, ep, Kind::CmcFullRequest, fixtures().cmcFull);
    one(relay, ep, Kind::CmcSimpleRequest, fixtures().cmcSimple);
    auto log = lines(tmp / "log");
    REQUIRE(log.size() == 3);
    CHECK(log[0].find("POST /cmc \"application/pkcs7-mime; smime-type=enveloped-data\" " +
                      std::to_string(fixtures().cmcFull.size()) + " ") == 0);
    CHECK(log[1].find("POST /cmc \"application/pkcs7-mime; smime-type=CMC-Request\" " +
                      std::to_string(fixtures().cmcFull.size()) + " ") == 0);
    CHECK(log[2].find("POST /cmc \"application/pkcs10\" " +
                      std::to_string(fixtures().cmcSimple.size()) + " ") == 0);
}

TEST_CASE("Many requests in flight come back paired with their ids", "[cmc]") {
    Fixtures &f = fixtures();
    CmcResponder responder;
    HttpRelay relay;
    HttpEndpoint ep = endpoint(responder.url());
    ep.maxConnections = 6;
    std::vector<HttpRequest> reqs;
    for (int i = 0; i < 12; ++i) {
        bool full = i % 3 != 0;
        reqs.push_back({100 + i, &ep, full ? Kind::CmcFullRequest : Kind::CmcSimpleRequest,
                        full ? f.cmcFull : f.cmcSimple});
    }
    std::vector<std::int64_t> seen;
    auto rs = relay.perform(reqs, 6, [&](const HttpResult &r) { seen.push_back(r.id); });
    REQUIRE(rs.size() == reqs.size());
    std::set<std::int64_t> ids;
    for (std::size_t k = 0; k < rs.size(); ++k) {
        const HttpResult &r = rs[k];
        INFO(r.id << " " << r.detail);
        CHECK(seen.at(k) == r.id); // onResult sees them in the same (completion) order
        ids.insert(r.id);
        REQUIRE(r.id >= 100);
        REQUIRE(r.id < 112);
        bool full = (r.id - 100) % 3 != 0;
        CHECK(r.status == 200);
        // The responder answers each kind with its own type, so a mix-up would show here.
        CHECK(r.contentType == (full ? "application/pkcs7-mime; smime-type=CMC-Response"
                                     : "application/pkcs7-mime; smime-type=certs-only"));
    }
    CHECK(ids.size() == reqs.size());
    CHECK(relay.stats().newConnections <= 6);
}

TEST_CASE("Connections are kept alive and reused across perform() calls", "[cmc][keepalive]") {
    Fixtures &f = fixtures();
    TempDir tmp;
    CmcResponder responder({"--log", tmp / "log"});
    HttpRelay relay;
    HttpEndpoint ep = endpoint(responder.url());
    ep.maxConnections = 2;
    std::vector<HttpRequest> reqs;
    for (int i = 0; i < 6; ++i)
        reqs.push_back({i, &ep, Kind::CmcSimpleRequest, f.cmcSimple});
    for (int round = 0; round < 2; ++round)
        for (const auto &r : relay.perform(reqs, 8))
            CHECK(r.status == 200);
    CHECK(relay.stats().requests == 12);
    CHECK(relay.stats().newConnections <= 2);
    // The responder's view: 12 requests from at most 2 client ports.
    auto log = lines(tmp / "log");
    REQUIRE(log.size() == 12);
    std::set<std::string> ports;
    for (const auto &l : log)
        ports.insert(l.substr(l.rfind(' ') + 1));
    CHECK(ports.size() <= 2);
}

// ---- Transport failures -----------------------------------------------------------------------

TEST_CASE("Connection refused is transient", "[transport]") {
    LoopbackSocket closed(false); // bound, not listening: connect() is refused
    HttpRelay relay;
    HttpEndpoint ep = endpoint("http://127.0.0.1:" + std::to_string(closed.port()) + "/pkix/");
    HttpResult r = one(relay, ep, Kind::Cmp, fixtures().ir);
    CHECK(r.type == Type::Transient);
    CHECK(r.status == 0);
    CHECK(!r.detail.empty());
}

TEST_CASE("A server that never answers times out as transient", "[transport]") {
    LoopbackSocket silent(true); // the kernel accepts; nobody reads or answers
    HttpRelay relay;
    HttpEndpoint ep = endpoint("http://127.0.0.1:" + std::to_string(silent.port()) + "/", 1s);
    auto start = Clock::now();
    HttpResult r = one(relay, ep, Kind::Cmp, fixtures().ir);
    auto elapsed = Clock::now() - start;
    INFO(r.detail);
    CHECK(r.type == Type::Transient);
    CHECK(r.status == 0);
    CHECK(r.detail.find("timed out") != std::string::npos);
    CHECK(elapsed >= 900ms);
    CHECK(elapsed < 5s);
}

TEST_CASE("Requests in flight are capped per endpoint and overall", "[transport]") {
    // Against a silent listener every request takes exactly its timeout, so the elapsed time
    // shows how many ran side by side.
    LoopbackSocket silent(true);
    HttpRelay relay;
    HttpEndpoint ep = endpoint("http://127.0.0.1:" + std::to_string(silent.port()) + "/", 400ms);
    std::vector<HttpRequest> reqs;
    for (int i = 0; i < 4; ++i)
        reqs.push_back({i, &ep, Kind::Cmp, fixtures().ir});
    auto timed = [&](unsigned maxInFlight) {
        auto start = Clock::now();
        auto rs = relay.perform(reqs, maxInFlight);
        CHECK(rs.size() == 4);
        for (const auto &r : rs)
            CHECK(r.type == Type::Transient);
        return Clock::now() - start;
    };
    ep.maxConnections = 4;
    CHECK(timed(4) < 1200ms); // all four at once
    ep.maxConnections = 2;
    CHECK(timed(4) >= 800ms); // two waves
    ep.maxConnections = 4;
    CHECK(timed(1) >= 1600ms); // one at a time
}

namespace {

// A one-shot server on a thread for the size-cap tests: reads the whole request (head and
// Content-Length body, so that closing never resets the connection under unread bytes), sends
// `head`, then streams zeros (17 MiB, as chunks when `chunked`) until the client hangs up. Every
// wait has a deadline, so a failing test cannot hang.
void serveOversized(int listener, const std::string &head, bool chunked) {
    auto waitFor = [](int fd, short events) {
        pollfd p{fd, events, 0};
        return ::poll(&p, 1, 10'000) == 1;
    };
    if (!waitFor(listener, POLLIN))
        return;
    test::Fd conn(::accept(listener, nullptr, nullptr));
    std::string request;
    char buf[65536] = {};
    std::size_t headEnd = std::string::npos, want = 0;
    while (headEnd == std::string::npos || request.size() < headEnd + 4 + want) {
        if (!waitFor(conn.get(), POLLIN))
            return;
        ssize_t n = ::read(conn.get(), buf, sizeof buf);
        if (n <= 0)
            return;
        request.append(buf, static_cast<std::size_t>(n));
        if (headEnd == std::string::npos &&
            (headEnd = request.find("\r\n\r\n")) != std::string::npos)
            if (auto at = request.find("Content-Length: "); at != std::string::npos && at < headEnd)
                want = std::stoul(request.substr(at + 16));
    }
    auto sendAll = [&](const char *data, std::size_t size) {
        for (std::size_t sent = 0; sent < size;) {
            if (!waitFor(conn.get(), POLLOUT))
                return false;
            ssize_t n = ::send(conn.get(), data + sent, size - sent, MSG_NOSIGNAL);
            if (n <= 0)
                return false; // the client stopped reading and closed: expected
            sent += static_cast<std::size_t>(n);
        }
        return true;
    };
    if (!sendAll(head.data(), head.size()))
        return;
    std::fill(std::begin(buf), std::end(buf), '\0');
    std::ostringstream hex;
    hex << std::hex << sizeof buf << "\r\n";
    const std::string chunkHead = hex.str();
    for (std::size_t sent = 0; sent < 17 * 1024 * 1024; sent += sizeof buf)
        if ((chunked && !sendAll(chunkHead.data(), chunkHead.size())) ||
            !sendAll(buf, sizeof buf) || (chunked && !sendAll("\r\n", 2)))
            return;
    // Everything went out before the client gave up: end politely and wait for its close.
    ::shutdown(conn.get(), SHUT_WR);
    while (waitFor(conn.get(), POLLIN) && ::read(conn.get(), buf, sizeof buf) > 0) {
    }
}

HttpResult askOversized(const std::string &head, bool chunked) {
    LoopbackSocket big(true);
    std::thread server([&] { serveOversized(big.fd(), head, chunked); });
    HttpRelay relay;
    HttpEndpoint ep = endpoint("http://127.0.0.1:" + std::to_string(big.port()) + "/", 10s);
    HttpResult r = one(relay, ep, Kind::Cmp, fixtures().ir);
    server.join();
    return r;
}

} // namespace

TEST_CASE("A response announcing a length over the cap is refused at once", "[transport]") {
    HttpResult r = askOversized("HTTP/1.1 200 OK\r\nContent-Type: application/pkixcmp\r\n"
                                "Content-Length: " +
                                    std::to_string(17 * 1024 * 1024) + "\r\n\r\n",
                                false);
    INFO(r.detail);
    CHECK(r.status == 200);
    CHECK(r.type == Type::Permanent);
    CHECK(r.detail.find("response too large") != std::string::npos);
    CHECK(r.body.empty()); // refused before any of it was read
}

TEST_CASE("A response over the size cap without a length is refused, not buffered", "[transport]") {
    HttpResult r = askOversized("HTTP/1.1 200 OK\r\nContent-Type: application/pkixcmp\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n",
                                true);
    INFO(r.detail);
    CHECK(r.status == 200);
    CHECK(r.type == Type::Permanent);
    CHECK(r.detail.find("response too large") != std::string::npos);
    CHECK(r.body.size() <= 16 * 1024 * 1024); // kept up to the cap, for a person
}

TEST_CASE("perform() rejects impossible arguments and accepts an empty batch", "[transport]") {
    HttpRelay relay;
    HttpEndpoint ep = endpoint("http://127.0.0.1:9/");
    HttpRequest noEndpoint{1, nullptr, Kind::Cmp, {}};
    CHECK_THROWS_AS(relay.perform({&noEndpoint, 1}, 1), std::invalid_argument);
    HttpRequest ok{1, &ep, Kind::Cmp, {}};
    CHECK_THROWS_AS(relay.perform({&ok, 1}, 0), std::invalid_argument);
    CHECK(relay.perform({}, 1).empty());
}
