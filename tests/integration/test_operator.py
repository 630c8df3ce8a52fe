"""The operator's commands against a real store (issue 13), driving the real binary.

Requests are PKCS#10 files made by `openssl req`, relayed to tests/cmc_responder.py on loopback.
Where a state cannot be reached through a run yet (a review item, a lease left by a dead run,
an item last changed days ago), the test puts the store in it with sqlite3, as a person or a
failing disk would. Covered:
- a store with a damaged page: status, list, show and run exit 74, loudly (defect 5);
- an emptied (0-byte) store is refused by the views (66), not shown as empty;
- the views work while a run holds the lock, and on a store whose folder is not writable;
- status: counts, the oldest waiting item, the last error per endpoint, and relaying items
  whose run died shown apart (orphaned);
- list: filters, and the cut said on stderr and in JSON;
- hold/release keep an item from the CA and give it back; retry sends a failed one again;
- export writes request and answer bytes without replacing files; deliver --force delivers a
  review item's stored answer, and refuses an answer that is no PKI message;
- purge removes only final items; JSON gives names exactly, the terminal gets them escaped;
- --quiet and log.level keep info lines out; check-config never prints a URL's password.
"""
import fcntl
import json
import os
import pwd
import shutil
import sqlite3
import stat
import sys
import time
import unittest

from harness import PKIRELAY, TESTS_DIR, Peer, PkirelayTestCase, openssl, run


