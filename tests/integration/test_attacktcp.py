"""Attacks on the TCP endpoint types (issue 16) by a hostile or unlucky peer, through
`pkirelay run` against tests/cmp_tcp_responder.py and tests/cmc_tcp_responder.py on loopback.

- CMP over TCP: a frame declaring 2^32-1 bytes is refused as too large; an answer that stops
  in the middle of its length defers the item; so does an answer sent a byte at a time
  (slowloris), once timeout_seconds is over; a pollRep loop that never ends is given up after
  pkirelay's poll bound and the item deferred; an answer for another transaction (another
  transactionID, a recipNonce that is not the request's senderNonce) is not delivered as the
  request's answer: it waits in review, kept byte for byte, until a person exports it or
  delivers it with deliver --force; the same message given the request's transactionID and
  nonce is delivered.
- A message routed to a TCP endpoint of the other protocol (CMP to cmc-tcp, CMC to cmp-tcp)
  fails at once, unsent, with a reason that says so (it used to go out and be deferred).
- CMC over TCP: pkirelay killed with SIGKILL while the request is out, then restarted against
  a server that answers: the request goes out again, the item is answered once, and its
  history says it may have been sent twice.
- CMC over TLS (cmc-tcps://): a server certificate that has expired, or one from a CA the
  endpoint does not trust, defers the item with the verification error; verify_tls = false is
  the explicit way past a name the certificate does not carry.
Nothing sleeps to wait: every wait is for a condition with a deadline.
"""
import os
import unittest

from harness import CmpCredentials, check_kept_for_review, run, TESTS_DIR, wait_until
from test_tcp import TcpTestCase, UNREACHABLE, cmp_client, read_log
import test_tls_endpoints as tls


class CmpAttacks(TcpTestCase):

    def setUp(self):
        super().setUp()
        self.creds = CmpCredentials(self.tmp)

    def offline_ir(self):
        ir = os.path.join(self.inbox, "ir.der")
        cmp_client(self.creds, "-server", UNREACHABLE, "-msg_timeout", "2", "-certout",
                   os.path.join(self.tmp, "unused.crt"), "-cmd", "ir", "-subject", "/CN=Tcp",
                   "-implicit_confirm", "-reqout", ir, check=False)
        self.assertTrue(os.path.exists(ir), "openssl cmp did not write the request")
        return ir

    def fixture(self, name):
        out = os.path.join(self.tmp, "fx")
        if not os.path.isdir(out):
            run(["sh", os.path.join(TESTS_DIR, "fixtures", "make_fixtures.sh"), out])
        return os.path.join(out, name)

    def configure(self, *args, timeout=20):
        port = self.start("cmp_tcp_responder.py", "--fixed", self.fixture("cmp_ip.der"), *args)
        self.write_config(f"cmp-tcp://127.0.0.1:{port}",
                          extra_endpoint=f"max_connections = 1\ntimeout_seconds = {timeout}")

    def test_length_of_2_to_the_32_minus_1_refused(self):
        self.configure("--misbehave", "maxlength")
        self.offline_ir()
        self.run_once(expect=65)
        item = self.only_item()
        self.assertEqual(item["state"], "failed", item)
        self.assertIn("too large", str(item))

    def test_answer_stopping_mid_length_defers(self):
        self.configure("--misbehave", "truncate")
        self.offline_ir()
        self.run_once(expect=75)
        item = self.only_item()
        self.assertEqual(item["state"], "deferred", item)
        self.assertIn("incomplete answer", str(item))

    def test_endless_poll_rep_loop_is_given_up(self):
        self.configure("--poll", "1000000", "--check-after", "0")
        self.offline_ir()
        self.run_once(expect=75)
        item = self.only_item()
        self.assertEqual(item["state"], "deferred", item)
        self.assertIn("past what pkirelay waits", str(item))
        frames = [e[3] for e in self.events("frame")]
        self.assertEqual(frames[0], "0")
        self.assertLessEqual(len(frames), 101, frames)  # one pkiReq, at most 100 pollReq

    def test_slowloris_answer_bounded_by_the_timeout(self):
        # One byte every 50 ms: each read makes progress, but the round as a whole has
        # timeout_seconds, so the exchange ends and the item waits for a retry.
        self.configure("--misbehave", "crawl", timeout=1)
        self.offline_ir()
        self.run_once(expect=75)
        item = self.only_item()
        self.assertEqual(item["state"], "deferred", item)
        self.assertIn("no complete answer within 1000 ms", str(item))

    def test_answer_for_another_transaction_is_not_delivered(self):
        # The server answers every request with one fixed ip of another transaction: its
        # transactionID and recipNonce are not this request's. Delivering it as the answer
        # breaks "every request gets exactly one response": the requester gets a certificate
        # meant for someone else, and a second request would get the same one. It is kept for
        # a person, byte for byte (RFC 9810 §5.1.1: the response carries the request's
        # transactionID, and its recipNonce is the request's senderNonce).
        self.configure("--other-transaction")
        self.offline_ir()
        self.run_once(expect=65)
        item = self.only_item()
        self.assertEqual(item["state"], "review", item)
        self.assertFalse(os.path.exists(os.path.join(self.inbox, "ir.pki")))
        with open(self.fixture("cmp_ip.der"), "rb") as f:
            answer = f.read()
        check_kept_for_review(self, item["id"], answer, "transactionID",
                              os.path.join(self.inbox, "ir.pki"))
        self.assertEqual(len(self.events("frame")), 1, "never sent again")

    def test_fixed_answer_given_this_transaction_is_delivered(self):
        # The same message with the request's transactionID and senderNonce as recipNonce is
        # this request's answer (what --fixed sends by default).
        self.configure()
        self.offline_ir()
        self.run_once(expect=0)
        self.assertEqual(self.only_item()["state"], "answered")
        self.assertTrue(os.path.exists(os.path.join(self.inbox, "ir.pki")))


