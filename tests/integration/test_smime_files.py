"""S/MIME on disk: a whole mail (.eml) or an S/MIME entity (.p7m) dropped into a watched folder.

The mails are made as a user's mail program would (the MIME around the request written here, the
S/MIME layers by `openssl cms -sign/-encrypt`); `pkirelay run --once` relays the request inside
to a real CA on loopback (OpenSSL's CMP mock server, tests/cmc_responder.py) and writes the answer
beside the request in the same form: NAME.response.eml / NAME.response.p7m, a MIME entity with
the response attached in the MIME type of its kind. The answers are then read back with Python's
email package and checked by OpenSSL itself (`openssl cmp -rspin`, `openssl pkcs7`).
"""

import base64
import email
import email.policy
import os
import unittest

from harness import (TESTS_DIR, CmpCredentials, PkirelayTestCase, cmp_client, drop_into, openssl, run,
                     start_cmc_responder, start_cmp_server)

UNREACHABLE = "127.0.0.1:9"


def mime_part(content_type, name, der):
    """One base64 MIME entity, CRLF line ends, 76-column lines (RFC 2045 §6.8)."""
    b64 = base64.encodebytes(der).decode().replace("\n", "\r\n")
    return (f'Content-Type: {content_type}; name="{name}"\r\n'
            "Content-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="{name}"\r\n\r\n{b64}').encode()


def mail(subject, body_entity):
    """A whole RFC 5322 message around one entity."""
    head = ("From: Ann <ann@example.org>\r\nTo: enroll@ca.example\r\n"
            f"Subject: {subject}\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@example.org>\r\nMIME-Version: 1.0\r\n")
    return head.encode() + body_entity


class SmimeFiles(PkirelayTestCase):

    def read(self, path):
        with open(path, "rb") as f:
            return f.read()

    def write(self, name, data, folder=None):
        path = os.path.join(folder or self.tmp, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def drop(self, name, data):
        """Written whole under a temporary name, then renamed into the inbox."""
        drop_into(self.inbox, name, data)

    def attachment(self, path, content_type):
        """The one attachment of a response entity, checked for its type; returns the DER."""
        msg = email.message_from_bytes(self.read(path), policy=email.policy.default)
        self.assertEqual(msg.get_content_type(), content_type, msg.as_string()[:400])
        self.assertEqual(msg["MIME-Version"], "1.0")
        self.assertEqual(msg["Content-Transfer-Encoding"], "base64")
        return msg.get_payload(decode=True)

    def certs_in(self, der):
        p7c = self.write("answer.p7c", der)
        out = openssl("pkcs7", "-inform", "DER", "-in", p7c, "-print_certs", "-noout").stdout
        return [line.split("=", 1)[1].strip() for line in out.splitlines()
                if line.startswith("subject=")]

    def der_csr(self, cn):
        key = os.path.join(self.tmp, cn + ".key")
        out = os.path.join(self.tmp, cn + ".p10")
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", key, "-subj", f"/CN={cn}", "-outform", "DER", "-out", out)
        return self.read(out)

    def self_signed(self, name, subject):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", os.path.join(self.tmp, name + ".key"),
                "-out", os.path.join(self.tmp, name + ".crt"), "-subj", subject, "-days", "2")
        os.chmod(os.path.join(self.tmp, name + ".key"), 0o600)
        return os.path.join(self.tmp, name + ".key"), os.path.join(self.tmp, name + ".crt")

    def start_cmc(self, extra_source=""):
        self.log = os.path.join(self.tmp, "responder.log")
        peer, port = start_cmc_responder("--log", self.log)
        self.peers.append(peer)
        self.write_config(f"http://127.0.0.1:{port}/", extra_source=extra_source)

    def test_cmp_ir_in_an_eml_is_answered_with_an_eml_that_openssl_cmp_accepts(self):
        creds = CmpCredentials(self.tmp)
        peer, port = start_cmp_server(creds, "-grant_implicitconf")
        self.peers.append(peer)
        self.write_config(f"http://127.0.0.1:{port}/pkix/",
                          extra_endpoint="max_connections = 1\nkeep_alive = false")
        ir = os.path.join(self.tmp, "ir.der")
        cmp_client(creds, "-server", UNREACHABLE, "-msg_timeout", "2", "-cmd", "ir",
                   "-subject", "/CN=By Mail", "-implicit_confirm", "-reqout", ir,
                   "-certout", os.path.join(self.tmp, "unused.crt"), check=False)
        self.drop("enroll.eml", mail("cmp request",
                                     mime_part("application/pkixcmp", "ir.pki", self.read(ir))))
        self.run_once(expect=0)
        self.assertEqual(self.inbox_files(), ["enroll.eml", "enroll.response.eml"])

        ip = self.write("ip.der", self.attachment(os.path.join(self.inbox, "enroll.response.eml"),
                                                  "application/pkixcmp"))
        cert = os.path.join(self.tmp, "cert.pem")
        cmp_client(creds, "-cmd", "ir", "-subject", "/CN=By Mail", "-implicit_confirm",
                   "-reqin", ir, "-rspin", ip, "-certout", cert)
        self.assertIn("CN = enrolled-leaf",
                      openssl("x509", "-in", cert, "-noout", "-subject").stdout)

        # A second pass reads its own response entity as its own, not as a new arrival.
        proc = self.run_once(expect=0)
        self.assertIn("0 relayed", proc.stderr)

    def test_signed_p7m_with_a_pkcs10_gets_a_certs_only_p7m(self):
        self.start_cmc()
        sender_key, sender_crt = self.self_signed("sender", "/CN=Ann")
        inner = self.write("inner.mime", mime_part("application/pkcs10", "req.p10",
                                                   self.der_csr("p7m-user")))
        signed = os.path.join(self.tmp, "signed.p7m")
        openssl("cms", "-sign", "-nodetach", "-in", inner, "-signer", sender_crt,
                "-inkey", sender_key, "-out", signed)  # S/MIME with its MIME headers
        self.drop("user.p7m", self.read(signed))
        self.run_once(expect=0)
        answer = os.path.join(self.inbox, "user.response.p7m")
        self.assertTrue(os.path.exists(answer), self.inbox_files())
        der = self.attachment(answer, "application/pkcs7-mime")
        msg = email.message_from_bytes(self.read(answer), policy=email.policy.default)
        self.assertEqual(msg.get_param("smime-type"), "certs-only")
        self.assertEqual(msg.get_filename(), "response.p7c")
        self.assertIn("CN = p7m-user", self.certs_in(der))
        self.assertEqual(self.requests_seen(), 1)

    def test_bare_der_p7m_is_a_request_file_answered_with_bare_der(self):
        # RFC 5273 §3 and RFC 10003 name .p7m for a CMC Full PKI Request: a file holding its bare
        # DER is an ordinary request file, answered with the bare DER response (NAME.crp), not
        # with a MIME entity.
        self.start_cmc()
        fx = os.path.join(self.tmp, "fx")
        run(["sh", os.path.join(TESTS_DIR, "fixtures", "make_fixtures.sh"), fx])
        self.drop("full.p7m", self.read(os.path.join(fx, "cmc_request.der")))
        self.run_once(expect=0)
        self.assertEqual(self.inbox_files(), ["full.crp", "full.p7m"])
        self.assertEqual(self.read(os.path.join(self.inbox, "full.crp"))[:1], b"\x30")
        self.assertEqual(self.requests_seen(), 1)

    def test_encrypted_eml_is_decrypted_with_the_relays_key(self):
        key, crt = self.self_signed("relay", "/CN=pkirelay")
        self.start_cmc(extra_source=f'smime_decrypt_key = "{key}"\nsmime_decrypt_cert = "{crt}"')
        inner = self.write("inner.mime", mime_part("application/pkcs10", "req.p10",
                                                   self.der_csr("secret-user")))
        enc = os.path.join(self.tmp, "enc.txt")
        openssl("cms", "-encrypt", "-aes128", "-recip", crt, "-in", inner, "-out", enc,
                "-crlfeol")
        data = self.read(enc).replace(b"MIME-Version: 1.0\r\n", b"")
        self.drop("secret.eml", mail("encrypted", data))
        self.run_once(expect=0)
        der = self.attachment(os.path.join(self.inbox, "secret.response.eml"),
                              "application/pkcs7-mime")
        self.assertIn("CN = secret-user", self.certs_in(der))

    def test_a_signature_that_does_not_verify_is_quarantined(self):
        ca_key, ca_crt = self.self_signed("trusted", "/CN=Trusted Sender")
        self.start_cmc(extra_source=f'smime_trust_file = "{ca_crt}"\nsmime_require_signed = true')
        inner = self.write("inner.mime", mime_part("application/pkcs10", "req.p10",
                                                   self.der_csr("signed-user")))
        signed = os.path.join(self.tmp, "signed.txt")
        openssl("cms", "-sign", "-in", inner, "-signer", ca_crt, "-inkey", ca_key,
                "-out", signed)  # multipart/signed
        good = mail("signed", self.read(signed).replace(b"MIME-Version: 1.0\n", b""))
        self.drop("good.eml", good)
        self.drop("bad.eml", good.replace(b'name="req.p10"', b'name="rex.p10"'))
        unsigned = mail("unsigned", mime_part("application/pkcs10", "req.p10",
                                              self.der_csr("unsigned-user")))
        self.drop("unsigned.eml", unsigned)
        self.run_once(expect=65)  # two quarantined
        self.assertIn("good.response.eml", self.inbox_files())
        self.assertNotIn("bad.response.eml", self.inbox_files())
        self.assertEqual(self.requests_seen(), 1)
        reasons = {i["origin"]: i.get("reason", "") for i in self.items("quarantined")}
        self.assertEqual(set(reasons), {"bad.eml", "unsigned.eml"}, reasons)
        self.assertIn("does not verify", reasons["bad.eml"])
        self.assertIn("verified signature", reasons["unsigned.eml"])

    def test_mail_without_a_request_and_with_two(self):
        self.start_cmc()
        self.drop("hello.eml", mail("hello", b"Content-Type: text/plain\r\n\r\nHello.\r\n"))
        two = (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n' +
               mime_part("application/pkcs10", "a.p10", self.der_csr("a")) + b"--b\r\n" +
               mime_part("application/pkcs10", "b.p10", self.der_csr("b")) + b"--b--\r\n")
        self.drop("two.eml", mail("two", two))
        self.run_once(expect=65)
        reasons = {i["origin"]: i.get("reason", "") for i in self.items("quarantined")}
        self.assertIn("no PKI request", reasons["hello.eml"])
        self.assertIn("2 requests", reasons["two.eml"])
        self.assertEqual(self.requests_seen(), 0)


if __name__ == "__main__":
    unittest.main()
