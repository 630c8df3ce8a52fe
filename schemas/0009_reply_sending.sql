-- Schema 9 of the pkirelay store: replies whose sending has begun. Compiled in like 0001 (see its
-- header for the characters this file must not contain).
--
-- A file written twice is the same file; a mail sent twice is two mails. For a responder that
-- cannot repeat a delivery harmlessly (SMTP), delivery.sent_at is set and committed before the
-- reply goes to the server, cleared when the server refused it or could not be reached, and
-- the delivery is recorded as delivered right after the server's 250. A delivery found still
-- holding sent_at was interrupted between the hand-over and the record: the reply may have gone
-- out. It is sent again under the same Message-ID (SMTP cannot be asked whether it took a
-- message), and that resend is an event of the item (Store::markSending), never silent.
ALTER TABLE delivery ADD COLUMN sent_at INTEGER;  -- ms since the epoch; NULL: no send under way
-- A delivery that schema 8 left 'writing' had its name (for a reply: its Message-ID) reserved and
-- may have been handed over already: schema 8 recorded replies lazily, after the 250. It counts
-- as begun, so that its next send is recorded as a resend (for a response file the mark is
-- never read).
UPDATE delivery SET sent_at = updated_at WHERE state = 'writing';
