// The store's implementation: the item state machine in SQL. Every public write is one
// BEGIN IMMEDIATE transaction over its whole batch (one fsync per batch, DESIGN.md "Data
// flow"). It trusts the Message values it is given (the classifier made them) and its own
// schema; it trusts nothing about the timing of other stages, which may die at any point.
#include "spool/store.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <set>
#include <functional>
#include <cstring>
#include <ctime>
#include <sys/stat.h>

#include <fmt/format.h>

#include "lib/correlate.h"
#include "lib/media/manifest.h"
#include "spool/migrations.h"
#include "spool/sqlite.h"

namespace pkirelay::spool {

namespace {

constexpr std::array<std::string_view, 10> stateNames = {
    "queued",      "relaying", "deferred", "answered",  "failed",
    "quarantined", "held",     "awaiting", "unmatched", "review",
};

State stateFromDb(const std::string &name) {
    auto state = stateFromName(name);
    if (!state) // the CHECK constraint makes this a corrupt or foreign database
        throw StoreCorrupt(fmt::format("unknown item state '{}' in the database", name));
    return *state;
}

std::optional<Kind> kindFromDb(const std::string &id) {
    if (id.empty())
        return std::nullopt;
    auto kind = kindFromId(id);
    if (!kind)
        throw StoreError(fmt::format("unknown kind '{}' in the database", id));
    return kind;
}

std::string seconds(Millis ms) {
    if (ms % 1000 == 0)
        return fmt::format("{}s", ms / 1000);
    return fmt::format("{:.3f}s", static_cast<double>(ms) / 1000.0);
}

std::string describe(const Message &m) {
    std::string s(kindInfo(m.kind).id);
    if (m.cmp)
        s += fmt::format(" {}", cmpBodyName(m.cmp->bodyType));
    return s;
}

} // namespace

std::string_view stateName(State state) {
    return stateNames.at(static_cast<std::size_t>(state));
}

std::optional<State> stateFromName(std::string_view name) {
    for (std::size_t i = 0; i < stateNames.size(); ++i)
        if (stateNames[i] == name)
            return static_cast<State>(i);
    return std::nullopt;
}

Millis RetryPolicy::delayAfter(int attempts) const {
    // Computed in double and capped before converting back, so a large attempt count cannot
    // overflow.
    const double d = static_cast<double>(initial) *
                     std::pow(factor, static_cast<double>(std::max(attempts, 1) - 1));
    if (!(d < static_cast<double>(maxDelay)))
        return maxDelay;
    return static_cast<Millis>(d);
}

struct Store::Impl {
    sql::Database db;
    bool readOnly = false; // opened by openReadOnly: the operator's write commands refuse
    std::optional<std::int64_t> dataVersion = std::nullopt; // changedElsewhere()'s last look
    std::string path = {};                                  // for messages

    void addEvent(std::int64_t item, Millis at, std::string_view what, std::string_view detail) {
        auto q = db.query("INSERT INTO event (item_id, at, what, detail) VALUES (?1, ?2, ?3, ?4)");
        q->bind(1, item).bind(2, at).bind(3, what).bind(4, detail);
        q->run();
    }

    std::int64_t addDelivery(std::int64_t item, const Submission &s, bool delivered, Millis now) {
        if (!s.cursor.empty()) {
            auto c = db.query("INSERT INTO source_cursor (source, position, updated_at) "
                              "VALUES (?1, ?2, ?3) ON CONFLICT (source) DO UPDATE SET "
                              "position = excluded.position, updated_at = excluded.updated_at");
            c->bind(1, s.arrival.source).bind(2, s.cursor).bind(3, now);
            c->run();
        }
        auto q = db.query("INSERT INTO delivery (item_id, source, origin, reply_to, "
                          "arrival_sha256, state, created_at, updated_at, ack, context) "
                          "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9)");
        q->bind(1, item)
            .bind(2, s.arrival.source)
            .bind(3, s.arrival.origin)
            .bind(4, s.arrival.replyTo)
            .bind(5, s.arrivalSha256)
            .bind(6, delivered ? "delivered" : "pending")
            .bind(7, now);
        if (s.acknowledgedWhenStored)
            q->bind(8, "kept");
        q->bind(9, s.arrival.context);
        q->run();
        return ::sqlite3_last_insert_rowid(db.get());
    }

    struct Existing {
        std::int64_t id = 0;
        State state = State::Queued;
        bool nothingToDeliver = false; // answered with no response kind (e.g. HTTP 201)
    };

    std::optional<Existing> readExisting(sql::Query &q) {
        if (!q->step())
            return std::nullopt;
        Existing e;
        e.id = q->int64(0);
        e.state = stateFromDb(q->text(1));
        e.nothingToDeliver = e.state == State::Answered && q->isNull(2);
        return e;
    }

    std::optional<Existing> findByHash(std::string_view sha256) {
        auto q = db.query("SELECT id, state, response_kind FROM item WHERE sha256 = ?1");
        q->bind(1, sha256);
        return readExisting(q);
    }

    // The same transaction and senderNonce within one protocol is the same request, even with
    // different bytes (a CMP message re-protected, a re-signed CMC request). Both must be
    // present: neither alone identifies a message.
    std::optional<Existing> findByTransaction(const CorrelationKeys &k) {
        if (k.transactionId.empty() || k.senderNonce.empty())
            return std::nullopt;
        auto q = db.query("SELECT id, state, response_kind FROM item "
                          "WHERE transaction_id = ?1 AND sender_nonce = ?2 "
                          "AND (kind = 'cmp') = ?3 ORDER BY id LIMIT 1");
        q->bindBlob(1, k.transactionId).bindBlob(2, k.senderNonce).bind(3, std::int64_t{k.cmp});
        return readExisting(q);
    }

    // Writes a message's columns into an item row (new, or a quarantined one reclassified).
    void writeMessage(std::int64_t id, const Message &m, State state, Millis now) {
        const CorrelationKeys k = correlationKeys(m);
        auto q = db.query(
            "UPDATE item SET kind = ?2, state = ?3, der = ?4, reason = NULL, cmp_pvno = ?5, "
            "cmp_body = ?6, transaction_id = ?7, sender_nonce = ?8, recip_nonce = ?9, "
            "sender_kid = ?10, cmc_status = ?11, pend_token = ?12, query_pending = ?13, "
            "sender = ?14, recipient = ?15, next_try = ?16, updated_at = ?17 WHERE id = ?1");
        q->bind(1, id)
            .bind(2, kindInfo(m.kind).id)
            .bind(3, stateName(state))
            .bindBlob(4, m.der)
            .bindBlobOrNull(7, k.transactionId)
            .bindBlobOrNull(8, k.senderNonce)
            .bindBlobOrNull(9, k.recipNonce)
            .bind(17, now);
        if (m.cmp) {
            q->bind(5, std::int64_t{m.cmp->pvno})
                .bind(6, std::int64_t{m.cmp->bodyType})
                .bindBlobOrNull(10, m.cmp->senderKid)
                .bindTextOrNull(14, m.cmp->sender)
                .bindTextOrNull(15, m.cmp->recipient);
        }
        if (m.cmc) {
            if (m.cmc->status)
                q->bind(11, std::int64_t{*m.cmc->status});
            q->bindBlobOrNull(12, m.cmc->pendToken).bindBlobOrNull(13, m.cmc->queryPending);
        }
        if (state == State::Queued)
            q->bind(16, now);
        q->run();
    }

    // A new message's row in one statement (an INSERT followed by writeMessage's UPDATE would
    // write the row and its index entries twice).
    std::int64_t insertMessage(std::string_view sha256, const Submission &s, const Message &m,
                               State state, Millis now) {
        const CorrelationKeys k = correlationKeys(m);
        auto q = db.query(
            "INSERT INTO item (sha256, state, source, origin, size, created_at, updated_at, kind, "
            "der, cmp_pvno, cmp_body, transaction_id, sender_nonce, recip_nonce, sender_kid, "
            "cmc_status, pend_token, query_pending, sender, recipient, next_try) VALUES (?1, ?2, "
            "?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, "
            "?20)");
        q->bind(1, sha256)
            .bind(2, stateName(state))
            .bind(3, s.arrival.source)
            .bind(4, s.arrival.origin)
            .bind(5, static_cast<std::int64_t>(s.size))
            .bind(6, now)
            .bind(7, kindInfo(m.kind).id)
            .bindBlob(8, m.der)
            .bindBlobOrNull(11, k.transactionId)
            .bindBlobOrNull(12, k.senderNonce)
            .bindBlobOrNull(13, k.recipNonce);
        if (m.cmp) {
            q->bind(9, std::int64_t{m.cmp->pvno})
                .bind(10, std::int64_t{m.cmp->bodyType})
                .bindBlobOrNull(14, m.cmp->senderKid)
                .bindTextOrNull(18, m.cmp->sender)
                .bindTextOrNull(19, m.cmp->recipient);
        }
        if (m.cmc) {
            if (m.cmc->status)
                q->bind(15, std::int64_t{*m.cmc->status});
            q->bindBlobOrNull(16, m.cmc->pendToken).bindBlobOrNull(17, m.cmc->queryPending);
        }
        if (state == State::Queued)
            q->bind(20, now);
        q->run();
        return ::sqlite3_last_insert_rowid(db.get());
    }

