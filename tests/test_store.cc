// Unit tests of the store (spool/store.h) and its SQLite wrapper. Messages are built by hand from
// the structs of lib/classify.h, so these tests do not depend on the classifier. Each test has
// its own temporary directory; time is passed in, so the clock is jumped, never slept on.
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <latch>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <sqlite3.h>
#include <sys/stat.h>

#include "lib/owned.h"
#include "spool/migrations.h"
#include "spool/sqlite.h"
#include "spool/store.h"

using namespace pkirelay;
using namespace pkirelay::spool;

namespace {

namespace fs = std::filesystem;

struct TempDir {
    fs::path path;
    TempDir() {
        std::string tmpl = (fs::temp_directory_path() / "pkirelay-store-XXXXXX").string();
        if (!::mkdtemp(tmpl.data()))
            throw std::runtime_error("mkdtemp failed");
        path = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    std::string db() const { return (path / "pkirelay.db").string(); }
};

Bytes bytes(std::string_view s) {
    return Bytes(s.begin(), s.end());
}

Message cmpMessage(std::string_view der, std::string_view tid, std::string_view nonce,
                   int body = 0) {
    CmpInfo info;
    info.pvno = 2;
    info.bodyType = body;
    info.sender = "CN=ee";
    info.recipient = "CN=ca";
    info.transactionId = bytes(tid);
    info.senderNonce = bytes(nonce);
    return Message{Kind::Cmp, Encoding::Der, bytes(der), info, std::nullopt};
}

Message cmcRequest(std::string_view der, std::string_view tid, std::string_view nonce) {
    CmcInfo info;
    info.contentType = "signedData";
    info.transactionId = bytes(tid);
    info.senderNonce = bytes(nonce);
    return Message{Kind::CmcFullRequest, Encoding::Der, bytes(der), std::nullopt, info};
}

Message p10(std::string_view der) {
    return Message{Kind::CmcSimpleRequest, Encoding::Der, bytes(der), std::nullopt, std::nullopt};
}

Submission submit(Message m, std::string origin, std::string source = "inbox") {
    Submission s;
    s.arrival = {source, origin, "/media/out"};
    s.arrivalSha256 = sha256Hex(m.der);
    s.size = m.der.size();
    s.message = std::move(m);
    return s;
}

Submission rejected(std::string_view raw, std::string origin, std::string reason) {
    Submission s;
    s.arrival = {"inbox", origin, "/media/out"};
    s.arrivalSha256 = sha256Hex(asBytes(raw));
    s.size = raw.size();
    s.rejectReason = std::move(reason);
    s.rejectedBytes = bytes(raw);
    return s;
}

std::vector<Ingested> ingest(Store &store, std::vector<Submission> batch, Millis now) {
    return store.ingest(batch, now);
}

void record(Store &store, Outcome o, Millis now, const RetryPolicy &policy = {}) {
    store.record(std::span<const Outcome>(&o, 1), now, policy);
}

Outcome answer(std::int64_t id, std::string_view body, std::optional<Kind> kind = Kind::Cmp) {
    return {id, "http://ca/pkix/", Answer{bytes(body), kind, "HTTP 200 application/pkixcmp"}};
}

std::vector<std::string> whats(const ItemDetail &d) {
    std::vector<std::string> out;
    for (const auto &e : d.events)
        out.push_back(e.what);
    return out;
}

const Event *lastEvent(const ItemDetail &d, std::string_view what) {
    for (auto it = d.events.rbegin(); it != d.events.rend(); ++it)
        if (it->what == what)
            return &*it;
    return nullptr;
}

using RawDb = Owned<sqlite3, ::sqlite3_close_v2>;

RawDb rawOpen(const std::string &path) {
    sqlite3 *db = nullptr;
    const int rc = ::sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr);
    RawDb owned(db);
    REQUIRE(rc == SQLITE_OK);
    return owned;
}

std::int64_t rawInt(sqlite3 *db, const char *sql) {
    sql::Statement st(db, sql);
    REQUIRE(st.step());
    return st.int64(0);
}

std::int64_t stateCount(Store &store, State state) {
    for (const auto &[s, n] : store.countByState())
        if (s == state)
            return n;
    return -1;
}

constexpr Millis t0 = 1'700'000'000'000;

} // namespace

