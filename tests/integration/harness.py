"""Shared pieces of pkirelay's integration tests.

The tests drive the real `pkirelay` binary against real peers started here on loopback:
OpenSSL's own CMP mock server (`openssl cmp -port 0`) and tests/cmc_responder.py. Nothing waits
by sleeping: each wait reads a peer's output, or polls a condition, against a deadline.
Environment (set by tests/meson.build): PKIRELAY = the binary, PKIRELAY_SHARED = ../shared.
"""

import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

PKIRELAY = os.environ.get("PKIRELAY", "pkirelay")
TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE = 30.0


def run(cmd, check=True, cwd=None, timeout=120, env=None):
    """Runs a command, returning CompletedProcess with text stdout/stderr."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def openssl(*args, cwd=None, check=True):
    return run(["openssl", *args], cwd=cwd, check=check)


class Peer:
    """A server process whose readiness is a line in its output; stopped on exit.

    stdout and stderr are merged (OpenSSL prints its ACCEPT line and its warnings on either),
    and once the peer is ready a thread keeps draining them so that a chatty peer never blocks
    on a full pipe. The lines are kept for failure messages.
    """

    def __init__(self, cmd, ready_marker, cwd=None, deadline=DEADLINE, env=None):
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env)
        self.lines = []
        self._pending = b""
        self.ready_line = self._wait_for(ready_marker, deadline)
        self._drain = threading.Thread(target=self._drain_output, daemon=True)
        self._drain.start()

    def _read_some(self, timeout):
        """Reads what is there (raw fd reads: select and a buffered reader do not mix)."""
        ready, _, _ = select.select([self.proc.stdout], [], [], max(timeout, 0))
        if not ready:
            return False
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        if not chunk:
            return False
        self._pending += chunk
        *complete, self._pending = self._pending.split(b"\n")
        self.lines.extend(line.decode(errors="replace") for line in complete)
        return True

    def _wait_for(self, marker, deadline):
        end = time.monotonic() + deadline
        checked = 0
        while time.monotonic() < end:
            for line in self.lines[checked:]:
                if marker in line:
                    return line.strip()
            checked = len(self.lines)
            if not self._read_some(end - time.monotonic()):
                break
        self.stop()
        raise AssertionError(f"peer {self.proc.args[0]} did not print {marker!r} in time; "
                             f"it printed {self.lines!r}")

    def _drain_output(self):
        while self._read_some(3600):
            pass

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drain.join(timeout=10) if hasattr(self, "_drain") else None
        self.proc.stdout.close()


def read_responder_log(path):
    """tests/cmc_responder.py's --log as (method, path, content-type, length, client port,
    client certificate CN or None), one tuple per request."""
    entries = []
    if not os.path.exists(path):
        return entries
    with open(path) as f:
        for line in f:
            head, ctype, tail = line.rstrip("\n").split('"')
            method, target = head.split()
            fields = tail.split()
            client = None
            if fields[-1].startswith("client="):
                client = fields.pop()[len("client="):]
            length, port = map(int, fields)
            entries.append((method, target, ctype, length, port, client))
    return entries


class CmpCredentials:
    """Throw-away credentials for OpenSSL's CMP mock CA and client (PROTOCOLS.md §7.3).

    The mock returns rsp.crt for every enrollment, and the client accepts it only when the
    client's -newkey is rsp.key, so the client enrolls with that key.
    """

    REF = "1234"
    SECRET = "pass:1234-5678"

    def __init__(self, folder):
        self.folder = folder
        for name, subject in (("server", "/O=openssl_cmp/CN=mock-ca"),
                              ("rsp", "/CN=enrolled-leaf")):
            openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt",
                    "-subj", subject, "-days", "30", cwd=folder)

    def path(self, name):
        return os.path.join(self.folder, name)


def start_cmp_server(creds, *extra):
    """OpenSSL 3.0's mock CMP server on a kernel-chosen port; returns (peer, port).

    It listens on [::]:port (3.0 has no bind option); the tests address it as 127.0.0.1 only.
    """
    peer = Peer(["openssl", "cmp", "-config", "", "-port", "0",
                 "-srv_cert", creds.path("server.crt"), "-srv_key", creds.path("server.key"),
                 "-srv_secret", CmpCredentials.SECRET, "-srv_ref", CmpCredentials.REF,
                 "-rsp_cert", creds.path("rsp.crt"), *extra],
                "ACCEPT", cwd=creds.folder)
    port = int(peer.ready_line.split("ACCEPT", 1)[1].split()[0].rsplit(":", 1)[1])
    return peer, port


def cmp_client(creds, *args, check=True):
    """The `openssl cmp` client with the mock's PBM credentials and enrollment key."""
    return openssl("cmp", "-config", "", "-ref", CmpCredentials.REF,
                   "-secret", CmpCredentials.SECRET, "-srvcert", creds.path("server.crt"),
                   "-newkey", creds.path("rsp.key"), *args, cwd=creds.folder, check=check)