    std::int64_t insertItem(std::string_view sha256, const Submission &s, Millis now) {
        auto q = db.query("INSERT INTO item (sha256, state, source, origin, size, created_at, "
                          "updated_at) VALUES (?1, 'quarantined', ?2, ?3, ?4, ?5, ?5)");
        q->bind(1, sha256)
            .bind(2, s.arrival.source)
            .bind(3, s.arrival.origin)
            .bind(4, static_cast<std::int64_t>(s.size))
            .bind(5, now);
        q->run();
        return ::sqlite3_last_insert_rowid(db.get());
    }

    Ingested ingestOne(const Submission &s, Millis now) {
        const std::string from = fmt::format("{}/{}", s.arrival.source, s.arrival.origin);
        if (!s.message) {
            if (auto e = findByHash(s.arrivalSha256))
                return duplicate(*e, s, from, "same bytes", now);
            const auto id = insertItem(s.arrivalSha256, s, now);
            auto q = db.query("UPDATE item SET der = ?2, reason = ?3 WHERE id = ?1");
            q->bind(1, id).bindBlobOrNull(2, s.rejectedBytes).bind(3, s.rejectReason);
            q->run();
            addEvent(id, now, "received",
                     fmt::format("unrecognised input from {}, {} bytes", from, s.size));
            addEvent(id, now, "quarantined", s.rejectReason);
            return {id, addDelivery(id, s, false, now), false, State::Quarantined};
        }

        if (s.returnLeg)
            return matchReturn(s, from, now);
        const Message &m = *s.message;
        const std::string sha256 = s.messageSha256.empty() ? sha256Hex(m.der) : s.messageSha256;
        const State fresh = s.relay ? State::Queued : State::Unmatched;
        auto e = findByHash(sha256);
        if (e && e->state == State::Quarantined) {
            // The same bytes were once rejected and now classify (a newer classifier): the item
            // becomes the message it is, with its history kept.
            writeMessage(e->id, m, fresh, now);
            addEvent(e->id, now, "reclassified",
                     fmt::format("{} from {}, {} bytes", describe(m), from, s.size));
            return {e->id, addDelivery(e->id, s, false, now), true, fresh};
        }
        if (e)
            return duplicate(*e, s, from, "same bytes", now);
        if (auto t = findByTransaction(correlationKeys(m)))
            return duplicate(*t, s, from,
                             m.cmp ? "same transactionID and senderNonce, different bytes"
                                   : "same transactionId and senderNonce, different bytes",
                             now);

        const auto id = insertMessage(sha256, s, m, fresh, now);
        addEvent(id, now, "received",
                 fmt::format("{} from {}, {} bytes", describe(m), from, s.size));
        if (fresh == State::Unmatched)
            addEvent(id, now, "unmatched", "not a request: kept for matching to its request");
        return {id, addDelivery(id, s, false, now), false, fresh};
    }

    // The return leg (issue 17): an answer that came back on the media. It names the request it
    // answers (lib/media/manifest.h, media names); the protocol must confirm it, by the same
    // rule as an answer on a synchronous transport (lib/correlate.h, answerMismatch: CMP
    // transactionID and recipNonce, RFC 9810 §5.1.1; CMC transactionId and recipientNonce
    // controls, RFC 10002 §6.6). A Simple PKI Response carries neither: to a PKCS#10 it must
    // hold a certificate for the request's public key (answerMismatch), so that two answers
    // swapped on the stick, manifest and all, are not delivered to each other's requesters.
    // Only an item waiting for its answer (awaiting) takes one: an answer to a closed item (a
    // replay on a later trip, a copy of one already delivered) is quarantined, like one that
    // names nothing or fails a check. Nothing quarantined here is delivered.
    Ingested matchReturn(const Submission &s, std::string_view from, Millis now) {
        const Message &m = *s.message;
        const std::string sha256 = sha256Hex(m.der);
        std::string why;
        std::optional<std::int64_t> claimed;
        bool foreign = false;
        bool unrecordedSend = false;
        if (m.isRequest() && !(m.cmp && m.cmp->bodyType == 23)) {
            why = "a request, not an answer, on the return leg";
        } else if (auto name = media::parseMediaName(s.arrival.origin); !name) {
            why = "its name names no request written onto the media";
        } else {
            claimed = name->itemId;
            auto q = db.query("SELECT state, sha256, kind, transaction_id, sender_nonce, "
                              "response_sha256, der, outcome_unknown FROM item WHERE id = ?1");
            q->bind(1, name->itemId);
            if (!q->step() || q->isNull(2) || !q->text(1).starts_with(name->digest)) {
                why = fmt::format("its name claims item {}, which is no request of this agent "
                                  "(left on the media for the agent it belongs to)",
                                  name->itemId);
                foreign = true;
            } else {
                const State state = stateFromDb(q->text(0));
                const Kind requestKind = kindFromDb(q->text(2)).value();
                const Bytes tid = q->blob(3), nonce = q->blob(4);
                const std::string answered = q->text(5);
                const Bytes request = q->blob(6);
                const ByteView key =
                    requestKind == Kind::CmcSimpleRequest ? requestPublicKey(request) : ByteView{};
                // Queued again after a stop that left its hand-over unrecorded (outcome_unknown:
                // killed after its batch went onto the media, before the record): that batch
                // may have travelled, and this is then its answer. It is taken like one to an
                // awaiting item, by the same checks; the queued resend is then not needed.
                unrecordedSend =
                    q->int64(7) != 0 && (state == State::Queued || state == State::Deferred);
                if (state != State::Awaiting && !unrecordedSend) {
                    why = state == State::Answered && answered == sha256
                              ? fmt::format("item {} has this answer already (a replay)",
                                            name->itemId)
                              : fmt::format("item {} is {}, not waiting for an answer",
                                            name->itemId, stateName(state));
                } else if ((requestKind == Kind::Cmp) != (m.kind == Kind::Cmp)) {
                    why = fmt::format("a {} cannot answer item {}, a {}", kindInfo(m.kind).title,
                                      name->itemId, kindInfo(requestKind).title);
                } else if (auto mismatch =
                               answerMismatch({requestKind == Kind::Cmp, tid, nonce, key}, m,
                                              fmt::format("item {}", name->itemId))) {
                    why = std::move(*mismatch);
                }
            }
        }
        if (!why.empty()) {
            if (auto e = findByHash(sha256)) {
                Ingested in = duplicate(*e, s, from, "same bytes", now);
                in.why = fmt::format("refused again: {}", why);
                in.foreign = foreign;
                return in;
            }
            const auto id = insertItem(sha256, s, now);
            auto q = db.query("UPDATE item SET der = ?2, reason = ?3, answers_item = ?4 "
                              "WHERE id = ?1");
            q->bind(1, id).bindBlob(2, m.der).bind(3, fmt::format("return leg: {}", why));
            q->bind(4, claimed);
            q->run();
            addEvent(
                id, now, "received",
                fmt::format("{} on the return leg from {}, {} bytes", describe(m), from, s.size));
            addEvent(id, now, "quarantined", fmt::format("not delivered: {}", why));
            if (claimed)
                if (auto e = findById(*claimed))
                    addEvent(*claimed, now, "refused answer",
                             fmt::format("{} from {} was quarantined as item {}: {}", describe(m),
                                         from, id, why));
            return {id,     addDelivery(id, s, false, now), false, State::Quarantined, false, why,
                    foreign};
        }
        const std::int64_t item = *claimed;
        auto q = db.query("UPDATE item SET state = 'answered', response = ?2, response_kind = ?3, "
                          "response_detail = ?4, response_sha256 = ?5, reason = NULL, "
                          "next_try = NULL, lease_until = NULL, outcome_unknown = 0, "
                          "updated_at = ?6 WHERE id = ?1");
        const std::string detail =
            unrecordedSend ? fmt::format("came back on the media as {}, the answer to a "
                                         "hand-over a stopped run did not record",
                                         from)
                           : fmt::format("came back on the media as {}", from);
        q->bind(1, item)
            .bindBlob(2, m.der)
            .bind(3, kindInfo(m.kind).id)
            .bind(4, detail)
            .bind(5, sha256)
            .bind(6, now);
        q->run();
        auto f = db.query("UPDATE media_file SET returned_at = ?2, returned_as = ?3 WHERE id = "
                          "(SELECT max(id) FROM media_file WHERE item_id = ?1)");
        f->bind(1, item).bind(2, now).bind(3, from);
        f->run();
        addEvent(
            item, now, "answered",
            fmt::format("{}: {}, {} bytes, matched by name and {}", describe(m), detail, s.size,
                        m.cmp ? "transactionID and recipNonce" : "the CMC controls it carries"));
        // The answer's own arrival is done (nothing goes back onto the media); the request's
        // arrivals get the answer the way they came.
        return {item, addDelivery(item, s, true, now), false, State::Answered, true, detail};
    }

    std::optional<Existing> findById(std::int64_t id) {
        auto q = db.query("SELECT id, state, response_kind FROM item WHERE id = ?1");
        q->bind(1, id);
        return readExisting(q);
    }

