"""What `pkirelay run --once` does when the CA misbehaves, or the disk is full (issue 13).

Each test starts tests/fault_endpoint.py in one mode on loopback and relays PKCS#10 requests made
by `openssl req` to it, then checks what the design promises (DESIGN.md, "The store";
docs/architecture.md, "The guarantees"):
- a transient failure (refused, reset mid-answer, hang, drip past the timeout, 503 without a
  body) defers the item with its reason (exit 75), writes no response, and a second run against
  a healthy CA (tests/cmc_responder.py) answers it: exactly one response file in the end;
- a 200 whose body cannot be delivered (garbage, trailing byte, oversize, another protocol's
  answer) keeps the CA's bytes in the store (state review, exit 65), writes no response, is never
  sent again by a later run, and `pkirelay export` writes the very bytes the CA sent;
- a CMP error in a 500 body is an answer (delivered to a CMP request, review for a CMC one);
- an answer of another transaction (a CMP ip whose transactionID and recipNonce are not the
  request's; a CMC Full PKI Response whose transactionId and recipientNonce controls are not)
  is kept for review like an unusable one; `deliver --force` is a person's way to deliver it;
- the endpoint saw each request exactly as often as the item's history says it was sent, also
  when a kept-alive connection dies after the CA read a request (drop-reused: libcurl's own
  silent resend on a fresh connection is refused, so every send is a recorded attempt);
- one oversize request file does not block the rest of its batch;
- a login in an endpoint's url (HTTP Basic) is never printed, not even in the redirect target
  curl resolves from it; a tcp endpoint's url refuses one;
- a response folder on a full file system (a 64 KiB tmpfs, when the machine lets us mount one)
  leads to a retry, and the response is written exactly once when space returns.
No test sleeps to wait: waits poll a condition against a deadline.
"""
import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import unittest

from harness import (TESTS_DIR, Peer, PkirelayTestCase, check_kept_for_review, openssl,
                     wait_until)

FAULT_ENDPOINT = os.path.join(TESTS_DIR, "fault_endpoint.py")
# Short deadlines so that a hanging CA costs a second, not a minute.
FAST_ENDPOINT = "connect_timeout_seconds = 2\ntimeout_seconds = 1\n"
FAST_RETRY = "[retry]\ninitial_seconds = 1\n"
# The healthy responder runs openssl per request: on a loaded machine that can take seconds, and
# what those tests look at must not depend on the speed of the machine.
PATIENT_ENDPOINT = "connect_timeout_seconds = 10\ntimeout_seconds = 120\n"


