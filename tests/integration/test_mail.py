"""Enrollment by mail: pkirelay reads a Dovecot mailbox over IMAPS and replies over SMTP.

Every peer is real and on loopback, started by the test (tests/integration/mail_peers.py):
Dovecot with a generated configuration, an SMTP server that delivers the enrollment address into
Dovecot and captures every other mail, swaks sending as a user would, and the CA: OpenSSL's CMP
mock server or tests/cmc_responder.py. The replies are checked by OpenSSL (`openssl cmp -rspin`
accepts the ip; the certs-only and CMC responses parse) and byte by byte where RFC 5322 and
RFC 3834 say how they must look.

Covered: CMP ir, CMC Full PKI Request (signed), PKCS#10 and an encrypted (enveloped-data)
request, each answered by one threaded reply; two requests in one mail (two replies); mail with
no request, a bounce, and a sender not on the allow-list (moved to the rejected mailbox, never
answered); the SMTP server down and then up (the reply goes out once, later); a crash after the
store committed and before the mail was moved (nothing fetched or relayed twice), also across a
UIDVALIDITY change; the daemon waiting in IDLE while Dovecot is restarted under it; Dovecot
killed while the daemon is fetching, and stopped between the store's commit and the move, then
started again (the daemon stopped at a crash point meanwhile); and the per-sender rate limit
across runs and across a crash.
"""

import base64
import email
import email.policy
import json
import os
import re
import secrets
import signal
import subprocess
import unittest

from harness import (PKIRELAY, CmpCredentials, PkirelayTestCase, cmc_full_request, cmp_client,
                     openssl, run, start_cmc_responder, start_cmp_server, wait_until)
from mail_peers import Dovecot, SmtpCapture, missing_mail_tools, start_mail_peers, swaks

MISSING = missing_mail_tools()
ENROLL = "enroll@example.org"
ALICE = "alice@example.org"


def mime_part(ctype, name, data):
    body = base64.encodebytes(data).decode().replace("\n", "\r\n")
    return (f"Content-Type: {ctype}; name=\"{name}\"\r\n"
            f"Content-Transfer-Encoding: base64\r\n"
            f"Content-Disposition: attachment; filename=\"{name}\"\r\n\r\n{body}")


