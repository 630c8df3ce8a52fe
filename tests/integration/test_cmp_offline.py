"""Offline CMP enrollment through pkirelay's file transport, checked by OpenSSL itself.

The `openssl cmp` client writes its request into pkirelay's watched folder (-reqout, the CA
unreachable), pkirelay relays it to OpenSSL's CMP mock server over HTTP and writes the answer
beside the request, and the client, run again with -rspin on that answer, must accept it and
write the certificate (PROTOCOLS.md §7.3, "three-leg offline flow"). Both a one-round transaction
(implicit confirmation granted) and a two-round one (ir, then certConf carried by pkirelay too).
"""

import os
import subprocess
import unittest

from harness import CmpCredentials, PkirelayTestCase, cmp_client, openssl, start_cmp_server

UNREACHABLE = "127.0.0.1:1/pkix/"  # nothing listens on port 1: the client only writes files


class CmpOfflineEnrollment(PkirelayTestCase):

    def setUp(self):
        super().setUp()
        self.creds = CmpCredentials(self.tmp)

    def start_ca(self, *extra):
        peer, port = start_cmp_server(self.creds, *extra)
        self.peers.append(peer)
        # OpenSSL 3.0's mock serves one connection at a time and cancels a transaction when a
        # kept-alive connection closes, so: one connection, closed after each exchange.
        self.write_config(f"http://127.0.0.1:{port}/pkix/",
                          extra_endpoint="max_connections = 1\nkeep_alive = false")

    def offline_client(self, *args):
        """A client run against an unreachable server: it writes requests and then fails."""
        # -certout is required even though this run never gets a certificate.
        return cmp_client(self.creds, "-server", UNREACHABLE, "-msg_timeout", "2",
                          "-certout", os.path.join(self.tmp, "unused.crt"), *args, check=False)

    def subject_of(self, cert):
        return openssl("x509", "-in", cert, "-noout", "-subject").stdout.strip()

    def kind_of(self, path):
        proc = self.pkirelay("inspect", path)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        return proc.stdout

    def test_one_round_with_implicit_confirm(self):
        self.start_ca("-grant_implicitconf")
        ir = os.path.join(self.inbox, "ir.der")
        self.offline_client("-cmd", "ir", "-subject", "/CN=Offline", "-implicit_confirm",
                            "-reqout", ir)
        self.assertTrue(os.path.exists(ir), "openssl cmp did not write the request")

        self.run_once(expect=0)
        response = os.path.join(self.inbox, "ir.pki")
        self.assertTrue(os.path.exists(response), f"no response file: {self.inbox_files()}")
        self.assertIn("body", self.kind_of(response))
        self.assertRegex(self.kind_of(response), r"\bip\b")

        cert = os.path.join(self.tmp, "cert.pem")
        cmp_client(self.creds, "-cmd", "ir", "-subject", "/CN=Offline", "-implicit_confirm",
                   "-reqin", ir, "-rspin", response, "-certout", cert)
        self.assertIn("CN = enrolled-leaf", self.subject_of(cert))

        # A second pass finds nothing new: nothing is sent twice, nothing rewritten.
        before = {f: os.stat(os.path.join(self.inbox, f)).st_mtime_ns for f in self.inbox_files()}
        proc = self.run_once(expect=0)
        self.assertIn("0 relayed", proc.stderr)
        after = {f: os.stat(os.path.join(self.inbox, f)).st_mtime_ns for f in self.inbox_files()}
        self.assertEqual(before, after)

    def test_two_rounds_ir_then_cert_conf(self):
        self.start_ca()
        ir = os.path.join(self.inbox, "ir.der")
        cert_conf = os.path.join(self.inbox, "certConf.der")
        self.offline_client("-cmd", "ir", "-subject", "/CN=Offline", "-reqout", ir)
        self.run_once(expect=0)
        ip = os.path.join(self.inbox, "ir.pki")
        self.assertTrue(os.path.exists(ip), f"no ip: {self.inbox_files()}")

        # Leg 2: the client reads the ip from the file and writes its certConf, which it cannot
        # send (the server is unreachable from the client's side).
        self.offline_client("-cmd", "ir", "-subject", "/CN=Offline", "-reqin", ir,
                            "-rspin", ip, "-reqout", f"{os.path.join(self.tmp, 'ir2.der')},"
                            f"{cert_conf}")
        self.assertTrue(os.path.exists(cert_conf), "the client wrote no certConf")
        self.run_once(expect=0)
        pki_conf = os.path.join(self.inbox, "certConf.pki")
        self.assertTrue(os.path.exists(pki_conf), f"no pkiconf: {self.inbox_files()}")
        self.assertRegex(self.kind_of(pki_conf), r"\bpkiconf\b")

        cert = os.path.join(self.tmp, "cert.pem")
        cmp_client(self.creds, "-cmd", "ir", "-subject", "/CN=Offline", "-reqin", ir,
                   "-rspin", f"{ip},{pki_conf}", "-certout", cert)
        self.assertIn("CN = enrolled-leaf", self.subject_of(cert))


if __name__ == "__main__":
    unittest.main(verbosity=2)