class Faults(PkirelayTestCase):

    def setUp(self):
        super().setUp()
        self.fault_log = os.path.join(self.tmp, "fault.log")
        self.healthy_log = os.path.join(self.tmp, "healthy.log")
        self.sent_body = os.path.join(self.tmp, "sent.bin")
        self.fault = None

    # --- peers -------------------------------------------------------------------------------

    def start_fault(self, mode, *extra):
        peer = Peer([sys.executable, FAULT_ENDPOINT, "--mode", mode, "--log", self.fault_log,
                     "--save", self.sent_body, *extra], "LISTENING")
        self.peers.append(peer)
        self.fault = peer
        return int(peer.ready_line.split()[1])

    def start_healthy(self):
        peer = Peer([sys.executable, os.path.join(TESTS_DIR, "cmc_responder.py"),
                     "--log", self.healthy_log], "LISTENING")
        self.peers.append(peer)
        return int(peer.ready_line.split()[1])

    @staticmethod
    def lines(path):
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return f.read().splitlines()

    def fault_seen(self):
        return len(self.lines(self.fault_log))

    def healthy_seen(self):
        return len(self.lines(self.healthy_log))

    def sent(self):
        with open(self.sent_body, "rb") as f:
            return f.read()

    # --- configuration and requests ----------------------------------------------------------

    def configure(self, port, endpoint=FAST_ENDPOINT, extra=FAST_RETRY, **kw):
        self.write_config(f"http://127.0.0.1:{port}/cmc", extra_endpoint=endpoint, extra=extra,
                          **kw)


    def responses(self, folder=None):
        """Every file in the folder that is not a request (nor a hidden temporary)."""
        return sorted(n for n in os.listdir(folder or self.inbox)
                      if not n.endswith((".p10", ".der")))

    # --- the store ---------------------------------------------------------------------------

    def only_item(self):
        items = self.items()
        self.assertEqual(len(items), 1, items)
        return items[0]

    def sends(self, item_id):
        """The events that record an exchange with an endpoint (one per send, resends too)."""
        return [e for e in self.show(item_id)["events"] if e["what"] in SEND_EVENTS]

    def history(self, item_id):
        return " | ".join(f'{e["what"]}: {e.get("detail", "")}'
                          for e in self.show(item_id)["events"])

    def wait_until_retry_is_due(self):
        """Waits (polling, bounded) until every deferred item's next_try has come."""
        db = sqlite3.connect(f"file:{self.tmp}/store.db?mode=ro", uri=True)
        try:
            (due,) = db.execute("SELECT max(next_try) FROM item WHERE state = 'deferred'")\
                .fetchone()
        finally:
            db.close()
        self.assertIsNotNone(due, "no deferred item")
        wait_until(lambda: time.time() * 1000 >= due + 1, "the retry to be due", deadline=10)

    # --- the shared shapes of the outcomes ---------------------------------------------------

    def check_transient(self, mode, reason_words, *fault_args, endpoint=FAST_ENDPOINT):
        """mode defers the request with its reason; a healthy CA answers it on the next run."""
        port = self.start_fault(mode, *fault_args)
        self.configure(port, endpoint=endpoint)
        self.csr("req.p10")
        self.run_once(expect=75)
        item = self.only_item()
        self.assertEqual(item["state"], "deferred", self.history(item["id"]))
        self.assertTrue(item["reason"], "the reason must be recorded")
        for word in reason_words:
            self.assertIn(word, item["reason"].lower())
        self.assertEqual(self.responses(), [], "no response for a deferred item")
        self.assertEqual(item["attempts"], 1)
        self.assertEqual(len(self.sends(item["id"])), 1, self.history(item["id"]))
        self.assertEqual(self.fault_seen(), 1, self.lines(self.fault_log))

        self.fault.stop()
        self.configure(self.start_healthy(), endpoint=PATIENT_ENDPOINT)
        self.wait_until_retry_is_due()
        self.run_once(expect=0)
        item = self.only_item()
        self.assertEqual(item["state"], "answered", self.history(item["id"]))
        self.assertEqual(self.responses(), ["req.p7c"])
        self.assertEqual(self.healthy_seen(), 1)
        self.assertEqual(self.fault_seen(), 1)
        self.assertEqual(item["attempts"], 2)
        self.assertEqual(len(self.sends(item["id"])), 2, self.history(item["id"]))
        # A third run has nothing to do.
        self.run_once(expect=0)
        self.assertEqual(self.healthy_seen() + self.fault_seen(), 2)
        return item

    def check_review(self, mode, reason_words, **config):
        """The 200 answer cannot be delivered: kept byte for byte for a person, never resent."""
        port = self.start_fault(mode)
        self.configure(port, **config)
        self.csr("req.p10")
        self.run_once(expect=65)
        item = self.only_item()
        detail = self.show(item["id"])
        self.assertEqual(item["state"], "review", self.history(item["id"]))
        for word in reason_words:
            self.assertIn(word, item["reason"].lower())
        self.assertEqual(self.responses(), [], "no response file for a review item")
        self.assertIsNotNone(detail["answer"], "the CA's answer must be kept")
        self.assertEqual(detail["answer"]["size"], len(self.sent()))
        self.assertEqual(self.fault_seen(), 1)
        self.assertEqual(len(self.sends(item["id"])), 1, self.history(item["id"]))
        self.assert_exported(item["id"], self.sent())

        # A later run does not send it again (the CA may have issued a certificate).
        self.run_once(expect=0)
        self.assertEqual(self.fault_seen(), 1)
        self.assertEqual(self.only_item()["state"], "review")
        self.assertEqual(self.responses(), [])
        return item

    def assert_exported(self, item_id, answer):
        out = os.path.join(self.tmp, "export")
        os.mkdir(out)
        self.pkirelay("export", str(item_id), "--dir", out, "-c", self.config, check=True)
        names = sorted(os.listdir(out))
        answers = [n for n in names if n.startswith(f"{item_id}-answer")]
        self.assertEqual(len(answers), 1, names)
        with open(os.path.join(out, answers[0]), "rb") as f:
            self.assertEqual(f.read(), answer, "export must give the CA's bytes exactly")

    # --- one test per mode -------------------------------------------------------------------

    def test_refuse_is_transient(self):
        self.check_transient("refuse", [])

    def test_reset_mid_response_is_transient(self):
        # Observed: the half body that came before the reset is not kept (only the error text
        # is); the request is sent again, and that second send is in the history.
        self.check_transient("reset", ["recv", "reset"])

    def test_hang_times_out_and_is_transient(self):
        self.check_transient("hang", ["timed out"])

    def test_drip_past_the_timeout_is_transient(self):
        # About 350 bytes of answer at 50 ms a byte cannot finish within the 1 s timeout.
        self.check_transient("drip", ["timed out"])

    def test_drip_within_the_timeout_is_answered(self):
        port = self.start_fault("drip", "--drip-ms", "1")
        self.configure(port, endpoint="timeout_seconds = 30\n")
        self.csr("req.p10")
        self.run_once(expect=0)
        item = self.only_item()
        self.assertEqual(item["state"], "answered")
        self.assertEqual(self.responses(), ["req.p7c"])
        with open(os.path.join(self.inbox, "req.p7c"), "rb") as f:
            self.assertEqual(f.read(), self.sent())
        self.assertEqual(self.fault_seen(), 1)

    def test_503_without_body_is_transient(self):
        self.check_transient("503", ["503"])

    def test_500_with_cmp_error_for_a_cmc_request_is_kept_for_review(self):
        # RFC 9811 §3: a PKI message in a 5xx body is the answer; here it answers a PKCS#10
        # (CMC) request with CMP, which cannot be delivered as the request's answer.
        port = self.start_fault("500-cmp-error")
        self.configure(port)
        self.csr("req.p10")
        self.run_once(expect=65)
        item = self.only_item()
        self.assertEqual(item["state"], "review", self.history(item["id"]))
        self.assertIn("cmp", item["reason"].lower())
        self.assertEqual(self.responses(), [])
        self.assertEqual(self.fault_seen(), 1)
        self.assert_exported(item["id"], self.sent())
        self.run_once(expect=0)
        self.assertEqual(self.fault_seen(), 1)

    def test_500_with_cmp_error_for_a_cmp_request_is_delivered(self):
        port = self.start_fault("500-cmp-error")
        self.configure(port)
        cmp_request(self.tmp, os.path.join(self.inbox, "cr.der"))
        self.run_once(expect=0)
        item = self.only_item()
        self.assertEqual(item["state"], "answered", self.history(item["id"]))
        self.assertEqual(self.responses(), ["cr.pki"])
        with open(os.path.join(self.inbox, "cr.pki"), "rb") as f:
            self.assertEqual(f.read(), self.sent())
        self.assertEqual(self.fault_seen(), 1)
        self.assertEqual(len(self.sends(item["id"])), 1, self.history(item["id"]))
        # `show` gives what the CA said: its PKIStatus, failInfo and statusString text (the
        # OpenSSL mock server's -send_error sends rejection, badRequest and its own text).
        says = self.show(item["id"])["answer"]["ca_says"]
        self.assertIn("PKIStatus rejection (2)", says)
        self.assertIn("failInfo badRequest", says)
        self.assertIn("error processing message", says)

    # --- answers of another transaction (RFC 9810 §5.1.1, RFC 10002 §6.6) ------------------

    def test_200_cmp_of_another_transaction_is_kept_for_review(self):
        # An ip whose transactionID and recipNonce are another request's is no answer to this
        # one: kept for a person, never delivered by itself, never sent again.
        port = self.start_fault("200-cmp-other")
        self.configure(port)
        cmp_request(self.tmp, os.path.join(self.inbox, "cr.der"))
        self.run_once(expect=65)
        item = self.only_item()
        self.assertEqual(item["state"], "review", self.history(item["id"]))
        self.assertEqual(self.responses(), [])
        check_kept_for_review(self, item["id"], self.sent(), "transactionID",
                              os.path.join(self.inbox, "cr.pki"))
        self.assertEqual(self.fault_seen(), 1)

    def test_cmc_response_of_another_transaction_is_kept_for_review(self):
        # A Full PKI Response whose recipientNonce and transactionId are not the request's.
        fx = os.path.join(self.tmp, "fx")
        subprocess.run(["sh", os.path.join(TESTS_DIR, "fixtures", "make_fixtures.sh"), fx],
                       check=True, capture_output=True)
        shutil.copy(os.path.join(fx, "cmc_request.der"), os.path.join(self.inbox, "full.der"))
        saved = os.path.join(self.tmp, "cmc-sent.bin")
        peer = Peer([sys.executable, os.path.join(TESTS_DIR, "cmc_responder.py"),
                     "--log", self.healthy_log, "--other-transaction", "--save", saved],
                    "LISTENING")
        self.peers.append(peer)
        self.configure(int(peer.ready_line.split()[1]), endpoint=PATIENT_ENDPOINT)
        self.run_once(expect=65)
        item = self.only_item()
        self.assertEqual(item["state"], "review", self.history(item["id"]))
        self.assertEqual(self.responses(), [])
        with open(saved, "rb") as f:
            answer = f.read()
        check_kept_for_review(self, item["id"], answer, "transactionId",
                              os.path.join(self.inbox, "full.crp"))
        self.assertEqual(self.healthy_seen(), 1)

    def test_cmc_response_of_this_transaction_is_delivered(self):
        # The same responder answering with the request's own controls: delivered.
        fx = os.path.join(self.tmp, "fx")
        subprocess.run(["sh", os.path.join(TESTS_DIR, "fixtures", "make_fixtures.sh"), fx],
                       check=True, capture_output=True)
        shutil.copy(os.path.join(fx, "cmc_request.der"), os.path.join(self.inbox, "full.der"))
        self.configure(self.start_healthy(), endpoint=PATIENT_ENDPOINT)
        self.run_once(expect=0)
        self.assertEqual(self.only_item()["state"], "answered")
        self.assertEqual(self.responses(), ["full.crp"])

    def test_200_garbage_is_kept_for_review(self):
        self.check_review("200-garbage", ["not a pki message"])

    def test_200_empty_needs_a_person_without_resend(self):
        port = self.start_fault("200-empty")
        self.configure(port)
        self.csr("req.p10")
        self.run_once(expect=65)
        item = self.only_item()
        # A CA that said 200 may have issued a certificate: a person looks (review), and the
        # request is not queued again by a resubmission as a failed one would be.
        self.assertEqual(item["state"], "review", self.history(item["id"]))
        self.assertIn("200", self.history(item["id"]))
        self.assertEqual(self.responses(), [])
        self.assertEqual(self.fault_seen(), 1)
        self.run_once(expect=0)
        self.assertEqual(self.fault_seen(), 1, "a review item is not sent again unasked")

    def test_200_wrong_content_type_is_delivered_by_its_bytes(self):
        port = self.start_fault("200-wrong-type")
        self.configure(port)
        self.csr("req.p10")
        self.run_once(expect=0)
        item = self.only_item()
        self.assertEqual(item["state"], "answered", self.history(item["id"]))
        self.assertEqual(self.responses(), ["req.p7c"])
        with open(os.path.join(self.inbox, "req.p7c"), "rb") as f:
            self.assertEqual(f.read(), self.sent())
        self.assertEqual(self.fault_seen(), 1)

    def test_200_trailing_byte_is_kept_for_review(self):
        self.check_review("200-trailing", ["trailing"])

    def test_200_oversize_is_kept_for_review(self):
        self.check_review("200-oversize", ["too large"],
                          extra=FAST_RETRY + "[limits]\nmax_message_size = 65536\n")
        self.assertGreater(len(self.sent()), 100 * 1024)

    def test_200_cmp_for_cmc_is_kept_for_review(self):
        self.check_review("200-cmp-for-cmc", ["cmp"])

    # A defect this test found: libcurl silently sent a request again on a fresh connection
    # when a reused (kept-alive) connection closed before any byte of the answer came back
    # ("Connection died, retrying a fresh connect"): the CA took the request in twice, while
    # the history recorded one attempt. The transport now reads the body through a callback
    # and refuses that rewind, so the next send is a recorded attempt.
    def test_request_dropped_on_a_reused_connection_is_sent_as_often_as_recorded(self):
        # The first request on a connection is answered and the connection kept alive; the
        # next one on it is read and never answered (a CA that died after taking it in). The
        # endpoint must have seen each request exactly as often as its history says it was
        # sent: a resend that the history does not show could get a certificate issued twice.
        port = self.start_fault("drop-reused")
        self.configure(port, endpoint=FAST_ENDPOINT + "max_connections = 1\n")
        for n in range(3):
            self.csr(f"r{n}.p10")
        proc = self.pkirelay("run", "--once", "-c", self.config)
        seen = {}
        for line in self.lines(self.fault_log):
            digest = line.split()[-1]
            seen[digest] = seen.get(digest, 0) + 1
        for item in self.items():
            detail = self.show(item["id"])
            sends = len(self.sends(item["id"]))
            self.assertEqual(seen.get(detail["sha256"], 0), sends,
                             f"item {item['id']} ({item['state']}): the endpoint saw it "
                             f"{seen.get(detail['sha256'], 0)} times, the history says "
                             f"{sends}: {self.history(item['id'])}\n{proc.stderr}")

    # --- batches and the disk ----------------------------------------------------------------

    def test_oversize_request_does_not_block_its_batch(self):
        self.configure(self.start_healthy(), endpoint=PATIENT_ENDPOINT,
                       extra="[limits]\nmax_message_size = 1024\n")
        for n in range(4):
            self.csr(f"r{n}.p10")
        with open(os.path.join(self.inbox, "big.der"), "wb") as f:
            f.write(b"\x30\x82\x07\xd0" + bytes(2000))
        self.run_once(expect=65)
        self.assertEqual(self.responses(), [f"r{n}.p7c" for n in range(4)])
        self.assertEqual(self.healthy_seen(), 4)
        states = sorted(i["state"] for i in self.items())
        self.assertEqual(states, ["answered"] * 4 + ["quarantined"])

    def test_full_disk_defers_the_response_and_writes_it_once_space_returns(self):
        if os.geteuid() != 0:
            self.skipTest("mounting a tmpfs needs root")
        out = os.path.join(self.tmp, "out")
        os.mkdir(out)
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", out],
                               capture_output=True, text=True)
        if mount.returncode != 0:
            self.skipTest(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
        # Cleanups run last in, first out: unmounted before the folder is removed.
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.addCleanup(subprocess.run, ["umount", "-l", out], capture_output=True)
        filler = os.path.join(out, "filler")
        fill(filler)

        self.configure(self.start_healthy(), endpoint=PATIENT_ENDPOINT,
                       extra_source=f'responses = "{out}"')
        self.csr("req.p10")
        proc = self.run_once(expect=75)
        item = self.only_item()
        detail = self.show(item["id"])
        self.assertEqual(item["state"], "answered", self.history(item["id"]))
        # The name is reserved (the delivery is "writing"), the error is in the history.
        self.assertEqual(detail["arrivals"][0]["delivery"], "writing")
        self.assertIn("no space left on device", self.history(item["id"]).lower())
        self.assertEqual(sorted(os.listdir(out)), ["filler"],
                         "nothing may be left under the final name, nor a temporary file")
        self.assertEqual(self.healthy_seen(), 1)
        self.assertTrue(proc.stderr)

        os.unlink(filler)
        self.run_once(expect=0)
        self.assertEqual(sorted(os.listdir(out)), ["req.p7c"])
        self.assertEqual(self.healthy_seen(), 1, "the answer is written, not asked again")
        self.assertEqual(self.show(item["id"])["arrivals"][0]["delivery"], "delivered")
        with open(os.path.join(out, "req.p7c"), "rb") as f:
            der = f.read()
        self.assertEqual(der[0], 0x30)
        self.assertEqual(detail["answer"]["size"], len(der))
        self.assert_exported(item["id"], der)
        self.run_once(expect=0)
        self.assertEqual(sorted(os.listdir(out)), ["req.p7c"])

    def test_login_in_an_endpoint_url_is_never_printed(self):
        # An http endpoint's url may carry an HTTP Basic login (curl sends it). The CA answers
        # with a relative redirect, which curl resolves against the url, login included: no text
        # pkirelay prints or stores may hold the password (the run's log, show, status, list,
        # check-config, the metrics file).
        secret = "s3cret-Pw9"
        port = self.start_fault("302-relative")
        metrics = os.path.join(self.tmp, "metrics.prom")
        self.write_config(f"http://relay:{secret}@127.0.0.1:{port}/cmc",
                          extra_endpoint=FAST_ENDPOINT,
                          extra=FAST_RETRY + f'[metrics]\nfile = "{metrics}"\n')
        self.csr("req.p10")
        run = self.run_once(expect=65)
        item = self.only_item()
        self.assertEqual(item["state"], "failed", self.history(item["id"]))
        shown = self.pkirelay("show", str(item["id"]), "-c", self.config, check=True).stdout
        self.assertIn(f"redirect to http://127.0.0.1:{port}/moved not followed", shown)
        texts = {"run": run.stdout + run.stderr, "show": shown,
                 "show --json": json.dumps(self.show(item["id"])),
                 "list --json": json.dumps(self.items())}
        for args in (["status"], ["status", "--json"], ["list"], ["check-config"]):
            proc = self.pkirelay(*args, "-c", self.config, check=True)
            texts[" ".join(args)] = proc.stdout + proc.stderr
        with open(metrics) as f:
            texts["metrics"] = f.read()
        for where, text in texts.items():
            self.assertNotIn(secret, text, f"the password in {where}")
        self.assertIn(f"http://127.0.0.1:{port}/cmc", texts["check-config"])

    def test_login_in_a_tcp_endpoint_url_is_refused_unprinted(self):
        # cmc-tcp and cmp-tcp have no login: a url with one is a configuration error, and the
        # message names the url without it (as every configuration error does).
        secret = "s3cret-Pw9"
        for url, word in ((f"cmc-tcp://relay:{secret}@127.0.0.1:5318", "holds a login"),
                          (f"cmp-tcps://relay:{secret}@127.0.0.1", "holds a login"),
                          (f"http://relay:{secret}@127.0.0.1:1/", "does not go with")):
            with self.subTest(url=url):
                self.write_config(url, extra_endpoint='type = "cmc-tcp"'
                                  if url.startswith("http") else "")
                for args in (["check-config"], ["run", "--once"]):
                    proc = self.pkirelay(*args, "-c", self.config)
                    self.assertEqual(proc.returncode, 78, proc.stderr)
                    self.assertIn(word, proc.stderr)
                    self.assertNotIn(secret, proc.stdout + proc.stderr)


# The event that records a claim for one exchange with an endpoint ("attempt N", or "attempt N:
# resend ..." when the outcome of the one before was never recorded).
SEND_EVENTS = {"relaying"}


def fill(path):
    """Writes zeros into path until its file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


def cmp_request(folder, out):
    """A CMP cr written by OpenSSL's client (its in-process mock answers it; we keep the
    request only)."""
    work = os.path.join(folder, "cmp")
    os.mkdir(work)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=cmp-ca", "-days", "2", cwd=work)
    openssl("cmp", "-config", "", "-use_mock_srv", "-srv_cert", "ca.crt", "-srv_key", "ca.key",
            "-srv_secret", "pass:1234-5678", "-srv_ref", "1234", "-rsp_cert", "ca.crt",
            "-ref", "1234", "-secret", "pass:1234-5678", "-srvcert", "ca.crt",
            "-newkey", "ca.key", "-subject", "/CN=cmp-ee", "-certout", "out.crt",
            "-cmd", "cr", "-implicit_confirm", "-reqout", out, cwd=work)
    shutil.rmtree(work)


if __name__ == "__main__":
    unittest.main(verbosity=2)
