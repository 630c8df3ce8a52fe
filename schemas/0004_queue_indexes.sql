-- Schema 4 of the pkirelay store: the same tables, checked and indexed at a cost that follows
-- the work, not the history. Applied inside BEGIN IMMEDIATE with foreign keys off (like 0003);
-- compiled in as a C++ raw string, so this file must not contain the raw string's terminator
-- nor the at sign that meson substitutes.
--
-- 1. The state CHECK constraints are written as comparisons joined by OR. SQLite evaluates a
--    CHECK with an IN list of more than two values by building a temporary b-tree of the list
--    for every row written: that was most of the cost of each INSERT and UPDATE (a page zeroed,
--    a b-tree opened and rolled back, several times per message). The values allowed are the
--    same. SQLite cannot alter a CHECK constraint, so item and delivery are rebuilt as 0003
--    did (SQLite's "Making Other Kinds Of Table Schema Changes"); ids are copied unchanged.
-- 2. item_ready (state, next_try) and item_lease (state, lease_until) held every item, and a
--    claim of the queue in id order collected and sorted every queued item, a cost per claim
--    that grew with the backlog. Now item_state (state) keeps the items of a state in id
--    order: a claim reads the queue oldest first and stops at its limit, counting by state
--    reads the index alone, and the relaying items (at most what is in flight, or what a dead
--    run left) are found through it. item_ready holds only deferred items, by the time they
--    are due; queries name the state literally (state = 'deferred'), which is what lets SQLite
--    use a partial index.

CREATE TABLE item_new (
    id              INTEGER PRIMARY KEY,
    sha256          TEXT NOT NULL UNIQUE,
    kind            TEXT,
    state           TEXT NOT NULL CHECK (state = 'queued' OR state = 'relaying' OR
                        state = 'deferred' OR state = 'answered' OR state = 'failed' OR
                        state = 'quarantined' OR state = 'held' OR state = 'awaiting' OR
                        state = 'unmatched' OR state = 'review'),
    source          TEXT NOT NULL,
    origin          TEXT NOT NULL,
    size            INTEGER NOT NULL,
    der             BLOB,
    reason          TEXT,
    cmp_pvno        INTEGER,
    cmp_body        INTEGER,
    transaction_id  BLOB,
    sender_nonce    BLOB,
    recip_nonce     BLOB,
    sender_kid      BLOB,
    cmc_status      INTEGER,
    pend_token      BLOB,
    query_pending   BLOB,
    sender          TEXT,
    recipient       TEXT,
    answers_item    INTEGER REFERENCES item(id),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_try        INTEGER,
    lease_until     INTEGER,
    outcome_unknown INTEGER NOT NULL DEFAULT 0 CHECK (outcome_unknown IN (0, 1)),
    endpoint        TEXT,
    response        BLOB,
    response_kind   TEXT,
    response_detail TEXT,
    response_sha256 TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

INSERT INTO item_new (id, sha256, kind, state, source, origin, size, der, reason, cmp_pvno,
                      cmp_body, transaction_id, sender_nonce, recip_nonce, sender_kid,
                      cmc_status, pend_token, query_pending, sender, recipient, answers_item,
                      attempts, next_try, lease_until, outcome_unknown, endpoint, response,
                      response_kind, response_detail, response_sha256, created_at, updated_at)
SELECT id, sha256, kind, state, source, origin, size, der, reason, cmp_pvno,
       cmp_body, transaction_id, sender_nonce, recip_nonce, sender_kid,
       cmc_status, pend_token, query_pending, sender, recipient, answers_item,
       attempts, next_try, lease_until, outcome_unknown, endpoint, response,
       response_kind, response_detail, response_sha256, created_at, updated_at
FROM item;

DROP TABLE item;
ALTER TABLE item_new RENAME TO item;

CREATE INDEX item_state ON item (state);
CREATE INDEX item_ready ON item (next_try) WHERE state = 'deferred';
CREATE INDEX item_transaction ON item (transaction_id, sender_nonce)
    WHERE transaction_id IS NOT NULL;
CREATE INDEX item_recip_nonce ON item (recip_nonce) WHERE recip_nonce IS NOT NULL;
CREATE INDEX item_pend_token ON item (pend_token) WHERE pend_token IS NOT NULL;
CREATE INDEX item_response_sha256 ON item (response_sha256) WHERE response_sha256 IS NOT NULL;
CREATE INDEX item_answers ON item (answers_item) WHERE answers_item IS NOT NULL;

CREATE TABLE delivery_new (
    id              INTEGER PRIMARY KEY,
    item_id         INTEGER NOT NULL REFERENCES item(id),
    source          TEXT NOT NULL,
    origin          TEXT NOT NULL,
    reply_to        TEXT NOT NULL,
    arrival_sha256  TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending'
                        CHECK (state = 'pending' OR state = 'writing' OR state = 'delivered'),
    output          TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    ack             TEXT CHECK (ack IN ('kept', 'removed'))
);

INSERT INTO delivery_new (id, item_id, source, origin, reply_to, arrival_sha256, state, output,
                          created_at, updated_at, ack)
SELECT id, item_id, source, origin, reply_to, arrival_sha256, state, output, created_at,
       updated_at, ack
FROM delivery;

DROP TABLE delivery;
ALTER TABLE delivery_new RENAME TO delivery;

CREATE INDEX delivery_arrival ON delivery (source, origin, arrival_sha256);
CREATE INDEX delivery_output ON delivery (reply_to, output);
CREATE INDEX delivery_item ON delivery (item_id);
CREATE INDEX delivery_open ON delivery (item_id) WHERE state IN ('pending', 'writing');
CREATE UNIQUE INDEX delivery_reserved ON delivery (reply_to, output)
    WHERE state = 'writing' AND output IS NOT NULL;
