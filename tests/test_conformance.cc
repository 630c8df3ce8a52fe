// The conformance suites of the pipeline's three interfaces (lib/sources/source.h,
// lib/transports/transport.h, lib/responders/responder.h): the same cases run against every
// implementation, after Kea's shared backend suites. An implementation joins a suite by adding a
// fixture type to its TEMPLATE_TEST_CASE list; the fixture says how to make an input, a peer or a
// place to answer, and the cases say what every implementation must do with them.
//
// Peers are real: the transport suite talks to tests/cmc_responder.py on loopback, fixtures come
// from the openssl command line.
#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <openssl/bio.h>
#include <openssl/buffer.h>
#include <openssl/evp.h>

#include "lib/bytes.h"
#include "lib/file_io.h"
#include "lib/loop/event_loop.h"
#include "lib/owned.h"
#include "lib/responders/response_file.h"
#include "lib/responders/smtp.h"
#include "lib/sources/directory.h"
#include "lib/sources/imap.h"
#include "lib/sources/media.h"
#include "lib/transports/directory.h"
#include "lib/transports/http.h"
#include "lib/transports/tcp.h"
#include "peer.h"

using namespace pkirelay;
using namespace pkirelay::test;
using namespace std::chrono_literals;

namespace {

// A PKCS#10 request made by the openssl command line (a new one per call: distinct bytes).
Bytes makeCsr(const TempDir &dir, const std::string &cn) {
    const std::string key = dir / "key.pem";
    if (!std::filesystem::exists(key))
        runOk({"openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-out", key});
    const std::string out = dir / (cn + ".der");
    runOk({"openssl", "req", "-new", "-key", key, "-subj", "/CN=" + cn, "-outform", "DER", "-out",
           out});
    return readFile(out);
}

// Turns the loop until done() or the deadline: the tests wait for conditions, never sleep.
template <class F> bool turnUntil(EventLoop &loop, F done, std::chrono::milliseconds deadline) {
    const auto end = std::chrono::steady_clock::now() + deadline;
    while (!done()) {
        if (std::chrono::steady_clock::now() >= end)
            return false;
        loop.turn(50);
    }
    return true;
}

// ---- Sources ----------------------------------------------------------------------------------

// The store as a source sees it, in memory.
class MemoryLedger final : public Ledger {
public:
    Seen arrival(std::string_view source, std::string_view origin,
                 std::string_view sha256) override {
        auto it = seen.find(key(source, origin, sha256));
        return it == seen.end() ? Seen{} : it->second;
    }
    bool isOurResponse(std::string_view, std::string_view name, std::string_view) override {
        return ours.contains(std::string(name));
    }
    static std::string key(std::string_view s, std::string_view o, std::string_view h) {
        return std::string(s) + "\n" + std::string(o) + "\n" + std::string(h);
    }
    // What a pipeline does after its store committed a take: records arrivals and acks.
    void store(const Taken &taken, const std::vector<Source::Ack> &acks) {
        for (std::size_t i = 0; i < taken.submissions.size(); ++i) {
            const auto &sub = taken.submissions[i];
            auto &s = seen[key(sub.arrival.source, sub.arrival.origin, sub.arrivalSha256)];
            s.state = acks[i] == Source::Ack::Kept      ? Seen::State::Kept
                      : acks[i] == Source::Ack::Removed ? Seen::State::New
                                                        : Seen::State::Unacknowledged;
        }
    }
    std::map<std::string, Seen> seen;
    std::set<std::string> ours;
};

// Directory source fixtures, in each acknowledgement mode.
template <DirectorySourceConfig::After After> struct DirectoryFixture {
    TempDir dir;
    std::string folder = dir / "inbox";
    std::unique_ptr<DirectorySource> source;

    DirectoryFixture() {
        std::filesystem::create_directory(folder);
        DirectorySourceConfig c;
        c.name = "inbox";
        c.path = folder;
        c.responses = folder;
        c.after = After;
        c.moveTo = dir / "processed";
        c.settleMs = 0;
        c.wallClock = [] {
            return std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                .count();
        };
        source = std::make_unique<DirectorySource>(c);
    }
    Source &get() { return *source; }
    // Makes one input available, as a user of this source would (a file written and closed).
    void put(const std::string &name, ByteView bytes) {
        writeFile(dir.path() / "inbox" / name, asChars(bytes));
        shas[name] = sha256Hex(bytes);
    }
    // The arrival's origin for the input put under name, and the hash of what the source reads.
    std::string origin(const std::string &name) const { return name; }
    std::optional<std::string> sha(const std::string &name) { return shas[name]; }
    std::map<std::string, std::string> shas;
    // A folder source hands rejected input over (the store quarantines it with its bytes).
    static constexpr bool handsOverRejected = true;
    // Whether the input is still where it was put (not acknowledged by removal).
    bool present(const std::string &name) {
        return std::filesystem::exists(dir.path() / "inbox" / name);
    }
    bool setAside(const std::string &) { return false; }
    static constexpr bool removes = After != DirectorySourceConfig::After::Keep;
};
using DirectoryKeep = DirectoryFixture<DirectorySourceConfig::After::Keep>;
using DirectoryDelete = DirectoryFixture<DirectorySourceConfig::After::Delete>;
using DirectoryMove = DirectoryFixture<DirectorySourceConfig::After::Move>;

// Dovecot and the SMTP capture server of the mail tests (tests/integration/mail_peers.py serve),
// when Dovecot is installed (CI installs it; elsewhere the mail fixtures skip with a message).
bool mailPeersMissing() {
    return !std::filesystem::exists("/usr/sbin/dovecot") ||
           !std::filesystem::exists("/usr/lib/dovecot/dovecot-lda");
}
struct MailPeers {
    std::unique_ptr<Peer> peer;
    std::string imapsPort, smtpPort, cert, dovecotConf, capture;
    explicit MailPeers(const TempDir &dir) {
        peer = std::make_unique<Peer>(std::vector<std::string>{
            "python3", std::filesystem::absolute("integration/mail_peers.py").string(), "serve",
            dir / "mail"});
        const std::string line = peer->waitForLine(
            [](std::string_view l) { return l.substr(0, 10) == "LISTENING "; }, 60s);
        std::istringstream words(line.substr(10));
        words >> imapsPort >> smtpPort >> cert >> dovecotConf >> capture;
    }
};

// The IMAP source against a private Dovecot: an input is a mail with the bytes attached. It
// runs every source case. The directory-only cases further down are about what a file system
// lets happen between reading a file and removing it (a file replaced under its name, a file
// held under a private name); a mailbox has neither: a mail's bytes never change under its UID
// (RFC 3501 §2.3.1.1) and a move is one command. Its own cases (UIDVALIDITY, IDLE, a server
// that restarts) are in tests/integration/test_mail.py, against the same Dovecot.
struct ImapFixture {
    TempDir dir;
    std::unique_ptr<MailPeers> peers;
    std::unique_ptr<ImapSource> source;
    static constexpr bool removes = true;
    // A mail source never hands over a mail it will not relay: it moves it to the rejected
    // mailbox with the reason in the log (and never answers it), so that nothing in the store
    // stands for mail nobody may be answered for.
    static constexpr bool handsOverRejected = false;
    std::string origin(const std::string &name) const { return "<" + name + "@example.org>"; }
    // Unknown here: delivery adds trace fields (Return-Path, Delivered-To), so the mail the
    // source reads is not the one put.
    std::optional<std::string> sha(const std::string &) { return std::nullopt; }
    ImapFixture() {
        if (mailPeersMissing())
            return;
        peers = std::make_unique<MailPeers>(dir);
        ImapSourceConfig c;
        c.name = "inbox";
        c.url = "imaps://127.0.0.1:" + peers->imapsPort + "/";
        c.user = "enroll";
        c.password = "enroll-secret";
        c.caFile = peers->cert;
        c.timeoutMs = 10'000;
        source = std::make_unique<ImapSource>(c);
    }
    bool unavailable() const {
        if (!peers)
            WARN("skipped: dovecot is not installed (Debian dovecot-imapd)");
        return !peers;
    }
    Source &get() { return *source; }
    void put(const std::string &name, ByteView bytes) {
        Owned<BIO, ::BIO_free_all> b64(BIO_push(BIO_new(BIO_f_base64()), BIO_new(BIO_s_mem())));
        BIO_write(b64.get(), bytes.data(), static_cast<int>(bytes.size()));
        (void)BIO_flush(b64.get());
        BUF_MEM *mem = nullptr;
        BIO_get_mem_ptr(b64.get(), &mem);
        const std::string mail =
            "From: ann@example.org\r\nTo: enroll@example.org\r\nSubject: " + name +
            "\r\nMessage-ID: <" + name +
            "@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: "
            "application/pkcs10; name=\"" +
            name + "\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
            std::string(mem->data, mem->length);
        const std::string file = dir / (name + ".eml");
        writeFile(file, mail);
        runOk({"sh", "-c", "/usr/lib/dovecot/dovecot-lda -c \"$1\" -d enroll < \"$2\"", "lda",
               peers->dovecotConf, file});
    }
    bool present(const std::string &name) { return inMailbox("INBOX", name); }
    bool setAside(const std::string &name) { return inMailbox("rejected", name); }
    bool inMailbox(const std::string &mailbox, const std::string &name) {
        return !runOk({"doveadm", "-c", peers->dovecotConf, "search", "-u", "enroll", "mailbox",
                       mailbox, "subject", name})
                    .empty();
    }
};

// Fixtures that need a peer which may be missing say so; the others always run.
template <class F> bool skipped(const F &f) {
    if constexpr (requires { f.unavailable(); })
        return f.unavailable();
    else
        return false;
}
// The media source (the air-gap chain) as its inputs arrive without manifests when
// require_manifest is off: a source like any other.
template <DirectorySourceConfig::After After> struct MediaFixture : DirectoryFixture<After> {
    std::unique_ptr<MediaSource> media;
    MediaFixture() {
        MediaSourceConfig m;
        m.directory.name = "inbox";
        m.directory.path = this->folder;
        m.directory.responses = this->folder;
        m.directory.after = After;
        m.directory.moveTo = this->dir / "processed";
        m.directory.settleMs = 0;
        m.directory.wallClock = [] {
            return std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                .count();
        };
        m.requireManifest = false;
        media = std::make_unique<MediaSource>(m);
    }
    Source &get() { return *media; }
};
using MediaKeep = MediaFixture<DirectorySourceConfig::After::Keep>;
using MediaDelete = MediaFixture<DirectorySourceConfig::After::Delete>;

} // namespace