def make_mail(parts, sender=ALICE, subject="certificate request", extra_headers=(),
              message_id=None, top=None):
    """A mail as a mail program writes it: multipart/mixed with a text and the parts; or, with
    top, the given MIME entity (headers and body) as the whole content."""
    message_id = message_id or f"<{secrets.token_hex(8)}@example.org>"
    head = [f"From: Alice <{sender}>", f"To: {ENROLL}", f"Subject: {subject}",
            "Date: Wed, 02 Dec 2026 10:00:00 +0000", f"Message-ID: {message_id}",
            "MIME-Version: 1.0", *extra_headers]
    if top is not None:
        return ("\r\n".join(head) + "\r\n").encode() + top, message_id
    boundary = "b-" + secrets.token_hex(6)
    body = [f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nPlease enroll me.\r\n"]
    for ctype, name, data in parts:
        body.append(f"--{boundary}\r\n" + mime_part(ctype, name, data))
    text = ("\r\n".join(head + [f"Content-Type: multipart/mixed; boundary=\"{boundary}\""])
            + "\r\n\r\n" + "".join(body) + f"--{boundary}--\r\n")
    return text.encode(), message_id


def the_reply(case, smtp, request_id, to=ALICE):
    """The one reply smtp (mail_peers.SmtpCapture) captured; case (a TestCase) checks what
    RFC 5322 and RFC 3834 ask of it. Also used by test_airgap's mail leg."""
    mails = smtp.mails()
    case.assertEqual(len(mails), 1, f"expected one reply, got {len(mails)}")
    rcpt, raw = mails[0]
    case.assertEqual(rcpt, ["<>", to], "envelope: null reverse-path, the requester")
    case.assertNotIn(b"\n", raw.replace(b"\r\n", b""), "a bare LF in the reply")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    for header in ("Date", "Message-ID", "MIME-Version", "From", "To", "Subject"):
        case.assertIsNotNone(msg[header], f"no {header}")
    case.assertEqual(msg["Auto-Submitted"], "auto-replied")
    case.assertEqual(msg["In-Reply-To"], request_id)
    case.assertIn(request_id, msg["References"])
    case.assertEqual(msg["To"], to)
    return msg


def attachment(case, msg):
    """The one response attached to a reply: (the MIME part, its decoded bytes)."""
    parts = [p for p in msg.iter_attachments()]
    case.assertEqual(len(parts), 1, "one response attached")
    return parts[0], parts[0].get_payload(decode=True)


def check_cmp_reply(case, creds, ir, part, der):
    """The reply's attachment is the CA's ip for the ir (file ir) that was mailed: of its MIME
    type, named .pki, and taken by OpenSSL's own client (-rspin), which writes the certificate
    OpenSSL's CMP server issued."""
    case.assertEqual(part.get_content_type(), "application/pkixcmp")
    case.assertTrue(part.get_filename().endswith(".pki"), part.get_filename())
    ip = os.path.join(case.tmp, "ip.pki")
    with open(ip, "wb") as f:
        f.write(der)
    cert = os.path.join(case.tmp, "cert.pem")
    cmp_client(creds, "-cmd", "ir", "-subject", "/CN=Mailed", "-implicit_confirm",
               "-reqin", ir, "-rspin", ip, "-certout", cert)
    case.assertIn("CN = enrolled-leaf", openssl("x509", "-in", cert, "-noout", "-subject").stdout)


class MailCase(PkirelayTestCase):
    """Dovecot, the SMTP capture and a CA on loopback, and what the mail tests ask of them
    (test_mail's round trips, test_attacksmtp's attacks)."""

    def setUp(self):
        super().setUp()
        self.dovecot, self.smtp, self.secret = start_mail_peers(self, self.tmp)
        self.key = os.path.join(self.tmp, "key.pem")
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", self.key)

    # Setup pieces.

    def mail_config(self, ca_url, extra_source="", extra_endpoint="", poll=1, imaps=True):
        url = (f"imaps://127.0.0.1:{self.dovecot.imaps_port}/" if imaps
               else f"imap://127.0.0.1:{self.dovecot.imap_port}/")
        with open(self.config, "w") as f:
            f.write(f'[store]\npath = "{self.tmp}/store.db"\n'
                    f'[run]\npoll_seconds = {poll}\n[retry]\ninitial_seconds = 1\n'
                    f'[source.mail]\ntype = "imap"\nurl = "{url}"\n'
                    f'user = "{Dovecot.USER}"\npassword_file = "{self.secret}"\n'
                    f'ca_file = "{self.dovecot.cert}"\n'
                    f'smtp_url = "smtp://127.0.0.1:{self.smtp.port}"\n'
                    f'reply_from = "{ENROLL}"\n{extra_source}\n'
                    f'[endpoint.ca]\nurl = "{ca_url}"\n{extra_endpoint}\n')

    def start_cmc_ca(self, *extra):
        self.log = os.path.join(self.tmp, "responder.log")
        peer, port = start_cmc_responder("--log", self.log, *extra)
        self.peers.append(peer)
        return f"http://127.0.0.1:{port}/"

    def p10(self, cn="alice"):
        out = os.path.join(self.tmp, f"{cn}.p10")
        openssl("req", "-new", "-key", self.key, "-subj", f"/CN={cn}", "-outform", "DER",
                "-out", out)
        with open(out, "rb") as f:
            return f.read()

    def send(self, raw, sender=ALICE):
        """Submits the mail to the SMTP server as a user's mail program would (swaks)."""
        path = os.path.join(self.tmp, f"out-{secrets.token_hex(4)}.eml")
        with open(path, "wb") as f:
            f.write(raw)
        swaks(self.smtp.port, sender, ENROLL, "--data", f"@{path}")

    def replies(self):
        return self.smtp.mails()

    def the_reply(self, request_id, to=ALICE):
        return the_reply(self, self.smtp, request_id, to)

    def attachment(self, msg):
        return attachment(self, msg)

    def mailbox_counts(self):
        return {box: self.dovecot.count(box) for box in ("INBOX", "processed", "rejected")}

    # Round trips.

    def resends(self):
        return [e for item in self.items() for e in self.show(item["id"])["events"]
                if e["what"] == "resend"]

    def daemon_log_text(self):
        with open(self.daemon_log, errors="replace") as f:
            return f.read()


@unittest.skipIf(MISSING, f"mail tests skipped: {MISSING}")
class MailRoundTrip(MailCase):

    def test_pkcs10_answered_with_certs_only(self):
        self.mail_config(self.start_cmc_ca())
        raw, mid = make_mail([("application/pkcs10", "alice.p10", self.p10())])
        self.send(raw)
        self.run_once(expect=0)
        part, der = self.attachment(self.the_reply(mid))
        self.assertEqual(part.get_content_type(), "application/pkcs7-mime")
        self.assertEqual(part.get_param("smime-type").lower(), "certs-only")
        self.assertTrue(part.get_filename().endswith(".p7c"), part.get_filename())
        path = os.path.join(self.tmp, "reply.p7c")
        with open(path, "wb") as f:
            f.write(der)
        self.assertIn("CN = alice", openssl("pkcs7", "-inform", "DER", "-in", path,
                                            "-print_certs").stdout)
        self.assertEqual(self.mailbox_counts(), {"INBOX": 0, "processed": 1, "rejected": 0})
        # Nothing new: a second run sends nothing and fetches nothing.
        proc = self.run_once(expect=0)
        self.assertIn("0 received", proc.stderr)
        self.assertEqual(len(self.replies()), 1)
        self.assertEqual(self.requests_seen(), 1)

    def test_cmp_ir_reply_accepted_by_openssl_cmp(self):
        creds = CmpCredentials(self.tmp)
        peer, port = start_cmp_server(creds, "-grant_implicitconf")
        self.peers.append(peer)
        self.mail_config(f"http://127.0.0.1:{port}/pkix/",
                         extra_endpoint="max_connections = 1\nkeep_alive = false")
        ir = os.path.join(self.tmp, "ir.der")
        cmp_client(creds, "-server", "127.0.0.1:1/pkix/", "-msg_timeout", "2", "-certout",
                   os.path.join(self.tmp, "unused.crt"), "-cmd", "ir", "-subject",
                   "/CN=Mailed", "-implicit_confirm", "-reqout", ir, check=False)
        with open(ir, "rb") as f:
            raw, mid = make_mail([("application/pkixcmp", "ir.der", f.read())])
        self.send(raw)
        self.run_once(expect=0)
        part, der = self.attachment(self.the_reply(mid))
        check_cmp_reply(self, creds, ir, part, der)

    def full_request(self):
        """A CMC Full PKI Request signed by a throw-away key (harness.cmc_full_request)."""
        path, _ = cmc_full_request(self.tmp, "full.crq")
        with open(path, "rb") as f:
            return f.read()

    def test_cmc_full_request_answered_with_cmc_response(self):
        self.mail_config(self.start_cmc_ca())
        raw, mid = make_mail([("application/pkcs7-mime; smime-type=CMC-request", "req.p7m",
                               self.full_request())])
        self.send(raw)
        self.run_once(expect=0)
        part, der = self.attachment(self.the_reply(mid))
        self.assertEqual(part.get_content_type(), "application/pkcs7-mime")
        self.assertEqual(part.get_param("smime-type").lower(), "cmc-response")
        path = os.path.join(self.tmp, "reply.p7m")
        with open(path, "wb") as f:
            f.write(der)
        self.assertIn("1.3.6.1.5.5.7.12.3", openssl("cms", "-cmsout", "-print", "-inform",
                                                    "DER", "-in", path).stdout)

    def test_encrypted_request_is_decrypted_and_answered(self):
        relay = os.path.join(self.tmp, "relay")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", relay + ".key", "-out", relay + ".crt", "-subj", "/CN=relay",
                "-days", "2")
        os.chmod(relay + ".key", 0o600)
        self.mail_config(self.start_cmc_ca(), extra_source=f'smime_decrypt_key = "{relay}.key"\n'
                         f'smime_decrypt_cert = "{relay}.crt"')
        inner = os.path.join(self.tmp, "inner.mime")
        with open(inner, "wb") as f:
            f.write(mime_part("application/pkcs10", "alice.p10", self.p10()).encode())
        enveloped = os.path.join(self.tmp, "enveloped.mime")
        openssl("cms", "-encrypt", "-aes256", "-in", inner, "-out", enveloped, relay + ".crt")
        with open(enveloped, "rb") as f:
            top = f.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        # openssl cms writes a MIME-Version of its own: the mail's header block takes it.
        top = b"\r\n".join(line for line in top.split(b"\r\n")
                           if not line.startswith(b"MIME-Version"))
        raw, mid = make_mail([], top=top)
        self.send(raw)
        self.run_once(expect=0)
        part, der = self.attachment(self.the_reply(mid))
        self.assertEqual(part.get_param("smime-type").lower(), "certs-only")

    def test_two_requests_in_one_mail_get_one_reply_each(self):
        self.mail_config(self.start_cmc_ca())
        raw, mid = make_mail([("application/pkcs10", "one.p10", self.p10("one")),
                              ("application/pkcs10", "two.p10", self.p10("two"))])
        self.send(raw)
        self.run_once(expect=0)
        mails = self.replies()
        self.assertEqual(len(mails), 2)
        for _, raw_reply in mails:
            msg = email.message_from_bytes(raw_reply, policy=email.policy.default)
            self.assertEqual(msg["In-Reply-To"], mid)
        self.assertEqual(self.mailbox_counts(), {"INBOX": 0, "processed": 1, "rejected": 0})

    # What is never answered.

    def assert_rejected_unanswered(self, why_pattern, proc):
        self.assertEqual(self.mailbox_counts(), {"INBOX": 0, "processed": 0, "rejected": 1})
        self.assertEqual(self.replies(), [])
        self.assertEqual(self.requests_seen(), 0)
        self.assertRegex(proc.stderr, why_pattern)

    def test_mail_without_request_is_rejected_unanswered(self):
        self.mail_config(self.start_cmc_ca())
        raw, _ = make_mail([("text/plain", "notes.txt", b"just words")])
        self.send(raw)
        proc = self.run_once(expect=0)
        self.assert_rejected_unanswered(r"moved to rejected", proc)

    def test_bounce_is_never_answered(self):
        self.mail_config(self.start_cmc_ca())
        raw, _ = make_mail([("application/pkcs10", "alice.p10", self.p10())],
                           sender="MAILER-DAEMON@example.org",
                           subject="Undelivered Mail Returned to Sender",
                           extra_headers=["Auto-Submitted: auto-replied"])
        self.send(raw, sender="")
        proc = self.run_once(expect=0)
        self.assert_rejected_unanswered(r"auto-generated", proc)

    def test_sender_not_on_allow_list(self):
        self.mail_config(self.start_cmc_ca(), extra_source='allow_senders = "example.net, '
                         'bob@example.org"')
        raw, _ = make_mail([("application/pkcs10", "alice.p10", self.p10())])
        self.send(raw)
        proc = self.run_once(expect=0)
        self.assert_rejected_unanswered(r"not on allow_senders", proc)

    def test_rate_limit_per_sender(self):
        self.mail_config(self.start_cmc_ca(), extra_source="rate_limit_per_hour = 1")
        for cn in ("first", "second"):
            raw, _ = make_mail([("application/pkcs10", f"{cn}.p10", self.p10(cn))])
            self.send(raw)
        proc = self.run_once(expect=0)
        self.assertEqual(len(self.replies()), 1)
        self.assertEqual(self.mailbox_counts(), {"INBOX": 0, "processed": 1, "rejected": 1})
        self.assertIn("rate_limit_per_hour", proc.stderr)

    # Failures and crashes.

    def test_smtp_down_then_up_reply_goes_out_once_later(self):
        self.mail_config(self.start_cmc_ca())
        raw, mid = make_mail([("application/pkcs10", "alice.p10", self.p10())])
        self.send(raw)
        self.smtp.stop()
        self.run_once(expect=75)  # answered by the CA, the reply waits
        self.assertEqual(self.mailbox_counts()["processed"], 1)
        self.smtp.start()
        self.run_once(expect=0)
        self.the_reply(mid)
        self.run_once(expect=0)
        self.assertEqual(len(self.replies()), 1, "the reply went out once")
        self.assertEqual(self.requests_seen(), 1, "the CA saw the request once")
        # A send that certainly failed (no server) clears its mark: the retry is no resend.
        self.assertEqual(self.resends(), [])

    def crash_at(self, point):
        env = dict(os.environ, PKIRELAY_CRASH_AT=point)
        proc = run([PKIRELAY, "run", "--once", "-c", self.config], check=False, env=env)
        if proc.returncode != -signal.SIGKILL:
            self.skipTest(f"not a -Dcrash_points=true build (exit {proc.returncode})")

    def test_crash_after_storing_before_the_move(self):
        self.mail_config(self.start_cmc_ca())
        raw, mid = make_mail([("application/pkcs10", "alice.p10", self.p10())])
        self.send(raw)
        self.crash_at("stored")
        self.assertEqual(self.mailbox_counts()["INBOX"], 1, "not moved before the crash")
        proc = self.run_once(expect=0)
        self.assertIn("0 received", proc.stderr)  # known: acknowledged, not stored again
        self.the_reply(mid)
        self.assertEqual(len(self.items()), 1)
        self.assertEqual(self.requests_seen(), 1)
        self.assertEqual(self.mailbox_counts(), {"INBOX": 0, "processed": 1, "rejected": 0})

    def test_uidvalidity_change_loses_nothing_and_relays_nothing_twice(self):
        self.mail_config(self.start_cmc_ca())
        stored, mid = make_mail([("application/pkcs10", "alice.p10", self.p10())])
        self.send(stored)
        self.crash_at("stored")
        # The server renumbers the mailbox (a restore, a migration): UIDs mean other mails now.
        # A second mail, without a Message-ID, arrives under the new numbering.
        self.dovecot.set_uidvalidity(self.dovecot.uidvalidity() + 7)
        second, _ = make_mail([("application/pkcs10", "bob.p10", self.p10("bob"))])
        second = re.sub(rb"Message-ID: [^\r]*\r\n", b"", second)
        self.send(second)
        self.run_once(expect=0)
        self.assertEqual(len(self.items()), 2)
        self.assertEqual(self.requests_seen(), 2)
        self.assertEqual(len(self.replies()), 2)
        self.assertEqual(self.mailbox_counts(), {"INBOX": 0, "processed": 2, "rejected": 0})

    def test_daemon_idles_and_survives_an_imap_restart(self):
        # poll_seconds is long: only IDLE (and the reconnect after the restart) wakes it.
        self.mail_config(self.start_cmc_ca(), poll=3600)
        daemon = subprocess.Popen([PKIRELAY, "run", "-c", self.config],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            raw, first = make_mail([("application/pkcs10", "a.p10", self.p10("a"))])
            self.send(raw)
            wait_until(lambda: len(self.replies()) == 1, "the first reply")
            self.dovecot.restart()  # drops the IDLE connection under the daemon
            raw, second = make_mail([("application/pkcs10", "b.p10", self.p10("b"))])
            self.send(raw)
            wait_until(lambda: len(self.replies()) == 2, "the second reply after the restart")
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=30)
        self.assertEqual(daemon.returncode, 0, err.decode(errors="replace"))
        ids = sorted(email.message_from_bytes(r, policy=email.policy.default)["In-Reply-To"]
                     for _, r in self.replies())
        self.assertEqual(ids, sorted([first, second]))
        self.assertEqual(self.requests_seen(), 2)


    # Found attacking issue 15 (branch attackmail).

    def test_crash_after_smtp_250_before_recording_replies_once(self):
        # The SMTP server took the reply (250), then the run died after the batch's replies
        # were handed over. Each reply is recorded right after its 250 (schema 9, the responder
        # is not repeatable), so the next run finds it delivered and sends nothing.
        self.mail_config(self.start_cmc_ca())
        raw, mid = make_mail([("application/pkcs10", "alice.p10", self.p10())])
        self.send(raw)
        self.crash_at("written")
        self.assertEqual(len(self.replies()), 1, "the reply went out before the crash")
        self.run_once(expect=0)
        self.assertEqual(len(self.replies()), 1, "the reply went out once")
        events = [e["what"] for e in self.show(self.items()[0]["id"])["events"]]
        self.assertNotIn("resend", events)

    def test_crash_between_smtp_250_and_its_record_resends_visibly(self):
        # The one window SMTP leaves: the server said 250 and the process died before the
        # record (crash point "mailed"). SMTP cannot be asked whether it took a message, so
        # the next run sends it again, under the same Message-ID, and says so in the history.
        self.mail_config(self.start_cmc_ca())
        raw, mid = make_mail([("application/pkcs10", "alice.p10", self.p10())])
        self.send(raw)
        self.crash_at("mailed")
        self.assertEqual(len(self.replies()), 1)
        self.assertEqual(self.resends(), [])
        self.run_once(expect=0)
        ids = {email.message_from_bytes(r, policy=email.policy.default)["Message-ID"]
               for _, r in self.replies()}
        self.assertEqual(len(self.replies()), 2, "the unrecorded reply is sent again")
        self.assertEqual(len(ids), 1, "a resent reply keeps its Message-ID")
        resends = self.resends()
        self.assertEqual(len(resends), 1, resends)
        self.assertIn(ids.pop().strip("<>"), resends[0]["detail"])
        self.run_once(expect=0)
        self.assertEqual(len(self.replies()), 2, "recorded after the resend: no third")

    def test_reply_mailed_back_in_is_not_answered(self):
        # A mail loop: the relay's own reply arrives in the enrollment mailbox (a forward, an
        # alias, a user bouncing it back). It must be moved aside, never answered.
        self.mail_config(self.start_cmc_ca())
        raw, mid = make_mail([("application/pkcs10", "alice.p10", self.p10())])
        self.send(raw)
        self.run_once(expect=0)
        self.the_reply(mid)
        _, reply = self.replies()[0]
        self.send(reply, sender=ENROLL)
        self.pkirelay("run", "--once", "-c", self.config)
        self.assertEqual(len(self.replies()), 1, "the looped reply was answered")
        self.assertEqual(self.mailbox_counts(), {"INBOX": 0, "processed": 1, "rejected": 1})
        self.assertEqual(self.requests_seen(), 1)

    def test_sender_without_domain_is_not_answered(self):
        # "From: root" holds no address (RFC 5322 §3.4.1 addr-spec is local-part "@" domain):
        # a reply to "<root>" goes to a local user of the SMTP server, not to the requester.
        self.mail_config(self.start_cmc_ca())
        raw, _ = make_mail([("application/pkcs10", "alice.p10", self.p10())])
        raw = raw.replace(f"From: Alice <{ALICE}>".encode(), b"From: root")
        self.send(raw)
        self.pkirelay("run", "--once", "-c", self.config)
        self.assertEqual(self.replies(), [], "a reply went to a local user")
        self.assertEqual(self.mailbox_counts()["rejected"], 1)


    def test_credentials_in_a_url_never_reach_logs_or_show(self):
        # An operator writes the SMTP login into the URL, as curl allows. The server is down:
        # every message that names the URL must not carry the password.
        self.mail_config(self.start_cmc_ca())
        with open(self.config) as f:
            text = f.read()
        text = text.replace("smtp://127.0.0.1:", "smtp://relay:hunter2secret@127.0.0.1:")
        text = text.replace("imaps://127.0.0.1:", "imaps://user:imapsecret9@127.0.0.1:")
        with open(self.config, "w") as f:
            f.write(text)
        raw, _ = make_mail([("application/pkcs10", "alice.p10", self.p10())])
        self.send(raw)
        self.smtp.stop()
        proc = self.pkirelay("run", "--once", "-c", self.config)
        self.assertEqual(proc.returncode, 78, "a login in a URL is a configuration error")
        self.assertIn("holds a login", proc.stderr)
        shown = ("" if proc.returncode == 78 else
                 "".join(json.dumps(self.show(i["id"])) for i in self.items()))
        checked = self.pkirelay("check-config", "-c", self.config)
        for where, out in (("run", proc.stderr + proc.stdout), ("show", shown),
                           ("check-config", checked.stdout + checked.stderr)):
            self.assertNotIn("hunter2secret", out, f"the SMTP password in {where}")
            self.assertNotIn("imapsecret9", out, f"the IMAP password in {where}")


    def test_rate_limit_holds_across_runs(self):
        # The per-sender counts are kept in the store (schema 7), so under `run --once` from
        # cron (or after any restart) a run does not start at zero.
        self.mail_config(self.start_cmc_ca(), extra_source="rate_limit_per_hour = 1")
        for cn in ("first", "second"):
            raw, _ = make_mail([("application/pkcs10", f"{cn}.p10", self.p10(cn))])
            self.send(raw)
            self.pkirelay("run", "--once", "-c", self.config)
        self.assertEqual(len(self.replies()), 1, "the second mail within the hour was answered")
        self.assertEqual(self.mailbox_counts(), {"INBOX": 0, "processed": 1, "rejected": 1})

    def test_rate_limit_counts_a_mail_once_across_a_crash(self):
        # The count is committed with the mail's intake: a run killed after the commit and
        # before the move leaves one count, and the next run, which recognises the mail and
        # only moves it, adds none. Counted twice, the second mail would be refused.
        self.mail_config(self.start_cmc_ca(), extra_source="rate_limit_per_hour = 2")
        raw, first = make_mail([("application/pkcs10", "first.p10", self.p10("first"))])
        self.send(raw)
        self.crash_at("stored")
        self.assertEqual(self.mailbox_counts()["INBOX"], 1, "not moved before the crash")
        self.assertIn("0 received", self.run_once(expect=0).stderr)
        raw, second = make_mail([("application/pkcs10", "second.p10", self.p10("second"))])
        self.send(raw)
        self.run_once(expect=0)
        raw, _ = make_mail([("application/pkcs10", "third.p10", self.p10("third"))])
        self.send(raw)
        self.assertIn("rate_limit_per_hour", self.run_once(expect=0).stderr)
        ids = sorted(email.message_from_bytes(r, policy=email.policy.default)["In-Reply-To"]
                     for _, r in self.replies())
        self.assertEqual(ids, sorted([first, second]))
        self.assertEqual(self.mailbox_counts(), {"INBOX": 0, "processed": 2, "rejected": 1})
        self.assertEqual(self.requests_seen(), 2)

    # The IMAP server going away under a live run. The daemon is stopped (SIGSTOP, by the crash
    # point build's PKIRELAY_PAUSE_AT) at a chosen step, Dovecot is killed or stopped and
    # started again, and the daemon goes on (SIGCONT). poll_seconds is long, so only the
    # reconnect brings the mail in: nothing is lost, relayed twice or answered twice.

    def start_paused_daemon(self, point):
        """The daemon, which stops itself at crash point `point`; returns the process once it
        has (skips the test in a build without crash points: it then never stops)."""
        self.daemon_log = os.path.join(self.tmp, "daemon.log")
        log = open(self.daemon_log, "wb")
        self.addCleanup(log.close)
        daemon = subprocess.Popen([PKIRELAY, "run", "-c", self.config], stdout=log, stderr=log,
                                  env=dict(os.environ, PKIRELAY_PAUSE_AT=point))
        self.addCleanup(lambda: daemon.poll() is None and daemon.kill())

        def stopped():
            try:
                with open(f"/proc/{daemon.pid}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] == "T"
            except OSError:
                return False
        wait_until(lambda: stopped() or self.replies() or daemon.poll() is not None,
                   f"the daemon to stop at {point}")
        if not stopped():
            daemon.kill()
            self.skipTest("not a -Dcrash_points=true build (the daemon did not stop)")
        return daemon

    def stop_daemon(self, daemon):
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        text = self.daemon_log_text()
        self.assertEqual(daemon.returncode, 0, text)
        return text

    def assert_relayed_once(self, mid):
        self.the_reply(mid)
        self.assertEqual(self.requests_seen(), 1, "the CA saw the request once")
        self.assertEqual(len(self.items()), 1)
        self.assertEqual(self.mailbox_counts(), {"INBOX": 0, "processed": 1, "rejected": 0})
        # A later run finds nothing left to do.
        self.assertIn("0 received", self.run_once(expect=0).stderr)
        self.assertEqual(len(self.replies()), 1, "the reply went out once")

    def test_imap_server_killed_mid_fetch_then_back(self):
        self.mail_config(self.start_cmc_ca(), poll=3600)
        raw, mid = make_mail([("application/pkcs10", "alice.p10", self.p10())])
        self.send(raw)
        # Stopped with the mail's size read and its body not yet fetched.
        daemon = self.start_paused_daemon("imap-fetch")
        try:
            self.dovecot.kill()  # SIGKILL to every Dovecot process: the connection just drops
            self.dovecot.start()
            daemon.send_signal(signal.SIGCONT)
            wait_until(lambda: self.replies() and self.dovecot.count("processed") == 1,
                       "the mail relayed, answered and moved after the restart")
        finally:
            log = self.stop_daemon(daemon)
        self.assertIn("connection to", log)  # the drop was noticed and logged
        self.assert_relayed_once(mid)

    def test_imap_server_down_between_fetch_and_move_then_back(self):
        self.mail_config(self.start_cmc_ca(), poll=3600)
        raw, mid = make_mail([("application/pkcs10", "alice.p10", self.p10())])
        self.send(raw)
        # Stopped with the mail stored (committed) and not yet moved.
        daemon = self.start_paused_daemon("stored")
        try:
            self.dovecot.stop()
            daemon.send_signal(signal.SIGCONT)
            # The request is relayed and answered while the mailbox cannot be reached; the
            # move fails and waits for the server.
            wait_until(lambda: self.replies(), "the reply while the IMAP server is down")
            wait_until(lambda: "cannot read the mailbox" in self.daemon_log_text(),
                       "a reconnect that failed")
            self.dovecot.start()
            wait_until(lambda: self.dovecot.count("processed") == 1,
                       "the mail moved once the server is back")
        finally:
            self.stop_daemon(daemon)
        self.assert_relayed_once(mid)


if __name__ == "__main__":
    unittest.main(verbosity=2)
