"""Mail peers for pkirelay's mail tests, all on loopback and all in a temporary folder.

- Dovecot (Debian dovecot-imapd) with a configuration generated here: a passwd-file user with
  the running user's uid, maildirs under the folder, IMAP (with STARTTLS) and IMAPS on free
  loopback ports with a throw-away certificate made by openssl. No system-wide file is read or
  changed; the packaged dovecot service is neither needed nor touched.
- tests/integration/smtp_capture.py (Debian python3-aiosmtpd): an SMTP server that delivers mail
  for the enrollment mailbox into Dovecot (with dovecot-lda) and captures everything else as
  files, so that a test sends mail as a user would (swaks) and reads the replies. It can be
  stopped and started again on the same port.

Every wait is for a condition with a deadline (harness.wait_until), never a sleep.
"""

import os
import pwd
import grp
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

from harness import DEADLINE, Peer, openssl, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
# aiosmtpd is a Debian package: the system's python3 has it, a private python may not.
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def missing_mail_tools():
    """Why the mail tests cannot run here, or None."""
    if not shutil.which("dovecot") and not os.path.exists("/usr/sbin/dovecot"):
        return "dovecot is not installed (Debian dovecot-imapd; contrib/install-deps.sh)"
    if not os.path.exists("/usr/lib/dovecot/dovecot-lda"):
        return "dovecot-lda is not installed (Debian dovecot-core)"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import aiosmtpd"], capture_output=True)
    if probe.returncode != 0:
        return "aiosmtpd is not installed (Debian python3-aiosmtpd)"
    if not shutil.which("swaks"):
        return "swaks is not installed (Debian swaks)"
    return None


def free_ports(n):
    """n distinct loopback ports nobody listens on now (the kernel's choice). Bound at once:
    asked one after the other, the kernel may hand out the same port twice (Dovecot then
    refuses a "duplicate listener")."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port():
    return free_ports(1)[0]


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


def children_of(pid):
    """The processes whose parent is pid (from /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(name))
    return out


def alive(pid):
    """True while pid runs (a zombie, dead and not yet reaped, is not running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Dovecot:
    """A private Dovecot: start(), stop(), kill(), restart() on the same ports; user/password."""

    USER = "enroll"
    PASSWORD = "enroll-secret"

    def __init__(self, folder):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self.imap_port, self.imaps_port = free_ports(2)
        self.cert = os.path.join(folder, "imap.crt")
        self.key = os.path.join(folder, "imap.key")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", self.key, "-out", self.cert, "-subj", "/CN=localhost", "-days", "30",
                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
        self.maildir = os.path.join(folder, "mail")
        self.config = os.path.join(folder, "dovecot.conf")
        self.log = os.path.join(folder, "dovecot.log")
        self._write_config()
        self.proc = None

    def _write_config(self):
        uid, gid = os.getuid(), os.getgid()
        user = pwd.getpwuid(uid).pw_name
        login_user = internal_user = user
        group = grp.getgrgid(gid).gr_name
        if uid == 0:
            # Dovecot refuses to run its login processes as root and to give mail to uid 0:
            # under root (a CI container) the package's own unprivileged accounts serve, and
            # the mail folders are given to the mail account.
            login_user, internal_user = "dovenull", "dovecot"
            mail_user = pwd.getpwnam("dovecot")
            uid, gid = mail_user.pw_uid, mail_user.pw_gid
            group = grp.getgrgid(gid).gr_name
        home = os.path.join(self.folder, "home")
        os.makedirs(home, exist_ok=True)
        os.makedirs(self.maildir, exist_ok=True)
        for sub in ("run", "state"):
            os.makedirs(os.path.join(self.folder, sub), exist_ok=True)
        if os.getuid() == 0:
            for path in (home, self.maildir):
                os.chown(path, uid, gid)
            # ... and may pass through the test's private folders (mkdtemp makes them 0700).
            path = os.path.abspath(self.folder)
            while path.startswith(tempfile.gettempdir() + os.sep):
                os.chmod(path, os.stat(path).st_mode | 0o011)
                path = os.path.dirname(path)
        with open(os.path.join(self.folder, "passwd"), "w") as f:
            f.write(f"{self.USER}:{{PLAIN}}{self.PASSWORD}:{uid}:{gid}::{home}::\n")
        # Login and internal processes run as the running user too: nothing needs the
        # package's dovecot/dovenull accounts, and a non-root user can run the tests.
        with open(self.config, "w") as f:
            f.write(f"""