TEMPLATE_TEST_CASE("source: each input is handed over once, acknowledged only when told",
                   "[conformance][source]", DirectoryKeep, DirectoryDelete, DirectoryMove,
                   ImapFixture, MediaKeep, MediaDelete) {
    TestType f;
    if (skipped(f))
        return;
    EventLoop loop;
    int wakes = 0;
    f.get().attach(loop, [&] { ++wakes; });
    MemoryLedger ledger;
    const Bytes a = makeCsr(f.dir, "a"), b = makeCsr(f.dir, "b");
    f.put("a.p10", a);
    f.put("b.p10", b);

    Taken taken = f.get().take(ledger, 100, 1 << 20, true);
    REQUIRE(taken.submissions.size() == 2);
    REQUIRE(taken.tokens.size() == 2);
    for (const auto &sub : taken.submissions) {
        REQUIRE(sub.message);
        CHECK(sub.message->kind == Kind::CmcSimpleRequest);
        CHECK(sub.relay);
        CHECK(sub.arrival.source == "inbox");
        const bool isA = sub.arrival.origin == f.origin("a.p10");
        CHECK((isA || sub.arrival.origin == f.origin("b.p10")));
        if (const auto sha = f.sha(isA ? "a.p10" : "b.p10"))
            CHECK(sub.arrivalSha256 == *sha);
        CHECK(sub.arrivalSha256.size() == 64);
    }
    CHECK(taken.submissions[0].arrival.origin != taken.submissions[1].arrival.origin);
    CHECK(taken.submissions[0].arrivalSha256 != taken.submissions[1].arrivalSha256);
    // Not acknowledged yet: whatever the mode, nothing is gone.
    CHECK(f.present("a.p10"));
    CHECK(f.present("b.p10"));

    const auto acks = f.get().acknowledge(taken.tokens);
    REQUIRE(acks.size() == 2);
    for (auto ack : acks)
        CHECK(ack == (TestType::removes ? Source::Ack::Removed : Source::Ack::Kept));
    ledger.store(taken, acks);
    CHECK(f.present("a.p10") != TestType::removes);

    // Once stored and acknowledged, a full look hands over nothing more.
    CHECK(f.get().take(ledger, 100, 1 << 20, true).submissions.empty());
    f.get().detach();
}

