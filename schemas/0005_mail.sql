-- Schema 5 of the pkirelay store: what mail sources (lib/sources/imap.cc) need. Compiled in
-- like 0001 (see its header for the characters this file must not contain).
--
-- delivery.context: what the responder needs of the request beyond where the answer goes. For
-- a mail it is the request's Message-ID, Subject and References (one "Name: value" line each),
-- so that the reply is threaded to it; empty for files.
ALTER TABLE delivery ADD COLUMN context TEXT NOT NULL DEFAULT '';

-- A source's position, written in the same transaction as the inputs it covers, so that a
-- crash never makes a source read again what the store already holds (for IMAP:
-- "UIDVALIDITY/last UID stored" of the mailbox).
CREATE TABLE source_cursor (
    source          TEXT PRIMARY KEY,
    position        TEXT NOT NULL,
    updated_at      INTEGER NOT NULL
);
