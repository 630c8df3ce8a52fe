-- Schema 6 of the pkirelay store: the air-gap chain (issue 17). Compiled in like 0001 (see its
-- header for the characters this file must not contain).
--
-- One row per request file written onto removable media by a directory endpoint: which item,
-- in which batch, under which name, with which size and hash, and when (if ever) its answer
-- came back and under which name. An item written again (a batch cut short, a resend) has one
-- row per copy. `pkirelay media status` and the transfer report read this table; the return
-- leg marks a row returned when it matches an answer to the item.
--
-- An item waiting for its answer is in state 'awaiting' with next_try holding the time after
-- which it fails (the endpoint's await_max_age_seconds), so no column is added to item.
CREATE TABLE media_file (
    id              INTEGER PRIMARY KEY,
    item_id         INTEGER NOT NULL REFERENCES item(id),
    endpoint        TEXT NOT NULL,
    batch           INTEGER NOT NULL,
    name            TEXT NOT NULL,
    size            INTEGER NOT NULL,
    sha256          TEXT NOT NULL,
    written_at      INTEGER NOT NULL,
    returned_at     INTEGER,
    returned_as     TEXT            -- source/name of the answer that came back
);

CREATE INDEX media_file_item ON media_file (item_id);
CREATE INDEX media_file_batch ON media_file (endpoint, batch);
-- The awaiting items' deadlines, for the expiry sweep.
CREATE INDEX item_awaiting ON item (next_try) WHERE state = 'awaiting';