TEMPLATE_TEST_CASE("source: an input stored but never acknowledged is acknowledged, not stored "
                   "again",
                   "[conformance][source]", DirectoryKeep, DirectoryDelete, DirectoryMove,
                   ImapFixture, MediaKeep, MediaDelete) {
    TestType f;
    if (skipped(f))
        return;
    EventLoop loop;
    f.get().attach(loop, [] {});
    MemoryLedger ledger;
    const Bytes a = makeCsr(f.dir, "a");
    f.put("a.p10", a);
    Taken first = f.get().take(ledger, 100, 1 << 20, true);
    REQUIRE(first.submissions.size() == 1);
    // The store committed it, and the run died before acknowledging.
    const auto &sub = first.submissions[0];
    CHECK(sub.arrival.origin == f.origin("a.p10"));
    auto &seen = ledger.seen[MemoryLedger::key("inbox", sub.arrival.origin, sub.arrivalSha256)];
    seen.state = Ledger::Seen::State::Unacknowledged;
    seen.deliveryId = 7;
    Taken again = f.get().take(ledger, 100, 1 << 20, true);
    CHECK(again.submissions.empty());
    REQUIRE(again.unacknowledged.size() == 1);
    CHECK(again.unacknowledged[0].second == 7);
    const auto acks = f.get().acknowledge({again.unacknowledged[0].first});
    CHECK(acks[0] != Source::Ack::Failed);
    CHECK(f.present("a.p10") != TestType::removes);
    f.get().detach();
}