class WrongProtocolRoutes(TcpTestCase):
    """A route that sends a message to an endpoint of the other protocol."""

    def setUp(self):
        super().setUp()
        self.creds = CmpCredentials(self.tmp)

    offline_ir = CmpAttacks.offline_ir
    fixture = CmpAttacks.fixture
    configure = CmpAttacks.configure

    def test_cmp_routed_to_a_cmc_tcp_endpoint_fails_clearly(self):
        port = self.start("cmc_tcp_responder.py")
        self.write_config(f"cmc-tcp://127.0.0.1:{port}",
                          extra_endpoint="max_connections = 1\ntimeout_seconds = 5")
        self.offline_ir()
        self.run_once(expect=65)
        item = self.only_item()
        self.assertEqual(item["state"], "failed", item)
        self.assertIn("cannot carry a cmp", str(item))
        self.assertEqual(self.events("request"), [], read_log(self.log))

    def test_cmc_routed_to_a_cmp_tcp_endpoint_fails_clearly(self):
        self.configure()
        self.csr("a.p10")
        self.run_once(expect=65)
        item = self.only_item()
        self.assertEqual(item["state"], "failed", item)
        self.assertIn("which cannot carry a", str(item))
        self.assertEqual(self.events("frame"), [], read_log(self.log))


class CmcKilledMidExchange(TcpTestCase):

    def test_kill_9_while_the_request_is_out_then_restart(self):
        from test_daemon import Daemon
        silent = self.start("cmc_tcp_responder.py", "--misbehave", "silent")
        self.write_config(f"cmc-tcp://127.0.0.1:{silent}",
                          extra_endpoint="max_connections = 1\ntimeout_seconds = 60\n")
        daemon = Daemon(self.config)
        try:
            self.csr("a.p10")
            wait_until(lambda: self.events("request"), "the request reaching the server")
        finally:
            daemon.peer.proc.kill()
            daemon.peer.proc.wait()
            daemon.stop()
        # The same endpoint name, now at a server that answers.
        answering = self.start("cmc_tcp_responder.py")
        self.write_config(f"cmc-tcp://127.0.0.1:{answering}",
                          extra_endpoint="max_connections = 1\ntimeout_seconds = 20\n")
        self.run_once(expect=0)
        self.assertEqual(self.inbox_files(), ["a.p10", "a.p7c"])
        self.assertEqual(len(self.events("request")), 2, read_log(self.log))
        item = self.only_item()
        self.assertEqual(item["state"], "answered", item)
        history = " ".join(e["what"] + " " + e["detail"] for e in item["events"])
        # DESIGN: a resend after a crash is recorded and visible.
        self.assertIn("resen", history, item["events"])


class CmcTlsAttacks(tls.CmcOverTls):
    # CmcOverTls's own tests are run by test_tls_endpoints; only the new ones here.
    test_verified_answered_and_wrong_name_refused = None
    test_pin_mismatch_refused = None
    test_mutual_tls = None

    def expired_server(self):
        # X.509 validity (RFC 5280 §4.1.2.5): notAfter a day before notBefore, so expired now.
        key = self.server[1]
        expired = self.pki.path("expired.crt")
        ext = self.pki.path("expired.ext")
        with open(ext, "w") as f:
            f.write("subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n")
        tls.openssl("x509", "-req", "-in", self.pki.path("server.csr"), "-CA", self.pki.ca, "-CAkey",
                self.pki.path("ca.key"), "-CAcreateserial", "-days", "-1", "-extfile", ext,
                "-out", expired)
        return expired, key

    def test_expired_server_certificate_refused(self):
        self.server = self.expired_server()
        self.configure(self.start(), ca_file=f'"{self.pki.ca}"')
        self.csr("a.p10")
        proc = self.run_once(expect=75)
        self.assertIn("certificate has expired", proc.stderr)
        self.assertNotIn("a.p7c", self.inbox_files())

    def test_untrusted_ca_refused(self):
        other = tls.Pki(self.tmp, name="other")
        self.configure(self.start(), ca_file=f'"{other.ca}"')
        self.csr("a.p10")
        proc = self.run_once(expect=75)
        self.assertIn("certificate verify failed", proc.stderr)
        self.assertNotIn("a.p7c", self.inbox_files())

    def test_wrong_name_accepted_only_with_verify_off(self):
        port = self.start()
        self.write_config(f"cmc-tcps://localhost:{port}",
                          extra_endpoint=f'ca_file = "{self.pki.ca}"\nverify_tls = false')
        self.csr("a.p10")
        self.run_once(expect=0)
        self.assertIn("a.p7c", self.inbox_files())


if __name__ == "__main__":
    unittest.main(verbosity=2)