def start_cmc_responder(*extra):
    """tests/cmc_responder.py on a kernel-chosen loopback port; returns (peer, port)."""
    peer = Peer([sys.executable, os.path.join(TESTS_DIR, "cmc_responder.py"), *extra],
                "LISTENING")
    return peer, int(peer.ready_line.split()[1])


def drop_into(folder, name, data):
    """Puts data into folder under name as a careful client does: written whole under a
    temporary name (one pkirelay never reads), then renamed into place."""
    part = os.path.join(folder, "." + name + ".part")
    with open(part, "wb") as f:
        f.write(data)
    os.rename(part, os.path.join(folder, name))


def cmc_full_request(folder, name, transaction_id=0x4242, query_pending=None):
    """A CMC Full PKI Request made by the openssl command line: SignedData over a PKIData with
    the transactionId and a new senderNonce (RFC 5272 §3.2.1, §6.6), and, given a pendToken
    (bytes), a queryPending control carrying it (§6.13: asking about a pending request). Signed
    by a throw-away key kept in folder. Returns (path, senderNonce hex)."""
    nonce = secrets.token_hex(16)
    controls = ["c1 = SEQUENCE:txid", "c2 = SEQUENCE:snonce"]
    sections = ["[txid]", "bpid = INTEGER:1", "type = OID:1.3.6.1.5.5.7.7.5",
                "values = SET:txidval", "[txidval]", f"v = INTEGER:{transaction_id:#x}",
                "[snonce]", "bpid = INTEGER:2", "type = OID:1.3.6.1.5.5.7.7.6",
                "values = SET:snonceval", "[snonceval]", f"v = FORMAT:HEX,OCTETSTRING:{nonce}"]
    if query_pending is not None:
        controls.append("c3 = SEQUENCE:query")
        sections += ["[query]", "bpid = INTEGER:3", "type = OID:1.3.6.1.5.5.7.7.21",
                     "values = SET:queryval", "[queryval]",
                     f"v = FORMAT:HEX,OCTETSTRING:{query_pending.hex()}"]
    cnf = os.path.join(folder, name + ".cnf")
    with open(cnf, "w") as f:
        f.write("\n".join(["asn1 = SEQUENCE:pkidata", "[pkidata]",
                           "controls = SEQUENCE:controls", "reqs = SEQUENCE:empty",
                           "cms = SEQUENCE:empty", "other = SEQUENCE:empty", "[empty]",
                           "[controls]", *controls, *sections, ""]))
    pkidata = os.path.join(folder, name + ".pkidata")
    openssl("asn1parse", "-genconf", cnf, "-noout", "-out", pkidata)
    signer = os.path.join(folder, "cmc-requester")
    if not os.path.exists(signer + ".key"):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", signer + ".key", "-out", signer + ".crt", "-subj", "/CN=cmc-requester",
                "-days", "2")
    path = os.path.join(folder, name)
    openssl("cms", "-sign", "-binary", "-nodetach", "-in", pkidata, "-econtent_type",
            "1.3.6.1.5.5.7.12.2", "-signer", signer + ".crt", "-inkey", signer + ".key",
            "-outform", "DER", "-out", path)
    return path, nonce


