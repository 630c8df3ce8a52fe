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
#include <set>
#include <string>
#include <vector>

#include "lib/bytes.h"
#include "lib/file_io.h"
#include "lib/loop/event_loop.h"
#include "lib/responders/response_file.h"
#include "lib/sources/directory.h"
#include "lib/sources/media.h"
#include "lib/transports/http.h"
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
    }
    // Whether the input is still where it was put (not acknowledged by removal).
    bool present(const std::string &name) {
        return std::filesystem::exists(dir.path() / "inbox" / name);
    }
    static constexpr bool removes = After != DirectorySourceConfig::After::Keep;
};
using DirectoryKeep = DirectoryFixture<DirectorySourceConfig::After::Keep>;
using DirectoryDelete = DirectoryFixture<DirectorySourceConfig::After::Delete>;
using DirectoryMove = DirectoryFixture<DirectorySourceConfig::After::Move>;

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
                   MediaKeep, MediaDelete) {
    TestType f;
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
        CHECK(sub.arrivalSha256 == sha256Hex(sub.arrival.origin == "a.p10" ? a : b));
    }
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
                   MediaKeep, MediaDelete) {
    TestType f;
    EventLoop loop;
    f.get().attach(loop, [] {});
    MemoryLedger ledger;
    const Bytes a = makeCsr(f.dir, "a");
    f.put("a.p10", a);
    Taken first = f.get().take(ledger, 100, 1 << 20, true);
    REQUIRE(first.submissions.size() == 1);
    // The store committed it, and the run died before acknowledging.
    auto &seen = ledger.seen[MemoryLedger::key("inbox", "a.p10", sha256Hex(a))];
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

TEMPLATE_TEST_CASE("source: hostile input is handed over rejected with its reason, never dropped",
                   "[conformance][source]", DirectoryKeep, DirectoryDelete, DirectoryMove,
                   MediaKeep, MediaDelete) {
    TestType f;
    EventLoop loop;
    f.get().attach(loop, [] {});
    MemoryLedger ledger;
    const std::string junk = "\x30\x82\xff\xff not a PKI message";
    f.put("junk.p10", asBytes(junk));
    Taken taken = f.get().take(ledger, 100, 1 << 20, true);
    REQUIRE(taken.submissions.size() == 1);
    CHECK(!taken.submissions[0].message);
    CHECK(!taken.submissions[0].rejectReason.empty());
    CHECK(taken.submissions[0].rejectedBytes == Bytes(junk.begin(), junk.end()));
    f.get().detach();
}

TEMPLATE_TEST_CASE("source: a take keeps to its bounds and says there is more",
                   "[conformance][source]", DirectoryKeep, DirectoryDelete, MediaKeep,
                   MediaDelete) {
    TestType f;
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
                   DirectoryDelete, MediaKeep, MediaDelete) {
    TestType f;
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
    std::unique_ptr<HttpTransport> make(const std::string &url, unsigned connections = 4,
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
};

} // namespace

TEMPLATE_TEST_CASE("transport: an answer comes back as a response, every byte kept",
                   "[conformance][transport]", HttpFixture) {
    TestType f;
    EventLoop loop;
    auto t = f.make(f.answering());
    t->attach(loop);
    const Bytes csr = makeCsr(f.dir, "t");
    std::optional<Reply> got;
    t->send({42, Kind::CmcSimpleRequest, csr}, [&](Reply r) { got = std::move(r); });
    CHECK(t->inFlight() == 1);
    REQUIRE(turnUntil(
        loop, [&] { return got.has_value(); }, 20s));
    CHECK(got->id == 42);
    REQUIRE(got->type == Reply::Type::Response);
    REQUIRE(got->response);
    CHECK(got->response->kind == Kind::CmcSimpleResponse);
    CHECK(got->body == got->response->der);
    CHECK(t->inFlight() == 0);
}

TEMPLATE_TEST_CASE("transport: a peer that cannot be reached is a transient failure",
                   "[conformance][transport]", HttpFixture) {
    TestType f;
    EventLoop loop;
    LoopbackSocket closed(false);
    auto t = f.make("http://127.0.0.1:" + std::to_string(closed.port()) + "/");
    t->attach(loop);
    std::optional<Reply> got;
    const Bytes csr = makeCsr(f.dir, "u");
    t->send({1, Kind::CmcSimpleRequest, csr}, [&](Reply r) { got = std::move(r); });
    REQUIRE(turnUntil(
        loop, [&] { return got.has_value(); }, 20s));
    CHECK(got->type == Reply::Type::Transient);
    CHECK(!got->detail.empty());
}

TEMPLATE_TEST_CASE("transport: capacity bounds what is in flight; abandon drops it silently",
                   "[conformance][transport]", HttpFixture) {
    TestType f;
    EventLoop loop;
    LoopbackSocket silent(true); // accepts, never answers
    auto t = f.make("http://127.0.0.1:" + std::to_string(silent.port()) + "/", 2, 60s);
    t->attach(loop);
    const Bytes csr = makeCsr(f.dir, "v");
    int replies = 0;
    CHECK(t->capacity() == 2);
    t->send({1, Kind::CmcSimpleRequest, csr}, [&](Reply) { ++replies; });
    t->send({2, Kind::CmcSimpleRequest, csr}, [&](Reply) { ++replies; });
    CHECK(t->capacity() == 0);
    CHECK(t->inFlight() == 2);
    loop.turn(100);
    auto ids = t->abandon();
    std::sort(ids.begin(), ids.end());
    CHECK(ids == std::vector<std::int64_t>{1, 2});
    CHECK(t->inFlight() == 0);
    CHECK(t->capacity() == 2);
    for (int i = 0; i < 5; ++i)
        loop.turn(20);
    CHECK(replies == 0);
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
                   "[conformance][responder]", ResponseFileFixture) {
    TestType f;
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