// Directory sources only: what a file system lets happen between reading a file and removing it.
TEST_CASE("directory source: a file written again under its name before the removal is kept "
          "and handed over",
          "[source][directory]") {
    DirectoryDelete f;
    EventLoop loop;
    f.get().attach(loop, [] {});
    MemoryLedger ledger;
    const Bytes a = makeCsr(f.dir, "a"), b = makeCsr(f.dir, "b");
    f.put("a.p10", a);
    Taken taken = f.get().take(ledger, 100, 1 << 20, true);
    REQUIRE(taken.submissions.size() == 1);
    // A client writes its next request under the same name (a new file renamed over the old
    // one) after the first was read and before it is acknowledged.
    writeFile(f.dir / "b.tmp", asChars(b));
    std::filesystem::rename(f.dir / "b.tmp", f.dir.path() / "inbox" / "a.p10");
    const auto acks = f.get().acknowledge(taken.tokens);
    CHECK(acks[0] == Source::Ack::Failed);
    ledger.store(taken, acks);
    CHECK(readFile(f.dir.path() / "inbox" / "a.p10") == b); // not deleted, not renamed away
    CHECK(!f.present(".a.p10.pkirelay-ack"));
    Taken next = f.get().take(ledger, 100, 1 << 20, false);
    REQUIRE(next.submissions.size() == 1);
    CHECK(next.submissions[0].arrivalSha256 == sha256Hex(b));
    f.get().detach();
}

TEST_CASE("directory source: a file a killed run held under its private name gets its name back",
          "[source][directory]") {
    DirectoryDelete f;
    EventLoop loop;
    f.get().attach(loop, [] {});
    MemoryLedger ledger;
    const Bytes a = makeCsr(f.dir, "a");
    f.put(".a.p10.pkirelay-ack", a); // acknowledge() had taken it, then the run died
    Taken taken = f.get().take(ledger, 100, 1 << 20, true);
    CHECK(f.present("a.p10"));
    CHECK(!f.present(".a.p10.pkirelay-ack"));
    if (taken.submissions.empty()) // found on the look after the rename
        taken = f.get().take(ledger, 100, 1 << 20, false);
    REQUIRE(taken.submissions.size() == 1);
    CHECK(taken.submissions[0].arrival.origin == "a.p10");
    f.get().detach();
}

// A folder source hands hostile input over rejected (the store quarantines it); a mail source
// sets it aside in its rejected mailbox (handsOverRejected = false). Either way it is never
// dropped and never relayed.
TEMPLATE_TEST_CASE("source: hostile input is handed over rejected with its reason, never dropped",
                   "[conformance][source]", DirectoryKeep, DirectoryDelete, DirectoryMove,
                   ImapFixture, MediaKeep, MediaDelete) {
    TestType f;
    if (skipped(f))
        return;
    EventLoop loop;
    f.get().attach(loop, [] {});
    MemoryLedger ledger;
    const std::string junk = "\x30\x82\xff\xff not a PKI message";
    f.put("junk.p10", asBytes(junk));
    Taken taken = f.get().take(ledger, 100, 1 << 20, true);
    if constexpr (!TestType::handsOverRejected) {
        CHECK(taken.submissions.empty());
        CHECK(taken.errors == 0);
        CHECK(!f.present("junk.p10"));
        CHECK(f.setAside("junk.p10"));
        // Set aside is final: a later full look hands nothing over either.
        CHECK(f.get().take(ledger, 100, 1 << 20, true).submissions.empty());
        f.get().detach();
        return;
    }
    REQUIRE(taken.submissions.size() == 1);
    CHECK(!taken.submissions[0].message);
    CHECK(!taken.submissions[0].rejectReason.empty());
    CHECK(taken.submissions[0].rejectedBytes == Bytes(junk.begin(), junk.end()));
    f.get().detach();
}

TEMPLATE_TEST_CASE("source: a take keeps to its bounds and says there is more",
                   "[conformance][source]", DirectoryKeep, DirectoryDelete, ImapFixture, MediaKeep,
                   MediaDelete) {
    TestType f;
    if (skipped(f))
        return;
    EventLoop loop;
    f.get().attach(loop, [] {});
    MemoryLedger ledger;
    for (int i = 0; i < 5; ++i)
        f.put("r" + std::to_string(i) + ".p10", makeCsr(f.dir, "r" + std::to_string(i)));
    Taken first = f.get().take(ledger, 2, 1 << 20, true);
    CHECK(first.submissions.size() == 2);
    CHECK(first.more);
    ledger.store(first, f.get().acknowledge(first.tokens));
    std::size_t total = first.submissions.size();
    for (int rounds = 0; rounds < 5 && total < 5; ++rounds) {
        Taken next = f.get().take(ledger, 2, 1 << 20, false);
        ledger.store(next, f.get().acknowledge(next.tokens));
        total += next.submissions.size();
    }
    CHECK(total == 5);
    f.get().detach();
}