def check_kept_for_review(test, item_id, answer, field, response_file):
    """An answer of another transaction: in review with the field named in its reason and
    `show`, exported byte for byte, delivered only by `deliver --force` (a person's call)."""
    shown = test.show(item_id)
    test.assertEqual(shown["state"], "review", shown)
    test.assertIn("another transaction", shown["reason"], shown)
    test.assertIn(field, shown["reason"], shown)
    test.assertIn(field, " ".join(e["detail"] for e in shown["events"]), shown["events"])
    out = os.path.join(test.tmp, "export")
    os.mkdir(out)
    test.pkirelay("export", str(item_id), "--dir", out, "-c", test.config, check=True)
    answers = [n for n in os.listdir(out) if n.startswith(f"{item_id}-answer")]
    test.assertEqual(len(answers), 1, os.listdir(out))
    with open(os.path.join(out, answers[0]), "rb") as f:
        test.assertEqual(f.read(), answer, "export must give the CA's bytes exactly")
    test.run_once(expect=0)
    test.assertFalse(os.path.exists(response_file), "a review item is not delivered by itself")
    test.pkirelay("deliver", str(item_id), "--force", "-c", test.config, check=True)
    test.run_once(expect=0)
    with open(response_file, "rb") as f:
        test.assertEqual(f.read(), answer)


def wait_until(condition, what, deadline=DEADLINE, interval=0.1):
    """Polls condition() until it returns something true (returned) or the deadline passes."""
    end = time.monotonic() + deadline
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {deadline:.0f} s waiting for {what}")
        time.sleep(interval)


class PkirelayTestCase(unittest.TestCase):
    """A temporary folder per test with an inbox, a store and helpers to run pkirelay."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="pkirelay-it-")
        self.inbox = os.path.join(self.tmp, "inbox")
        os.mkdir(self.inbox)
        self.config = os.path.join(self.tmp, "pkirelay.toml")
        self.peers = []

    def tearDown(self):
        for peer in self.peers:
            peer.stop()
        if os.environ.get("PKIRELAY_KEEP_TMP"):
            print(f"kept {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def write_config(self, url, extra_source="", extra_endpoint="", extra=""):
        with open(self.config, "w") as f:
            f.write(f'[store]\npath = "{self.tmp}/store.db"\n{extra}\n'
                    f'[source.inbox]\npath = "{self.inbox}"\n{extra_source}\n'
                    f'[endpoint.ca]\nurl = "{url}"\n{extra_endpoint}\n')

    def pkirelay(self, *args, check=False):
        return run([PKIRELAY, *args], check=check)

    def run_once(self, expect=0):
        proc = self.pkirelay("run", "--once", "-c", self.config)
        self.assertEqual(proc.returncode, expect,
                         f"run --once exited {proc.returncode}\n{proc.stderr}")
        return proc

    def csr(self, name, cn=None, folder=None):
        """A DER PKCS#10 made by `openssl req` in the inbox (or folder); returns its path."""
        path = os.path.join(folder or self.inbox, name)
        key = os.path.join(self.tmp, "key.pem")
        if not os.path.exists(key):
            openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", key)
        openssl("req", "-new", "-key", key, "-subj", f"/CN={cn or name}", "-outform", "DER",
                "-out", path)
        return path

    def requests_seen(self):
        """Requests in self.log (tests/cmc_responder.py's --log), when the test has one."""
        log = getattr(self, "log", None)
        if not log or not os.path.exists(log):
            return 0
        with open(log) as f:
            return sum(1 for _ in f)

    def items(self, state=None):
        """Every item in the store (`pkirelay list --json`), newest first."""
        args = ["list", "--json", "-n", "1000000", "-c", self.config]
        args += ["--state", state] if state else []
        return json.loads(self.pkirelay(*args, check=True).stdout)["items"]

    def show(self, item_id):
        return json.loads(self.pkirelay("show", str(item_id), "--json", "-c", self.config,
                                        check=True).stdout)

    def inbox_files(self):
        return sorted(os.listdir(self.inbox))