    Ingested duplicate(const Existing &e, const Submission &s, std::string_view from,
                       std::string_view how, Millis now) {
        addEvent(e.id, now, "duplicate", fmt::format("duplicate arrival from {} ({})", from, how));
        State state = e.state;
        if (e.state == State::Failed) {
            // Submitting a failed request again is how a user retries it; attempts are kept so
            // the history stays honest. The age that retry.max_age counts from starts again
            // (created_at), or an old item would fail at its first transient error; the event
            // log keeps the first arrival's time.
            auto q = db.query("UPDATE item SET state = 'queued', next_try = ?2, reason = NULL, "
                              "created_at = ?2, updated_at = ?2 WHERE id = ?1");
            q->bind(1, e.id).bind(2, now);
            q->run();
            addEvent(e.id, now, "resubmitted", fmt::format("failed item queued again by {}", from));
            state = State::Queued;
        }
        return {e.id, addDelivery(e.id, s, e.nothingToDeliver, now), true, state};
    }

    // What follows an answer recorded for a relaying item.
    void answered(const Outcome &o, const Answer &a, Millis now) {
        if (!a.kind) {
            // Nothing to deliver (e.g. HTTP 201 to a CMP announcement): the arrivals are done.
            auto d = db.query("UPDATE delivery SET state = 'delivered', updated_at = ?2 "
                              "WHERE item_id = ?1 AND state <> 'delivered'");
            d->bind(1, o.itemId).bind(2, now);
            d->run();
        }
        addEvent(o.itemId, now, "answered",
                 fmt::format("{} from {}: {}{}", a.kind ? kindInfo(*a.kind).id : "no response",
                             o.endpoint, a.detail, a.kind ? "" : "; nothing to deliver"));
    }

    // Returns the state the item is in afterwards.
    State recordOne(const Outcome &o, Millis now, const RetryPolicy &policy) {
        if (const auto *a = std::get_if<Answer>(&o.result)) {
            // The common case in one statement: the item is still relaying (else the row is
            // left alone and the outcome is late, below).
            auto q = db.query(
                "UPDATE item SET state = 'answered', response = ?2, response_kind = ?3, "
                "response_detail = ?4, response_sha256 = ?5, endpoint = ?6, reason = NULL, "
                "next_try = NULL, lease_until = NULL, outcome_unknown = 0, updated_at = ?7 "
                "WHERE id = ?1 AND state = 'relaying'");
            q->bind(1, o.itemId).bindBlob(2, a->body).bind(4, a->detail);
            if (a->kind)
                q->bind(3, kindInfo(*a->kind).id);
            q->bind(5, sha256Hex(a->body)).bind(6, o.endpoint).bind(7, now);
            q->run();
            if (::sqlite3_changes(db.get()) == 1) {
                answered(o, *a, now);
                return State::Answered;
            }
        }
        std::int64_t attempts = 0, createdAt = 0;
        std::string state;
        {
            auto q = db.query("SELECT state, attempts, created_at FROM item WHERE id = ?1");
            q->bind(1, o.itemId);
            if (!q->step())
                throw StoreError(fmt::format("record: no item {}", o.itemId));
            state = q->text(0);
            attempts = q->int64(1);
            createdAt = q->int64(2);
        }
        if (state != "relaying") {
            // A late outcome: the lease expired and the item was requeued (and maybe answered
            // since). Applying it could overwrite a newer outcome, so the item is left alone
            // and the outcome only goes into the history.
            addEvent(o.itemId, now, "late outcome",
                     fmt::format("ignored, the item is {}: {}", state, summary(o)));
            return stateFromDb(state);
        }

        std::string newState, reason, what, detail;
        std::optional<Millis> nextTry;
        if (std::holds_alternative<Answer>(o.result))
            throw StoreError(
                fmt::format("record: item {} is relaying but was not updated", o.itemId));
        if (const auto *h = std::get_if<Handed>(&o.result)) {
            // Written onto the media: the answer comes back on the return leg. next_try is the
            // deadline after which the item fails (expireAwaiting).
            auto q = db.query("UPDATE item SET state = 'awaiting', reason = NULL, next_try = ?2, "
                              "endpoint = ?3, lease_until = NULL, outcome_unknown = 0, "
                              "updated_at = ?4 WHERE id = ?1");
            q->bind(1, o.itemId).bind(2, now + h->awaitMs).bind(3, o.endpoint).bind(4, now);
            q->run();
            auto f = db.query("INSERT INTO media_file (item_id, endpoint, batch, name, size, "
                              "sha256, written_at) SELECT id, ?2, ?3, ?4, length(der), sha256, ?5 "
                              "FROM item WHERE id = ?1");
            f->bind(1, o.itemId)
                .bind(2, o.endpoint)
                .bind(3, h->batch)
                .bind(4, h->name)
                .bind(5, now);
            f->run();
            addEvent(o.itemId, now, "awaiting",
                     fmt::format("attempt {}: {}; the answer comes back on the media (waits up "
                                 "to {})",
                                 attempts, h->detail, seconds(h->awaitMs)));
            return State::Awaiting;
        }
        if (const auto *u = std::get_if<Unusable>(&o.result)) {
            // Kept byte for byte as the response, with no kind: deliveriesToWrite never takes
            // it, claim never resends it; a person exports it, delivers it anyway, or retries.
            auto q = db.query(
                "UPDATE item SET state = 'review', response = ?2, response_kind = NULL, "
                "response_detail = ?3, response_sha256 = ?4, endpoint = ?5, reason = ?6, "
                "next_try = NULL, lease_until = NULL, outcome_unknown = 0, updated_at = ?7 "
                "WHERE id = ?1");
            q->bind(1, o.itemId)
                .bindBlob(2, u->body)
                .bind(3, u->reason)
                .bind(4, sha256Hex(u->body))
                .bind(5, o.endpoint)
                .bind(6, fmt::format("answer not accepted: {}", u->reason))
                .bind(7, now);
            q->run();
            addEvent(o.itemId, now, "review",
                     fmt::format("the answer from {} ({} bytes, {}) was not accepted: {}; kept "
                                 "for a person (pkirelay export, deliver --force or retry)",
                                 o.endpoint, u->body.size(),
                                 u->contentType.empty() ? "no type" : u->contentType, u->reason));
            return State::Review;
        }
        if (const auto *t = std::get_if<Transient>(&o.result)) {
            const bool ownLimit = t->maxAge > 0;
            if (now - createdAt >= (ownLimit ? t->maxAge : policy.maxAge)) {
                newState = "failed";
                reason = fmt::format(
                    "gave up after {} attempts{}: {}", attempts,
                    ownLimit ? fmt::format(" ({} of endpoint {} passed)", t->maxAgeKey, o.endpoint)
                             : "",
                    t->reason);
                what = "failed";
                detail = fmt::format("{} (first seen {} ago)", reason, seconds(now - createdAt));
            } else {
                const Millis delay = policy.delayAfter(static_cast<int>(attempts));
                newState = "deferred";
                reason = t->reason;
                nextTry = now + delay;
                what = "deferred";
                detail = fmt::format("attempt {} to {}: {}; next try in {}", attempts, o.endpoint,
                                     t->reason, seconds(delay));
            }
        } else {
            const auto &p = std::get<Permanent>(o.result);
            newState = "failed";
            reason = p.reason;
            what = "failed";
            detail = fmt::format("attempt {} to {}: {}", attempts, o.endpoint, p.reason);
        }
        auto q = db.query("UPDATE item SET state = ?2, reason = ?3, next_try = ?4, endpoint = ?5, "
                          "lease_until = NULL, outcome_unknown = 0, updated_at = ?6 WHERE id = ?1");
        q->bind(1, o.itemId)
            .bind(2, newState)
            .bind(3, reason)
            .bind(4, nextTry)
            .bind(5, o.endpoint)
            .bind(6, now);
        q->run();
        addEvent(o.itemId, now, what, detail);
        return stateFromDb(newState);
    }

    static std::string summary(const Outcome &o) {
        if (const auto *a = std::get_if<Answer>(&o.result))
            return fmt::format("answer from {} ({}, {} bytes)", o.endpoint, a->detail,
                               a->body.size());
        if (const auto *t = std::get_if<Transient>(&o.result))
            return fmt::format("transient failure at {}: {}", o.endpoint, t->reason);
        if (const auto *u = std::get_if<Unusable>(&o.result))
            return fmt::format("unusable answer from {} ({} bytes): {}", o.endpoint, u->body.size(),
                               u->reason);
        if (const auto *h = std::get_if<Handed>(&o.result))
            return fmt::format("handed over by {}: {}", o.endpoint, h->detail);
        return fmt::format("permanent failure at {}: {}", o.endpoint,
                           std::get<Permanent>(o.result).reason);
    }