TEMPLATE_TEST_CASE("source: new input wakes the pipeline", "[conformance][source]", DirectoryKeep,
                   DirectoryDelete, ImapFixture, MediaKeep, MediaDelete) {
    TestType f;
    if (skipped(f))
        return;
    EventLoop loop;
    int wakes = 0;
    f.get().attach(loop, [&] { ++wakes; });
    loop.turn(0); // the first wake (everything is new at start)
    const int before = wakes;
    f.put("late.p10", makeCsr(f.dir, "late"));
    CHECK(turnUntil(
        loop, [&] { return wakes > before; }, 5s));
    MemoryLedger ledger;
    CHECK(f.get().take(ledger, 100, 1 << 20, false).submissions.size() == 1);
    f.get().detach();
}

// ---- Transports -------------------------------------------------------------------------------

namespace {

// tests/cmc_responder.py on a free loopback port.
struct CmcPeer {
    std::unique_ptr<Peer> peer;
    std::uint16_t port = 0;
    CmcPeer() {
        peer = std::make_unique<Peer>(std::vector<std::string>{
            "python3", std::filesystem::absolute("cmc_responder.py").string()});
        const std::string line = peer->waitForLine(
            [](std::string_view l) { return l.substr(0, 10) == "LISTENING "; }, 20s);
        port = static_cast<std::uint16_t>(std::stoi(line.substr(10)));
    }
};

struct HttpFixture {
    TempDir dir;
    std::unique_ptr<Transport> make(const std::string &url, unsigned connections = 4,
                                    std::chrono::milliseconds timeout = 10s) {
        httpGlobalInit();
        HttpEndpoint ep;
        ep.name = "test";
        ep.url = url;
        ep.connectTimeout = 5s;
        ep.timeout = timeout;
        ep.maxConnections = connections;
        return std::make_unique<HttpTransport>(ep);
    }
    // An endpoint that answers CMC requests with real responses.
    std::string answering() {
        if (!peer)
            peer = std::make_unique<CmcPeer>();
        return "http://127.0.0.1:" + std::to_string(peer->port) + "/cmc";
    }
    std::unique_ptr<CmcPeer> peer;
    // Where a peer on this loopback port is, for this transport.
    std::string at(std::uint16_t port) { return "http://127.0.0.1:" + std::to_string(port) + "/"; }
    Bytes request(const std::string &cn) { return makeCsr(dir, cn); }
    static constexpr Kind requestKind = Kind::CmcSimpleRequest;
    static constexpr Kind answerKind = Kind::CmcSimpleResponse;
};

// A test peer speaking a TCP protocol, started on a free loopback port.
std::uint16_t startListening(std::unique_ptr<Peer> &peer, std::vector<std::string> argv) {
    peer = std::make_unique<Peer>(argv);
    const std::string line =
        peer->waitForLine([](std::string_view l) { return l.substr(0, 10) == "LISTENING "; }, 20s);
    return static_cast<std::uint16_t>(std::stoi(line.substr(10)));
}

TcpEndpoint tcpEndpoint(const std::string &address, unsigned connections,
                        std::chrono::milliseconds timeout) {
    // address is "127.0.0.1:PORT", as at() makes it.
    TcpEndpoint ep;
    ep.name = "test";
    ep.host = address.substr(0, address.rfind(':'));
    ep.port = static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
    ep.connectTimeout = 5s;
    ep.timeout = timeout;
    ep.maxConnections = connections;
    return ep;
}

// CMC over TCP against tests/cmc_tcp_responder.py (answers from the CMC responder's logic).
struct CmcTcpFixture {
    TempDir dir;
    std::unique_ptr<Peer> peer;
    std::unique_ptr<Transport> make(const std::string &address, unsigned connections = 4,
                                    std::chrono::milliseconds timeout = 10s) {
        return std::make_unique<CmcTcpTransport>(tcpEndpoint(address, connections, timeout));
    }
    std::string answering() {
        return at(startListening(
            peer, {"python3", std::filesystem::absolute("cmc_tcp_responder.py").string()}));
    }
    std::string at(std::uint16_t port) { return "127.0.0.1:" + std::to_string(port); }
    Bytes request(const std::string &cn) { return makeCsr(dir, cn); }
    static constexpr Kind requestKind = Kind::CmcSimpleRequest;
    static constexpr Kind answerKind = Kind::CmcSimpleResponse;
};

// Legacy CMP over TCP against tests/cmp_tcp_responder.py answering with a fixed PKIMessage
// (the transport, not the CA, is under test; the integration tests forward to OpenSSL's).
struct CmpTcpFixture {
    TempDir dir;
    std::unique_ptr<Peer> peer;
    std::unique_ptr<Transport> make(const std::string &address, unsigned connections = 4,
                                    std::chrono::milliseconds timeout = 10s) {
        return std::make_unique<CmpTcpTransport>(tcpEndpoint(address, connections, timeout));
    }
    void fixtures() {
        if (!std::filesystem::exists(dir / "fx/cmp_ip.der"))
            runOk(
                {"sh", std::filesystem::absolute("fixtures/make_fixtures.sh").string(), dir / "fx"},
                60s);
    }
    std::string answering() {
        fixtures();
        return at(startListening(peer, {"python3",
                                        std::filesystem::absolute("cmp_tcp_responder.py").string(),
                                        "--fixed", dir / "fx/cmp_ip.der"}));
    }
    std::string at(std::uint16_t port) { return "127.0.0.1:" + std::to_string(port); }
    Bytes request(const std::string &) {
        fixtures();
        return readFile(dir / "fx/cmp_ir.der");
    }
    static constexpr Kind requestKind = Kind::Cmp;
    static constexpr Kind answerKind = Kind::Cmp;
};

// The directory endpoint (the air-gap chain's online side): the peer is a folder on removable
// media; a request is written there and reported Handed, and its answer comes back later on
// another route (a media-return source), never as this exchange's reply. So it sits out "an
// answer comes back as a response" (there is none in the exchange) and joins "a request handed
// over is reported Handed" instead; "cannot be reached" is the folder not there (the stick not
// plugged in); its capacity is its batch size, and what is sent in a turn is written at the end
// of that turn, so "abandon" drops exchanges before their turn ends (a network transport's are
// abandoned mid-exchange).
struct DirectoryTransportFixture {
    TempDir dir;
    std::string media = dir / "stick";
    DirectoryTransportFixture() { std::filesystem::create_directory(media); }
    std::unique_ptr<Transport> make(const std::string &path, unsigned batch = 4,
                                    std::chrono::milliseconds = 10s) {
        DirectoryEndpoint ep;
        ep.name = "test";
        ep.path = path;
        ep.stateFile = dir / "batches";
        ep.maxBatch = batch;
        ep.wallClock = [] {
            return std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                .count();
        };
        return std::make_unique<DirectoryTransport>(ep);
    }
    std::string answering() { return media; }
    std::string unreachable() { return dir / "unplugged"; }
    std::string silent() { return media; }
    static constexpr bool repliesAtTurnEnd = true;
    Bytes request(const std::string &cn) { return makeCsr(dir, cn); }
    static constexpr Kind requestKind = Kind::CmcSimpleRequest;
    // The names on the media (without temporary or hidden files).
    std::set<std::string> onMedia() const {
        std::set<std::string> names;
        for (const auto &e : std::filesystem::directory_iterator(media))
            if (!e.path().filename().string().starts_with('.'))
                names.insert(e.path().filename().string());
        return names;
    }
};

// Where a transport cannot deliver, and where it is kept waiting: for a network transport a
// closed loopback port and one that accepts and never answers (held open by the caller); a
// fixture with its own kind of peer says where.
template <class F> std::string unreachablePeer(F &f, std::unique_ptr<LoopbackSocket> &held) {
    if constexpr (requires { f.unreachable(); }) {
        return f.unreachable();
    } else {
        held = std::make_unique<LoopbackSocket>(false);
        return f.at(held->port());
    }
}
template <class F> std::string silentPeer(F &f, std::unique_ptr<LoopbackSocket> &held) {
    if constexpr (requires { f.silent(); }) {
        return f.silent();
    } else {
        held = std::make_unique<LoopbackSocket>(true);
        return f.at(held->port());
    }
}
template <class F> constexpr bool repliesAtTurnEnd() {
    if constexpr (requires { F::repliesAtTurnEnd; })
        return F::repliesAtTurnEnd;
    else
        return false;
}

} // namespace

