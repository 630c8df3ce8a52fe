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
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import (PKIRELAY, TESTS_DIR, Peer, PkirelayTestCase, openssl, read_responder_log,
                     run, wait_until)

_KEY = ec.generate_private_key(ec.SECP256R1())


def csr_der(cn):
    """A distinct DER PKCS#10 for CN=cn."""
    req = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])).sign(_KEY, hashes.SHA256())
    return req.public_bytes(serialization.Encoding.DER)


class Daemon:
    """`pkirelay run -c CONFIG`, ready once it has printed its "- running:" line."""

    def __init__(self, config, env=None):
        self.peer = Peer([PKIRELAY, "run", "-c", config], "- running:", env=env)

    def output(self):
        return "\n".join(self.peer.lines)

    def saw(self, text):
        return any(text in line for line in self.peer.lines)


class AttackPerf(PkirelayTestCase):

    def setUp(self):
        super().setUp()
        self.log = os.path.join(self.tmp, "ca.log")
        self.daemons = []

    def tearDown(self):
        for d in self.daemons:
            d.peer.stop()
        super().tearDown()

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


    # ---- lazy marks while an exchange is out ------------------------------------------------

    def ack_marks(self):
        with self.db() as con:
            return dict(con.execute("SELECT origin, ack FROM delivery"))

    # DEFECT: agent/pipeline.cc scheduleFlush (the deferred lambda, "if (!inFlight_.empty() ||
    # !outcomes_.empty()) return;", from 9a0d425) leaves the lazy marks to the next record for
    # as long as any exchange is out; run --once has no sweep to commit them meanwhile.
    @unittest.expectedFailure
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

    # DEFECT: agent/pipeline.cc scheduleFlush (the deferred lambda, "if (!inFlight_.empty() ||
    # !outcomes_.empty()) return;", from 9a0d425) leaves the lazy marks to the next record for
    # as long as any exchange is out; run --once has no sweep to commit them meanwhile.
    @unittest.expectedFailure
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


if __name__ == "__main__":
    unittest.main(verbosity=2)
