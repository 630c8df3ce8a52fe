"""pkirelay's HTTPS endpoints against a real TLS peer: tests/cmc_responder.py with --tls-cert.

Every certificate is made here by the openssl command line in the test's folder: a test CA, a
server certificate for 127.0.0.1 (subjectAltName IP:127.0.0.1, DNS:localhost), one for the wrong
name (DNS:other.example only), and a client certificate CN=relay. A PKCS#10 dropped into the
inbox is relayed by `pkirelay run --once` to the responder on a loopback port, which answers
with a certs-only (.p7c). Covered:
  - ca_file = the test CA: answered;
  - no ca_file (the system trust store does not know the test CA): deferred (75) with the
    certificate problem as reason, nothing written, nothing reaches the responder; once ca_file
    is added the retry is answered, exactly once;
  - the server certificate names another host: deferred with the name problem as reason; with
    verify_tls = false it is answered, and check-config flags the endpoint "TLS NOT VERIFIED";
  - mutual TLS (responder with --tls-client-ca): without client_cert/client_key, and with a
    client certificate from another CA, the exchange fails (deferred); with them it is answered
    and the responder's log names the client (client=relay).
Retries are due retry.initial_seconds (1 s) after a failure; waits poll with a deadline.
"""

import json
import os
import unittest

from harness import (PkirelayTestCase, openssl, read_responder_log, start_cmc_responder,
                     wait_until)

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