TEMPLATE_TEST_CASE("transport: an answer comes back as a response, every byte kept",
                   "[conformance][transport]", HttpFixture, CmcTcpFixture, CmpTcpFixture) {
    TestType f;
    EventLoop loop;
    auto t = f.make(f.answering());
    t->attach(loop);
    const Bytes csr = f.request("t");
    std::optional<Reply> got;
    t->send({42, TestType::requestKind, csr}, [&](Reply r) { got = std::move(r); });
    CHECK(t->inFlight() == 1);
    REQUIRE(turnUntil(
        loop, [&] { return got.has_value(); }, 20s));
    CHECK(got->id == 42);
    REQUIRE(got->type == Reply::Type::Response);
    REQUIRE(got->response);
    CHECK(got->response->kind == TestType::answerKind);
    CHECK(got->body == got->response->der);
    CHECK(t->inFlight() == 0);
}

TEMPLATE_TEST_CASE("transport: a request handed over is reported Handed, every byte on the way",
                   "[conformance][transport]", DirectoryTransportFixture) {
    TestType f;
    EventLoop loop;
    auto t = f.make(f.answering());
    t->attach(loop);
    const Bytes a = f.request("a"), b = f.request("b");
    std::map<std::int64_t, Reply> got;
    auto keep = [&](Reply r) {
        const auto id = r.id;
        got.emplace(id, std::move(r));
    };
    t->send({41, TestType::requestKind, a}, keep);
    t->send({42, TestType::requestKind, b}, keep);
    CHECK(t->inFlight() == 2);
    REQUIRE(turnUntil(
        loop, [&] { return got.size() == 2; }, 20s));
    CHECK(t->inFlight() == 0);
    std::set<std::string> names;
    for (const auto &[id, r] : got) {
        CHECK(r.type == Reply::Type::Handed);
        CHECK(!r.response);
        CHECK(!r.handedAs.empty());
        CHECK(r.batch == got.at(41).batch); // sent in one turn: one batch
        CHECK(r.awaitMs > 0);
        // Every byte of the request is where the reply says it went.
        CHECK(readFile(std::filesystem::path(f.answering()) / r.handedAs) == (id == 41 ? a : b));
        names.insert(r.handedAs);
    }
    CHECK(names.size() == 2);
    // And the batch's manifest is there (written last: the batch is complete).
    CHECK(f.onMedia().size() == 3);
}

