-- Schema 1 of the pkirelay store (spool/store.cc). Applied inside BEGIN IMMEDIATE together with
-- PRAGMA user_version = 1. It is compiled into the program as a C++ raw string, so this file
-- must not contain the raw string's terminator nor the at sign that meson substitutes.
--
-- Three tables: one row per unique message (item), one row per arrival of it (delivery: where
-- it came from and where its answer goes), and an append-only history (event). States are text
-- so that `sqlite3 pkirelay.db` is readable by an operator; times are Unix milliseconds.

CREATE TABLE item (
    id              INTEGER PRIMARY KEY,
    -- Content hash, lower-case hex: of the DER for messages, of the raw input for quarantined
    -- ones. The same bytes are one item however often they arrive.
    sha256          TEXT NOT NULL UNIQUE,
    kind            TEXT,           -- lib/kinds.h id; NULL when quarantined
    state           TEXT NOT NULL CHECK (state IN ('queued', 'relaying', 'deferred', 'answered',
                        'failed', 'quarantined', 'held', 'awaiting', 'unmatched')),
    source          TEXT NOT NULL,  -- of the first arrival: routing is decided from it
    origin          TEXT NOT NULL,  -- of the first arrival
    size            INTEGER NOT NULL,  -- of the first arrival's raw input
    der             BLOB,           -- the message as relayed; raw input when quarantined (may be NULL)
    reason          TEXT,           -- why it is deferred, failed or quarantined

    -- Correlation keys, NULL when absent. CMP (RFC 9810 §5.1.1) and CMC (RFC 10002 §6) share
    -- the columns: transaction_id is the CMP transactionID or the CMC transactionId control's
    -- INTEGER content octets; the nonces likewise. kind tells the two protocols apart.
    -- They serve duplicate detection (the same transaction and senderNonce is the same
    -- request) and, for answers that come back by another route days later (removable media),
    -- matching a response to its request: response.transaction_id = request.transaction_id and
    -- response.recip_nonce = request.sender_nonce; CMC pendToken; or the content hash.
    cmp_pvno        INTEGER,
    cmp_body        INTEGER,        -- PKIBody tag
    transaction_id  BLOB,
    sender_nonce    BLOB,
    recip_nonce     BLOB,
    sender_kid      BLOB,
    cmc_status      INTEGER,        -- CMCStatus, in responses
    pend_token      BLOB,           -- CMC pendInfo.pendToken (responses), echoed by queryPending
    query_pending   BLOB,           -- CMC id-cmc-queryPending (requests)
    sender          TEXT,
    recipient       TEXT,
    -- A response item that was matched to the request it answers (the media return path).
    answers_item    INTEGER REFERENCES item(id),

    -- Relaying.
    attempts        INTEGER NOT NULL DEFAULT 0,  -- sends so far
    next_try        INTEGER,        -- queued/deferred: not before this time
    lease_until     INTEGER,        -- relaying: the claim's lease
    -- 1 when the last attempt's lease expired before its outcome was recorded: the next send
    -- is a resend the CA may see twice, and its event says so.
    outcome_unknown INTEGER NOT NULL DEFAULT 0 CHECK (outcome_unknown IN (0, 1)),
    endpoint        TEXT,           -- the endpoint last tried

    -- The answer.
    response        BLOB,           -- byte for byte as the CA sent it
    response_kind   TEXT,           -- kind id; NULL when there is nothing to deliver
    response_detail TEXT,           -- e.g. "HTTP 200 application/pkixcmp"
    response_sha256 TEXT,           -- so a response arriving later by another route is known

    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

-- The relay stage's scan: queued, and deferred whose next_try has come; relaying by lease.
CREATE INDEX item_ready ON item (state, next_try);
CREATE INDEX item_lease ON item (state, lease_until);
-- Duplicate detection and request/response matching by transaction and nonce.
CREATE INDEX item_transaction ON item (transaction_id, sender_nonce)
    WHERE transaction_id IS NOT NULL;
CREATE INDEX item_recip_nonce ON item (recip_nonce) WHERE recip_nonce IS NOT NULL;
CREATE INDEX item_pend_token ON item (pend_token) WHERE pend_token IS NOT NULL;
CREATE INDEX item_response_sha256 ON item (response_sha256) WHERE response_sha256 IS NOT NULL;
CREATE INDEX item_answers ON item (answers_item) WHERE answers_item IS NOT NULL;

CREATE TABLE delivery (
    id              INTEGER PRIMARY KEY,
    item_id         INTEGER NOT NULL REFERENCES item(id),
    source          TEXT NOT NULL,
    origin          TEXT NOT NULL,  -- file name in the source folder (later: a Message-ID)
    reply_to        TEXT NOT NULL,  -- folder the response file goes to (later: an address)
    arrival_sha256  TEXT NOT NULL,  -- of the raw input as found, for known-arrival checks
    -- pending: waiting for an answer; writing: output name chosen, file maybe written;
    -- delivered: written and synced (or nothing to deliver).
    state           TEXT NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'writing', 'delivered')),
    output          TEXT,           -- response file name chosen in reply_to
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE INDEX delivery_arrival ON delivery (source, origin, arrival_sha256);
CREATE INDEX delivery_output ON delivery (reply_to, output);
CREATE INDEX delivery_item ON delivery (item_id);
-- The response writer's scan: only deliveries not yet done.
CREATE INDEX delivery_open ON delivery (item_id) WHERE state IN ('pending', 'writing');

CREATE TABLE event (
    id              INTEGER PRIMARY KEY,
    item_id         INTEGER NOT NULL REFERENCES item(id),
    at              INTEGER NOT NULL,
    what            TEXT NOT NULL,  -- short verb: received, relaying, deferred, answered, ...
    detail          TEXT NOT NULL DEFAULT ''
);

CREATE INDEX event_item ON event (item_id, id);
