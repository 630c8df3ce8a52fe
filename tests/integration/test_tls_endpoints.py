"""Production TLS in front of real CAs: nginx terminating mutual TLS before OpenSSL's CMP
server, and CMC over TCP with TLS (cmc-tcps://) against tests/cmc_tcp_responder.py.

Every certificate is made here by the openssl command line: a test CA, a server certificate for
127.0.0.1 (subjectAltName IP:127.0.0.1), one naming only other.example, a client certificate
CN=relay. nginx (Debian nginx-light) runs from a generated configuration on a free loopback
port, requires a client certificate from the test CA (ssl_verify_client on) and proxies
/.well-known/cmp to `openssl cmp -port` on /pkix/. An `openssl cmp` client writes an offline ir;
`pkirelay run --once` relays it; the client accepts the answer. Covered:
  - the right client certificate: answered, and the certificate issued;
  - no client certificate: nginx answers 400, a permanent failure;
  - a server certificate for another name, or from a CA not trusted: deferred, unless the
    endpoint says verify_tls = false;
  - cmc-tcps: verified and answered; the wrong name refused; a pinned public key that is not the
    server's refused, the right pin accepted; mutual TLS required by the responder.
Nothing sleeps to wait: readiness is a connection that succeeds, within a deadline.
"""
import base64
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import unittest

from harness import (TESTS_DIR, CmpCredentials, Peer, PkirelayTestCase, cmp_client, openssl,
                     start_cmp_server, wait_until)

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
UNREACHABLE = "127.0.0.1:1/pkix/"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pki:
    """A throw-away CA and the certificates the tests need, in folder."""

    def __init__(self, folder, name="ca"):
        self.folder = folder
        self.name = name
        self.ca = self.path(f"{name}.crt")
        openssl("req", "-x509", *EC, "-keyout", self.path(f"{name}.key"), "-out", self.ca,
                "-subj", f"/CN=pkirelay test CA {name}", "-days", "2",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)

    def path(self, name):
        return os.path.join(self.folder, name)

    def issue(self, name, subject, usage, san=None):
        key, csr, crt = (self.path(name + ext) for ext in (".key", ".csr", ".crt"))
        openssl("req", "-new", *EC, "-keyout", key, "-out", csr, "-subj", subject,
                cwd=self.folder)
        ext = self.path(name + ".ext")
        with open(ext, "w") as f:
            f.write("basicConstraints = critical, CA:FALSE\nkeyUsage = critical, "
                    f"digitalSignature\nextendedKeyUsage = {usage}\n" +
                    (f"subjectAltName = {san}\n" if san else ""))
        openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.path(f"{self.name}.key"),
                "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", crt, cwd=self.folder)
        os.chmod(key, 0o600)
        return crt, key


