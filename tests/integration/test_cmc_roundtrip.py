"""CMC enrollment through pkirelay over HTTP, checked by tests/cmc_responder.py and OpenSSL.

Requests made by the openssl command line (a signed Full PKI Request, DER and PEM PKCS#10s) are
dropped into pkirelay's watched folder; `pkirelay run --once` relays them to the CMC responder
(RFC 10003 §4: POST, Content-Type of the kind) started on a loopback port, and writes each answer
beside its request with the extension of the response's kind (.crp, .p7c). OpenSSL then checks
the answers: the Full PKI Response's signature against the responder's CA, the certs-only's
certificate against the CSR's subject. Also covered: a 503 is deferred and retried after the
backoff, a 400 without a PKI body fails the item at once, a batch of 20 is answered over
kept-alive connections, and the responder sees the right Content-Type for each kind.
"""

import json
import os
import unittest
import urllib.request

from harness import (PkirelayTestCase, cmc_full_request, drop_into, openssl, read_responder_log,
                     start_cmc_responder, wait_until)

ID_CCT_PKI_RESPONSE = "1.3.6.1.5.5.7.12.3"
CMC_REQUEST_TYPE = "application/pkcs7-mime; smime-type=CMC-Request"


class CmcRoundTrip(PkirelayTestCase):

    def start_responder(self, *extra):
        """Starts a responder with a request log and points the config at it; returns port."""
        self.log = os.path.join(self.tmp, "responder.log")
        peer, port = start_cmc_responder("--log", self.log, *extra)
        self.peers.append(peer)
        self.port = port
        self.write_config(f"http://127.0.0.1:{port}/", extra="[retry]\ninitial_seconds = 1")
        return peer

    def responder_log(self):
        return read_responder_log(self.log)

    # Requests, made by OpenSSL alone.

    def make_csr(self, name, cn, pem=False):
        path = os.path.join(self.tmp, name)
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", path + ".key", "-subj", f"/CN={cn}",
                *([] if pem else ["-outform", "DER"]), "-out", path)
        return path

    def make_full_request(self, name):
        """A CMC Full PKI Request (harness.cmc_full_request); returns (path, nonce hex)."""
        return cmc_full_request(self.tmp, name)

    def drop(self, path, name):
        """Puts a finished request file into the inbox under name (written whole, then renamed,
        as a careful client would)."""
        with open(path, "rb") as f:
            data = f.read()
        drop_into(self.inbox, name, data)
        return data

    # Reading answers.

    def certs_in(self, p7c):
        """Subjects of the certificates in a certs-only file, as `openssl pkcs7` prints them."""
        out = openssl("pkcs7", "-inform", "DER", "-in", p7c, "-print_certs", "-noout").stdout
        return [line.split("=", 1)[1].strip() for line in out.splitlines()
                if line.startswith("subject=")]

    def responder_ca(self):
        """The responder's CA certificate, taken from a certs-only answer it gives directly (not
        through pkirelay) to a PKCS#10: it does not expose its CA any other way."""
        csr = self.make_csr("ca-probe.p10", "ca-probe")
        with open(csr, "rb") as f:
            request = urllib.request.Request(f"http://127.0.0.1:{self.port}/", data=f.read(),
                                             headers={"Content-Type": "application/pkcs10"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            p7c = os.path.join(self.tmp, "ca-probe.p7c")
            with open(p7c, "wb") as out:
                out.write(answer.read())
        pem = openssl("pkcs7", "-inform", "DER", "-in", p7c, "-print_certs").stdout
        blocks = pem.split("-----END CERTIFICATE-----")
        ca = [b + "-----END CERTIFICATE-----\n" for b in blocks
              if "subject=CN = cmc-test-responder" in b]
        self.assertEqual(len(ca), 1, pem)
        path = os.path.join(self.tmp, "responder-ca.pem")
        with open(path, "w") as f:
            f.write(ca[0][ca[0].index("-----BEGIN"):])
        return path

    def inspect_json(self, path):
        proc = self.pkirelay("inspect", "--json", path)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        return json.loads(proc.stdout)

    def items(self):
        proc = self.pkirelay("list", "--json", "-c", self.config)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return json.loads(proc.stdout)["items"]

    def only_item(self):
        items = self.items()
        self.assertEqual(len(items), 1, items)
        return items[0]

    # The cases.

    def test_full_pki_request_gets_signed_full_pki_response(self):
        self.start_responder()
        request, nonce = self.make_full_request("req.der")
        self.drop(request, "req.crq")
        self.run_once(expect=0)
        crp = os.path.join(self.inbox, "req.crp")
        self.assertTrue(os.path.exists(crp), f"no response file: {self.inbox_files()}")
        self.assertEqual(self.inbox_files(), ["req.crp", "req.crq"])

        # The signature verifies against the responder's CA, and the content is a PKIResponse.
        ca = self.responder_ca()
        openssl("cms", "-verify", "-inform", "DER", "-in", crp, "-CAfile", ca,
                "-out", os.path.join(self.tmp, "pkiresponse.der"))
        printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", crp).stdout
        self.assertRegex(printed, r"eContentType: (id-cct-PKIResponse|1\.3\.6\.1\.5\.5\.7\.12\.3)")

        info = self.inspect_json(crp)
        self.assertEqual(info["kind"], "cmc-full-response")
        self.assertEqual(info["cmc"]["status_name"], "success")
        # The responder echoes the request's senderNonce as recipientNonce (RFC 10002 §6.6).
        self.assertEqual(info["cmc"]["recipient_nonce"], nonce)
        self.assertEqual(self.only_item()["state"], "answered")

    def test_der_pkcs10_gets_certs_only(self):
        self.start_responder()
        self.drop(self.make_csr("user.der", "alice"), "user.p10")
        self.run_once(expect=0)
        p7c = os.path.join(self.inbox, "user.p7c")
        self.assertTrue(os.path.exists(p7c), f"no response file: {self.inbox_files()}")
        self.assertIn("CN = alice", self.certs_in(p7c))
        self.assertEqual(self.inspect_json(p7c)["kind"], "cmc-simple-response")

    def test_pem_pkcs10_is_relayed_as_der(self):
        self.start_responder()
        pem = self.make_csr("pem.pem", "pem-user", pem=True)
        openssl("req", "-in", pem, "-outform", "DER", "-out", os.path.join(self.tmp, "pem.der"))
        with open(os.path.join(self.tmp, "pem.der"), "rb") as f:
            der_size = len(f.read())
        self.drop(pem, "pem.csr")
        self.run_once(expect=0)
        p7c = os.path.join(self.inbox, "pem.p7c")
        self.assertTrue(os.path.exists(p7c), f"no response file: {self.inbox_files()}")
        self.assertIn("CN = pem-user", self.certs_in(p7c))
        # What went over the wire was the DER, not the armour.
        (entry,) = self.responder_log()
        self.assertEqual(entry[2], "application/pkcs10")
        self.assertEqual(entry[3], der_size)

    def test_503_is_deferred_then_retried(self):
        failing = self.start_responder("--fail-status", "503")
        self.drop(self.make_csr("user.der", "retry-user"), "user.p10")
        self.run_once(expect=75)
        self.assertEqual(self.inbox_files(), ["user.p10"])
        item = self.only_item()
        self.assertEqual(item["state"], "deferred", item)
        self.assertIn("503", item["reason"])

        # The CA is back, on another port: the config follows it.
        failing.stop()
        self.peers.remove(failing)
        self.start_responder()
        p7c = os.path.join(self.inbox, "user.p7c")

        def answered():
            proc = self.pkirelay("run", "--once", "-c", self.config)
            self.assertIn(proc.returncode, (0, 75), proc.stderr)
            return proc.returncode == 0 and os.path.exists(p7c)
        # The first retry is due retry.initial_seconds (1 s) after the failure.
        wait_until(answered, "the deferred item to be answered", interval=0.3)

        self.assertEqual(self.inbox_files(), ["user.p10", "user.p7c"])
        self.assertIn("CN = retry-user", self.certs_in(p7c))
        item = self.only_item()
        self.assertEqual(item["state"], "answered", item)
        show = self.pkirelay("show", str(item["id"]), "--json", "-c", self.config)
        self.assertEqual(show.returncode, 0, show.stderr)
        shown = json.loads(show.stdout)
        self.assertEqual(shown["attempts"], 2, shown)
        relaying = [e for e in shown["events"] if e["what"] == "relaying"]
        self.assertEqual(len(relaying), 2, shown["events"])
        human = self.pkirelay("show", str(item["id"]), "-c", self.config).stdout
        self.assertIn("2 attempt(s)", human)

    def test_400_without_body_fails_at_once(self):
        self.start_responder("--fail-status", "400")
        self.drop(self.make_csr("user.der", "rejected-user"), "user.p10")
        # A 4xx without a PKI body is a permanent failure: the item fails at once with its
        # reason, and the pass says a person is needed (65, as for quarantined input).
        self.run_once(expect=65)
        self.assertEqual(self.inbox_files(), ["user.p10"])
        item = self.only_item()
        self.assertEqual(item["state"], "failed", item)
        self.assertIn("400", item["reason"])
        # A later run does not send it again.
        self.run_once(expect=0)
        self.assertEqual(len(self.responder_log()), 1)
        self.assertEqual(self.inbox_files(), ["user.p10"])

    def test_batch_of_twenty_over_kept_alive_connections(self):
        self.start_responder()
        names = [f"u{i:02d}" for i in range(20)]
        sizes = {}
        for name in names:
            sizes[name] = len(self.drop(self.make_csr(name + ".der", name), name + ".p10"))
        proc = self.run_once(expect=0)
        self.assertIn("20 answered", proc.stderr)
        self.assertEqual(self.inbox_files(),
                         sorted([n + ".p10" for n in names] + [n + ".p7c" for n in names]))
        for name in names:  # each answer is the one for its own request
            self.assertIn(f"CN = {name}", self.certs_in(os.path.join(self.inbox, name + ".p7c")))

        log = self.responder_log()
        self.assertEqual(len(log), 20, log)
        self.assertEqual({e[2] for e in log}, {"application/pkcs10"})
        self.assertEqual(sorted(e[3] for e in log), sorted(sizes.values()))
        connections = {e[4] for e in log}
        self.assertLess(len(connections), 20, f"no connection was reused: {log}")

    def test_full_request_content_type(self):
        self.start_responder()
        request, _ = self.make_full_request("req.der")
        size = len(self.drop(request, "req.crq"))
        self.drop(self.make_csr("user.der", "bob"), "user.p10")
        self.run_once(expect=0)
        self.assertEqual(self.inbox_files(), ["req.crp", "req.crq", "user.p10", "user.p7c"])
        by_size = {e[3]: e for e in self.responder_log()}
        self.assertIn(size, by_size, self.responder_log())
        method, path, ctype, _, _, _ = by_size[size]
        self.assertEqual((method, path), ("POST", "/"))
        self.assertEqual(ctype, CMC_REQUEST_TYPE)


if __name__ == "__main__":
    unittest.main(verbosity=2)
