#!/usr/bin/env python3
"""Mails per second through pkirelay's mail path: N enrollment mails (a PKCS#10 each) are
delivered into a private Dovecot (through the test SMTP server and dovecot-lda), then one
`pkirelay run --once` fetches them over IMAPS, relays each to tests/cmc_responder.py and sends
every reply over SMTP to the capturing server. The time is that run's, from start to exit; the
replies are counted to be sure each mail got exactly one. The responder answers every request
with one fixed certs-only response (--fixed), so that the CA is not what is measured; with
--signing-ca it issues a certificate per request with the openssl command line (about 3 per
second here: then the CA is the bound).

usage: contrib/bench/mail_bench.py [--mails 200] [--signing-ca] [--pkirelay build/agent/pkirelay]
Needs what the mail tests need (contrib/install-deps.sh): dovecot-imapd, python3-aiosmtpd, swaks.
"""

import argparse
import os
import shutil
import smtplib
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from harness import openssl, run, start_cmc_responder  # noqa: E402
from mail_peers import Dovecot, SmtpCapture, missing_mail_tools  # noqa: E402
from test_mail import ENROLL, make_mail  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mails", type=int, default=200)
    parser.add_argument("--signing-ca", action="store_true")
    parser.add_argument("--pkirelay", default=os.path.join(ROOT, "build", "agent", "pkirelay"))
    args = parser.parse_args()
    if missing_mail_tools():
        sys.exit(f"mail_bench: {missing_mail_tools()}")
    tmp = tempfile.mkdtemp(prefix="pkirelay-mailbench-")
    peers = []
    try:
        dovecot = Dovecot(os.path.join(tmp, "dovecot"))
        dovecot.start()
        peers.append(dovecot)
        smtp = SmtpCapture(os.path.join(tmp, "smtp"), dovecot)
        smtp.start()
        peers.append(smtp)
        key = os.path.join(tmp, "key.pem")
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", key)
        fixed = []
        if not args.signing_ca:
            openssl("req", "-x509", "-key", key, "-subj", "/CN=bench", "-days", "2", "-out",
                    os.path.join(tmp, "fixed.crt"))
            openssl("crl2pkcs7", "-nocrl", "-certfile", os.path.join(tmp, "fixed.crt"),
                    "-outform", "DER", "-out", os.path.join(tmp, "fixed.p7c"))
            fixed = ["--fixed", os.path.join(tmp, "fixed.p7c")]
        ca, ca_port = start_cmc_responder(*fixed)
        peers.append(ca)
        secret = os.path.join(tmp, "imap.password")
        with open(os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(Dovecot.PASSWORD)
        config = os.path.join(tmp, "pkirelay.toml")
        with open(config, "w") as f:
            f.write(f'[store]\npath = "{tmp}/store.db"\n'
                    f'[source.mail]\ntype = "imap"\n'
                    f'url = "imaps://127.0.0.1:{dovecot.imaps_port}/"\nuser = "{Dovecot.USER}"\n'
                    f'password_file = "{secret}"\nca_file = "{dovecot.cert}"\n'
                    f'smtp_url = "smtp://127.0.0.1:{smtp.port}"\nreply_from = "{ENROLL}"\n'
                    f'[endpoint.ca]\nurl = "http://127.0.0.1:{ca_port}/"\n')
        csr = os.path.join(tmp, "req.p10")
        with smtplib.SMTP("127.0.0.1", smtp.port) as client:
            for i in range(args.mails):
                openssl("req", "-new", "-key", key, "-subj", f"/CN=user{i}", "-outform", "DER",
                        "-out", csr)
                with open(csr, "rb") as f:
                    raw, _ = make_mail([("application/pkcs10", f"user{i}.p10", f.read())],
                                       sender=f"user{i}@example.org")
                client.sendmail(f"user{i}@example.org", [ENROLL], raw)
        inbox = dovecot.count("INBOX")
        start = time.monotonic()
        proc = run([args.pkirelay, "run", "--once", "-c", config], check=False, timeout=3600)
        elapsed = time.monotonic() - start
        replies = len(smtp.mails())
        print(f"mails in INBOX: {inbox}; run --once exit {proc.returncode}; replies: {replies}; "
              f"{elapsed:.2f} s; {replies / elapsed:.1f} mails/s")
        if os.environ.get("MAIL_BENCH_LOG"):
            print(proc.stderr, file=sys.stderr)
        if proc.returncode != 0 or replies != args.mails:
            print(proc.stderr[-4000:], file=sys.stderr)
            sys.exit(1)
    finally:
        for peer in reversed(peers):
            peer.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
