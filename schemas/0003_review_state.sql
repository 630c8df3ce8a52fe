-- Schema 3 of the pkirelay store: the item state 'review' ("needs a person"): an answer the CA
-- gave that pkirelay could not accept (kept byte for byte in response, response_kind NULL,
-- response_detail saying why), or a request whose stored bytes no longer match their hash.
-- Applied inside BEGIN IMMEDIATE with foreign keys off (spool/store.cc, Store::open); compiled
-- in as a C++ raw string, so this file must not contain the raw string's terminator nor the at
-- sign that meson substitutes.
--
-- SQLite cannot alter a CHECK constraint, so the item table is rebuilt as SQLite's documentation
-- describes ("Making Other Kinds Of Table Schema Changes"): create the new table, copy every
-- row, drop the old one, rename, and recreate its indexes. delivery and event refer to item by
-- name, so they refer to the new table once it is renamed; ids are copied unchanged.

CREATE TABLE item_new (
    id              INTEGER PRIMARY KEY,
    sha256          TEXT NOT NULL UNIQUE,
    kind            TEXT,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'relaying', 'deferred', 'answered',
                        'failed', 'quarantined', 'held', 'awaiting', 'unmatched', 'review')),
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

CREATE INDEX item_ready ON item (state, next_try);
CREATE INDEX item_lease ON item (state, lease_until);
CREATE INDEX item_transaction ON item (transaction_id, sender_nonce)
    WHERE transaction_id IS NOT NULL;
CREATE INDEX item_recip_nonce ON item (recip_nonce) WHERE recip_nonce IS NOT NULL;
CREATE INDEX item_pend_token ON item (pend_token) WHERE pend_token IS NOT NULL;
CREATE INDEX item_response_sha256 ON item (response_sha256) WHERE response_sha256 IS NOT NULL;
CREATE INDEX item_answers ON item (answers_item) WHERE answers_item IS NOT NULL;