    ItemSummary readSummary(sql::Statement &st) {
        // Columns: id, state, kind, source, origin, attempts, reason, created_at, updated_at.
        ItemSummary s;
        s.id = st.int64(0);
        s.state = stateFromDb(st.text(1));
        s.kind = kindFromDb(st.text(2));
        s.source = st.text(3);
        s.origin = st.text(4);
        s.attempts = static_cast<int>(st.int64(5));
        s.reason = st.text(6);
        s.createdAt = st.int64(7);
        s.updatedAt = st.int64(8);
        return s;
    }
};

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Store::Store(Store &&) noexcept = default;
Store &Store::operator=(Store &&) noexcept = default;
Store::~Store() = default;

Store Store::open(const std::string &path) {
    return open(path, OpenMode::CreateIfMissing);
}

namespace {

// PRAGMA quick_check reads every page and checks the b-trees (not the index contents, which
// integrity_check would add at several times the cost). A damaged page that no query of the
// current pass happens to touch would otherwise go unnoticed until it is too late.
void checkIntegrity(sql::Database &db, const std::string &path) {
    const std::string result = db.queryText("PRAGMA quick_check(1)");
    if (result != "ok")
        throw StoreCorrupt(
            fmt::format("{}: the database is damaged (PRAGMA quick_check: {})", path, result));
}

// Schema 8 records when the whole store last passed the check (schemas/0008_store_check.sql).
constexpr std::int64_t kCheckSchema = 8;

std::int64_t wallSeconds() {
    return static_cast<std::int64_t>(::time(nullptr));
}

bool fullCheckDue(sql::Database &db, std::int64_t schema, std::int64_t now) {
    if (schema < kCheckSchema)
        return true;
    auto q = db.query("SELECT checked_at FROM store_check WHERE id = 1");
    if (!q->step())
        return true;
    const std::int64_t at = q->int64(0);
    return now < at || now - at >= Store::kFullCheckSeconds; // a clock set back: check now
}

// Runs the whole-store check when it is due; whether it ran (and passed: it throws otherwise).
bool checkIfDue(sql::Database &db, const std::string &path, std::int64_t schema, std::int64_t now) {
    if (!fullCheckDue(db, schema, now))
        return false;
    checkIntegrity(db, path);
    return true;
}

// Best effort: a store another process is writing is checked again at the next open.
void recordFullCheck(sql::Database &db, std::int64_t now) {
    try {
        sql::Transaction tx(db);
        auto q = db.query("INSERT INTO store_check (id, checked_at) VALUES (1, ?1) "
                          "ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at");
        q->bind(1, now);
        q->run();
        tx.commit();
    } catch (const StoreBusy &) {
    }
}

// A store that must exist: present, not empty, and with a schema. An emptied file (0 bytes)
// opens as a valid empty database, so size and user_version are checked, not only the name.
void requireExisting(const std::string &path) {
    struct ::stat st {};
    if (::stat(path.c_str(), &st) != 0)
        throw StoreMissing(fmt::format("{}: no store there ({})", path, std::strerror(errno)));
    if (st.st_size == 0)
        throw StoreMissing(fmt::format("{}: the store is empty (0 bytes)", path));
}

} // namespace

Store Store::open(const std::string &path, OpenMode mode) {
    if (mode == OpenMode::MustExist)
        requireExisting(path);
    auto impl = std::make_unique<Impl>(Impl{
        sql::Database::open(path, mode == OpenMode::MustExist ? sql::Database::Access::NoCreate
                                                              : sql::Database::Access::Create)});
    auto &db = impl->db;
    impl->path = path;
    const auto &all = migrations();
    const auto known = static_cast<std::int64_t>(all.size());
    auto newer = [&](std::int64_t version) {
        return StoreError(
            fmt::format("{}: database is from a newer pkirelay (schema {}, this build "
                        "knows {})",
                        path, version, known));
    };
    const auto current = db.queryInt("PRAGMA user_version");
    if (current > known)
        throw newer(current);
    if (current == 0 && mode == OpenMode::MustExist)
        throw StoreMissing(fmt::format("{}: the file holds no pkirelay store (no schema)", path));
    const std::int64_t now = wallSeconds();
    const bool checked = current > 0 && checkIfDue(db, path, current, now);
    // A current schema needs no write lock: status/list/show must not wait for a running pass.
    for (std::int64_t n = current + 1; n <= known; ++n) {
        // A migration may rebuild a table that others reference (SQLite cannot alter a CHECK
        // constraint): foreign keys are off for it, as SQLite's own procedure for such changes
        // says ("Making Other Kinds Of Table Schema Changes"), and checked before the commit.
        // The pragma is a no-op inside a transaction, hence outside.
        db.exec("PRAGMA foreign_keys = OFF");
        {
            sql::Transaction tx(db);
            // Read again under the write lock: another process may have migrated meanwhile.
            const auto v = db.queryInt("PRAGMA user_version");
            if (v > known)
                throw newer(v);
            if (v >= n)
                continue;
            if (v != n - 1)
                throw StoreError(fmt::format("{}: schema {} cannot be brought to {}", path, v, n));
            db.exec(all[static_cast<std::size_t>(n - 1)]);
            {
                sql::Statement check(db.get(), "PRAGMA foreign_key_check");
                if (check.step())
                    throw StoreCorrupt(fmt::format(
                        "{}: migration {} leaves a broken reference in table {} (row {})", path, n,
                        check.text(0), check.int64(1)));
            }
            db.exec(fmt::format("PRAGMA user_version = {}", n));
            tx.commit();
        }
        db.exec("PRAGMA foreign_keys = ON");
    }
    db.exec("PRAGMA foreign_keys = ON");
    if (checked || current == 0)
        recordFullCheck(db, now);
    return Store(std::move(impl));
}

Store Store::openReadOnly(const std::string &path) {
    requireExisting(path);
    auto impl =
        std::make_unique<Impl>(Impl{sql::Database::open(path, sql::Database::Access::ReadOnly)});
    auto &db = impl->db;
    impl->path = path;
    const auto known = static_cast<std::int64_t>(migrations().size());
    const auto current = db.queryInt("PRAGMA user_version");
    if (current == 0)
        throw StoreMissing(fmt::format("{}: the file holds no pkirelay store (no schema)", path));
    if (current > known)
        throw StoreError(fmt::format("{}: database is from a newer pkirelay (schema {}, this "
                                     "build knows {})",
                                     path, current, known));
    if (current < known)
        throw StoreError(fmt::format("{}: the store has schema {}, this pkirelay reads {}; the "
                                     "next `pkirelay run` brings it up to date",
                                     path, current, known));
    checkIfDue(db, path, current, wallSeconds()); // a view cannot record it: the next run does
    impl->readOnly = true;
    return Store(std::move(impl));
}

Store::Unit Store::unit() {
    return Unit(std::make_unique<sql::Transaction>(impl_->db));
}

Store::Unit::Unit(std::unique_ptr<sql::Transaction> tx) : tx_(std::move(tx)) {}
Store::Unit::~Unit() = default;
Store::Unit::Unit(Unit &&) noexcept = default;

void Store::Unit::commit() {
    tx_->commit();
}

std::vector<Ingested> Store::ingest(std::span<const Submission> batch, Millis now) {
    std::vector<Ingested> out;
    out.reserve(batch.size());
    sql::Transaction tx(impl_->db);
    bool counted = false;
    for (const auto &s : batch) {
        out.push_back(impl_->ingestOne(s, now));
        if (s.rateSender.empty())
            continue;
        // The rate limit's count, in the transaction of the intake it counts (schema 7).
        auto q =
            impl_->db.query("INSERT INTO sender_intake (source, sender, at) VALUES (?1, ?2, ?3)");
        q->bind(1, s.arrival.source).bind(2, s.rateSender).bind(3, now);
        q->run();
        counted = true;
    }
    if (counted) {
        // Bounded: what is older than the window counts for nothing.
        auto q = impl_->db.query("DELETE FROM sender_intake WHERE at <= ?1");
        q->bind(1, now - kSenderRateWindowMs);
        q->run();
    }
    tx.commit();
    return out;
}

std::int64_t Store::sentSince(std::string_view source, std::string_view sender, Millis since) {
    auto q = impl_->db.query("SELECT count(*) FROM sender_intake WHERE source = ?1 AND "
                             "sender = ?2 AND at > ?3");
    q->bind(1, source).bind(2, sender).bind(3, since);
    return q->step() ? q->int64(0) : 0;
}

std::string Store::sourceCursor(std::string_view source) {
    auto q = impl_->db.query("SELECT position FROM source_cursor WHERE source = ?1");
    q->bind(1, source);
    return q->step() ? q->text(0) : std::string();
}

Ledger::Seen Store::arrivalSeen(std::string_view source, std::string_view origin,
                                std::string_view arrivalSha256) {
    auto q = impl_->db.query("SELECT id, ack FROM delivery WHERE source = ?1 AND origin = ?2 AND "
                             "arrival_sha256 = ?3 ORDER BY id DESC LIMIT 1");
    q->bind(1, source).bind(2, origin).bind(3, arrivalSha256);
    using State = Ledger::Seen::State;
    if (!q->step())
        return {State::New, 0};
    if (q->isNull(1))
        return {State::Unacknowledged, q->int64(0)};
    return {q->text(1) == "kept" ? State::Kept : State::New, q->int64(0)};
}

bool Store::arrivalKnown(std::string_view source, std::string_view origin,
                         std::string_view arrivalSha256) {
    auto q = impl_->db.query("SELECT 1 FROM delivery WHERE source = ?1 AND origin = ?2 AND "
                             "arrival_sha256 = ?3 LIMIT 1");
    q->bind(1, source).bind(2, origin).bind(3, arrivalSha256);
    return q->step();
}

void Store::markAcknowledged(std::span<const std::pair<std::int64_t, Source::Ack>> acks,
                             Millis now) {
    if (acks.empty())
        return;
    auto &db = impl_->db;
    sql::Transaction tx(db);
    for (const auto &[id, ack] : acks) {
        if (ack == Source::Ack::Failed)
            continue;
        auto q = db.query("UPDATE delivery SET ack = ?2, updated_at = ?3 WHERE id = ?1");
        q->bind(1, id).bind(2, ack == Source::Ack::Kept ? "kept" : "removed").bind(3, now);
        q->run();
    }
    tx.commit();
}

bool Store::isOutput(std::string_view replyTo, std::string_view name, std::string_view sha256) {
    auto q = impl_->db.query("SELECT 1 FROM delivery d JOIN item i ON i.id = d.item_id "
                             "WHERE d.reply_to = ?1 AND d.output = ?2 AND "
                             "i.response_sha256 = ?3 LIMIT 1");
    q->bind(1, replyTo).bind(2, name).bind(3, sha256);
    return q->step();
}

std::vector<Store::MediaFileOut> Store::mediaFilesOut(std::string_view endpoint,
                                                      std::int64_t batch) {
    // The latest copy of each item only: an item written again later is out under that name.
    auto q = impl_->db.query(
        "SELECT f.name, f.size, f.sha256 FROM media_file f JOIN item i ON i.id = f.item_id "
        "WHERE f.endpoint = ?1 AND f.batch = ?2 AND i.state = 'awaiting' AND f.id = "
        "(SELECT max(id) FROM media_file g WHERE g.item_id = f.item_id) ORDER BY f.id");
    q->bind(1, endpoint).bind(2, batch);
    std::vector<MediaFileOut> out;
    while (q->step())
        out.push_back({q->text(0), static_cast<std::uint64_t>(q->int64(1)), q->text(2)});
    return out;
}

bool Store::outputReserved(std::string_view replyTo, std::string_view name) {
    auto q = impl_->db.query("SELECT 1 FROM delivery WHERE reply_to = ?1 AND output = ?2 AND "
                             "state = 'writing' LIMIT 1");
    q->bind(1, replyTo).bind(2, name);
    return q->step();
}

int Store::requeueExpiredLeases(Millis now) {
    return requeueExpiredLeases(now, now);
}

int Store::requeueExpiredLeases(Millis now, Millis expiredBy) {
    auto &db = impl_->db;
    sql::Transaction tx(db);
    std::vector<std::pair<std::int64_t, std::int64_t>> expired; // id, attempts
    {
        auto q = db.query("UPDATE item SET state = 'queued', next_try = ?1, lease_until = NULL, "
                          "outcome_unknown = 1, updated_at = ?1 "
                          "WHERE state = 'relaying' AND lease_until <= ?2 RETURNING id, attempts");
        q->bind(1, now).bind(2, expiredBy);
        while (q->step())
            expired.emplace_back(q->int64(0), q->int64(1));
    }
    for (const auto &[id, attempts] : expired)
        impl_->addEvent(id, now, "lease expired",
                        fmt::format("outcome of attempt {} unknown; the CA may see this request "
                                    "again",
                                    attempts));
    tx.commit();
    return static_cast<int>(expired.size());
}

std::vector<Claim> Store::claim(std::size_t limit, Millis now, Millis leaseUntil,
                                std::size_t maxBytes, std::vector<Damaged> *damaged) {
    auto &db = impl_->db;
    std::vector<Claim> claims;
    std::vector<bool> resend;
    std::vector<Damaged> broken;
    sql::Transaction tx(db);
    {
        // The oldest ready items: the queued ones in id order (item_state keeps them so, and
        // the scan stops at the limit) merged with the deferred ones that are due (item_ready
        // holds only deferred items). Neither scan reads a finished item.
        std::vector<std::int64_t> ids;
        {
            auto q = db.query("SELECT id FROM item WHERE state = 'queued' ORDER BY id LIMIT ?1");
            q->bind(1, static_cast<std::int64_t>(limit));
            while (q->step())
                ids.push_back(q->int64(0));
        }
        {
            // The earliest due, in the index's order (an ORDER BY id here would sort all that
            // are due, in a temporary b-tree, at every claim).
            auto q = db.query("SELECT id FROM item INDEXED BY item_ready WHERE state = 'deferred' "
                              "AND next_try <= ?1 ORDER BY next_try LIMIT ?2");
            q->bind(1, now).bind(2, static_cast<std::int64_t>(limit));
            const auto queued = ids.size();
            while (q->step())
                ids.push_back(q->int64(0));
            std::sort(ids.begin() + static_cast<std::ptrdiff_t>(queued), ids.end());
            std::inplace_merge(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(queued),
                               ids.end());
            if (ids.size() > limit)
                ids.resize(limit);
        }
        std::size_t bytes = 0;
        for (std::size_t n = 0; n < ids.size() && bytes < maxBytes; ++n) {
            auto q =
                db.query("SELECT id, kind, source, der, attempts, created_at, "
                         "outcome_unknown, sha256, cmp_body, transaction_id, sender_nonce FROM "
                         "item WHERE id = ?1");
            q->bind(1, ids[n]);
            if (!q->step())
                continue;
            Claim c;
            c.itemId = q->int64(0);
            auto kind = kindFromDb(q->text(1));
            if (!kind) // only a quarantined item has no kind, and it is never queued
                throw StoreError(fmt::format("item {} is queued without a kind", c.itemId));
            c.kind = *kind;
            c.source = q->text(2);
            c.der = q->blob(3);
            c.cmpBody = static_cast<int>(q->optInt64(8).value_or(-1));
            c.transactionId = q->blob(9);
            c.senderNonce = q->blob(10);
            // The bytes sent must be the bytes stored (DESIGN.md, "relayed byte for byte"): a
            // bit flipped on disk after the commit would otherwise reach the CA as a request
            // nobody made. ingest() records sha256 as the hash of exactly this DER.
            const std::string recorded = q->text(7), actual = sha256Hex(c.der);
            if (recorded != actual) {
                broken.push_back({c.itemId, recorded, actual});
                continue;
            }
            c.attempts = static_cast<int>(q->int64(4)) + 1;
            c.firstSeen = q->int64(5);
            resend.push_back(q->int64(6) != 0);
            bytes += c.der.size();
            claims.push_back(std::move(c));
        }
    }
    for (const auto &b : broken) {
        auto q = db.query("UPDATE item SET state = 'review', reason = 'stored bytes damaged', "
                          "next_try = NULL, updated_at = ?2 WHERE id = ?1");
        q->bind(1, b.itemId).bind(2, now);
        q->run();
        impl_->addEvent(b.itemId, now, "damaged",
                        fmt::format("NOT SENT: the stored request no longer matches its hash "
                                    "(recorded sha256 {}, the stored bytes hash to {}); it needs "
                                    "a person: the store's file may be failing",
                                    b.recorded, b.actual));
    }
    for (std::size_t i = 0; i < claims.size(); ++i) {
        const auto &c = claims[i];
        auto q = db.query("UPDATE item SET state = 'relaying', lease_until = ?2, attempts = ?3, "
                          "next_try = NULL, updated_at = ?4 WHERE id = ?1");
        q->bind(1, c.itemId).bind(2, leaseUntil).bind(3, std::int64_t{c.attempts}).bind(4, now);
        q->run();
        impl_->addEvent(c.itemId, now, "relaying",
                        resend[i]
                            ? fmt::format("attempt {}: resend, the outcome of attempt {} was never "
                                          "recorded",
                                          c.attempts, c.attempts - 1)
                            : fmt::format("attempt {}", c.attempts));
    }
    tx.commit();
    if (damaged)
        damaged->insert(damaged->end(), broken.begin(), broken.end());
    return claims;
}

std::vector<State> Store::record(std::span<const Outcome> outcomes, Millis now,
                                 const RetryPolicy &policy) {
    std::vector<State> states;
    states.reserve(outcomes.size());
    sql::Transaction tx(impl_->db);
    for (const auto &o : outcomes)
        states.push_back(impl_->recordOne(o, now, policy));
    tx.commit();
    return states;
}

namespace {

// From the open deliveries to their items, never the other way: every finished item is in
// state answered, so a scan that started from the items would read the whole history.
constexpr std::string_view deliveryColumns =
    "SELECT d.id, d.item_id, d.source, d.origin, d.reply_to, d.output, i.response_kind, "
    "i.response, d.context FROM delivery d INDEXED BY delivery_open CROSS JOIN item i ON i.id = "
    "d.item_id "
    "WHERE d.state IN ('pending', 'writing') AND i.state = 'answered' "
    "AND i.response IS NOT NULL AND i.response_kind IS NOT NULL ";

Delivery readDelivery(sql::Statement &q) {
    Delivery d;
    d.deliveryId = q.int64(0);
    d.itemId = q.int64(1);
    d.arrival = {q.text(2), q.text(3), q.text(4), q.text(8)};
    d.output = q.text(5);
    d.responseKind = kindFromDb(q.text(6)).value();
    d.response = q.blob(7);
    return d;
}

} // namespace

std::vector<Delivery> Store::deliveriesToWrite(std::size_t limit, std::int64_t afterId,
                                               std::size_t maxBytes) {
    std::vector<Delivery> out;
    static const std::string sql =
        std::string(deliveryColumns) + "AND d.id > ?2 ORDER BY d.id LIMIT ?1"; // built once
    auto q = impl_->db.query(sql);
    q->bind(1, static_cast<std::int64_t>(limit)).bind(2, afterId);
    std::size_t bytes = 0;
    while (bytes < maxBytes && q->step()) {
        out.push_back(readDelivery(*q));
        bytes += out.back().response.size();
    }
    return out;
}

std::vector<Delivery> Store::deliveriesFor(std::span<const std::int64_t> itemIds) {
    std::vector<Delivery> out;
    // Each item once, however often it is named (several arrivals of one item in one batch).
    const std::set<std::int64_t> unique(itemIds.begin(), itemIds.end());
    for (const auto id : unique) {
        // One item's open deliveries, in id order straight from delivery_open (item_id, id).
        static const std::string sql =
            std::string(deliveryColumns) + "AND d.item_id = ?1 ORDER BY d.item_id, d.id";
        auto q = impl_->db.query(sql);
        q->bind(1, id);
        while (q->step())
            out.push_back(readDelivery(*q));
    }
    return out;
}

std::vector<bool> Store::assignOutputs(std::span<const std::pair<std::int64_t, std::string>> names,
                                       Millis now) {
    auto &db = impl_->db;
    std::vector<bool> assigned;
    assigned.reserve(names.size());
    sql::Transaction tx(db);
    for (const auto &[id, name] : names) {
        {
            // The common case in one statement: a delivery not yet delivered, without a name or
            // with this one, takes the name unless another unfinished delivery in the folder
            // holds it (the unique index delivery_reserved; OR IGNORE leaves the row alone).
            auto q = db.query("UPDATE OR IGNORE delivery SET output = ?2, state = 'writing', "
                              "updated_at = ?3 WHERE id = ?1 AND state <> 'delivered' AND "
                              "(output IS NULL OR output = ?2)");
            q->bind(1, id).bind(2, name).bind(3, now);
            q->run();
            if (::sqlite3_changes(db.get()) == 1) {
                assigned.push_back(true);
                continue;
            }
        }
        // Not assigned: find out why, as the statements below always did.
        std::string current;
        {
            auto q = db.query("SELECT state, output FROM delivery WHERE id = ?1");
            q->bind(1, id);
            if (!q->step())
                throw StoreError(fmt::format("assignOutputs: no delivery {}", id));
            if (q->text(0) == "delivered")
                throw StoreError(
                    fmt::format("assignOutputs: delivery {} is already delivered", id));
            current = q->text(1);
        }
        // The first name assigned sticks: after a crash the writer must reuse it (it is in
        // deliveriesToWrite), or a second response file would appear.
        if (!current.empty() && current != name)
            throw StoreError(fmt::format("assignOutputs: delivery {} already has the output {}, "
                                         "not {}",
                                         id, current, name));
        // Held by another unfinished delivery in the same folder (the unique index
        // delivery_reserved would refuse it too): the caller chooses again.
        auto held = db.query("SELECT 1 FROM delivery WHERE reply_to = "
                             "(SELECT reply_to FROM delivery WHERE id = ?1) AND output = ?2 AND "
                             "state = 'writing' AND id <> ?1 LIMIT 1");
        held->bind(1, id).bind(2, name);
        if (held->step()) {
            assigned.push_back(false);
            continue;
        }
        auto q = db.query("UPDATE delivery SET output = ?2, state = 'writing', updated_at = ?3 "
                          "WHERE id = ?1");
        q->bind(1, id).bind(2, name).bind(3, now);
        q->run();
        assigned.push_back(true);
    }
    tx.commit();
    return assigned;
}

void Store::noteDeliveryProblem(std::int64_t deliveryId, std::string_view detail, Millis now) {
    auto &db = impl_->db;
    sql::Transaction tx(db);
    std::int64_t item = 0;
    {
        auto q = db.query("SELECT item_id FROM delivery WHERE id = ?1");
        q->bind(1, deliveryId);
        if (!q->step())
            return;
        item = q->int64(0);
    }
    {
        auto q = db.query("SELECT detail FROM event WHERE item_id = ?1 AND what = 'delivery "
                          "waiting' ORDER BY id DESC LIMIT 1");
        q->bind(1, item);
        if (q->step() && q->text(0) == detail)
            return; // said already
    }
    impl_->addEvent(item, now, "delivery waiting", detail);
    tx.commit();
}

void Store::abandon(std::span<const std::int64_t> itemIds, Millis now, std::string_view why) {
    if (itemIds.empty())
        return;
    auto &db = impl_->db;
    sql::Transaction tx(db);
    for (const auto id : itemIds) {
        std::int64_t attempts = 0;
        {
            auto q = db.query("UPDATE item SET state = 'queued', next_try = ?2, lease_until = "
                              "NULL, outcome_unknown = 1, updated_at = ?2 WHERE id = ?1 AND "
                              "state = 'relaying' RETURNING attempts");
            q->bind(1, id).bind(2, now);
            if (!q->step())
                continue;
            attempts = q->int64(0);
        }
        impl_->addEvent(id, now, "abandoned",
                        fmt::format("attempt {} abandoned ({}); its outcome is unknown, the CA may "
                                    "see this request again",
                                    attempts, why));
    }
    tx.commit();
}

void Store::noteResent(std::int64_t itemId, int times, std::string_view why, Millis now) {
    auto &db = impl_->db;
    sql::Transaction tx(db);
    std::int64_t attempts = 0;
    {
        auto q = db.query("UPDATE item SET attempts = attempts + ?2, updated_at = ?3 WHERE id = ?1 "
                          "RETURNING attempts");
        q->bind(1, itemId).bind(2, std::int64_t{times}).bind(3, now);
        if (!q->step())
            return;
        attempts = q->int64(0);
    }
    for (int n = 0; n < times; ++n)
        impl_->addEvent(itemId, now, "relaying",
                        fmt::format("attempt {}: resend by the HTTP client ({}); the CA may "
                                    "have seen this request twice",
                                    attempts - times + n + 1, why));
    tx.commit();
}

void Store::unclaim(std::span<const std::int64_t> itemIds, Millis now) {
    if (itemIds.empty())
        return;
    auto &db = impl_->db;
    sql::Transaction tx(db);
    for (const auto id : itemIds) {
        {
            auto q = db.query("UPDATE item SET state = 'queued', next_try = ?2, lease_until = "
                              "NULL, attempts = max(attempts - 1, 0), updated_at = ?2 "
                              "WHERE id = ?1 AND state = 'relaying' RETURNING id");
            q->bind(1, id).bind(2, now);
            if (!q->step())
                continue;
        }
        impl_->addEvent(id, now, "unclaimed", "given back unsent at shutdown");
    }
    tx.commit();
}

std::optional<Millis> Store::nextRetry() {
    auto q = impl_->db.query(
        "SELECT min(next_try) FROM item INDEXED BY item_ready WHERE state = 'deferred'");
    if (!q->step())
        return std::nullopt;
    return q->optInt64(0);
}

void Store::checkWholeIfDue() {
    auto &db = impl_->db;
    const std::int64_t now = wallSeconds();
    if (checkIfDue(db, impl_->path, db.queryInt("PRAGMA user_version"), now) && !impl_->readOnly)
        recordFullCheck(db, now);
}

bool Store::changedElsewhere() {
    const auto now = impl_->db.queryInt("PRAGMA data_version");
    const bool changed = impl_->dataVersion && *impl_->dataVersion != now;
    impl_->dataVersion = now;
    return changed;
}

void Store::markDelivered(std::span<const std::int64_t> deliveryIds, Millis now) {
    auto &db = impl_->db;
    sql::Transaction tx(db);
    for (const auto id : deliveryIds) {
        std::int64_t item = 0;
        std::string replyTo, output;
        {
            // A SELECT and an UPDATE: RETURNING would collect its row in a temporary b-tree.
            auto q = db.query("SELECT item_id, reply_to, output FROM delivery "
                              "WHERE id = ?1 AND state <> 'delivered'");
            q->bind(1, id);
            if (!q->step())
                continue; // already delivered (or unknown): marking again changes nothing
            item = q->int64(0);
            replyTo = q->text(1);
            output = q->text(2);
        }
        {
            auto q = db.query("UPDATE delivery SET state = 'delivered', updated_at = ?2 "
                              "WHERE id = ?1");
            q->bind(1, id).bind(2, now);
            q->run();
        }
        impl_->addEvent(item, now, "delivered",
                        output.empty() ? fmt::format("delivered to {}", replyTo)
                                       : fmt::format("wrote {}/{}", replyTo, output));
    }
    tx.commit();
}

std::size_t Store::markSending(std::span<const std::int64_t> deliveryIds, Millis now) {
    auto &db = impl_->db;
    std::size_t marked = 0;
    sql::Transaction tx(db);
    for (const auto id : deliveryIds) {
        std::int64_t item = 0;
        std::string replyTo, output;
        bool begunBefore = false;
        {
            auto q = db.query("SELECT item_id, reply_to, output, sent_at IS NOT NULL FROM "
                              "delivery WHERE id = ?1 AND state <> 'delivered'");
            q->bind(1, id);
            if (!q->step())
                continue;
            item = q->int64(0);
            replyTo = q->text(1);
            output = q->text(2);
            begunBefore = q->int64(3) != 0;
        }
        {
            auto q = db.query("UPDATE delivery SET sent_at = ?2 WHERE id = ?1");
            q->bind(1, id).bind(2, now);
            q->run();
        }
        ++marked;
        if (begunBefore)
            impl_->addEvent(item, now, "resend",
                            fmt::format("{} to {}: an earlier send was interrupted before its "
                                        "acceptance was recorded, so it may have arrived; sent "
                                        "again under the same Message-ID",
                                        output, replyTo));
    }
    tx.commit();
    return marked;
}

void Store::clearSending(std::span<const std::int64_t> deliveryIds) {
    auto &db = impl_->db;
    sql::Transaction tx(db);
    for (const auto id : deliveryIds) {
        auto q = db.query("UPDATE delivery SET sent_at = NULL WHERE id = ?1");
        q->bind(1, id);
        q->run();
    }
    tx.commit();
}

std::int64_t Store::countWaiting() {
    auto q = impl_->db.query(
        "SELECT count(*) FROM item WHERE state IN ('queued', 'relaying', 'deferred')");
    q->step();
    return q->int64(0);
}

std::vector<std::pair<State, std::int64_t>> Store::countByState() {
    std::vector<std::pair<State, std::int64_t>> out;
    for (std::size_t i = 0; i < stateNames.size(); ++i)
        out.emplace_back(static_cast<State>(i), 0);
    auto q = impl_->db.query("SELECT state, count(*) FROM item GROUP BY state");
    while (q->step())
        out[static_cast<std::size_t>(stateFromDb(q->text(0)))].second = q->int64(1);
    return out;
}

std::vector<ItemSummary> Store::list(std::optional<State> state, std::size_t limit) {
    std::vector<ItemSummary> out;
    auto q = impl_->db.query("SELECT id, state, kind, source, origin, attempts, reason, "
                             "created_at, updated_at FROM item "
                             "WHERE ?1 IS NULL OR state = ?1 ORDER BY id DESC LIMIT ?2");
    if (state)
        q->bind(1, stateName(*state));
    q->bind(2, static_cast<std::int64_t>(limit));
    while (q->step())
        out.push_back(impl_->readSummary(*q));
    return out;
}

std::optional<ItemDetail> Store::show(std::int64_t itemId) {
    auto &db = impl_->db;
    ItemDetail d;
    // One snapshot for the item, its arrivals and its events.
    sql::Transaction snapshot(db, sql::Transaction::Mode::ReadOnly);
    {
        auto q = db.query("SELECT id, state, kind, source, origin, attempts, reason, created_at, "
                          "updated_at, sha256, size, endpoint, transaction_id, sender_nonce, "
                          "recip_nonce, cmp_body, next_try, response_kind, response_detail, "
                          "length(response) FROM item WHERE id = ?1");
        q->bind(1, itemId);
        if (!q->step())
            return std::nullopt;
        d.summary = impl_->readSummary(*q);
        d.sha256 = q->text(9);
        d.size = static_cast<std::uint64_t>(q->int64(10));
        d.endpoint = q->text(11);
        d.transactionId = q->blob(12);
        d.senderNonce = q->blob(13);
        d.recipNonce = q->blob(14);
        if (auto body = q->optInt64(15))
            d.cmpBody = static_cast<int>(*body);
        d.nextTry = q->optInt64(16);
        d.responseKind = kindFromDb(q->text(17));
        d.responseDetail = q->text(18);
        if (auto n = q->optInt64(19))
            d.responseSize = static_cast<std::uint64_t>(*n);
    }
    {
        auto q = db.query("SELECT source, origin, reply_to, state FROM delivery "
                          "WHERE item_id = ?1 ORDER BY id");
        q->bind(1, itemId);
        while (q->step()) {
            d.arrivals.push_back({q->text(0), q->text(1), q->text(2)});
            d.deliveryStates.push_back(q->text(3));
        }
    }
    {
        auto q = db.query("SELECT at, what, detail FROM event WHERE item_id = ?1 ORDER BY id");
        q->bind(1, itemId);
        while (q->step())
            d.events.push_back({q->int64(0), q->text(1), q->text(2)});
    }
    return d;
}

// --- Operator commands ----------------------------------------------------------------------

namespace {

void refuseReadOnly(bool readOnly, std::string_view what) {
    if (readOnly)
        throw StoreError(fmt::format("{}: the store was opened read-only", what));
}

} // namespace

StoreStatus Store::status(Millis now) {
    auto &db = impl_->db;
    StoreStatus st;
    sql::Transaction snapshot(db, sql::Transaction::Mode::ReadOnly);
    st.counts = countByState();
    {
        // A relaying item whose lease has run out is not in flight: its run died (or is about
        // to record a late outcome). The next run queues it again.
        auto q = db.query("SELECT count(*) FROM item WHERE state = 'relaying' AND "
                          "(lease_until IS NULL OR lease_until <= ?1)");
        q->bind(1, now);
        if (q->step())
            st.orphaned = q->int64(0);
        auto &relaying = st.counts[static_cast<std::size_t>(State::Relaying)].second;
        relaying -= st.orphaned;
    }
    {
        auto q = db.query("SELECT id, created_at FROM item WHERE state IN ('queued', 'deferred', "
                          "'relaying') ORDER BY created_at, id LIMIT 1");
        if (q->step()) {
            st.oldestWaitingId = q->int64(0);
            st.oldestWaitingSince = q->int64(1);
        }
    }
    {
        // SQLite takes the other columns from the row where max() is found (documented for
        // bare columns with a single min/max aggregate).
        auto q = db.query("SELECT endpoint, id, state, reason, max(updated_at) FROM item "
                          "WHERE state IN ('deferred', 'failed', 'review') AND endpoint IS NOT "
                          "NULL AND reason IS NOT NULL GROUP BY endpoint ORDER BY endpoint");
        while (q->step())
            st.lastErrors.push_back(
                {q->text(0), q->int64(1), stateFromDb(q->text(2)), q->text(3), q->int64(4)});
    }
    return st;
}

ListPage Store::list(const ListFilter &f) {
    ListPage page;
    auto q = impl_->db.query(
        "SELECT id, state, kind, source, origin, attempts, reason, created_at, updated_at "
        "FROM item WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR source = ?2) "
        "AND (?3 IS NULL OR kind = ?3) AND (?4 IS NULL OR created_at < ?4) "
        "AND (?5 IS NULL OR created_at > ?5) ORDER BY id DESC LIMIT ?6");
    if (f.state)
        q->bind(1, stateName(*f.state));
    if (!f.source.empty())
        q->bind(2, f.source);
    if (f.kind)
        q->bind(3, kindInfo(*f.kind).id);
    q->bind(4, f.createdBefore).bind(5, f.createdAfter);
    // One more than asked: whether the list was cut is known without a count of everything.
    q->bind(6, static_cast<std::int64_t>(f.limit) + 1);
    while (q->step()) {
        if (page.items.size() == f.limit) {
            page.truncated = true;
            break;
        }
        page.items.push_back(impl_->readSummary(*q));
    }
    return page;
}

namespace {

// Moves each listed item from one of the allowed states to target, with an event; one
// transaction for all of them.
struct Transition {
    std::vector<std::string_view> from;
    std::string_view to;
    std::string_view what;   // event verb
    std::string_view detail; // event detail
    bool clearReason = true;
    bool restartAge = false; // created_at = now: retry.max_age counts from the retry
};

std::vector<Change> applyTransition(
    sql::Database &db, bool readOnly, std::span<const std::int64_t> ids, const Transition &t,
    Millis now,
    const std::function<void(std::int64_t, std::string_view, std::string_view)> &event) {
    refuseReadOnly(readOnly, t.what);
    std::vector<Change> out;
    sql::Transaction tx(db);
    for (const auto id : ids) {
        Change c;
        c.itemId = id;
        std::string state;
        {
            auto q = db.query("SELECT state FROM item WHERE id = ?1");
            q->bind(1, id);
            if (!q->step()) {
                c.why = "no such item";
                out.push_back(std::move(c));
                continue;
            }
            state = q->text(0);
        }
        c.state = stateFromDb(state);
        if (std::find(t.from.begin(), t.from.end(), state) == t.from.end()) {
            c.why = fmt::format("it is {}, not {}", state, fmt::join(t.from, " or "));
            out.push_back(std::move(c));
            continue;
        }
        auto q = db.query("UPDATE item SET state = ?2, next_try = CASE WHEN ?2 = 'queued' THEN ?3 "
                          "ELSE NULL END, reason = CASE WHEN ?4 THEN NULL ELSE reason END, "
                          "created_at = CASE WHEN ?5 THEN ?3 ELSE created_at END, "
                          "updated_at = ?3 WHERE id = ?1");
        q->bind(1, id)
            .bind(2, t.to)
            .bind(3, now)
            .bind(4, std::int64_t{t.clearReason})
            .bind(5, std::int64_t{t.restartAge});
        q->run();
        event(id, t.what, fmt::format("{} (was {})", t.detail, state));
        c.changed = true;
        c.state = stateFromDb(std::string(t.to));
        out.push_back(std::move(c));
    }
    tx.commit();
    return out;
}

} // namespace

std::vector<Change> Store::retry(std::span<const std::int64_t> ids, Millis now) {
    // The age that retry.max_age counts from starts again, as for a resubmission (ingest), or
    // an old item would fail at its first transient error.
    return applyTransition(impl_->db, impl_->readOnly, ids,
                           {{"failed", "review"},
                            "queued",
                            "retried",
                            "queued again by an operator: the CA will see this request again",
                            true,
                            true},
                           now,
                           [&](std::int64_t id, std::string_view what, std::string_view detail) {
                               impl_->addEvent(id, now, what, detail);
                           });
}

std::vector<Change> Store::retryFailed(Millis now) {
    std::vector<std::int64_t> ids;
    {
        auto q = impl_->db.query("SELECT id FROM item WHERE state = 'failed' ORDER BY id");
        while (q->step())
            ids.push_back(q->int64(0));
    }
    return retry(ids, now);
}

std::vector<Change> Store::hold(std::span<const std::int64_t> ids, Millis now) {
    return applyTransition(
        impl_->db, impl_->readOnly, ids,
        {{"queued", "deferred"}, "held", "held", "put aside by an operator", false, false}, now,
        [&](std::int64_t id, std::string_view what, std::string_view detail) {
            impl_->addEvent(id, now, what, detail);
        });
}

std::vector<Change> Store::release(std::span<const std::int64_t> ids, Millis now) {
    return applyTransition(
        impl_->db, impl_->readOnly, ids,
        {{"held"}, "queued", "released", "queued again by an operator", false, false}, now,
        [&](std::int64_t id, std::string_view what, std::string_view detail) {
            impl_->addEvent(id, now, what, detail);
        });
}

std::int64_t Store::purge(Millis before, Millis now) {
    (void)now;
    refuseReadOnly(impl_->readOnly, "purge");
    auto &db = impl_->db;
    sql::Transaction tx(db);
    // Final states only: an answered item with a delivery still to write, and everything that
    // may still change (queued .. held, awaiting, unmatched, review), stays.
    db.exec("CREATE TEMP TABLE IF NOT EXISTS purge_ids (id INTEGER PRIMARY KEY)");
    db.exec("DELETE FROM purge_ids");
    {
        auto q = db.query(
            "INSERT INTO purge_ids SELECT id FROM item i WHERE updated_at < ?1 AND "
            "(state IN ('failed', 'quarantined') OR (state = 'answered' AND NOT EXISTS "
            "(SELECT 1 FROM delivery d WHERE d.item_id = i.id AND d.state <> 'delivered')))");
        q->bind(1, before);
        q->run();
    }
    const std::int64_t n = db.queryInt("SELECT count(*) FROM purge_ids");
    db.exec("UPDATE item SET answers_item = NULL WHERE answers_item IN (SELECT id FROM purge_ids)");
    db.exec("DELETE FROM event WHERE item_id IN (SELECT id FROM purge_ids)");
    db.exec("DELETE FROM delivery WHERE item_id IN (SELECT id FROM purge_ids)");
    db.exec("DELETE FROM item WHERE id IN (SELECT id FROM purge_ids)");
    db.exec("DELETE FROM purge_ids");
    tx.commit();
    return n;
}

std::optional<StoredBytes> Store::storedBytes(std::int64_t itemId) {
    auto q = impl_->db.query("SELECT state, kind, der, response IS NOT NULL, response, "
                             "response_kind, response_detail FROM item WHERE id = ?1");
    q->bind(1, itemId);
    if (!q->step())
        return std::nullopt;
    StoredBytes b;
    b.itemId = itemId;
    b.state = stateFromDb(q->text(0));
    b.kind = kindFromDb(q->text(1));
    b.request = q->blob(2);
    if (q->int64(3) != 0)
        b.response = q->blob(4);
    b.responseKind = kindFromDb(q->text(5));
    b.responseDetail = q->text(6);
    return b;
}

Change Store::forceDeliver(std::int64_t itemId, Kind kind, std::string_view how, Millis now) {
    refuseReadOnly(impl_->readOnly, "deliver");
    auto &db = impl_->db;
    Change c;
    c.itemId = itemId;
    sql::Transaction tx(db);
    {
        auto q = db.query("SELECT state, response IS NOT NULL FROM item WHERE id = ?1");
        q->bind(1, itemId);
        if (!q->step()) {
            c.why = "no such item";
            return c;
        }
        c.state = stateFromDb(q->text(0));
        if (*c.state != State::Review) {
            c.why = fmt::format("it is {}, not review", stateName(*c.state));
            return c;
        }
        if (q->int64(1) == 0) {
            c.why = "no answer is stored for it";
            return c;
        }
    }
    {
        auto q = db.query("UPDATE item SET state = 'answered', response_kind = ?2, reason = NULL, "
                          "updated_at = ?3 WHERE id = ?1");
        q->bind(1, itemId).bind(2, kindInfo(kind).id).bind(3, now);
        q->run();
    }
    impl_->addEvent(itemId, now, "forced",
                    fmt::format("an operator accepted the stored answer as {} ({}); it is "
                                "written out for every arrival",
                                kindInfo(kind).id, how));
    tx.commit();
    c.changed = true;
    c.state = State::Answered;
    return c;
}

std::vector<std::int64_t> Store::expireAwaiting(Millis now) {
    auto &db = impl_->db;
    std::vector<std::int64_t> ids;
    sql::Transaction tx(db);
    std::vector<std::pair<std::int64_t, std::string>> due;
    {
        auto q = db.query("SELECT id, coalesce(endpoint, '') FROM item WHERE state = 'awaiting' "
                          "AND next_try IS NOT NULL AND next_try <= ?1 ORDER BY id");
        q->bind(1, now);
        while (q->step())
            due.emplace_back(q->int64(0), q->text(1));
    }
    for (const auto &[id, endpoint] : due) {
        const std::string reason =
            fmt::format("no answer came back from the media ({}) within the endpoint's "
                        "await_max_age_seconds; `pkirelay retry {}` writes the request out again",
                        endpoint, id);
        auto q = db.query("UPDATE item SET state = 'failed', reason = ?2, next_try = NULL, "
                          "updated_at = ?3 WHERE id = ?1 AND state = 'awaiting'");
        q->bind(1, id).bind(2, reason).bind(3, now);
        q->run();
        impl_->addEvent(id, now, "failed", reason);
        ids.push_back(id);
    }
    tx.commit();
    return ids;
}

MediaStatus Store::mediaStatus(Millis /*now*/) {
    auto &db = impl_->db;
    MediaStatus st;
    sql::Transaction snapshot(db, sql::Transaction::Mode::ReadOnly);
    st.awaiting = db.queryInt("SELECT count(*) FROM item WHERE state = 'awaiting'");
    st.returned = db.queryInt("SELECT count(DISTINCT item_id) FROM media_file WHERE returned_at "
                              "IS NOT NULL");
    st.expired = db.queryInt("SELECT count(*) FROM item WHERE state = 'failed' AND id IN "
                             "(SELECT item_id FROM media_file) AND reason LIKE 'no answer came "
                             "back from the media%'");
    st.quarantinedReturns = db.queryInt("SELECT count(*) FROM item WHERE state = 'quarantined' "
                                        "AND reason LIKE 'return leg:%'");
    {
        auto q = db.query("SELECT i.id, max(f.written_at), i.next_try FROM item i JOIN "
                          "media_file f ON f.item_id = i.id WHERE i.state = 'awaiting' GROUP BY "
                          "i.id ORDER BY max(f.written_at), i.id LIMIT 1");
        if (q->step()) {
            st.oldestId = q->int64(0);
            st.oldestSince = q->int64(1);
            st.oldestDeadline = q->optInt64(2).value_or(0);
        }
    }
    {
        auto q = db.query("SELECT f.endpoint, f.batch, min(f.written_at), count(*), "
                          "count(f.returned_at), sum(i.state = 'awaiting' AND f.id = (SELECT "
                          "max(id) FROM media_file g WHERE g.item_id = f.item_id)) FROM media_file "
                          "f JOIN item i ON i.id = f.item_id GROUP BY f.endpoint, f.batch ORDER "
                          "BY min(f.written_at) DESC, f.batch DESC LIMIT 50");
        while (q->step())
            st.batches.push_back(
                {q->text(0), q->int64(1), q->int64(2), q->int64(3), q->int64(4), q->int64(5)});
    }
    return st;
}

std::vector<MediaFileRow> Store::mediaFiles(std::string_view endpoint,
                                            std::optional<std::int64_t> batch) {
    std::vector<MediaFileRow> out;
    auto q = impl_->db.query(
        "SELECT f.endpoint, f.batch, f.name, f.item_id, f.size, f.sha256, i.state, f.written_at, "
        "f.returned_at, coalesce(f.returned_as, '') FROM media_file f JOIN item i ON i.id = "
        "f.item_id WHERE (?1 = '' OR f.endpoint = ?1) AND (?2 IS NULL OR f.batch = ?2) ORDER BY "
        "f.endpoint, f.batch, f.id");
    q->bind(1, endpoint).bind(2, batch);
    while (q->step())
        out.push_back({q->text(0), q->int64(1), q->text(2), q->int64(3),
                       static_cast<std::uint64_t>(q->int64(4)), q->text(5), stateFromDb(q->text(6)),
                       q->int64(7), q->optInt64(8), q->text(9)});
    return out;
}

} // namespace pkirelay::spool
