-- Schema 2 of the pkirelay store: what the event-driven pipeline records beyond schema 1.
-- Compiled in like 0001 (see its header for the characters this file must not contain).
--
-- delivery.ack: whether the source acknowledged this arrival. NULL: not yet (a run stopped
-- between commit and acknowledgement: the next look acknowledges it, it is not a new arrival);
-- 'kept': left in place on purpose (after = "keep", or a file too large to store whole): seeing
-- the same bytes under the same name again is the same arrival; 'removed': deleted or moved
-- away, so the same bytes under the same name appearing later are a new arrival (a client
-- sending again), which gets the recorded answer or, for a failed item, is retried.
ALTER TABLE delivery ADD COLUMN ack TEXT CHECK (ack IN ('kept', 'removed'));

-- A response file name is reserved in the store before the file is written (state writing),
-- and no two unfinished deliveries may hold the same name in the same folder: two requests of
-- the same name can never share one response file. Folders are stored canonical (resolved,
-- without a trailing slash), so one folder has one spelling. Earlier duplicates, which schema 1
-- allowed, lose their reservation and are planned again.
UPDATE delivery SET output = NULL, state = 'pending'
    WHERE state = 'writing' AND id NOT IN (
        SELECT min(id) FROM delivery WHERE state = 'writing' AND output IS NOT NULL
        GROUP BY reply_to, output);
CREATE UNIQUE INDEX delivery_reserved ON delivery (reply_to, output)
    WHERE state = 'writing' AND output IS NOT NULL;