base_dir = {self.folder}/run
state_dir = {self.folder}/state
instance_name = pkirelay-test-{os.getpid()}-{self.imap_port}
log_path = {self.log}
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.key}
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{self.maildir}/%u
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = 0
default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {group}
mail_uid = {uid}
mail_gid = {gid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.folder}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.folder}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.imaps_port}
    ssl = yes
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
""")

    def start(self):
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", self.config],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: self.proc.poll() is not None or
                       (port_open(self.imap_port) and port_open(self.imaps_port)),
                       "dovecot to listen")
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode(errors="replace")
            raise AssertionError(f"dovecot exited {self.proc.returncode}: {err}\n{self.log_text()}")

    def stop(self):
        """SIGTERM, as a service manager stops it, and waits until every Dovecot process is
        gone: an imap process may serve its client for a while after the master left, and a
        stopped server must not answer anyone."""
        pids = []
        if self.proc and self.proc.poll() is None:
            pids = children_of(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.proc.stderr.close()
        self.proc = None
        wait_until(lambda: not port_open(self.imap_port), "dovecot to stop listening")
        wait_until(lambda: not any(alive(pid) for pid in pids), "every dovecot process to end")

    def kill(self):
        """SIGKILL to every Dovecot process (a crash, a power cut): no BYE, no orderly close."""
        if self.proc and self.proc.poll() is None:
            # The master forks every other Dovecot process (imap-login, imap, auth, ...).
            pids = [self.proc.pid] + children_of(self.proc.pid)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait()
            wait_until(lambda: not any(alive(pid) for pid in pids[1:]),
                       "every dovecot process to die")
        if self.proc:
            self.proc.stderr.close()
        self.proc = None
        wait_until(lambda: not port_open(self.imap_port), "dovecot to stop listening")

    def restart(self):
        self.stop()
        self.start()

    def log_text(self):
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    def doveadm(self, *args, check=True):
        proc = subprocess.run(["doveadm", "-c", self.config, *args], capture_output=True,
                              text=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"doveadm {' '.join(args)} exited {proc.returncode}: "
                                 f"{proc.stderr}")
        return proc.stdout

    def deliver(self, raw: bytes, mailbox="INBOX"):
        """Puts a mail into the user's mailbox as the MTA would (dovecot-lda)."""
        proc = subprocess.run(["/usr/lib/dovecot/dovecot-lda", "-c", self.config, "-d",
                               self.USER, "-m", mailbox], input=raw, capture_output=True)
        if proc.returncode != 0:
            raise AssertionError(f"dovecot-lda exited {proc.returncode}: {proc.stderr!r}")

    def count(self, mailbox):
        """Messages in a mailbox (0 when it does not exist)."""
        out = self.doveadm("mailbox", "status", "-u", self.USER, "messages", mailbox,
                           check=False)
        for word in out.split():
            if word.startswith("messages="):
                return int(word.split("=", 1)[1])
        return 0

    def uidvalidity(self, mailbox="INBOX"):
        out = self.doveadm("mailbox", "status", "-u", self.USER, "uidvalidity", mailbox)
        return int(out.split("=", 1)[1])

    def set_uidvalidity(self, value, mailbox="INBOX"):
        self.doveadm("mailbox", "update", "-u", self.USER, "--uid-validity", str(value), mailbox)


class SmtpCapture:
    """tests/integration/smtp_capture.py on a fixed port: mail for Dovecot's user is delivered
    there, everything else is captured as NNNNNN.eml files (the bytes as received) with a
    .rcpt file beside each holding the envelope."""

    def __init__(self, folder, dovecot=None, port=None):
        self.folder = folder
        self.capture = os.path.join(folder, "captured")
        os.makedirs(self.capture, exist_ok=True)
        self.port = port or free_port()
        self.dovecot = dovecot
        self.peer = None

    def start(self):
        args = [SYSTEM_PYTHON, os.path.join(HERE, "smtp_capture.py"), "--port", str(self.port),
                "--capture", self.capture]
        if self.dovecot:
            args += ["--local", f"{Dovecot.USER}@example.org", "--lda-config",
                     self.dovecot.config, "--lda-user", Dovecot.USER]
        self.peer = Peer(args, "LISTENING")

    def stop(self):
        if self.peer:
            self.peer.stop()
            self.peer = None
        wait_until(lambda: not port_open(self.port), "the SMTP server to stop listening")

    def mails(self):
        """The captured mails, oldest first: list of (envelope recipients, raw bytes)."""
        out = []
        for name in sorted(os.listdir(self.capture)):
            if not name.endswith(".eml"):
                continue
            with open(os.path.join(self.capture, name), "rb") as f:
                raw = f.read()
            with open(os.path.join(self.capture, name[:-4] + ".rcpt")) as f:
                rcpt = f.read().split()
            out.append((rcpt, raw))
        return out


def start_mail_peers(test, folder):
    """Dovecot and the capturing SMTP server under folder, stopped when the test ends, and the
    IMAP password in a file only its owner reads (as pkirelay's password_file must be).
    Returns (dovecot, smtp, password_file)."""
    dovecot = Dovecot(os.path.join(folder, "dovecot"))
    dovecot.start()
    test.addCleanup(dovecot.stop)
    smtp = SmtpCapture(os.path.join(folder, "smtp"), dovecot)
    smtp.start()
    test.addCleanup(smtp.stop)
    secret = os.path.join(folder, "imap.password")
    with open(os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(Dovecot.PASSWORD + "\n")
    return dovecot, smtp, secret


def swaks(port, sender, to, *args):
    """Sends a mail the way a user would (swaks, plain SMTP on loopback)."""
    proc = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(port), "--from",
                           sender, "--to", to, "--helo", "client.example.org", "--silent", "2",
                           *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"swaks exited {proc.returncode}: {proc.stdout}{proc.stderr}")


def serve(folder):
    """For tests in other languages (tests/test_conformance.cc): starts Dovecot and the SMTP
    server in folder, prints one line "LISTENING imaps_port smtp_port cert dovecot_conf
    capture_dir", and stops them on SIGTERM (tests/peer.h sends it to the process group)."""
    dovecot = Dovecot(os.path.join(folder, "dovecot"))
    dovecot.start()
    smtp = SmtpCapture(os.path.join(folder, "smtp"), dovecot)
    smtp.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        print(f"LISTENING {dovecot.imaps_port} {smtp.port} {dovecot.cert} {dovecot.config} "
              f"{smtp.capture}", flush=True)
        while True:
            signal.pause()
    finally:
        smtp.stop()
        dovecot.stop()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        sys.exit("usage: mail_peers.py serve FOLDER")
