#!/usr/bin/env python3
"""Makes a pkirelay store that already holds COUNT finished items, quickly, by SQL.

It starts from a copy of SEED, a real store that pkirelay itself made by relaying a few requests
of each kind to the benchmark's responder (so the schema, the pragmas and the shape of every row
are pkirelay's own, schemas/0001_initial.sql), and adds COUNT answered-and-delivered items
modelled on SEED's answered items: each with its own content hash, transactionID and nonces, one
delivery (delivered) and the four events a relayed item has (received, relaying, answered,
delivered), older than anything in SEED. Relaying 500,000 messages to make this would take
longer than the whole benchmark.

usage: make_store.py SEED OUTPUT COUNT
"""
import os
import shutil
import sqlite3
import sys


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    seed, out, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    src = sqlite3.connect(seed)
    src.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    src.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(out + suffix):
            os.unlink(out + suffix)
    shutil.copyfile(seed, out)
    os.chmod(out, 0o600)  # as pkirelay makes its store
    db = sqlite3.connect(out, isolation_level=None)
    # Speed only while making it; pkirelay opens it in WAL mode with synchronous=FULL.
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-262144")
    templates = db.execute(
        "SELECT count(*) FROM item WHERE state = 'answered' AND response IS NOT NULL").fetchone()[0]
    if templates == 0:
        sys.exit("make_store: SEED has no answered item to copy")
    first = db.execute("SELECT min(created_at) FROM item").fetchone()[0]
    db.execute("BEGIN")
    db.execute("CREATE TEMP TABLE t AS SELECT row_number() OVER (ORDER BY id) - 1 AS k, * "
               "FROM item WHERE state = 'answered' AND response IS NOT NULL")
    db.execute("CREATE TEMP TABLE d AS SELECT item_id, source, reply_to FROM delivery")
    # New ids start above SEED's, but their times are older: finished history.
    base = db.execute("SELECT coalesce(max(id), 0) FROM item").fetchone()[0]
    db.execute(f"""
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count})
        INSERT INTO item (id, sha256, kind, state, source, origin, size, der, reason, cmp_pvno,
            cmp_body, transaction_id, sender_nonce, recip_nonce, sender_kid, cmc_status,
            pend_token, query_pending, sender, recipient, attempts, endpoint, response,
            response_kind, response_detail, response_sha256, created_at, updated_at)
        SELECT {base} + i, lower(hex(randomblob(32))), kind, 'answered', source,
            printf('old%08d', i) || substr(origin, instr(origin, '.')), size, der, NULL,
            cmp_pvno, cmp_body,
            CASE WHEN transaction_id IS NULL THEN NULL
                 ELSE randomblob(length(transaction_id)) END,
            CASE WHEN sender_nonce IS NULL THEN NULL ELSE randomblob(length(sender_nonce)) END,
            recip_nonce, sender_kid, cmc_status, pend_token, query_pending, sender, recipient,
            1, endpoint, response, response_kind, response_detail,
            lower(hex(randomblob(32))),
            {first} - ({count} - i) * 1000 - 1000, {first} - ({count} - i) * 1000 - 500
        FROM n JOIN t ON t.k = i % {templates}""")
    db.execute(f"""
        INSERT INTO delivery (item_id, source, origin, reply_to, arrival_sha256, state, output,
            created_at, updated_at)
        SELECT i.id, i.source, i.origin, coalesce(d.reply_to, '/nonexistent'), i.sha256,
            'delivered', substr(i.origin, 1, instr(i.origin, '.') - 1) || '.resp',
            i.created_at, i.updated_at
        FROM item i LEFT JOIN (SELECT source, min(reply_to) AS reply_to FROM d GROUP BY source) d
            ON d.source = i.source
        WHERE i.id > {base}""")
    for what, detail, at in (
            ("received", "'from ' || source || '/' || origin", "created_at"),
            ("relaying", "'attempt 1'", "created_at + 100"),
            ("answered", "'from ' || endpoint || ': ' || response_detail", "created_at + 200"),
            ("delivered", "'wrote ' || origin", "updated_at")):
        db.execute(f"INSERT INTO event (item_id, at, what, detail) "
                   f"SELECT id, {at}, '{what}', {detail} FROM item WHERE id > {base}")
    db.execute("COMMIT")
    db.execute("ANALYZE") if db.execute(
        "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone()[0] else None
    db.execute("PRAGMA journal_mode=WAL")
    db.close()


if __name__ == "__main__":
    main()