class HttpsRelay(PkirelayTestCase):

    def setUp(self):
        super().setUp()
        self.pki = os.path.join(self.tmp, "pki")
        os.mkdir(self.pki)
        self.ca = self.pki_path("ca.crt")
        openssl("req", "-x509", *EC, "-keyout", self.pki_path("ca.key"), "-out", self.ca,
                "-subj", "/CN=pkirelay test TLS CA", "-days", "2",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.pki)
        self.server = self.issue("server", "/CN=127.0.0.1", "serverAuth",
                                 "IP:127.0.0.1,DNS:localhost")
        self.client = self.issue("client", "/CN=relay", "clientAuth")
        self.log = os.path.join(self.tmp, "responder.log")

    # Certificates.

    def pki_path(self, name):
        return os.path.join(self.pki, name)

    def issue(self, name, subject, usage, san=None, ca="ca"):
        """A leaf certificate issued by the CA named ca; returns (certificate, key) paths."""
        key, csr, crt = (self.pki_path(name + ext) for ext in (".key", ".csr", ".crt"))
        openssl("req", "-new", *EC, "-keyout", key, "-out", csr, "-subj", subject, cwd=self.pki)
        ext = self.pki_path(name + ".ext")
        with open(ext, "w") as f:
            f.write("basicConstraints = critical, CA:FALSE\n"
                    "keyUsage = critical, digitalSignature\n"
                    f"extendedKeyUsage = {usage}\n"
                    + (f"subjectAltName = {san}\n" if san else ""))
        openssl("x509", "-req", "-in", csr, "-CA", self.pki_path(ca + ".crt"),
                "-CAkey", self.pki_path(ca + ".key"), "-CAcreateserial", "-days", "2",
                "-extfile", ext, "-out", crt, cwd=self.pki)
        return crt, key

    # The responder and the configuration.

    def start_responder(self, server=None, client_ca=None):
        """The CMC responder over HTTPS with server = (cert, key); returns its https URL."""
        cert, key = server or self.server
        extra = ["--tls-client-ca", client_ca] if client_ca else []
        peer, port = start_cmc_responder("--log", self.log, "--tls-cert", cert, "--tls-key", key,
                                         *extra)
        self.peers.append(peer)
        self.responder = peer
        return f"https://127.0.0.1:{port}/"

    def configure(self, url, ca_file=True, verify_tls=None, client=None):
        """Writes the config for url. The retry delay is 1 s from the start: an item's next try
        is fixed when it fails, so setting it only when fixing the config would come too late."""
        lines = []
        if ca_file:
            lines.append(f'ca_file = "{self.ca}"')
        if verify_tls is not None:
            lines.append(f"verify_tls = {'true' if verify_tls else 'false'}")
        if client:
            lines += [f'client_cert = "{client[0]}"', f'client_key = "{client[1]}"']
        self.write_config(url, extra_endpoint="\n".join(lines),
                          extra="[retry]\ninitial_seconds = 1")

    def responder_log(self):
        return read_responder_log(self.log)

    # Requests and answers.

    def drop_csr(self, name="user", cn="tls-user"):
        """A DER PKCS#10 written whole and renamed into the inbox as <name>.p10."""
        part = os.path.join(self.inbox, f".{name}.part")
        openssl("req", "-new", *EC, "-keyout", os.path.join(self.tmp, name + ".key"),
                "-subj", f"/CN={cn}", "-outform", "DER", "-out", part)
        os.rename(part, os.path.join(self.inbox, name + ".p10"))
        return os.path.join(self.inbox, name + ".p7c")

    def certs_in(self, p7c):
        out = openssl("pkcs7", "-inform", "DER", "-in", p7c, "-print_certs", "-noout").stdout
        return [line.split("=", 1)[1].strip() for line in out.splitlines()
                if line.startswith("subject=")]

    def only_item(self):
        proc = self.pkirelay("list", "--json", "-c", self.config)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        items = json.loads(proc.stdout)["items"]
        self.assertEqual(len(items), 1, items)
        return items[0]

    def assert_deferred(self, reason_pattern):
        """One run defers the item: exit 75, nothing written, nothing reached the responder's
        HTTP layer, and the reason matches reason_pattern. Returns the reason."""
        proc = self.run_once(expect=75)
        self.assertEqual(self.inbox_files(), ["user.p10"])
        item = self.only_item()
        self.assertEqual(item["state"], "deferred", item)
        self.assertRegex(item["reason"] or "", reason_pattern, proc.stderr)
        self.assertEqual(self.responder_log(), [])
        return item["reason"]

    def wait_answered(self, p7c):
        """Runs pkirelay until a run exits 0 with the response written (the retry is due 1 s
        after the failure); every run in between must only defer."""
        def answered():
            proc = self.pkirelay("run", "--once", "-c", self.config)
            self.assertIn(proc.returncode, (0, 75), proc.stderr)
            return proc.returncode == 0 and os.path.exists(p7c)
        wait_until(answered, "the deferred item to be answered over HTTPS", interval=0.3)

    def assert_answered_once(self, p7c, cn="tls-user"):
        self.assertEqual(self.inbox_files(), ["user.p10", "user.p7c"])
        self.assertIn(f"CN = {cn}", self.certs_in(p7c))
        self.assertEqual(self.only_item()["state"], "answered")
        log = self.responder_log()
        self.assertEqual(len(log), 1, log)
        self.assertEqual(log[0][:3], ("POST", "/", "application/pkcs10"))
        return log[0]

    def check_config(self):
        proc = self.pkirelay("check-config", "-c", self.config)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        return proc.stdout

    # The cases.

    def test_ca_file_trusts_the_server(self):
        self.configure(self.start_responder())
        self.assertNotIn("TLS NOT VERIFIED", self.check_config())
        p7c = self.drop_csr()
        self.run_once(expect=0)
        entry = self.assert_answered_once(p7c)
        self.assertIsNone(entry[5], "no client certificate was asked for")

    def test_unknown_ca_is_deferred_until_ca_file_is_set(self):
        url = self.start_responder()
        self.configure(url, ca_file=False)
        p7c = self.drop_csr()
        # curl: "SSL certificate problem: unable to get local issuer certificate".
        self.assert_deferred(r"(?i)certificate.*(issuer|verif|unknown|self.signed)")
        self.assertFalse(os.path.exists(p7c))

        self.configure(url, ca_file=True)
        self.wait_answered(p7c)
        self.assert_answered_once(p7c)
        # Nothing more to do: a further run sends nothing again.
        self.run_once(expect=0)
        self.assertEqual(len(self.responder_log()), 1)
        self.assertEqual(self.inbox_files(), ["user.p10", "user.p7c"])

    def test_wrong_server_name_is_refused_unless_verification_is_off(self):
        other = self.issue("other", "/CN=other.example", "serverAuth", "DNS:other.example")
        url = self.start_responder(server=other)
        self.configure(url)
        p7c = self.drop_csr()
        # curl: "SSL: no alternative certificate subject name matches target host name ...".
        self.assert_deferred(r"(?i)(host ?name|subject name)")
        self.assertFalse(os.path.exists(p7c))

        self.configure(url, verify_tls=False)
        printed = self.check_config()
        self.assertRegex(printed, r"endpoint ca: https://127\.0\.0\.1:\d+/ \(TLS NOT VERIFIED\)")
        self.wait_answered(p7c)
        self.assert_answered_once(p7c)

    def test_mutual_tls(self):
        url = self.start_responder(client_ca=self.ca)
        self.configure(url)
        p7c = self.drop_csr()
        # No client certificate: the responder ends the handshake and the item waits. With
        # TLS 1.3 curl has finished its side by then, so what it reports depends on which of
        # its reads or writes meets the closed connection (seen: "tlsv13 alert certificate
        # required", "getpeername() failed", "Send failure: Broken pipe"). The cause is checked
        # on the responder's side instead; here any recorded reason will do.
        self.assert_deferred(r"\S")
        self.wait_for_responder_error("did not return a certificate")

        # A client certificate CN=relay from a CA the responder does not trust: still refused.
        openssl("req", "-x509", *EC, "-keyout", self.pki_path("stranger-ca.key"),
                "-out", self.pki_path("stranger-ca.crt"), "-subj", "/CN=stranger CA",
                "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.pki)
        stranger = self.issue("stranger", "/CN=relay", "clientAuth", ca="stranger-ca")
        self.configure(url, client=stranger)
        self.assertEqual(self.check_config().count("TLS NOT VERIFIED"), 0)

        def tried_again():
            proc = self.pkirelay("run", "--once", "-c", self.config)
            self.assertEqual(proc.returncode, 75, proc.stderr)
            return self.attempts() >= 2
        wait_until(tried_again, "a second attempt with the stranger's certificate", interval=0.3)
        item = self.only_item()
        self.assertEqual(item["state"], "deferred", item)
        self.assertRegex(item["reason"] or "", r"\S")  # wording depends on timing, as above
        self.assertEqual(self.responder_log(), [])
        self.wait_for_responder_error("certificate verify failed")

        # The right client certificate: answered, and the responder saw who it was.
        self.configure(url, client=self.client)
        self.wait_answered(p7c)
        entry = self.assert_answered_once(p7c)
        self.assertEqual(entry[5], "relay")

    def wait_for_responder_error(self, text):
        """The responder's stderr (merged into its output) reports a failed handshake saying
        text; it is written by the connection's thread, so it may come a moment later."""
        def reported():
            return any("TLS handshake" in line and text in line.lower()
                       for line in list(self.responder.lines))
        wait_until(reported, f"the responder to report a failed handshake ({text})")

    def attempts(self):
        item = self.only_item()
        proc = self.pkirelay("show", str(item["id"]), "--json", "-c", self.config)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return json.loads(proc.stdout)["attempts"]


if __name__ == "__main__":
    unittest.main(verbosity=2)
