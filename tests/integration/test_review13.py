"""Issue 13's promises attacked on main as a hostile client and an unlucky operator would (the
review13 pass): each case failed on main before its fix (or is marked expectedFailure with the
reason where the fix is larger than the review).

- a request whose name is long (NAME_MAX allows 255 bytes) could never be deleted or moved: its
  private acknowledgement name (".NAME.pkirelay-ack") is 14 bytes longer than NAME_MAX allows;
- a store deleted (or replaced) under a running daemon: the daemon went on recording into the
  unlinked file and deleting request files, which were then lost with it;
- a source watching another source's move_to took every moved request in again and answered it
  twice; check-config accepted that;
- `deliver --force` while the daemon runs: the answer waited for a restart;
- an operator's write transaction on the store held longer than SQLite's busy timeout while an
  answer is in flight: the daemon exited and the CA's answer was thrown away (now kept in memory
  and recorded once the store can be written).
Nothing waits by sleeping: every wait is for a condition with a deadline. (Holding the store's
write lock for a while is the operator being simulated, not a wait.)
"""
import hashlib
import os
import socket
import sqlite3
import sys
import time
import unittest

import test_daemon
from harness import TESTS_DIR, Peer, wait_until


def closed_port():
    """A loopback port nothing listens on (the kernel chose it, then it was closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Review13(test_daemon.DaemonTest):

    def tearDown(self):
        if self.daemon:
            self.daemon.stop()  # also when it exited by itself: its output pipe is closed
        self.daemon = None
        super().tearDown()

    def test_a_request_with_a_long_name_is_deleted_once_stored(self):
        """NAME_MAX is 255: a 249-byte request name is legal, but the name it was held under while
        being acknowledged had 263 bytes (ENAMETOOLONG), so it was never deleted and every run
        exited 75 for it."""
        port = self.start_ca()
        self.configure(port, extra_source='after = "delete"')
        name = "a" * 245 + ".p10"
        self.csr(name, cn="long")
        proc = self.run_once(expect=0)
        self.assertNotIn("File name too long", proc.stderr)
        # The response's name is cut to 200 bytes, a hash of the request's name keeping it apart.
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        self.assertEqual(self.inbox_files(), ["a" * 179 + "-" + digest + ".p7c"])
        items = self.items()
        self.assertEqual([i["state"] for i in items], ["answered"])
        self.assertEqual(self.show(items[0]["id"])["arrivals"][0]["delivery"], "delivered")
        self.assertEqual(self.requests_seen(), 1)
        self.run_once(expect=0)  # nothing left over for a later run
        self.assertEqual(self.requests_seen(), 1)

    def test_a_source_watching_another_sources_move_to_is_refused(self):
        """source b watching source a's move_to: every request a stored and moved was taken in
        again by b as a second arrival, and answered twice (a response file in each folder)."""
        processed = os.path.join(self.inbox, "processed")
        os.mkdir(processed)
        with open(self.config, "w") as f:
            f.write(f'[store]\npath = "{self.tmp}/store.db"\n'
                    f'[source.a]\npath = "{self.inbox}"\nafter = "move"\n'
                    f'[source.b]\npath = "{processed}"\n'
                    f'[endpoint.ca]\nurl = "http://127.0.0.1:{closed_port()}/cmc"\n')
        proc = self.pkirelay("check-config", "-c", self.config)
        self.assertEqual(proc.returncode, 78, proc.stdout + proc.stderr)
        self.assertIn("move_to", proc.stdout + proc.stderr)

    def test_a_store_deleted_under_the_daemon_stops_it_before_a_request_is_lost(self):
        """rm of the store (or a backup moved over it) while the daemon runs: SQLite goes on
        writing into the file it has open, which no name reaches any more. The daemon must stop
        before it acknowledges (here: deletes) another request file into that store."""
        self.configure(closed_port(), extra_source='after = "delete"',
                       extra="[retry]\ninitial_seconds = 3600\n")
        daemon = self.start()
        self.drop(["first.p10"])
        wait_until(lambda: "first.p10" not in self.inbox_files(), "first.p10 taken and deleted")
        store = os.path.join(self.tmp, "store.db")
        for suffix in ("", "-wal", "-shm"):
            os.unlink(store + suffix)
        self.drop(["second.p10"])
        # Either the daemon stops (it noticed) or it takes and deletes the file (the loss).
        wait_until(lambda: not self.alive() or "second.p10" not in self.inbox_files(),
                   "the daemon to stop or to take second.p10")
        self.assertIn("second.p10", self.inbox_files(),
                      "a request was deleted after its store was gone: it is lost\n"
                      + daemon.output())
        daemon.peer.proc.wait(timeout=30)
        self.assertNotEqual(daemon.peer.proc.returncode, 0, daemon.output())
        self.assertTrue(daemon.saw("no longer"), daemon.output())

    def test_a_store_replaced_under_the_daemon_stops_it(self):
        """A copy moved over the store (an operator restoring a backup while the daemon runs):
        the daemon would go on with the old file while a second run could lock the new one, two
        agents on the same folders."""
        port = self.start_ca()
        self.configure(port)
        daemon = self.start()
        self.drop(["one.p10"])
        wait_until(lambda: self.responses(), "one.p7c")
        store = os.path.join(self.tmp, "store.db")
        copy = os.path.join(self.tmp, "copy.db")
        src = sqlite3.connect(store)
        dst = sqlite3.connect(copy)
        src.backup(dst)
        src.close()
        dst.close()
        os.rename(copy, store)
        self.drop(["two.p10"])
        wait_until(lambda: not self.alive(), "the daemon to notice its store was replaced",
                   deadline=15)
        self.assertNotEqual(daemon.peer.proc.returncode, 0, daemon.output())
        self.assertTrue(daemon.saw("no longer"), daemon.output())

    def drop(self, names):
        staged = self.csrs(names)
        for path, name in zip(staged, names):
            os.rename(path, os.path.join(self.inbox, name))

    def alive(self):
        return self.daemon.peer.proc.poll() is None

    def test_deliver_force_while_the_daemon_runs_is_written_without_a_restart(self):
        """`pkirelay deliver ID --force` while the daemon runs: the sweep wrote waiting
        deliveries only when one of its own had failed (deliveriesWaiting_), so the forced
        answer waited for a restart."""
        fault = os.path.join(TESTS_DIR, "fault_endpoint.py")
        peer = Peer([sys.executable, fault, "--mode", "200-cmp-for-cmc"], "LISTENING")
        self.peers.append(peer)
        self.configure(int(peer.ready_line.split()[1]))
        daemon = self.start()
        self.drop(["odd.p10"])
        wait_until(lambda: self.items("review"), "the item in review")
        item = self.items("review")[0]["id"]
        self.pkirelay("deliver", str(item), "--force", "-c", self.config, check=True)
        wait_until(lambda: os.path.exists(os.path.join(self.inbox, "odd.pki")),
                   "the forced answer written by the running daemon", deadline=15)
        self.assertTrue(self.alive(), daemon.output())

    def test_an_answer_survives_a_store_locked_longer_than_the_busy_timeout(self):
        """An operator's `sqlite3 store.db` holding a write transaction (or a long purge) for
        longer than the busy timeout (5 s) while an answer arrives: recordOutcomes() throws
        StoreBusy, the daemon exits 75, and the CA's answer, taken out of outcomes_ before the
        transaction, is gone; the next run sends the request again."""
        port = self.start_ca("--delay-ms", "1000")
        self.configure(port)
        daemon = self.start()
        self.drop(["slow.p10"])
        wait_until(lambda: self.requests_seen() == 1, "the request at the CA")
        db = sqlite3.connect(os.path.join(self.tmp, "store.db"), isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        time.sleep(7)  # the operator holding the lock (not a wait for a condition)
        db.execute("ROLLBACK")
        db.close()
        wait_until(lambda: not self.alive() or self.responses(), "the response or an exit")
        self.assertTrue(self.alive(), "the daemon exited on a busy store\n" + daemon.output())
        self.assertEqual(self.responses(), ["slow.p7c"])
        self.assertEqual(self.requests_seen(), 1)


# DaemonTest's own cases run in test_daemon.py: only its helpers are wanted here.
for _name in [n for n in dir(test_daemon.DaemonTest) if n.startswith("test_")]:
    setattr(Review13, _name, None)


if __name__ == "__main__":
    unittest.main()