TEMPLATE_TEST_CASE("transport: a peer that cannot be reached is a transient failure",
                   "[conformance][transport]", HttpFixture, CmcTcpFixture, CmpTcpFixture,
                   DirectoryTransportFixture) {
    TestType f;
    EventLoop loop;
    std::unique_ptr<LoopbackSocket> closed;
    auto t = f.make(unreachablePeer(f, closed));
    t->attach(loop);
    std::optional<Reply> got;
    const Bytes csr = f.request("u");
    t->send({1, TestType::requestKind, csr}, [&](Reply r) { got = std::move(r); });
    REQUIRE(turnUntil(
        loop, [&] { return got.has_value(); }, 20s));
    CHECK(got->type == Reply::Type::Transient);
    CHECK(!got->detail.empty());
}

TEMPLATE_TEST_CASE("transport: capacity bounds what is in flight; abandon drops it silently",
                   "[conformance][transport]", HttpFixture, CmcTcpFixture, CmpTcpFixture,
                   DirectoryTransportFixture) {
    TestType f;
    EventLoop loop;
    std::unique_ptr<LoopbackSocket> silent;
    auto t = f.make(silentPeer(f, silent), 2, 60s);
    t->attach(loop);
    const Bytes csr = f.request("v");
    int replies = 0;
    CHECK(t->capacity() == 2);
    t->send({1, TestType::requestKind, csr}, [&](Reply) { ++replies; });
    t->send({2, TestType::requestKind, csr}, [&](Reply) { ++replies; });
    CHECK(t->capacity() == 0);
    CHECK(t->inFlight() == 2);
    if constexpr (!repliesAtTurnEnd<TestType>())
        loop.turn(100); // the exchanges get under way
    auto ids = t->abandon();
    std::sort(ids.begin(), ids.end());
    CHECK(ids == std::vector<std::int64_t>{1, 2});
    CHECK(t->inFlight() == 0);
    CHECK(t->capacity() == 2);
    for (int i = 0; i < 5; ++i)
        loop.turn(20);
    CHECK(replies == 0);
    if constexpr (requires { f.onMedia(); })
        CHECK(f.onMedia().empty()); // nothing abandoned was written
}

TEMPLATE_TEST_CASE("transport: destroyed once abandoned, before the loop turns again",
                   "[conformance][transport]", HttpFixture, CmcTcpFixture, CmpTcpFixture,
                   DirectoryTransportFixture) {
    // A reload retires the old transports, abandons what they hold and drops those with nothing
    // in flight at once: whatever they deferred or registered with the loop must not outlive
    // them (the sanitizer build turns a use after free here into a failed test).
    TestType f;
    EventLoop loop;
    std::unique_ptr<LoopbackSocket> silent;
    auto t = f.make(silentPeer(f, silent), 2, 60s);
    t->attach(loop);
    int replies = 0;
    t->send({1, TestType::requestKind, f.request("w")}, [&](Reply) { ++replies; });
    t->abandon();
    t.reset();
    for (int i = 0; i < 3; ++i)
        loop.turn(20);
    CHECK(replies == 0);
    if constexpr (requires { f.onMedia(); })
        CHECK(f.onMedia().empty());
}

// ---- Responders -------------------------------------------------------------------------------