class Operator(PkirelayTestCase):

    def setUp(self):
        super().setUp()
        self.log = os.path.join(self.tmp, "responder.log")
        self.store = os.path.join(self.tmp, "store.db")

    def start_responder(self, *extra):
        peer = Peer([sys.executable, os.path.join(TESTS_DIR, "cmc_responder.py"),
                     "--log", self.log, *extra], "LISTENING")
        self.peers.append(peer)
        return int(peer.ready_line.split()[1])

    def configure(self, *extra, port=None, **kw):
        port = port or self.start_responder(*extra)
        self.write_config(f"http://127.0.0.1:{port}/cmc", **kw)


    def cmd(self, *args, expect=0):
        proc = self.pkirelay(*args, "-c", self.config)
        self.assertEqual(proc.returncode, expect,
                         f"pkirelay {' '.join(args)} exited {proc.returncode}\n"
                         f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def js(self, *args, expect=0):
        return json.loads(self.cmd(*args, "--json", expect=expect).stdout)

    def sql(self, statement, *params):
        db = sqlite3.connect(self.store)
        try:
            with db:  # commits
                db.execute(statement, params)
        finally:
            db.close()  # the last connection: SQLite checkpoints the WAL and removes it

    def sql_value(self, query, *params):
        with sqlite3.connect(self.store) as db:
            return db.execute(query, params).fetchone()[0]

    def answered_item(self, name="a.p10"):
        """One request relayed and answered; returns its id."""
        self.configure()
        self.csr(name)
        self.run_once(expect=0)
        (item,) = self.js("list")["items"]
        self.assertEqual(item["state"], "answered")
        return item["id"]

    # --- defect 5: a damaged or emptied store --------------------------------------------

    def test_damaged_store_exits_74_everywhere(self):
        item = self.answered_item()
        # The whole store is read (PRAGMA quick_check) at most once an hour; make it due, as
        # if the last check were long ago. Damage that a query meets is reported at once.
        self.sql("UPDATE store_check SET checked_at = 0")
        wal = self.store + "-wal"
        self.assertFalse(os.path.exists(wal) and os.path.getsize(wal), "the WAL must be empty")
        page = self.sql_value("PRAGMA page_size")
        with open(self.store, "r+b") as f:  # one b-tree page overwritten
            f.seek(2 * page)
            f.write(b"\x5a" * page)
        for args in (["status"], ["list"], ["show", str(item)], ["status", "--json"]):
            proc = self.cmd(*args, expect=74)
            self.assertIn("STORE DAMAGED", proc.stderr)
        proc = self.pkirelay("run", "--once", "-c", self.config)
        self.assertEqual(proc.returncode, 74, proc.stderr)
        self.assertIn("STORE DAMAGED", proc.stderr)

    def test_emptied_store_is_not_shown_as_empty(self):
        self.answered_item()
        os.truncate(self.store, 0)
        for args in (["status"], ["list"], ["show", "1"]):
            proc = self.cmd(*args, expect=66)
            self.assertIn("empty (0 bytes)", proc.stderr)
        # A store that was never made is still simply "nothing yet".
        os.unlink(self.store)
        self.assertIn("no store", self.cmd("status").stderr)
        self.assertFalse(os.path.exists(self.store), "a view must not create a store")

    # --- read-only views ------------------------------------------------------------------

    def test_views_work_while_a_run_holds_the_lock(self):
        item = self.answered_item()
        self.csr("b.p10")
        with open(self.store, "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # as a running `pkirelay run` holds it
            self.assertEqual(self.js("status")["counts"]["answered"], 1)
            self.assertEqual(len(self.js("list")["items"]), 1)
            self.assertEqual(self.js("show", str(item))["state"], "answered")
            self.cmd("hold", str(item), expect=65)  # answered: not holdable, but no lock wait
            self.assertIn("another pkirelay run", self.pkirelay(
                "run", "--once", "-c", self.config).stderr)

    def test_views_read_a_store_in_a_folder_they_cannot_write(self):
        item = self.answered_item()
        ro = os.path.join(self.tmp, "ro")
        os.mkdir(ro)
        shutil.copy(self.store, os.path.join(ro, "store.db"))
        os.chmod(os.path.join(ro, "store.db"), 0o644)
        config = os.path.join(ro, "pkirelay.toml")
        with open(self.config) as f:
            text = f.read().replace(self.store, os.path.join(ro, "store.db"))
        with open(config, "w") as f:
            f.write(text)
        os.chmod(config, 0o644)
        os.chmod(ro, 0o555)
        os.chmod(self.tmp, 0o755)
        prefix = []
        if os.geteuid() == 0:  # root writes anywhere: read as an unprivileged user instead
            nobody = pwd.getpwnam("nobody")
            prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                      "--clear-groups"]
        try:
            for args in (["status", "--json"], ["list", "--json"], ["show", str(item), "--json"]):
                proc = run(prefix + [PKIRELAY, *args, "-c", config], check=False)
                self.assertEqual(proc.returncode, 0, proc.stderr)
                json.loads(proc.stdout)
            self.assertEqual(sorted(os.listdir(ro)), ["pkirelay.toml", "store.db"],
                             "a read-only view must leave nothing behind")
        finally:
            os.chmod(ro, 0o755)

    # --- status and list ----------------------------------------------------------------

    def test_status_counts_oldest_waiting_last_error_and_orphaned(self):
        port = self.start_responder("--fail-status", "503")
        self.configure(port=port)
        self.csr("a.p10")
        self.csr("b.p10")
        self.run_once(expect=75)
        st = self.js("status")
        self.assertEqual(st["counts"]["deferred"], 2)
        self.assertEqual(st["counts"]["review"], 0)
        self.assertIsNotNone(st["oldest_waiting"])
        (err,) = st["last_errors"]
        self.assertEqual(err["endpoint"], "ca")
        self.assertIn("503", err["reason"])
        text = self.cmd("status").stdout
        self.assertIn("oldest waiting: item", text)
        self.assertIn("last error at ca", text)

        # A run that died mid-send leaves its items marked relaying with a lease that has run
        # out: they are not in flight, and status says so.
        self.sql("UPDATE item SET state = 'relaying', lease_until = 1000 WHERE id = 1")
        st = self.js("status")
        self.assertEqual(st["counts"]["relaying"], 0)
        self.assertEqual(st["orphaned"], 1)
        self.assertIn("orphaned", self.cmd("status").stdout)

    def test_list_filters_and_says_when_it_is_cut(self):
        self.configure()
        for n in range(3):
            self.csr(f"r{n}.p10")
        self.run_once(expect=0)
        page = self.js("list", "-n", "2")
        self.assertEqual(len(page["items"]), 2)
        self.assertTrue(page["truncated"])
        proc = self.cmd("list", "-n", "2")
        self.assertIn("cut at 2", proc.stderr)
        self.assertFalse(self.js("list", "-n", "3")["truncated"])
        self.assertEqual(len(self.js("list", "--state", "answered")["items"]), 3)
        self.assertEqual(self.js("list", "--state", "failed")["items"], [])
        self.assertEqual(len(self.js("list", "--kind", "cmc-simple-request")["items"]), 3)
        self.assertEqual(self.js("list", "--kind", "cmp")["items"], [])
        self.assertEqual(len(self.js("list", "--source", "inbox")["items"]), 3)
        self.assertEqual(self.js("list", "--source", "elsewhere")["items"], [])
        self.assertEqual(len(self.js("list", "--newer-than", "1h")["items"]), 3)
        self.assertEqual(self.js("list", "--older-than", "1h")["items"], [])
        self.sql("UPDATE item SET created_at = created_at - 2 * 86400000 WHERE id = 1")
        (old,) = self.js("list", "--older-than", "1d")["items"]
        self.assertEqual(old["id"], 1)
        self.cmd("list", "--older-than", "soon", expect=64)
        self.cmd("list", "--state", "nonsense", expect=64)

    def test_json_gives_names_exactly_and_the_terminal_escaped(self):
        self.configure()
        tricky = "esc\x1b[31mred.p10"
        latin1 = b"caf\xe9.p10"
        self.csr(tricky)
        os.rename(self.csr("plain.p10", folder=self.tmp), os.path.join(self.inbox.encode(),
                                                                       latin1))
        self.run_once(expect=0)
        items = {i["id"]: i for i in self.js("list")["items"]}
        origins = [i["origin"] for i in items.values()]
        self.assertIn(tricky, origins)
        (hexed,) = [i for i in items.values() if "origin_hex" in i]
        self.assertEqual(bytes.fromhex(hexed["origin_hex"]), latin1)
        text = self.cmd("list").stdout
        self.assertNotIn("\x1b", text)
        self.assertIn("esc\\x1b[31mred.p10", text)

    # --- hold, release, retry -----------------------------------------------------------

    def test_hold_keeps_an_item_from_the_ca_until_released(self):
        port = self.start_responder("--fail-status", "503")
        self.configure(port=port)
        self.csr("a.p10")
        self.run_once(expect=75)
        self.assertEqual(self.requests_seen(), 1)
        self.assertEqual(self.js("hold", "1")[0]["state"], "held")
        self.sql("UPDATE item SET next_try = 0")  # the retry would be due now
        self.run_once(expect=0)
        self.assertEqual(self.requests_seen(), 1, "a held item must not be sent")
        self.cmd("release", "1")
        self.cmd("release", "1", expect=65)  # no longer held
        self.run_once(expect=75)
        self.assertEqual(self.requests_seen(), 2)
        events = [e["what"] for e in self.js("show", "1")["events"]]
        self.assertIn("held", events)
        self.assertIn("released", events)

    def test_retry_sends_a_failed_item_again(self):
        port = self.start_responder("--fail-status", "400")
        self.configure(port=port)
        self.csr("a.p10")
        self.run_once(expect=65)
        self.assertEqual(self.js("list")["items"][0]["state"], "failed")
        self.configure()  # a working CA now
        self.cmd("retry", expect=64)  # ids or --failed
        (change,) = self.js("retry", "--failed")
        self.assertTrue(change["changed"])
        self.run_once(expect=0)
        self.assertTrue(os.path.exists(os.path.join(self.inbox, "a.p7c")))
        self.assertIn("retried", [e["what"] for e in self.js("show", "1")["events"]])
        self.cmd("retry", "1", expect=65)  # answered: nothing to retry

    # --- review items: export and deliver --force ----------------------------------------

    def make_review(self, item, response=None):
        """Puts an answered item back where an unusable answer leaves it: review, the answer
        kept without a kind, its delivery not written."""
        self.sql("UPDATE item SET state = 'review', response_kind = NULL, "
                 "response_detail = 'trailing bytes', reason = 'answer not accepted' "
                 "WHERE id = ?", item)
        if response is not None:
            self.sql("UPDATE item SET response = ? WHERE id = ?", response, item)
        self.sql("UPDATE delivery SET state = 'pending', output = NULL WHERE item_id = ?", item)

    def test_export_writes_request_and_answer_without_replacing(self):
        item = self.answered_item()
        with open(os.path.join(self.inbox, "a.p7c"), "rb") as f:
            answer = f.read()
        os.unlink(os.path.join(self.inbox, "a.p7c"))
        self.make_review(item)
        self.assertIn("needs a person", self.cmd("show", str(item)).stdout)
        out = os.path.join(self.tmp, "out")
        os.mkdir(out)
        files = self.js("export", str(item), "--dir", out)
        self.assertEqual(os.path.basename(files["request"]), f"{item}-request.p10")
        self.assertEqual(os.path.basename(files["answer"]), f"{item}-answer.p7c")
        with open(files["answer"], "rb") as f:
            self.assertEqual(f.read(), answer)
        with open(files["request"], "rb") as f, open(os.path.join(self.inbox, "a.p10"), "rb") as g:
            self.assertEqual(f.read(), g.read())
        proc = self.cmd("export", str(item), "--dir", out, expect=73)  # never replaces
        self.assertIn("not written", proc.stderr)
        # An answer that is no PKI message is exported as .bin, byte for byte.
        self.make_review(item, response=b"<html>Internal error</html>")
        other = os.path.join(self.tmp, "other")
        os.mkdir(other)
        files = self.js("export", str(item), "--dir", other)
        self.assertTrue(files["answer"].endswith(f"{item}-answer.bin"))
        self.assertIn("Internal error", self.cmd("show", str(item)).stdout)

    def test_deliver_force_writes_the_stored_answer_out(self):
        item = self.answered_item()
        with open(os.path.join(self.inbox, "a.p7c"), "rb") as f:
            answer = f.read()
        os.unlink(os.path.join(self.inbox, "a.p7c"))
        self.make_review(item)
        self.run_once(expect=0)
        self.assertFalse(os.path.exists(os.path.join(self.inbox, "a.p7c")),
                         "a review item's answer is not delivered by itself")
        self.cmd("deliver", str(item), expect=64)  # needs --force
        self.cmd("deliver", str(item), "--force")
        self.assertEqual(self.js("show", str(item))["state"], "answered")
        self.run_once(expect=0)
        with open(os.path.join(self.inbox, "a.p7c"), "rb") as f:
            self.assertEqual(f.read(), answer)
        self.assertEqual(self.requests_seen(), 1, "the CA is never asked again")
        self.assertIn("forced", [e["what"] for e in self.js("show", str(item))["events"]])

    def test_deliver_force_refuses_an_answer_that_is_no_pki_message(self):
        item = self.answered_item()
        self.make_review(item, response=b"not a PKI message")
        proc = self.cmd("deliver", str(item), "--force", expect=65)
        self.assertIn("not a PKI message", proc.stderr)
        self.assertEqual(self.js("show", str(item))["state"], "review")

    # --- purge ------------------------------------------------------------------------------

    def test_purge_removes_only_final_items(self):
        port = self.start_responder("--fail-status", "503")
        self.configure(port=port)
        self.csr("waiting.p10")
        self.run_once(expect=75)
        self.configure()
        self.csr("done.p10")
        self.sql("UPDATE item SET next_try = 9223372036854775807")  # keep waiting.p10 waiting
        self.run_once(expect=75)
        self.sql("UPDATE item SET updated_at = updated_at - 2 * 86400000")
        self.assertEqual(self.js("purge", "--older-than", "3d")["purged"], 0)
        self.assertEqual(self.js("purge", "--older-than", "1d")["purged"], 1)
        (left,) = self.js("list")["items"]
        self.assertEqual(left["origin"], "waiting.p10")
        self.assertEqual(self.sql_value("SELECT count(*) FROM event WHERE item_id = 2"), 0)
        self.cmd("purge", expect=64)  # --older-than is required

    # --- logs ---------------------------------------------------------------------------------

    def test_quiet_and_log_level_keep_info_lines_out(self):
        self.configure()
        self.csr("a.p10")
        proc = self.pkirelay("run", "--once", "--quiet", "-c", self.config)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertNotIn(" info ", proc.stderr)
        self.csr("b.p10")
        self.configure(extra='[log]\nlevel = "error"')
        proc = self.pkirelay("run", "--once", "-c", self.config)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertNotIn(" info ", proc.stderr)
        self.csr("c.p10")
        proc = self.pkirelay("run", "--once", "--verbose", "-c", self.config)
        self.assertIn(" info ", proc.stderr)
        self.configure(extra='[log]\nlevel = "loud"')
        self.cmd("check-config", expect=78)

    def test_check_config_never_prints_a_password_from_a_url(self):
        self.write_config("http://relay:s3cret@127.0.0.1:9/cmc")
        proc = self.cmd("check-config")
        self.assertNotIn("s3cret", proc.stdout + proc.stderr)
        self.assertIn("http://127.0.0.1:9/cmc", proc.stdout)


if __name__ == "__main__":
    unittest.main()