class Nginx:
    """nginx in the foreground from a generated configuration, stopped by SIGTERM."""

    def __init__(self, folder, port, conf_body):
        os.makedirs(os.path.join(folder, "tmp"), exist_ok=True)
        conf = os.path.join(folder, "nginx.conf")
        tmp = os.path.join(folder, "tmp")
        with open(conf, "w") as f:
            f.write(f"daemon off; worker_processes 1; pid {folder}/nginx.pid;\n"
                    f"error_log {folder}/error.log info;\n" +
                    ("user root;\n" if os.geteuid() == 0 else "") +
                    "events { worker_connections 64; }\n"
                    f"http {{ access_log {folder}/access.log; client_body_temp_path {tmp}; "
                    f"proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; "
                    f"scgi_temp_path {tmp};\n{conf_body}\n}}\n")
        self.proc = subprocess.Popen(["nginx", "-p", folder, "-c", conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.folder = folder

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError("nginx exited: " + self.error_log())
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_until(listening, "nginx listening", interval=0.05)

    def error_log(self):
        try:
            with open(os.path.join(self.folder, "error.log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@unittest.skipUnless(shutil.which("nginx"), "nginx is not installed (Debian nginx-light)")
class NginxMutualTls(PkirelayTestCase):

    def setUp(self):
        super().setUp()
        # A folder of its own: CmpCredentials writes server.crt/server.key into self.tmp.
        os.mkdir(os.path.join(self.tmp, "tls"))
        self.pki = Pki(os.path.join(self.tmp, "tls"))
        self.server = self.pki.issue("server", "/CN=127.0.0.1", "serverAuth", "IP:127.0.0.1")
        self.wrong = self.pki.issue("wrong", "/CN=other.example", "serverAuth",
                                    "DNS:other.example")
        self.client = self.pki.issue("client", "/CN=relay", "clientAuth")
        self.creds = CmpCredentials(self.tmp)
        peer, self.cmp_port = start_cmp_server(self.creds, "-grant_implicitconf")
        self.peers.append(peer)
        self.nginx = None

    def tearDown(self):
        if self.nginx:
            self.nginx.stop()
        super().tearDown()

    def start_nginx(self, cert):
        port = free_port()
        crt, key = cert
        body = (f"server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {crt}; "
                f"ssl_certificate_key {key}; ssl_client_certificate {self.pki.ca}; "
                "ssl_verify_client on; ssl_protocols TLSv1.2 TLSv1.3;\n"
                # OpenSSL's mock serves /pkix/ only; each request gets its own upstream
                # connection, closed after the answer (HTTP/1.0), as the mock needs.
                f"  location = /.well-known/cmp {{ proxy_pass http://127.0.0.1:{self.cmp_port}"
                "/pkix/; proxy_http_version 1.0; } }")
        self.nginx = Nginx(os.path.join(self.tmp, "nginx"), port, body)
        return port

    def configure(self, port, **keys):
        lines = [f"{k} = {v}" for k, v in keys.items()]
        self.write_config(f"https://127.0.0.1:{port}/.well-known/cmp",
                          extra_endpoint="\n".join(lines), extra="[retry]\ninitial_seconds = 1\n")

    def offline_ir(self):
        ir = os.path.join(self.inbox, "ir.der")
        cmp_client(self.creds, "-server", UNREACHABLE, "-msg_timeout", "2", "-certout",
                   os.path.join(self.tmp, "unused.crt"), "-cmd", "ir", "-subject", "/CN=Tls",
                   "-implicit_confirm", "-reqout", ir, check=False)
        self.assertTrue(os.path.exists(ir))
        return ir

    def only_item(self):
        items = self.items()
        self.assertEqual(len(items), 1, items)
        return self.show(items[0]["id"])

    def test_right_client_certificate_enrolls(self):
        port = self.start_nginx(self.server)
        self.configure(port, ca_file=f'"{self.pki.ca}"', client_cert=f'"{self.client[0]}"',
                       client_key=f'"{self.client[1]}"', tls_min_version='"1.2"')
        ir = self.offline_ir()
        self.run_once(expect=0)
        cert = os.path.join(self.tmp, "cert.pem")
        cmp_client(self.creds, "-cmd", "ir", "-subject", "/CN=Tls", "-implicit_confirm",
                   "-reqin", ir, "-rspin", os.path.join(self.inbox, "ir.pki"), "-certout", cert)
        self.assertIn("CN = enrolled-leaf",
                      openssl("x509", "-in", cert, "-noout", "-subject").stdout)

    def test_without_client_certificate_refused(self):
        port = self.start_nginx(self.server)
        self.configure(port, ca_file=f'"{self.pki.ca}"')
        self.offline_ir()
        self.run_once(expect=65)
        item = self.only_item()
        self.assertEqual(item["state"], "failed", item)
        self.assertIn("HTTP 400", str(item))
        self.assertFalse(os.path.exists(os.path.join(self.inbox, "ir.pki")))

    def test_wrong_host_name_refused_unless_verification_is_off(self):
        port = self.start_nginx(self.wrong)
        client = dict(client_cert=f'"{self.client[0]}"', client_key=f'"{self.client[1]}"')
        self.configure(port, ca_file=f'"{self.pki.ca}"', **client)
        self.offline_ir()
        self.run_once(expect=75)
        self.assertIn("127.0.0.1", str(self.only_item()["reason"]))
        self.configure(port, verify_tls="false", **client)
        wait_until(lambda: self.pkirelay("run", "--once", "-c", self.config).returncode == 0,
                   "the retry answered", interval=0.5)
        self.assertIn("ir.pki", self.inbox_files())

    def test_untrusted_server_refused_unless_verification_is_off(self):
        port = self.start_nginx(self.server)
        client = dict(client_cert=f'"{self.client[0]}"', client_key=f'"{self.client[1]}"')
        self.configure(port, **client)  # the system's trust store does not know the test CA
        self.offline_ir()
        self.run_once(expect=75)
        self.assertIn("certificate", str(self.only_item()["reason"]))
        self.configure(port, verify_tls="false", **client)
        wait_until(lambda: self.pkirelay("run", "--once", "-c", self.config).returncode == 0,
                   "the retry answered", interval=0.5)
        self.assertIn("ir.pki", self.inbox_files())


class CmcOverTls(PkirelayTestCase):

    def setUp(self):
        super().setUp()
        self.pki = Pki(self.tmp)
        self.server = self.pki.issue("server", "/CN=127.0.0.1", "serverAuth", "IP:127.0.0.1")
        self.client = self.pki.issue("client", "/CN=relay", "clientAuth")

    def start(self, *args):
        peer = Peer([sys.executable, os.path.join(TESTS_DIR, "cmc_tcp_responder.py"),
                     "--tls-cert", self.server[0], "--tls-key", self.server[1], *args],
                    "LISTENING")
        self.peers.append(peer)
        return int(peer.ready_line.split()[1])

    def configure(self, port, **keys):
        lines = [f"{k} = {v}" for k, v in keys.items()]
        self.write_config(f"cmc-tcps://127.0.0.1:{port}",
                          extra_endpoint="timeout_seconds = 20\n" + "\n".join(lines))

    def pin(self):
        der = openssl("x509", "-in", self.server[0], "-pubkey", "-noout").stdout
        spki = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"],
                              input=der.encode(), capture_output=True, check=True).stdout
        return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()

    def test_verified_answered_and_wrong_name_refused(self):
        port = self.start()
        self.configure(port, ca_file=f'"{self.pki.ca}"', pinned_public_key=f'"{self.pin()}"')
        self.csr("a.p10")
        self.run_once(expect=0)
        self.assertIn("a.p7c", self.inbox_files())
        # The same server addressed by a name its certificate does not carry.
        self.write_config(f"cmc-tcps://localhost:{port}",
                          extra_endpoint=f'ca_file = "{self.pki.ca}"')
        self.csr("b.p10", cn="b")
        proc = self.run_once(expect=75)
        self.assertIn("certificate verify failed", proc.stderr)

    def test_pin_mismatch_refused(self):
        port = self.start()
        wrong = "sha256//" + base64.b64encode(b"\0" * 32).decode()
        self.configure(port, ca_file=f'"{self.pki.ca}"', pinned_public_key=f'"{wrong}"')
        self.csr("a.p10")
        proc = self.run_once(expect=75)
        self.assertIn("not the pinned one", proc.stderr)

    def test_mutual_tls(self):
        port = self.start("--tls-client-ca", self.pki.ca)
        self.configure(port, ca_file=f'"{self.pki.ca}"')
        self.csr("a.p10")
        self.run_once(expect=75)  # no client certificate: the handshake fails
        self.configure(port, ca_file=f'"{self.pki.ca}"', client_cert=f'"{self.client[0]}"',
                       client_key=f'"{self.client[1]}"', max_connections=1)
        wait_until(lambda: self.pkirelay("run", "--once", "-c", self.config).returncode == 0,
                   "the retry answered", interval=0.5)
        self.assertIn("a.p7c", self.inbox_files())


if __name__ == "__main__":
    unittest.main(verbosity=2)