TEST_CASE("open creates, migrates and reopens the database") {
    TempDir dir;
    const auto known = static_cast<std::int64_t>(migrations().size());
    REQUIRE(known >= 1);
    {
        auto store = Store::open(dir.db());
        ingest(store, {submit(p10("req-1"), "a.p10")}, t0);
    }
    struct stat st {};
    REQUIRE(::stat(dir.db().c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    {
        auto raw = rawOpen(dir.db());
        CHECK(rawInt(raw.get(), "PRAGMA user_version") == known);
    }
    auto store = Store::open(dir.db()); // reopen: nothing to migrate, data kept
    CHECK(stateCount(store, State::Queued) == 1);
    auto raw = rawOpen(dir.db());
    CHECK(rawInt(raw.get(), "PRAGMA user_version") == known);
}

TEST_CASE("the connection runs with WAL, synchronous=FULL and foreign keys") {
    TempDir dir;
    auto db = sql::Database::open(dir.db());
    CHECK(db.queryText("PRAGMA journal_mode") == "wal");
    CHECK(db.queryInt("PRAGMA synchronous") == 2);
    CHECK(db.queryInt("PRAGMA foreign_keys") == 1);
    CHECK(db.queryInt("PRAGMA busy_timeout") >= 1000);

    // The Store's own connection: WAL persists in the file, and the foreign key from delivery
    // to item is enforced.
    auto store = Store::open(dir.db());
    CHECK(db.queryText("PRAGMA journal_mode") == "wal");
    CHECK_THROWS_AS(db.exec("INSERT INTO delivery (item_id, source, origin, reply_to, "
                            "arrival_sha256, created_at, updated_at) "
                            "VALUES (4242, 's', 'o', 'r', 'h', 0, 0)"),
                    StoreError);
}

TEST_CASE("a database from a newer pkirelay is refused") {
    TempDir dir;
    { auto store = Store::open(dir.db()); }
    {
        auto raw = rawOpen(dir.db());
        REQUIRE(::sqlite3_exec(raw.get(), "PRAGMA user_version = 99", nullptr, nullptr, nullptr) ==
                SQLITE_OK);
    }
    const std::string expected = "database is from a newer pkirelay (schema 99, this build knows " +
                                 std::to_string(migrations().size()) + ")";
    CHECK_THROWS_WITH(Store::open(dir.db()), Catch::Contains(expected));
}

TEST_CASE("a database in a missing directory gives the WAL hint") {
    TempDir dir;
    CHECK_THROWS_WITH(Store::open((dir.path / "nope" / "x.db").string()),
                      Catch::Contains("writable"));
}

TEST_CASE("ingest stores a batch and folds duplicates into one item") {
    TempDir dir;
    auto store = Store::open(dir.db());
    auto r = ingest(store,
                    {
                        submit(cmpMessage("ir-1", "tid-1", "n-1"), "one.pki"),
                        submit(cmpMessage("ir-1", "tid-1", "n-1"), "one-again.pki"), // same bytes
                        submit(cmpMessage("ir-1 reprotected", "tid-1", "n-1"), "two.pki"),
                        submit(cmpMessage("ir-2", "tid-1", "n-2"), "three.pki"), // new nonce
                        submit(cmpMessage("ir-3", "", ""), "four.pki"),
                        submit(cmpMessage("ir-4", "", ""), "five.pki"), // no keys: not a dup
                    },
                    t0);
    REQUIRE(r.size() == 6);
    CHECK_FALSE(r[0].duplicate);
    CHECK(r[0].state == State::Queued);
    CHECK(r[1].duplicate);
    CHECK(r[1].itemId == r[0].itemId);
    CHECK(r[2].duplicate);
    CHECK(r[2].itemId == r[0].itemId);
    CHECK_FALSE(r[3].duplicate);
    CHECK_FALSE(r[4].duplicate);
    CHECK_FALSE(r[5].duplicate);
    CHECK(r[4].itemId != r[5].itemId);
    std::set<std::int64_t> deliveries;
    for (const auto &i : r)
        deliveries.insert(i.deliveryId);
    CHECK(deliveries.size() == 6); // one delivery per arrival

    CHECK(stateCount(store, State::Queued) == 4);
    auto d = store.show(r[0].itemId);
    REQUIRE(d);
    CHECK(d->arrivals.size() == 3);
    CHECK(d->arrivals[0].origin == "one.pki");
    CHECK(d->arrivals[2].origin == "two.pki");
    CHECK(d->summary.origin == "one.pki");
    CHECK(d->sha256 == sha256Hex(bytes("ir-1")));
    CHECK(d->transactionId == bytes("tid-1"));
    CHECK(d->senderNonce == bytes("n-1"));
    CHECK(d->cmpBody == 0);
    CHECK(whats(*d) == std::vector<std::string>{"received", "duplicate", "duplicate"});
    // "cmp <body name> from ...": the body name comes from the classifier's table.
    CHECK_THAT(d->events[0].detail,
               Catch::StartsWith("cmp ") && Catch::EndsWith(" from inbox/one.pki, 4 bytes"));
    CHECK(d->events[1].detail == "duplicate arrival from inbox/one-again.pki (same bytes)");
    CHECK_THAT(d->events[2].detail, Catch::Contains("inbox/two.pki") &&
                                        Catch::Contains("same transactionID and senderNonce"));

    // Only one of them is relayed.
    auto claims = store.claim(10, t0, t0 + 60'000);
    CHECK(claims.size() == 4);
}

TEST_CASE("CMC transactionId and senderNonce make a duplicate only when both are present") {
    TempDir dir;
    auto store = Store::open(dir.db());
    auto r = ingest(store,
                    {
                        submit(cmcRequest("crq-1", "7", "nonce"), "a.crq"),
                        submit(cmcRequest("crq-1 resigned", "7", "nonce"), "b.crq"),
                        submit(cmcRequest("crq-2", "7", ""), "c.crq"),
                        submit(cmcRequest("crq-3", "7", ""), "d.crq"),
                        // A CMP message with the same keys is another protocol: not a dup.
                        submit(cmpMessage("ir", "7", "nonce"), "e.pki"),
                    },
                    t0);
    CHECK_FALSE(r[0].duplicate);
    CHECK(r[1].duplicate);
    CHECK(r[1].itemId == r[0].itemId);
    CHECK_FALSE(r[2].duplicate);
    CHECK_FALSE(r[3].duplicate);
    CHECK_FALSE(r[4].duplicate);
    auto d = store.show(r[0].itemId);
    REQUIRE(d);
    CHECK(d->summary.kind == Kind::CmcFullRequest);
    CHECK_THAT(lastEvent(*d, "duplicate")->detail, Catch::Contains("same transactionId"));
}

TEST_CASE("rejected input is quarantined with its reason and never claimed") {
    TempDir dir;
    auto store = Store::open(dir.db());
    auto r = ingest(store,
                    {
                        rejected("garbage", "junk.der", "not DER: byte 0 is 0x67"),
                        rejected("garbage", "junk2.der", "not DER: byte 0 is 0x67"),
                    },
                    t0);
    CHECK(r[0].state == State::Quarantined);
    CHECK_FALSE(r[0].duplicate);
    CHECK(r[1].duplicate);
    CHECK(r[1].itemId == r[0].itemId);
    CHECK(r[1].state == State::Quarantined);
    CHECK(store.claim(10, t0 + 1'000'000, t0 + 2'000'000).empty());

    auto d = store.show(r[0].itemId);
    REQUIRE(d);
    CHECK(d->summary.state == State::Quarantined);
    CHECK_FALSE(d->summary.kind);
    CHECK(d->summary.reason == "not DER: byte 0 is 0x67");
    CHECK(d->sha256 == sha256Hex(asBytes("garbage")));
    CHECK(d->size == 7);
    CHECK(whats(*d) == std::vector<std::string>{"received", "quarantined", "duplicate"});

    // The same bytes classify later (a newer classifier): the item becomes that message.
    auto again = ingest(store, {submit(p10("garbage"), "junk3.der")}, t0 + 5);
    CHECK(again[0].itemId == r[0].itemId);
    CHECK(again[0].state == State::Queued);
    d = store.show(r[0].itemId);
    CHECK(d->summary.kind == Kind::CmcSimpleRequest);
    CHECK(d->summary.reason.empty());
    CHECK(whats(*d).back() == "reclassified");
}

TEST_CASE("a message that is not a request is kept unmatched") {
    TempDir dir;
    auto store = Store::open(dir.db());
    auto s = submit(cmpMessage("ip-1", "tid", "ca-nonce", 1), "answer.pki");
    s.relay = false;
    auto r = store.ingest(std::span<const Submission>(&s, 1), t0);
    CHECK(r[0].state == State::Unmatched);
    CHECK(store.claim(10, t0 + 1'000'000, t0 + 2'000'000).empty());
    CHECK(stateCount(store, State::Unmatched) == 1);
    auto d = store.show(r[0].itemId);
    CHECK_FALSE(d->nextTry);
    CHECK(store.list(State::Unmatched, 10).size() == 1);
}

TEST_CASE("claim leases items, and an expired lease is requeued and resent visibly") {
    TempDir dir;
    auto store = Store::open(dir.db());
    auto r = ingest(
        store, {submit(p10("a"), "a.p10"), submit(p10("b"), "b.p10"), submit(p10("c"), "c.p10")},
        t0);

    auto first = store.claim(2, t0, t0 + 1000);
    REQUIRE(first.size() == 2); // the limit holds, oldest first
    CHECK(first[0].itemId == r[0].itemId);
    CHECK(first[1].itemId == r[1].itemId);
    CHECK(first[0].attempts == 1);
    CHECK(first[0].kind == Kind::CmcSimpleRequest);
    CHECK(first[0].source == "inbox");
    CHECK(first[0].der == bytes("a"));
    CHECK(first[0].firstSeen == t0);
    auto rest = store.claim(10, t0, t0 + 1000);
    REQUIRE(rest.size() == 1);
    CHECK(rest[0].itemId == r[2].itemId);
    CHECK(store.claim(10, t0, t0 + 1000).empty()); // all are leased
    CHECK(stateCount(store, State::Relaying) == 3);

    CHECK(store.requeueExpiredLeases(t0 + 999) == 0); // not yet
    record(store, answer(r[2].itemId, "ans-c"), t0 + 500);
    CHECK(store.requeueExpiredLeases(t0 + 1000) == 2);
    CHECK(stateCount(store, State::Queued) == 2);

    auto d = store.show(r[0].itemId);
    REQUIRE(d);
    const auto *expired = lastEvent(*d, "lease expired");
    REQUIRE(expired);
    CHECK(expired->detail == "outcome of attempt 1 unknown; the CA may see this request again");

    auto again = store.claim(10, t0 + 2000, t0 + 3000);
    REQUIRE(again.size() == 2);
    CHECK(again[0].attempts == 2);
    d = store.show(r[0].itemId);
    CHECK(whats(*d) ==
          std::vector<std::string>{"received", "relaying", "lease expired", "relaying"});
    CHECK(d->events[1].detail == "attempt 1");
    CHECK(d->events[3].detail == "attempt 2: resend, the outcome of attempt 1 was never recorded");
    CHECK(d->summary.attempts == 2);

    // A recorded deferral followed by a retry is not a resend of an unknown outcome.
    record(store, {r[0].itemId, "http://ca/", Transient{"connection refused"}}, t0 + 2100);
    auto third = store.claim(1, t0 + 10'000'000, t0 + 10'001'000);
    REQUIRE(third.size() == 1);
    d = store.show(r[0].itemId);
    CHECK(d->events.back().detail == "attempt 3");
}

TEST_CASE("RetryPolicy backs off exponentially up to its cap") {
    RetryPolicy p;
    p.initial = 1000;
    p.factor = 2.0;
    p.maxDelay = 10'000;
    CHECK(p.delayAfter(1) == 1000);
    CHECK(p.delayAfter(2) == 2000);
    CHECK(p.delayAfter(3) == 4000);
    CHECK(p.delayAfter(4) == 8000);
    CHECK(p.delayAfter(5) == 10'000);
    CHECK(p.delayAfter(500) == 10'000);
    CHECK(p.delayAfter(0) == 1000);
}

TEST_CASE("record: transient failures back off, then fail at the maximum age") {
    TempDir dir;
    auto store = Store::open(dir.db());
    RetryPolicy policy;
    policy.initial = 1000;
    policy.factor = 3.0;
    policy.maxDelay = 100'000;
    policy.maxAge = 1'000'000;
    auto id = ingest(store, {submit(cmpMessage("ir", "t", "n"), "x.pki")}, t0)[0].itemId;

    Millis now = t0;
    std::vector<Millis> delays;
    for (int attempt = 1; attempt <= 4; ++attempt) {
        auto c = store.claim(10, now, now + 100);
        REQUIRE(c.size() == 1);
        CHECK(c[0].attempts == attempt);
        record(store, {id, "http://ca/", Transient{"HTTP 503"}}, now, policy);
        auto d = store.show(id);
        CHECK(d->summary.state == State::Deferred);
        CHECK(d->summary.reason == "HTTP 503");
        CHECK(d->endpoint == "http://ca/");
        REQUIRE(d->nextTry);
        delays.push_back(*d->nextTry - now);
        // Not ready before next_try.
        CHECK(store.claim(10, *d->nextTry - 1, *d->nextTry + 100).empty());
        now = *d->nextTry;
    }
    CHECK(delays == std::vector<Millis>{1000, 3000, 9000, 27000});
    auto d = store.show(id);
    CHECK(lastEvent(*d, "deferred")->detail ==
          "attempt 4 to http://ca/: HTTP 503; next try in 27s");

    // Jump past the maximum age: the next transient failure fails the item.
    now = t0 + policy.maxAge;
    REQUIRE(store.claim(10, now, now + 100).size() == 1);
    record(store, {id, "http://ca/", Transient{"HTTP 503"}}, now, policy);
    d = store.show(id);
    CHECK(d->summary.state == State::Failed);
    CHECK(d->summary.reason == "gave up after 5 attempts: HTTP 503");
    CHECK_FALSE(d->nextTry);
    CHECK(store.claim(10, now + 10'000'000, now + 10'000'100).empty());
}

TEST_CASE("record: an endpoint's own age limit replaces retry.max_age for its failures") {
    // A directory endpoint (the air-gap chain) waits for a stick that is away for days: its
    // transient failures count against its await_max_age, not retry.max_age.
    TempDir dir;
    auto store = Store::open(dir.db());
    RetryPolicy policy;
    policy.initial = 1000;
    policy.maxAge = 60'000;
    auto id = ingest(store, {submit(p10("req"), "r.p10")}, t0)[0].itemId;
    const Transient away{"writing to the media folder /media/stick: No such file or directory",
                         3'600'000, "await_max_age_seconds"};
    Millis now = t0 + 120'000; // past retry.max_age
    REQUIRE(store.claim(10, now, now + 100).size() == 1);
    record(store, {id, "stick", away}, now, policy);
    CHECK(store.show(id)->summary.state == State::Deferred);
    now = t0 + 3'600'000; // past the endpoint's own limit
    REQUIRE(store.claim(10, now, now + 100).size() == 1);
    record(store, {id, "stick", away}, now, policy);
    auto d = store.show(id);
    CHECK(d->summary.state == State::Failed);
    CHECK(d->summary.reason == "gave up after 2 attempts (await_max_age_seconds of endpoint "
                               "stick passed): writing to the media folder /media/stick: No "
                               "such file or directory");
}

TEST_CASE("record: permanent failure, late outcomes, and a failed item resubmitted") {
    TempDir dir;
    auto store = Store::open(dir.db());
    auto sub = submit(p10("req"), "r.p10");
    auto id = ingest(store, {sub}, t0)[0].itemId;
    REQUIRE(store.claim(1, t0, t0 + 100).size() == 1);
    record(store, {id, "http://ca/", Permanent{"HTTP 404 without a PKI body"}}, t0 + 10);
    auto d = store.show(id);
    CHECK(d->summary.state == State::Failed);
    CHECK(d->summary.reason == "HTTP 404 without a PKI body");
    CHECK(lastEvent(*d, "failed"));

    // A late outcome for an item that is no longer relaying changes nothing but the history.
    record(store, answer(id, "late"), t0 + 20);
    d = store.show(id);
    CHECK(d->summary.state == State::Failed);
    CHECK_FALSE(d->responseKind);
    CHECK_THAT(d->events.back().detail, Catch::StartsWith("ignored, the item is failed"));
    CHECK(store.deliveriesToWrite(10).empty());

    // The same file submitted again requeues it, with attempts kept.
    sub.arrival.origin = "r-again.p10";
    auto r = ingest(store, {sub}, t0 + 30);
    CHECK(r[0].duplicate);
    CHECK(r[0].state == State::Queued);
    d = store.show(id);
    CHECK(d->summary.state == State::Queued);
    CHECK(d->summary.attempts == 1);
    CHECK(whats(*d).back() == "resubmitted");
    auto c = store.claim(1, t0 + 30, t0 + 130);
    REQUIRE(c.size() == 1);
    CHECK(c[0].attempts == 2);
    CHECK(store.show(id)->events.back().detail == "attempt 2");
}

TEST_CASE("record: an answer with nothing to deliver completes the arrivals") {
    TempDir dir;
    auto store = Store::open(dir.db());
    auto sub = submit(cmpMessage("ann", "t", "n", 16), "ann.pki");
    auto id = ingest(store, {sub}, t0)[0].itemId;
    REQUIRE(store.claim(1, t0, t0 + 100).size() == 1);
    record(store, {id, "http://ca/", Answer{{}, std::nullopt, "HTTP 201"}}, t0 + 1);
    auto d = store.show(id);
    CHECK(d->summary.state == State::Answered);
    CHECK(d->deliveryStates == std::vector<std::string>{"delivered"});
    CHECK(store.deliveriesToWrite(10).empty());
    // A duplicate arrival has nothing to be given either.
    sub.arrival.origin = "ann-again.pki";
    auto r = ingest(store, {sub}, t0 + 2);
    CHECK(r[0].duplicate);
    CHECK(store.show(id)->deliveryStates == std::vector<std::string>{"delivered", "delivered"});
    CHECK(store.deliveriesToWrite(10).empty());
}

TEST_CASE("deliveries: assign, write, mark delivered; a crash keeps the output name") {
    TempDir dir;
    auto store = Store::open(dir.db());
    auto sub = submit(cmpMessage("ir", "tid", "nonce"), "req.pki");
    auto first = ingest(store, {sub}, t0)[0];
    CHECK(store.deliveriesToWrite(10).empty()); // not answered yet
    REQUIRE(store.claim(1, t0, t0 + 100).size() == 1);
    record(store, answer(first.itemId, "ip-response"), t0 + 50);

    auto todo = store.deliveriesToWrite(10);
    REQUIRE(todo.size() == 1);
    CHECK(todo[0].deliveryId == first.deliveryId);
    CHECK(todo[0].itemId == first.itemId);
    CHECK(todo[0].output.empty());
    CHECK(todo[0].arrival.origin == "req.pki");
    CHECK(todo[0].arrival.replyTo == "/media/out");
    CHECK(todo[0].responseKind == Kind::Cmp);
    CHECK(todo[0].response == bytes("ip-response"));

    std::vector<std::pair<std::int64_t, std::string>> names = {{first.deliveryId, "req.pki.pki"}};
    store.assignOutputs(names, t0 + 60);
    CHECK(store.isOutput("/media/out", "req.pki.pki", sha256Hex(todo[0].response)));
    CHECK(!store.isOutput("/media/out", "req.pki.pki", sha256Hex(bytes("other"))));
    CHECK(!store.isOutput("/elsewhere", "req.pki.pki", sha256Hex(todo[0].response)));
    CHECK(store.outputReserved("/media/out", "req.pki.pki"));
    CHECK(!store.outputReserved("/elsewhere", "req.pki.pki"));

    // Crash here: a restarted writer is given the same name to write again.
    {
        auto reopened = Store::open(dir.db());
        auto again = reopened.deliveriesToWrite(10);
        REQUIRE(again.size() == 1);
        CHECK(again[0].output == "req.pki.pki");
        CHECK(reopened.show(first.itemId)->deliveryStates == std::vector<std::string>{"writing"});
        // Assigning the same name again is harmless; another name is a caller bug.
        reopened.assignOutputs(names, t0 + 70);
        std::vector<std::pair<std::int64_t, std::string>> other = {{first.deliveryId, "other.pki"}};
        CHECK_THROWS_AS(reopened.assignOutputs(other, t0 + 70), StoreError);
    }

    std::vector<std::int64_t> done = {first.deliveryId};
    store.markDelivered(done, t0 + 80);
    CHECK(store.deliveriesToWrite(10).empty());
    auto d = store.show(first.itemId);
    CHECK(d->deliveryStates == std::vector<std::string>{"delivered"});
    CHECK(lastEvent(*d, "delivered")->detail == "wrote /media/out/req.pki.pki");
    store.markDelivered(done, t0 + 90); // idempotent: no second event
    CHECK(whats(*store.show(first.itemId)).back() == "delivered");
    CHECK(store.show(first.itemId)->events.size() == d->events.size());

    // A duplicate of the answered request is not relayed: it gets the recorded response.
    sub.arrival = {"inbox", "req-copy.pki", "/media/other"};
    auto dup = ingest(store, {sub}, t0 + 100)[0];
    CHECK(dup.duplicate);
    CHECK(dup.state == State::Answered);
    CHECK(store.claim(10, t0 + 100, t0 + 200).empty());
    todo = store.deliveriesToWrite(10);
    REQUIRE(todo.size() == 1);
    CHECK(todo[0].deliveryId == dup.deliveryId);
    CHECK(todo[0].arrival.replyTo == "/media/other");
    CHECK(todo[0].response == bytes("ip-response"));
    CHECK(store.isOutput("/media/out", "req.pki.pki", sha256Hex(bytes("ip-response"))));
    CHECK(!store.outputReserved("/media/out", "req.pki.pki")); // delivered: no longer held
}

// An arrival the store has seen (stored, acknowledged or not), as a source asks it.
bool known(Store &store, std::string_view source, std::string_view origin,
           std::string_view sha256) {
    return store.arrivalSeen(source, origin, sha256).state != Ledger::Seen::State::New;
}

TEST_CASE("arrivalSeen recognises a file already seen under the same name and bytes") {
    TempDir dir;
    auto store = Store::open(dir.db());
    auto s = submit(p10("abc"), "x.p10", "media");
    ingest(store, {s}, t0);
    CHECK(known(store, "media", "x.p10", s.arrivalSha256));
    CHECK_FALSE(known(store, "media", "x.p10", sha256Hex(asBytes("other"))));
    CHECK_FALSE(known(store, "media", "y.p10", s.arrivalSha256));
    CHECK_FALSE(known(store, "other", "x.p10", s.arrivalSha256));
    auto q = rejected("junk", "j.der", "bad");
    ingest(store, {q}, t0);
    CHECK(known(store, "inbox", "j.der", q.arrivalSha256));
}

TEST_CASE("operator views: counts, list newest first, show with the full timeline") {
    TempDir dir;
    auto store = Store::open(dir.db());
    auto r = ingest(store,
                    {submit(p10("a"), "a.p10"), submit(p10("b"), "b.p10"),
                     rejected("zz", "z.der", "not a PKI message")},
                    t0);
    auto c = store.claim(1, t0 + 1, t0 + 100);
    REQUIRE(c.size() == 1);
    record(store, answer(c[0].itemId, "certs", Kind::CmcSimpleResponse), t0 + 2);
    auto todo = store.deliveriesToWrite(10);
    REQUIRE(todo.size() == 1);
    std::vector<std::pair<std::int64_t, std::string>> names = {{todo[0].deliveryId, "a.p7c"}};
    store.assignOutputs(names, t0 + 3);
    std::vector<std::int64_t> ids = {todo[0].deliveryId};
    store.markDelivered(ids, t0 + 4);

    auto counts = store.countByState();
    REQUIRE(counts.size() == 10); // every state, in enum order, zeros included
    CHECK(counts[0].first == State::Queued);
    CHECK(stateCount(store, State::Queued) == 1);
    CHECK(stateCount(store, State::Answered) == 1);
    CHECK(stateCount(store, State::Quarantined) == 1);
    CHECK(stateCount(store, State::Failed) == 0);

    auto all = store.list(std::nullopt, 10);
    REQUIRE(all.size() == 3);
    CHECK(all[0].id == r[2].itemId); // newest first
    CHECK(all[2].id == r[0].itemId);
    CHECK(store.list(std::nullopt, 2).size() == 2);
    auto answered = store.list(State::Answered, 10);
    REQUIRE(answered.size() == 1);
    CHECK(answered[0].id == r[0].itemId);
    CHECK(answered[0].kind == Kind::CmcSimpleRequest);
    CHECK(answered[0].attempts == 1);
    CHECK(answered[0].createdAt == t0);
    CHECK(answered[0].updatedAt == t0 + 2);

    auto d = store.show(r[0].itemId);
    REQUIRE(d);
    CHECK(whats(*d) == std::vector<std::string>{"received", "relaying", "answered", "delivered"});
    for (std::size_t i = 1; i < d->events.size(); ++i)
        CHECK(d->events[i - 1].at <= d->events[i].at);
    CHECK(d->events[0].detail == "cmc-simple-request from inbox/a.p10, 1 bytes");
    CHECK_THAT(d->events[2].detail, Catch::StartsWith("cmc-simple-response from http://ca/pkix/"));
    CHECK(d->responseKind == Kind::CmcSimpleResponse);
    CHECK(d->endpoint == "http://ca/pkix/");
    CHECK(d->arrivals.size() == 1);
    CHECK(d->deliveryStates == std::vector<std::string>{"delivered"});
    CHECK_FALSE(store.show(9999));

    CHECK(stateName(State::Awaiting) == "awaiting");
    CHECK(stateFromName("held") == State::Held);
    CHECK_FALSE(stateFromName("nope"));
}

TEST_CASE("a second connection sees the first one's claims") {
    TempDir dir;
    auto a = Store::open(dir.db());
    auto b = Store::open(dir.db());
    ingest(a, {submit(p10("1"), "1.p10"), submit(p10("2"), "2.p10"), submit(p10("3"), "3.p10")},
           t0);
    auto fromA = a.claim(2, t0, t0 + 100);
    auto fromB = b.claim(2, t0, t0 + 100);
    REQUIRE(fromA.size() == 2);
    REQUIRE(fromB.size() == 1);
    CHECK(fromB[0].itemId != fromA[0].itemId);
    CHECK(fromB[0].itemId != fromA[1].itemId);
    CHECK(a.claim(2, t0, t0 + 100).empty());
    // B records A's claim: the lease is on the item, not on the connection.
    record(b, answer(fromA[0].itemId, "r"), t0 + 1);
    CHECK(a.show(fromA[0].itemId)->summary.state == State::Answered);
    CHECK(b.requeueExpiredLeases(t0 + 100) == 2);
    CHECK(a.claim(10, t0 + 100, t0 + 200).size() == 2);
}

TEST_CASE("two connections on one file never claim the same item") {
    TempDir dir;
    constexpr int items = 300;
    {
        auto store = Store::open(dir.db());
        std::vector<Submission> batch;
        for (int i = 0; i < items; ++i)
            batch.push_back(submit(p10("req-" + std::to_string(i)), std::to_string(i) + ".p10"));
        ingest(store, std::move(batch), t0);
    }
    // Two connections, as two processes would have, claiming in small batches at once. Both are
    // open before either starts, and a latch starts them together so that they interleave.
    std::vector<std::int64_t> claimedA, claimedB;
    std::atomic<bool> failed{false};
    std::latch start(2);
    auto worker = [&](std::vector<std::int64_t> &out) {
        try {
            auto store = Store::open(dir.db());
            start.arrive_and_wait();
            for (;;) {
                auto c = store.claim(3, t0, t0 + 60'000);
                if (c.empty())
                    break;
                for (const auto &x : c)
                    out.push_back(x.itemId);
                // Stands for the relay's network time, during which the write lock is free,
                // so that the other connection gets its turns (not a wait for a condition).
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
                std::vector<Outcome> outcomes;
                for (const auto &x : c)
                    outcomes.push_back(answer(x.itemId, "ok"));
                store.record(outcomes, t0 + 1, RetryPolicy{});
            }
        } catch (const std::exception &e) {
            WARN(e.what());
            failed = true;
        }
    };
    std::thread a(worker, std::ref(claimedA));
    std::thread b(worker, std::ref(claimedB));
    a.join();
    b.join();
    REQUIRE_FALSE(failed);
    std::set<std::int64_t> all(claimedA.begin(), claimedA.end());
    for (auto id : claimedB)
        CHECK(all.insert(id).second); // never claimed by both
    CHECK(all.size() == static_cast<std::size_t>(items));
    CHECK(claimedA.size() + claimedB.size() == static_cast<std::size_t>(items));

    auto store = Store::open(dir.db());
    CHECK(stateCount(store, State::Answered) == items);
    auto raw = rawOpen(dir.db());
    sql::Statement check(raw.get(), "PRAGMA integrity_check");
    REQUIRE(check.step());
    CHECK(check.text(0) == "ok");
}

TEST_CASE("a transaction rolls back unless committed") {
    TempDir dir;
    auto db = sql::Database::open(dir.db());
    db.exec("CREATE TABLE t (x INTEGER NOT NULL)");
    {
        sql::Transaction tx(db);
        db.exec("INSERT INTO t VALUES (1)");
    }
    CHECK(db.queryInt("SELECT count(*) FROM t") == 0);
    try {
        sql::Transaction tx(db);
        db.exec("INSERT INTO t VALUES (1)");
        db.exec("INSERT INTO t VALUES (NULL)"); // fails: the whole transaction goes
        tx.commit();
    } catch (const StoreError &e) {
        CHECK_THAT(e.what(), Catch::Contains("SQLITE_CONSTRAINT") ||
                                 Catch::Contains("NOT NULL constraint failed"));
    }
    CHECK(db.queryInt("SELECT count(*) FROM t") == 0);
    {
        sql::Transaction tx(db);
        auto q = db.query("INSERT INTO t VALUES (?1)");
        q->bind(1, std::int64_t{7});
        q->run();
        tx.commit();
    }
    CHECK(db.queryInt("SELECT sum(x) FROM t") == 7);
}

TEST_CASE("blobs round-trip byte for byte, empty and with zero bytes") {
    TempDir dir;
    auto db = sql::Database::open(dir.db());
    db.exec("CREATE TABLE b (id INTEGER PRIMARY KEY, v BLOB)");
    const Bytes withZeros = {0x30, 0x00, 0x00, 0xff, 0x00};
    {
        auto q = db.query("INSERT INTO b (id, v) VALUES (?1, ?2)");
        q->bind(1, std::int64_t{1}).bindBlob(2, withZeros);
        q->run();
    }
    {
        auto q = db.query("INSERT INTO b (id, v) VALUES (?1, ?2)");
        q->bind(1, std::int64_t{2}).bindBlob(2, Bytes{});
        q->run();
    }
    auto q = db.query("SELECT v, v IS NULL, typeof(v) FROM b ORDER BY id");
    REQUIRE(q->step());
    CHECK(q->blob(0) == withZeros);
    REQUIRE(q->step());
    CHECK(q->blob(0).empty());
    CHECK(q->int64(1) == 0); // an empty blob, not NULL
    CHECK(q->text(2) == "blob");
}

TEST_CASE("connections opening a new database at once migrate it once") {
    TempDir dir;
    std::atomic<int> failures{0};
    std::latch start(4);
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i)
        threads.emplace_back([&] {
            start.arrive_and_wait();
            try {
                auto store = Store::open(dir.db());
            } catch (const std::exception &e) {
                WARN(e.what());
                ++failures;
            }
        });
    for (auto &t : threads)
        t.join();
    CHECK(failures == 0);
    auto raw = rawOpen(dir.db());
    CHECK(rawInt(raw.get(), "PRAGMA user_version") ==
          static_cast<std::int64_t>(migrations().size()));
}

// --- Issue 13: corruption, stores that must exist, damaged requests, unusable answers, and the
// operator's commands.

namespace {

// Overwrites one page of a closed database file with a pattern that is no b-tree page.
void smashPage(const std::string &path, std::size_t page, std::size_t pageSize = 4096) {
    FILE *f = std::fopen(path.c_str(), "r+b");
    REQUIRE(f);
    std::vector<char> junk(pageSize, '\x5a');
    REQUIRE(std::fseek(f, static_cast<long>((page - 1) * pageSize), SEEK_SET) == 0);
    REQUIRE(std::fwrite(junk.data(), 1, junk.size(), f) == junk.size());
    std::fclose(f);
}

// A store with enough rows for several pages.
void fill(const std::string &path, int n) {
    auto store = Store::open(path);
    std::vector<Submission> batch;
    for (int i = 0; i < n; ++i)
        batch.push_back(submit(p10(std::string(200, 'a') + std::to_string(i)),
                               "r" + std::to_string(i) + ".p10"));
    store.ingest(batch, t0);
}

void rawExec(sqlite3 *db, const std::string &sql) {
    char *err = nullptr;
    const int rc = ::sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
    INFO((err ? err : ""));
    ::sqlite3_free(err);
    REQUIRE(rc == SQLITE_OK);
}

} // namespace

TEST_CASE("a damaged page is StoreCorrupt at open and in every view once the whole check is "
          "due, not a busy store") {
    TempDir dir;
    fill(dir.db(), 200);
    {
        auto raw = rawOpen(dir.db());
        REQUIRE(rawInt(raw.get(), "PRAGMA page_count") > 10);
    }
    smashPage(dir.db(), 5);
    // The whole-store check is not due (the last one passed just now, at fill's open): damage
    // that no query meets waits for it (schema 8, at most Store::kFullCheckSeconds).
    CHECK_NOTHROW(Store::openReadOnly(dir.db()));
    CHECK_NOTHROW(Store::open(dir.db()));
    {
        auto raw = rawOpen(dir.db());
        rawExec(raw.get(), "UPDATE store_check SET checked_at = 0"); // the interval is over
    }
    CHECK_THROWS_AS(Store::open(dir.db()), StoreCorrupt);
    CHECK_THROWS_AS(Store::open(dir.db(), OpenMode::MustExist), StoreCorrupt);
    CHECK_THROWS_AS(Store::openReadOnly(dir.db()), StoreCorrupt);
    try {
        Store::open(dir.db());
    } catch (const StoreCorrupt &e) {
        CHECK_THAT(e.what(), Catch::Contains("damaged"));
    }
}

TEST_CASE("a file that is not a database is StoreCorrupt (SQLITE_NOTADB)") {
    TempDir dir;
    fill(dir.db(), 10);
    smashPage(dir.db(), 1); // the header
    CHECK_THROWS_AS(Store::open(dir.db()), StoreCorrupt);
    CHECK_THROWS_AS(Store::openReadOnly(dir.db()), StoreCorrupt);
}

TEST_CASE("corruption found by a later statement is StoreCorrupt too") {
    // An open connection that meets a damaged page mid-use (the page was fine at open): the
    // statement's SQLITE_CORRUPT becomes StoreCorrupt, not the StoreError a busy store gives.
    TempDir dir;
    fill(dir.db(), 200);
    auto store = Store::open(dir.db());
    std::int64_t pages = 0;
    {
        auto raw = rawOpen(dir.db());
        rawExec(raw.get(), "PRAGMA wal_checkpoint(TRUNCATE)");
        pages = rawInt(raw.get(), "PRAGMA page_count");
    }
    for (std::int64_t page = 2; page <= pages; ++page) // every table and index
        smashPage(dir.db(), static_cast<std::size_t>(page));
    {
        // Another connection's commit makes the store's connection drop its page cache, so its
        // next read goes to the file.
        auto raw = rawOpen(dir.db());
        const auto version = rawInt(raw.get(), "PRAGMA user_version");
        rawExec(raw.get(), "PRAGMA user_version = " + std::to_string(version)); // page 1 only
    }
    bool corrupt = false;
    try {
        for (int i = 0; i < 3 && !corrupt; ++i) {
            store.list(std::nullopt, 1000);
            for (std::int64_t id = 1; id <= 200; ++id)
                store.show(id);
        }
    } catch (const StoreCorrupt &) {
        corrupt = true;
    }
    CHECK(corrupt);
}

TEST_CASE("a store that must exist refuses a missing, emptied or schema-less file") {
    TempDir dir;
    SECTION("missing: refused, and no file is left behind") {
        CHECK_THROWS_AS(Store::open(dir.db(), OpenMode::MustExist), StoreMissing);
        CHECK_THROWS_AS(Store::openReadOnly(dir.db()), StoreMissing);
        CHECK_FALSE(fs::exists(dir.db()));
    }
    SECTION("emptied to 0 bytes: refused; CreateIfMissing takes it as new") {
        fill(dir.db(), 3);
        fs::resize_file(dir.db(), 0);
        fs::remove(dir.db() + "-wal");
        fs::remove(dir.db() + "-shm");
        CHECK_THROWS_WITH(Store::open(dir.db(), OpenMode::MustExist),
                          Catch::Contains("empty (0 bytes)"));
        CHECK_THROWS_AS(Store::openReadOnly(dir.db()), StoreMissing);
        auto fresh = Store::open(dir.db(), OpenMode::CreateIfMissing);
        CHECK(stateCount(fresh, State::Queued) == 0);
    }
    SECTION("a database without pkirelay's schema: refused") {
        {
            auto raw = sql::Database::open(dir.db());
            raw.exec("CREATE TABLE other (x)");
        }
        CHECK_THROWS_WITH(Store::open(dir.db(), OpenMode::MustExist),
                          Catch::Contains("no pkirelay store"));
    }
    SECTION("an existing store opens") {
        fill(dir.db(), 3);
        auto store = Store::open(dir.db(), OpenMode::MustExist);
        CHECK(stateCount(store, State::Queued) == 3);
    }
}

TEST_CASE("openReadOnly reads beside a writer and never writes") {
    TempDir dir;
    auto writer = Store::open(dir.db());
    ingest(writer, {submit(p10("x"), "x.p10")}, t0);
    auto reader = Store::openReadOnly(dir.db());
    CHECK(stateCount(reader, State::Queued) == 1);
    ingest(writer, {submit(p10("y"), "y.p10")}, t0 + 1);
    CHECK(stateCount(reader, State::Queued) == 2); // sees the writer's later commit
    std::vector<std::int64_t> ids = {1};
    CHECK_THROWS_WITH(reader.hold(ids, t0 + 2), Catch::Contains("read-only"));
    CHECK_THROWS_AS(reader.ingest(std::vector<Submission>{submit(p10("z"), "z.p10")}, t0),
                    StoreError);
    CHECK(stateCount(writer, State::Queued) == 2);
}

TEST_CASE("claim never sends a request whose stored bytes no longer match their hash") {
    TempDir dir;
    auto store = Store::open(dir.db());
    auto r = ingest(store, {submit(p10("request-one"), "a.p10"), submit(p10("two"), "b.p10")}, t0);
    {
        // One bit flipped in place in the stored DER, as a failing disk would.
        auto raw = rawOpen(dir.db());
        sqlite3_blob *blob = nullptr;
        REQUIRE(::sqlite3_blob_open(raw.get(), "main", "item", "der", r[0].itemId, 1, &blob) ==
                SQLITE_OK);
        Owned<sqlite3_blob, ::sqlite3_blob_close> owned(blob);
        char byte = 0;
        REQUIRE(::sqlite3_blob_read(blob, &byte, 1, 3) == SQLITE_OK);
        byte ^= 0x04;
        REQUIRE(::sqlite3_blob_write(blob, &byte, 1, 3) == SQLITE_OK);
    }
    std::vector<Damaged> damaged;
    auto claims = store.claim(10, t0 + 1, t0 + 100, 64 << 20, &damaged);
    REQUIRE(claims.size() == 1);
    CHECK(claims[0].itemId == r[1].itemId);
    REQUIRE(damaged.size() == 1);
    CHECK(damaged[0].itemId == r[0].itemId);
    CHECK(damaged[0].recorded == sha256Hex(asBytes("request-one")));
    CHECK(damaged[0].actual != damaged[0].recorded);

    auto d = store.show(r[0].itemId);
    REQUIRE(d);
    CHECK(d->summary.state == State::Review);
    CHECK(d->summary.reason == "stored bytes damaged");
    CHECK(d->summary.attempts == 0); // never sent
    const Event *e = lastEvent(*d, "damaged");
    REQUIRE(e);
    CHECK_THAT(e->detail, Catch::StartsWith("NOT SENT"));
    CHECK(store.claim(10, t0 + 200, t0 + 300).empty());
    CHECK(stateCount(store, State::Review) == 1);
}

TEST_CASE("record: an answer that cannot be accepted is kept byte for byte for a person") {
    TempDir dir;
    auto store = Store::open(dir.db());
    auto r = ingest(store, {submit(cmpMessage("ir-der", "t1", "n1"), "ir.pki")}, t0);
    auto c = store.claim(1, t0 + 1, t0 + 100);
    REQUIRE(c.size() == 1);
    const std::string body("\x30\x03\x02\x01\x00\xff", 6); // an answer with a trailing byte
    const auto states =
        store.record(std::vector<Outcome>{{c[0].itemId, "ca",
                                           Unusable{bytes(body), "application/pkixcmp",
                                                    "trailing bytes after the message (byte 5)"}}},
                     t0 + 2, {});
    CHECK(states == std::vector<State>{State::Review});

    auto d = store.show(r[0].itemId);
    REQUIRE(d);
    CHECK(d->summary.state == State::Review);
    CHECK_THAT(d->summary.reason, Catch::Contains("trailing bytes"));
    CHECK(d->responseSize == body.size());
    CHECK_FALSE(d->responseKind);
    CHECK(d->responseDetail == "trailing bytes after the message (byte 5)");
    CHECK(lastEvent(*d, "review"));
    auto kept = store.storedBytes(r[0].itemId);
    REQUIRE(kept);
    REQUIRE(kept->response);
    CHECK(*kept->response == bytes(body));
    CHECK(kept->request == bytes("ir-der"));
    CHECK(kept->kind == Kind::Cmp);

    // Never resent, never delivered; a duplicate arrival does not resend it either.
    CHECK(store.claim(10, t0 + 1'000'000, t0 + 2'000'000).empty());
    CHECK(store.deliveriesToWrite(10).empty());
    auto again = ingest(store, {submit(cmpMessage("ir-der", "t1", "n1"), "ir-again.pki")}, t0 + 3);
    CHECK(again[0].state == State::Review);
    CHECK(store.claim(10, t0 + 1'000'000, t0 + 2'000'000).empty());
    CHECK(stateCount(store, State::Review) == 1);
    CHECK(store.status(t0 + 4).counts[static_cast<std::size_t>(State::Review)].second == 1);
    ListFilter review;
    review.state = State::Review;
    CHECK(store.list(review).items.size() == 1);
}

TEST_CASE("deliver --force: a review item's stored answer becomes the answer delivered") {
    TempDir dir;
    auto store = Store::open(dir.db());
    auto r = ingest(store, {submit(cmpMessage("ir-der", "t1", "n1"), "ir.pki")}, t0);
    auto c = store.claim(1, t0 + 1, t0 + 100);
    REQUIRE(c.size() == 1);
    record(store, {c[0].itemId, "ca", Unusable{bytes("big-ip"), "", "too large"}}, t0 + 2);

    auto notReview = ingest(store, {submit(p10("p"), "p.p10")}, t0 + 3);
    auto refused = store.forceDeliver(notReview[0].itemId, Kind::Cmp, "", t0 + 4);
    CHECK_FALSE(refused.changed);
    CHECK_THAT(refused.why, Catch::Contains("queued"));
    CHECK_FALSE(store.forceDeliver(4242, Kind::Cmp, "", t0 + 4).changed);

    auto forced = store.forceDeliver(r[0].itemId, Kind::Cmp, "6 bytes", t0 + 5);
    CHECK(forced.changed);
    CHECK(forced.state == State::Answered);
    auto todo = store.deliveriesToWrite(10);
    REQUIRE(todo.size() == 1);
    CHECK(todo[0].itemId == r[0].itemId);
    CHECK(todo[0].response == bytes("big-ip"));
    CHECK(todo[0].responseKind == Kind::Cmp);
    auto d = store.show(r[0].itemId);
    REQUIRE(d);
    CHECK(lastEvent(*d, "forced"));
    CHECK(d->summary.reason.empty());
}

TEST_CASE("a schema 1 store with rows migrates to schema 2 and keeps them") {
    TempDir dir;
    {
        // Schema 1 exactly as an older pkirelay left it, with rows in every table.
        sqlite3 *db = nullptr;
        REQUIRE(::sqlite3_open_v2(dir.db().c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                                  nullptr) == SQLITE_OK);
        RawDb owned(db);
        rawExec(db, "PRAGMA journal_mode = WAL");
        rawExec(db, "BEGIN");
        rawExec(db, std::string(migrations().at(0)));
        rawExec(db, "PRAGMA user_version = 1");
        rawExec(db, "INSERT INTO item (id, sha256, kind, state, source, origin, size, der, "
                    "created_at, updated_at) VALUES (7, 'h7', 'cmp', 'answered', 'inbox', "
                    "'a.pki', 3, x'300100', 1, 2), (8, 'h8', NULL, 'quarantined', 'inbox', "
                    "'z.der', 2, x'0102', 3, 4)");
        rawExec(db, "UPDATE item SET response = x'3000', response_kind = 'cmp' WHERE id = 7");
        rawExec(db, "INSERT INTO delivery (id, item_id, source, origin, reply_to, "
                    "arrival_sha256, state, output, created_at, updated_at) VALUES "
                    "(3, 7, 'inbox', 'a.pki', '/out', 'h7', 'delivered', 'a.pki.response', 1, 2)");
        rawExec(db, "INSERT INTO event (item_id, at, what, detail) VALUES (7, 1, 'received', "
                    "'x'), (8, 3, 'quarantined', 'y')");
        rawExec(db, "COMMIT");
    }
    auto store = Store::open(dir.db());
    {
        auto raw = rawOpen(dir.db());
        CHECK(rawInt(raw.get(), "PRAGMA user_version") ==
              static_cast<std::int64_t>(migrations().size()));
        CHECK(rawInt(raw.get(),
                     "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND "
                     "tbl_name = 'item' AND name LIKE 'item_%' AND name <> 'item_awaiting'") == 7);
        CHECK(rawInt(raw.get(), "SELECT count(*) FROM sqlite_master WHERE name = 'item_new'") == 0);
    }
    auto d = store.show(7);
    REQUIRE(d);
    CHECK(d->summary.state == State::Answered);
    CHECK(d->responseKind == Kind::Cmp);
    CHECK(d->responseSize == 2u);
    CHECK(d->arrivals.size() == 1);
    CHECK(whats(*d) == std::vector<std::string>{"received"});
    auto q = store.show(8);
    REQUIRE(q);
    CHECK(q->summary.state == State::Quarantined);
    CHECK(store.storedBytes(8)->request == Bytes{1, 2});
    // The new state is allowed; references from delivery and event still hold and are enforced.
    auto db = sql::Database::open(dir.db());
    db.exec("UPDATE item SET state = 'review' WHERE id = 8");
    CHECK_THROWS_AS(db.exec("UPDATE item SET state = 'nonsense' WHERE id = 8"), StoreError);
    CHECK_THROWS_AS(db.exec("DELETE FROM item WHERE id = 7"), StoreError);
    CHECK(db.queryInt("PRAGMA foreign_keys") == 1);
    // New rows get new ids after the copied ones.
    auto n = ingest(store, {submit(p10("new"), "n.p10")}, t0);
    CHECK(n[0].itemId == 9);
}

TEST_CASE("operator: status counts only live leases as relaying, oldest waiting, last errors") {
    TempDir dir;
    auto store = Store::open(dir.db());
    auto r = ingest(
        store,
        {submit(p10("a"), "a.p10"), submit(p10("b"), "b.p10", "other"), submit(p10("c"), "c.p10")},
        t0);
    auto c = store.claim(2, t0 + 10, t0 + 100); // a and b relaying until t0 + 100
    REQUIRE(c.size() == 2);
    record(store, {c[1].itemId, "ca", Transient{"connection refused"}}, t0 + 20);

    auto st = store.status(t0 + 50);
    CHECK(st.counts[static_cast<std::size_t>(State::Relaying)].second == 1);
    CHECK(st.orphaned == 0);
    REQUIRE(st.oldestWaitingId);
    CHECK(*st.oldestWaitingId == r[0].itemId);
    CHECK(st.oldestWaitingSince == t0);
    REQUIRE(st.lastErrors.size() == 1);
    CHECK(st.lastErrors[0].endpoint == "ca");
    CHECK(st.lastErrors[0].itemId == r[1].itemId);
    CHECK(st.lastErrors[0].reason == "connection refused");

    // Past the lease, the relaying item is no longer in flight: its run died.
    st = store.status(t0 + 500);
    CHECK(st.counts[static_cast<std::size_t>(State::Relaying)].second == 0);
    CHECK(st.orphaned == 1);
}

TEST_CASE("operator: list filters by state, source, kind and age, and says when it is cut") {
    TempDir dir;
    auto store = Store::open(dir.db());
    ingest(store, {submit(p10("old"), "old.p10")}, t0);
    ingest(store, {submit(cmpMessage("cmp", "t", "n"), "x.pki", "other")}, t0 + 60'000);
    ingest(store, {submit(p10("new"), "new.p10")}, t0 + 120'000);
    ListFilter f;
    CHECK(store.list(f).items.size() == 3);
    CHECK_FALSE(store.list(f).truncated);
    f.limit = 2;
    auto page = store.list(f);
    CHECK(page.items.size() == 2);
    CHECK(page.truncated);
    f.limit = 3;
    CHECK_FALSE(store.list(f).truncated);

    ListFilter bySource;
    bySource.source = "other";
    REQUIRE(store.list(bySource).items.size() == 1);
    CHECK(store.list(bySource).items[0].origin == "x.pki");
    ListFilter byKind;
    byKind.kind = Kind::CmcSimpleRequest;
    CHECK(store.list(byKind).items.size() == 2);
    ListFilter older;
    older.createdBefore = t0 + 60'000;
    REQUIRE(store.list(older).items.size() == 1);
    CHECK(store.list(older).items[0].origin == "old.p10");
    ListFilter newer;
    newer.createdAfter = t0 + 60'000;
    REQUIRE(store.list(newer).items.size() == 1);
    CHECK(store.list(newer).items[0].origin == "new.p10");
    ListFilter none;
    none.state = State::Failed;
    CHECK(store.list(none).items.empty());
}

TEST_CASE("operator: retry, hold and release move items with an event each") {
    TempDir dir;
    auto store = Store::open(dir.db());
    auto r = ingest(store, {submit(p10("a"), "a.p10"), submit(p10("b"), "b.p10")}, t0);
    auto c = store.claim(1, t0 + 1, t0 + 100);
    REQUIRE(c.size() == 1);
    record(store, {c[0].itemId, "ca", Permanent{"HTTP 400"}}, t0 + 2);

    std::vector<std::int64_t> both = {r[0].itemId, r[1].itemId, 4242};
    auto held = store.hold(both, t0 + 3);
    REQUIRE(held.size() == 3);
    CHECK_FALSE(held[0].changed); // failed: not holdable
    CHECK(held[1].changed);
    CHECK(held[1].state == State::Held);
    CHECK_FALSE(held[2].changed);
    CHECK(held[2].why == "no such item");
    CHECK(store.claim(10, t0 + 4, t0 + 100).empty()); // held: not claimed

    std::vector<std::int64_t> second = {r[1].itemId};
    auto released = store.release(second, t0 + 5);
    CHECK(released[0].changed);
    CHECK(released[0].state == State::Queued);
    CHECK_FALSE(store.release(second, t0 + 5)[0].changed); // queued, not held

    auto retried = store.retryFailed(t0 + 6);
    REQUIRE(retried.size() == 1);
    CHECK(retried[0].itemId == r[0].itemId);
    CHECK(retried[0].changed);
    CHECK(store.claim(10, t0 + 7, t0 + 100).size() == 2);
    auto d = store.show(r[0].itemId);
    REQUIRE(d);
    CHECK(lastEvent(*d, "retried"));
    CHECK(d->summary.reason.empty());
    auto e = store.show(r[1].itemId);
    REQUIRE(e);
    CHECK(lastEvent(*e, "held"));
    CHECK(lastEvent(*e, "released"));
    std::vector<std::int64_t> relaying = {r[1].itemId};
    CHECK_FALSE(store.retry(relaying, t0 + 8)[0].changed); // in flight: never touched
}

TEST_CASE("operator: purge deletes only final items, with their deliveries and events") {
    TempDir dir;
    auto store = Store::open(dir.db());
    auto r = ingest(store,
                    {submit(p10("done"), "done.p10"), submit(p10("open"), "open.p10"),
                     submit(p10("waiting"), "waiting.p10"), rejected("zz", "z.der", "junk")},
                    t0);
    auto c = store.claim(2, t0 + 1, t0 + 100);
    REQUIRE(c.size() == 2);
    record(store, answer(r[0].itemId, "ans-1"), t0 + 2);
    record(store, answer(r[1].itemId, "ans-2"), t0 + 2);
    // Only the first answer is written out; the second still has a delivery to write.
    auto todo = store.deliveriesToWrite(10);
    REQUIRE(todo.size() == 2);
    std::vector<std::pair<std::int64_t, std::string>> names = {{todo[0].deliveryId, "done.pki"}};
    store.assignOutputs(names, t0 + 3);
    std::vector<std::int64_t> written = {todo[0].deliveryId};
    store.markDelivered(written, t0 + 3);

    CHECK(store.purge(t0, t0 + 10) == 0);     // nothing older than t0
    CHECK(store.purge(t0 + 5, t0 + 10) == 2); // the delivered answer and the quarantined input
    CHECK_FALSE(store.show(r[0].itemId));
    CHECK_FALSE(store.show(r[3].itemId));
    CHECK(store.show(r[1].itemId)); // answered, delivery still pending
    CHECK(store.show(r[2].itemId)); // queued
    auto db = sql::Database::open(dir.db());
    CHECK(db.queryInt("SELECT count(*) FROM event WHERE item_id IN (1, 4)") == 0);
    CHECK(db.queryInt("SELECT count(*) FROM delivery WHERE item_id IN (1, 4)") == 0);
    CHECK(db.queryInt("SELECT count(*) FROM delivery") == 2);
}

TEST_CASE("a response name held by an unfinished delivery is not given to another (defect 1)") {
    // Issue 13, defect 1: a delivery whose write failed kept its name in state writing, and a
    // later request of the same name in the same folder was given that name too.
    TempDir dir;
    auto store = Store::open(dir.db());
    auto a = ingest(store, {submit(cmpMessage("ir-a", "tid-a", "n-a"), "req.pki")}, t0)[0];
    auto b = ingest(store, {submit(cmpMessage("ir-b", "tid-b", "n-b"), "req.pki")}, t0)[0];
    REQUIRE(store.claim(2, t0, t0 + 100).size() == 2);
    record(store, answer(a.itemId, "ip-a"), t0 + 10);
    record(store, answer(b.itemId, "ip-b"), t0 + 10);
    std::vector<std::pair<std::int64_t, std::string>> first = {{a.deliveryId, "req.pki.pki"}};
    CHECK(store.assignOutputs(first, t0 + 20) == std::vector<bool>{true});
    // The write of a failed; the name stays reserved for it.
    CHECK(store.outputReserved("/media/out", "req.pki.pki"));
    std::vector<std::pair<std::int64_t, std::string>> clash = {{b.deliveryId, "req.pki.pki"}};
    CHECK(store.assignOutputs(clash, t0 + 30) == std::vector<bool>{false});
    std::vector<std::pair<std::int64_t, std::string>> other = {
        {b.deliveryId, "req.pki.response.pki"}};
    CHECK(store.assignOutputs(other, t0 + 30) == std::vector<bool>{true});
    // Once a is delivered, its name is free again for a later arrival.
    std::vector<std::int64_t> done = {a.deliveryId};
    store.markDelivered(done, t0 + 40);
    CHECK(!store.outputReserved("/media/out", "req.pki.pki"));
}

TEST_CASE("the per-sender rate count is stored with the intake, windowed and pruned") {
    // Schema 7: a mail source's rate_limit_per_hour counts in the store, so it holds across runs;
    // the count is written in the intake's transaction, so a rolled-back intake counts nothing.
    TempDir dir;
    auto store = Store::open(dir.db());
    auto counted = [](std::string der, std::string sender) {
        auto s = submit(p10(der), der + ".eml", "mail");
        s.rateSender = std::move(sender);
        return s;
    };
    ingest(store,
           {counted("a", "ann@example.org"), counted("b", "ann@example.org"),
            counted("c", "bob@example.org"), submit(p10("d"), "d.eml", "mail")},
           t0);
    const Millis hour = kSenderRateWindowMs;
    CHECK(store.sentSince("mail", "ann@example.org", t0 - hour) == 2);
    CHECK(store.sentSince("mail", "bob@example.org", t0 - hour) == 1);
    CHECK(store.sentSince("other", "ann@example.org", t0 - hour) == 0);
    // A reopened store (the next run --once) still knows.
    store = Store::open(dir.db());
    CHECK(store.sentSince("mail", "ann@example.org", t0 + 10 - hour) == 2);
    // Not committed: not counted.
    {
        auto unit = store.unit();
        ingest(store, {counted("e", "ann@example.org")}, t0 + 20);
        CHECK(store.sentSince("mail", "ann@example.org", t0 + 20 - hour) == 3); // in the unit
    }
    CHECK(store.sentSince("mail", "ann@example.org", t0 + 20 - hour) == 2);
    // An hour later the old rows count for nothing, and the next counted intake deletes them.
    CHECK(store.sentSince("mail", "ann@example.org", t0 + hour - hour) == 0);
    ingest(store, {counted("f", "carl@example.org")}, t0 + hour);
    auto db = sql::Database::open(dir.db());
    CHECK(db.queryInt("SELECT count(*) FROM sender_intake") == 1);
}
