-- Schema 8 of the pkirelay store: when the whole store was last checked. Compiled in like 0001
-- (see its header for the characters this file must not contain).
--
-- PRAGMA quick_check reads every page, so its cost grows with the history the store holds
-- (about 0.6 s on a 427 MB store). Run at every open, it made every `run --once` from cron pay
-- for the whole history. It now runs at most once per interval (Store::kFullCheckSeconds), and
-- this one row says when it last passed; damage that a query meets in between is reported at
-- once all the same (SQLITE_CORRUPT).
CREATE TABLE store_check (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at      INTEGER NOT NULL  -- seconds since the epoch, of the last check that passed
);