namespace {

struct ResponseFileFixture {
    TempDir dir;
    std::string place = dir / "out";      // where answers go
    std::string gone = dir / "unplugged"; // a place that is not there
    ResponseFileFixture() { std::filesystem::create_directory(place); }
    std::unique_ptr<Responder> make() { return std::make_unique<ResponseFileResponder>(); }
    DeliveryTask task(std::int64_t id, const std::string &origin, ByteView response,
                      const std::string &where) {
        DeliveryTask t;
        t.deliveryId = id;
        t.itemId = id;
        t.arrival = {"inbox", origin, where};
        t.kind = Kind::CmcSimpleResponse;
        t.response = response;
        return t;
    }
    // What was delivered for an output (the file's bytes), or nullopt.
    std::optional<Bytes> delivered(const DeliveryTask &t) {
        const auto path = std::filesystem::path(t.arrival.replyTo) / t.output;
        if (t.output.empty() || !std::filesystem::exists(path))
            return std::nullopt;
        return readFile(path);
    }
    // Puts something that is not ours where an output would go.
    void occupy(const DeliveryTask &t) {
        writeFile(std::filesystem::path(t.arrival.replyTo) / t.output, "someone else's");
    }
    std::size_t count() {
        std::size_t n = 0;
        for ([[maybe_unused]] const auto &e : std::filesystem::directory_iterator(place))
            ++n;
        return n;
    }
};

// The SMTP responder: the place an answer goes is a mail address; the output is the reply's
// Message-ID. (Its reply cannot be recognised once sent, so it sits out the redelivery case: the
// store records the delivery right after the server took it, see lib/responders/smtp.h.)
struct SmtpFixture {
    TempDir dir;
    std::unique_ptr<MailPeers> peers;
    std::string place = "alice@example.org";
    SmtpFixture() {
        if (!mailPeersMissing())
            peers = std::make_unique<MailPeers>(dir);
    }
    bool unavailable() const {
        if (!peers)
            WARN("skipped: dovecot is not installed (Debian dovecot-imapd)");
        return !peers;
    }
    std::unique_ptr<Responder> make() {
        SmtpResponderConfig c;
        c.url = "smtp://127.0.0.1:" + peers->smtpPort;
        c.from = "enroll@example.org";
        return std::make_unique<SmtpResponder>(c);
    }
    DeliveryTask task(std::int64_t id, const std::string &origin, ByteView response,
                      const std::string &where) {
        DeliveryTask t;
        t.deliveryId = id;
        t.itemId = id;
        t.arrival = {"inbox", origin, where, "Message-ID: <" + origin + ">\nSubject: req\n"};
        t.kind = Kind::CmcSimpleResponse;
        t.response = response;
        return t;
    }
};

const Bytes answerA = {0x30, 0x03, 0x02, 0x01, 0x01};
const Bytes answerB = {0x30, 0x03, 0x02, 0x01, 0x02};

} // namespace

TEMPLATE_TEST_CASE("responder: one answer per task, and delivering a recorded plan again is "
                   "recognised, not doubled",
                   "[conformance][responder]", ResponseFileFixture) {
    TestType f;
    auto r = f.make();
    std::vector<DeliveryTask> tasks = {f.task(1, "req.p10", answerA, f.place),
                                       f.task(2, "req.p10", answerB, f.place)};
    std::set<std::string> reserved;
    r->plan(tasks, [&](std::string_view, std::string_view o) {
        return reserved.contains(std::string(o));
    });
    REQUIRE(!tasks[0].output.empty());
    REQUIRE(!tasks[1].output.empty());
    CHECK(tasks[0].output != tasks[1].output); // two requests of one name, two answers
    for (auto &t : tasks)
        t.planned = true; // the store recorded the plan
    auto results = r->deliver(tasks);
    CHECK(results[0].type == DeliveryResult::Type::Delivered);
    CHECK(results[1].type == DeliveryResult::Type::Delivered);
    CHECK(f.delivered(tasks[0]) == answerA);
    CHECK(f.delivered(tasks[1]) == answerB);
    // A crash before the store recorded it: delivered again, it is found, not written twice.
    results = r->deliver(tasks);
    CHECK(results[0].type == DeliveryResult::Type::Delivered);
    CHECK(f.count() == 2);
}

TEMPLATE_TEST_CASE("responder: a plan avoids what the store reserved for another delivery",
                   "[conformance][responder]", ResponseFileFixture, SmtpFixture) {
    TestType f;
    if (skipped(f))
        return;
    auto r = f.make();
    std::vector<DeliveryTask> first = {f.task(1, "req.p10", answerA, f.place)};
    r->plan(first, [](std::string_view, std::string_view) { return false; });
    std::vector<DeliveryTask> second = {f.task(2, "req.p10", answerB, f.place)};
    const std::string held = first[0].output; // reserved, not written yet
    r->plan(second, [&](std::string_view, std::string_view o) { return o == held; });
    CHECK(second[0].output != held);
}

TEMPLATE_TEST_CASE("responder: a place that is gone waits; what is not ours is never replaced",
                   "[conformance][responder]", ResponseFileFixture) {
    TestType f;
    auto r = f.make();
    std::vector<DeliveryTask> lost = {f.task(1, "req.p10", answerA, f.gone)};
    r->plan(lost, [](std::string_view, std::string_view) { return false; });
    CHECK(lost[0].output.empty()); // nothing to plan against yet
    lost[0].output = "req.p7c";
    lost[0].planned = true;
    CHECK(r->deliver(lost)[0].type == DeliveryResult::Type::Retry);

    std::vector<DeliveryTask> tasks = {f.task(2, "mine.p10", answerA, f.place)};
    r->plan(tasks, [](std::string_view, std::string_view) { return false; });
    tasks[0].planned = true;
    f.occupy(tasks[0]); // someone else's file appears under the recorded name
    CHECK(r->deliver(tasks)[0].type == DeliveryResult::Type::NeedsPerson);
    CHECK(f.delivered(tasks[0]) != answerA);
}
