-- Schema 7 of the pkirelay store: the per-sender rate limit of mail sources
-- (rate_limit_per_hour). Compiled in like 0001 (see its header for the characters this file must
-- not contain).
--
-- One row per mail a sender got relayed, written in the same transaction as the mail's intake
-- (Submission::rateSender), so that the count survives between runs (run --once from cron, a
-- restart) and a crash neither loses a mail's count nor counts it twice: a mail stored and not
-- yet moved is recognised on the next look and not counted again. Rows older than the window
-- (one hour) count for nothing and are deleted by the ingest that adds a row, so the table
-- holds at most the last hour's relayed mails.
CREATE TABLE sender_intake (
    id              INTEGER PRIMARY KEY,
    source          TEXT NOT NULL,
    sender          TEXT NOT NULL,  -- the address answered, lower-cased
    at              INTEGER NOT NULL
);

CREATE INDEX sender_intake_sender ON sender_intake (source, sender, at);
CREATE INDEX sender_intake_at ON sender_intake (at);
