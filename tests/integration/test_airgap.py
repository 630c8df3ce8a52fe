"""The air-gap chain (issue 17), file leg, on one machine: two agents with their own state
folders and configurations, and one folder standing in for the stick that the test "moves"
between them by running one agent, then the other.

  requester (openssl cmp, openssl req) -> online/inbox -> online pkirelay (directory endpoint)
  -> stick/requests (files + manifest) -> offline pkirelay (media source) -> CA (OpenSSL's CMP
  mock server, tests/cmc_responder.py) -> stick/responses (files + return manifest)
  -> online pkirelay (media-return source: matched by name and protocol) -> online/inbox

What is checked: a CMP enrollment and a CMC request end to end, with OpenSSL accepting the
answer; the stick pulled mid-write on each side (crash points, and files cut short); a response
altered in transit; a response replayed on a later trip; a manifest missing; the online agent
restarted while requests are out; the poll flow (ip "waiting", then pollReq) across two trips;
signed manifests; the wait's maximum age; `pkirelay media status` and the transfer report.
"""

import json
import os
import secrets
import signal
import sqlite3
import unittest

from harness import (PKIRELAY, TESTS_DIR, CmpCredentials, PkirelayTestCase, cmc_full_request,
                     cmp_client, drop_into, openssl, read_responder_log, run, start_cmc_responder,
                     start_cmp_server)

from mail_peers import Dovecot, missing_mail_tools, start_mail_peers, swaks
from test_mail import ALICE, ENROLL, attachment, check_cmp_reply, make_mail, the_reply

MISSING_MAIL = missing_mail_tools()
UNREACHABLE = "127.0.0.1:1/pkix/"  # nothing listens on port 1: the client only writes files


class AirGapBase(PkirelayTestCase):
    """The two agents, the stick and the CAs; the cases are in the classes below."""

    def setUp(self):
        super().setUp()
        self.stick = os.path.join(self.tmp, "stick")
        self.requests = os.path.join(self.stick, "requests")
        self.responses = os.path.join(self.stick, "responses")
        for d in (self.stick, self.requests, self.responses, os.path.join(self.tmp, "online"),
                  os.path.join(self.tmp, "offline")):
            os.makedirs(d, exist_ok=True)
        self.online = os.path.join(self.tmp, "online", "pkirelay.toml")
        self.offline = os.path.join(self.tmp, "offline", "pkirelay.toml")
        self.config = self.online  # the harness's items()/show() read the online store
        self.write_online()

    # --- the two agents -----------------------------------------------------------------------

    def write_online(self, endpoint_extra="", return_extra=""):
        with open(self.online, "w") as f:
            f.write(f'[store]\npath = "{self.tmp}/online/store.db"\n'
                    f'[source.inbox]\npath = "{self.inbox}"\nendpoint = "stick"\n'
                    f'[source.return]\ntype = "media-return"\npath = "{self.responses}"\n'
                    f'endpoint = "stick"\n{return_extra}\n'
                    f'[endpoint.stick]\ntype = "directory"\npath = "{self.requests}"\n'
                    f'{endpoint_extra}\n')

    def write_offline(self, url, source_extra="", endpoint_extra=""):
        with open(self.offline, "w") as f:
            f.write(f'[store]\npath = "{self.tmp}/offline/store.db"\n'
                    f'[source.stick]\ntype = "media"\npath = "{self.requests}"\n'
                    f'responses = "{self.responses}"\n{source_extra}\n'
                    f'[endpoint.ca]\nurl = "{url}"\n{endpoint_extra}\n')

    def agent(self, config, expect=None, env=None):
        proc = run([PKIRELAY, "run", "--once", "-c", config], check=False, env=env)
        if expect is not None:
            self.assertEqual(proc.returncode, expect,
                             f"run --once -c {config} exited {proc.returncode}\n{proc.stderr}")
        return proc

    def crash(self, config, point):
        env = dict(os.environ, PKIRELAY_CRASH_AT=point)
        proc = run([PKIRELAY, "run", "--once", "-c", config], check=False, env=env)
        self.assertEqual(proc.returncode, -signal.SIGKILL,
                         f"the run did not die at {point!r} (a -Dcrash_points=true build?)\n"
                         f"{proc.stderr}")

    def start_cmp_ca(self, *extra):
        self.creds = CmpCredentials(self.tmp)
        peer, port = start_cmp_server(self.creds, *extra)
        self.peers.append(peer)
        self.write_offline(f"http://127.0.0.1:{port}/pkix/",
                           endpoint_extra="max_connections = 1\nkeep_alive = false")

    def start_cmc_ca(self, *extra):
        self.log = os.path.join(self.tmp, "ca.log")
        peer, port = start_cmc_responder("--log", self.log, *extra)
        self.peers.append(peer)
        self.write_offline(f"http://127.0.0.1:{port}/cmc")

    def offline_client(self, *args):
        return cmp_client(self.creds, "-server", UNREACHABLE, "-msg_timeout", "2",
                          "-certout", os.path.join(self.tmp, "unused.crt"), *args, check=False)

    def media_status(self):
        return json.loads(run([PKIRELAY, "media", "status", "--json", "-c", self.online]).stdout)

    def on_stick(self, folder):
        return sorted(n for n in os.listdir(folder) if not n.startswith("."))

    def data_files(self, folder):
        return [n for n in self.on_stick(folder) if not n.endswith((".manifest", ".p7s"))]

    def item_state(self, item_id):
        return self.show(item_id)["state"]



class AirGap(AirGapBase):

    # --- the whole chain ----------------------------------------------------------------------

    def test_cmp_enrollment_through_the_stick(self):
        self.start_cmp_ca("-grant_implicitconf")
        ir = os.path.join(self.inbox, "ir.der")
        self.offline_client("-cmd", "ir", "-subject", "/CN=Offline", "-implicit_confirm",
                            "-reqout", ir)

        self.agent(self.online, expect=0)
        files = self.data_files(self.requests)
        self.assertEqual(len(files), 1, self.on_stick(self.requests))
        self.assertRegex(files[0], r"^b000001-1-[0-9a-f]{8}\.pki$")
        self.assertIn("b000001.manifest", self.on_stick(self.requests))
        with open(os.path.join(self.requests, "b000001.manifest")) as f:
            manifest = f.read()
        self.assertIn(f"file {files[0]} {os.path.getsize(ir)} ", manifest)
        self.assertIn("count 1\n", manifest)
        self.assertEqual(self.items()[0]["state"], "awaiting")
        status = self.media_status()
        self.assertEqual(status["awaiting"], 1)
        self.assertEqual(status["oldest"]["id"], 1)

        # The stick goes to the offline CA host.
        self.agent(self.offline, expect=0)
        self.assertEqual(self.data_files(self.responses), [files[0]])
        self.assertIn("r000001.manifest", self.on_stick(self.responses))

        # And back: matched, delivered the way the request came (a response file beside it).
        proc = self.agent(self.online, expect=0)
        self.assertIn("answer matched", proc.stderr)
        response = os.path.join(self.inbox, "ir.pki")
        self.assertTrue(os.path.exists(response), os.listdir(self.inbox))
        cert = os.path.join(self.tmp, "cert.pem")
        cmp_client(self.creds, "-cmd", "ir", "-subject", "/CN=Offline", "-implicit_confirm",
                   "-reqin", ir, "-rspin", response, "-certout", cert)
        subject = openssl("x509", "-in", cert, "-noout", "-subject").stdout
        self.assertIn("CN = enrolled-leaf", subject)
        self.assertEqual(self.item_state(1), "answered")
        status = self.media_status()
        self.assertEqual((status["awaiting"], status["returned"]), (0, 1))

        # The transfer report names the batch, its file and its hash.
        report = run([PKIRELAY, "media", "report", "-c", self.online]).stdout
        self.assertIn("batch 1", report)
        self.assertIn(files[0], report)

        # Another pass: nothing new, nothing delivered twice.
        self.agent(self.online, expect=0)
        self.assertEqual(sorted(os.listdir(self.inbox)), ["ir.der", "ir.pki"])

    def test_cmc_simple_request_through_the_stick(self):
        self.start_cmc_ca()
        self.csr("alice.p10")
        self.csr("bob.p10")
        self.agent(self.online, expect=0)
        self.assertEqual(len(self.data_files(self.requests)), 2)
        self.agent(self.offline, expect=0)
        self.assertEqual(len(read_responder_log(self.log)), 2)
        self.agent(self.online, expect=0)
        self.assertEqual(sorted(os.listdir(self.inbox)),
                         ["alice.p10", "alice.p7c", "bob.p10", "bob.p7c"])
        for name in ("alice", "bob"):
            openssl("pkcs7", "-inform", "DER", "-in", os.path.join(self.inbox, name + ".p7c"),
                    "-print_certs", "-noout")

    def readme_block(self, heading):
        """The first TOML block after heading in the README's air-gap walkthrough."""
        with open(os.path.join(os.path.dirname(TESTS_DIR), "README.md")) as f:
            text = f.read()
        start = text.index("```toml\n", text.index(heading)) + len("```toml\n")
        return text[start:text.index("```", start)]

    def test_readme_walkthrough_configurations_run_the_chain(self):
        # The README's two configurations, with this test's folders for the machine's and the
        # CA's address, carry a request there and back: the walkthrough is what runs.
        peer, port = start_cmc_responder()
        self.peers.append(peer)
        places = {"/var/lib/pkirelay/online.db": f"{self.tmp}/online/store.db",
                  "/var/lib/pkirelay/offline.db": f"{self.tmp}/offline/store.db",
                  "/srv/pkirelay/inbox": self.inbox, "/media/stick": self.stick,
                  "http://127.0.0.1:8080/.well-known/cmp": f"http://127.0.0.1:{port}/cmc"}
        for config, heading in ((self.online, "Online side (`/etc/pkirelay/online.toml`)"),
                                (self.offline, "Offline side (`/etc/pkirelay/offline.toml`")):
            text = self.readme_block(heading)
            for old, new in places.items():
                text = text.replace(old, new)
            with open(config, "w") as f:
                f.write(text)
            run([PKIRELAY, "check-config", "-c", config])
        # The mail variant is a source added to the online side (checked, not run: the mail leg
        # runs in AirGapMail with the same keys).
        secret = os.path.join(self.tmp, "imap.password")
        with open(os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("secret\n")
        mail = self.readme_block("Requests by mail as well").replace(
            "/etc/pkirelay/imap.password", secret)
        with_mail = os.path.join(self.tmp, "online", "with-mail.toml")
        with open(self.online) as f, open(with_mail, "w") as out:
            out.write(f.read() + "\n" + mail)
        run([PKIRELAY, "check-config", "-c", with_mail])
        # So is the second CA with its routes, added to the offline side.
        two_cas = os.path.join(self.tmp, "offline", "two-cas.toml")
        with open(self.offline) as f, open(two_cas, "w") as out:
            out.write(f.read() + "\n" + self.readme_block("A CMP CA and a CMC CA"))
        run([PKIRELAY, "check-config", "-c", two_cas])
        self.csr("alice.p10")
        self.agent(self.online, expect=0)
        self.agent(self.offline, expect=0)
        self.agent(self.online, expect=0)
        self.assertIn("alice.p7c", os.listdir(self.inbox))

    # --- in transit ---------------------------------------------------------------------------

    def test_response_altered_in_transit_is_quarantined(self):
        self.start_cmc_ca()
        self.csr("alice.p10")
        self.agent(self.online, expect=0)
        self.agent(self.offline, expect=0)
        [name] = self.data_files(self.responses)
        path = os.path.join(self.responses, name)
        with open(path, "r+b") as f:
            data = bytearray(f.read())
            data[-5] ^= 0x01
            f.seek(0)
            f.write(data)
        proc = self.agent(self.online, expect=65)
        self.assertIn("altered in transit", proc.stderr)
        self.assertEqual(sorted(os.listdir(self.inbox)), ["alice.p10"])
        self.assertEqual(self.item_state(1), "awaiting")
        self.assertEqual(self.items(state="quarantined")[0]["origin"], name)
        self.assertEqual(self.media_status()["quarantined_returns"], 1)

    def test_response_truncated_and_file_missing_are_quarantined(self):
        self.start_cmc_ca()
        self.csr("alice.p10")
        self.csr("bob.p10")
        self.agent(self.online, expect=0)
        # The stick pulled while the requests were copied off it: one file cut short on the
        # offline side, one gone.
        first, second = self.data_files(self.requests)
        with open(os.path.join(self.requests, first), "r+b") as f:
            f.truncate(50)
        os.unlink(os.path.join(self.requests, second))
        proc = self.agent(self.offline, expect=65)
        self.assertIn("truncated", proc.stderr)
        self.assertIn("missing: listed in manifest b000001.manifest", proc.stderr)
        self.assertEqual(read_responder_log(self.log), [])

    def test_response_replayed_on_a_later_trip_is_quarantined(self):
        self.start_cmc_ca()
        self.write_online(return_extra='after = "move"')
        self.csr("alice.p10")
        self.agent(self.online, expect=0)
        self.agent(self.offline, expect=0)
        [name] = self.data_files(self.responses)
        with open(os.path.join(self.responses, name), "rb") as f:
            answer = f.read()
        self.agent(self.online, expect=0)
        self.assertEqual(sorted(os.listdir(self.inbox)), ["alice.p10", "alice.p7c"])
        self.assertFalse(os.path.exists(os.path.join(self.responses, name)))
        # A later trip brings the same answer again.
        with open(os.path.join(self.responses, name), "wb") as f:
            f.write(answer)
        proc = self.agent(self.online, expect=65)
        self.assertIn("a replay", proc.stderr)
        self.assertEqual(sorted(os.listdir(self.inbox)), ["alice.p10", "alice.p7c"])

    def test_response_for_another_request_is_quarantined(self):
        self.start_cmc_ca()
        self.csr("alice.p10")
        self.csr("bob.p10")
        self.agent(self.online, expect=0)
        self.agent(self.offline, expect=0)
        # Swap the names: each answer now claims the other request, whose hash it does not
        # carry in its name.
        a, b = self.data_files(self.responses)
        pa, pb = (os.path.join(self.responses, n) for n in (a, b))
        os.rename(pa, pa + ".x")
        os.rename(pb, pa)
        os.rename(pa + ".x", pb)
        self.agent(self.online, expect=65)
        self.assertEqual(sorted(os.listdir(self.inbox)), ["alice.p10", "bob.p10"])

    def test_manifest_missing(self):
        self.start_cmc_ca()
        self.csr("alice.p10")
        self.agent(self.online, expect=0)
        os.unlink(os.path.join(self.requests, "b000001.manifest"))
        proc = self.agent(self.offline, expect=75)
        self.assertIn("in no manifest yet", proc.stderr)
        self.assertEqual(read_responder_log(self.log), [])
        # Taken as it is once the operator says so (require_manifest = false).
        with open(self.offline) as f:
            text = f.read()
        with open(self.offline, "w") as f:
            f.write(text.replace('type = "media"\n', 'type = "media"\nrequire_manifest = false\n'))
        self.agent(self.offline, expect=0)
        self.assertEqual(len(read_responder_log(self.log)), 1)
        self.agent(self.online, expect=0)
        self.assertIn("alice.p7c", os.listdir(self.inbox))

    # --- the stick pulled, the agent restarted ------------------------------------------------

    def test_stick_pulled_while_the_online_agent_writes(self):
        self.start_cmc_ca()
        self.csr("alice.p10")
        # Killed after the batch's files are durable and before its manifest is written.
        self.crash(self.online, "media-files")
        self.assertEqual(len(self.data_files(self.requests)), 1)
        self.assertNotIn("b000001.manifest", self.on_stick(self.requests))
        # The offline side does not take a batch without its manifest.
        self.agent(self.offline, expect=75)
        self.assertEqual(read_responder_log(self.log), [])
        # The online agent again: the cut batch is removed, the request written anew.
        proc = self.agent(self.online, expect=0)
        self.assertIn("has no manifest", proc.stderr)
        [name] = self.data_files(self.requests)
        self.assertTrue(name.startswith("b000002-1-"), name)
        self.agent(self.offline, expect=0)
        self.assertEqual(len(read_responder_log(self.log)), 1)
        self.agent(self.online, expect=0)
        self.assertIn("alice.p7c", os.listdir(self.inbox))

    def test_stick_pulled_while_the_offline_agent_writes(self):
        self.start_cmc_ca()
        self.csr("alice.p10")
        self.agent(self.online, expect=0)
        # Killed after the responses are durable and before their return manifest.
        self.crash(self.offline, "media-responses")
        self.assertEqual(len(self.data_files(self.responses)), 1)
        self.assertEqual([n for n in self.on_stick(self.responses) if n.endswith(".manifest")],
                         [])
        # Online, the answer waits for its manifest; it is not taken as it is.
        self.agent(self.online, expect=75)
        self.assertEqual(sorted(os.listdir(self.inbox)), ["alice.p10"])
        # The offline agent's next start covers the answers with a manifest; no second answer.
        self.agent(self.offline, expect=0)
        self.assertEqual(len(read_responder_log(self.log)), 1)
        self.assertEqual(len(self.data_files(self.responses)), 1)
        self.agent(self.online, expect=0)
        self.assertIn("alice.p7c", os.listdir(self.inbox))

    def test_online_agent_restarted_while_requests_are_out(self):
        self.start_cmc_ca()
        self.csr("alice.p10")
        self.agent(self.online, expect=0)
        # Runs of the online agent while the stick is away: nothing is written again.
        os.rename(self.stick, self.stick + ".away")
        self.agent(self.online)
        self.agent(self.online)
        os.rename(self.stick + ".away", self.stick)
        self.assertEqual(len(self.data_files(self.requests)), 1)
        self.assertEqual(self.item_state(1), "awaiting")
        self.agent(self.offline, expect=0)
        self.agent(self.online, expect=0)
        self.assertIn("alice.p7c", os.listdir(self.inbox))

    def test_await_max_age_fails_the_item_visibly(self):
        self.start_cmc_ca()
        self.csr("alice.p10")
        self.agent(self.online, expect=0)
        # The deadline is in the store (next_try of an awaiting item): move it into the past
        # instead of waiting for it.
        db = sqlite3.connect(os.path.join(self.tmp, "online", "store.db"))
        db.execute("UPDATE item SET next_try = 0 WHERE state = 'awaiting'")
        db.commit()
        db.close()
        proc = self.agent(self.online, expect=65)
        self.assertIn("no answer came back", proc.stderr)
        self.assertEqual(self.item_state(1), "failed")
        # Its answer coming back late is not delivered.
        self.agent(self.offline, expect=0)
        self.agent(self.online, expect=65)
        self.assertEqual(sorted(os.listdir(self.inbox)), ["alice.p10"])

    def age_items(self, seconds):
        """Makes every item seconds older (its arrival, which retry.max_age counts from) and due
        now, instead of waiting."""
        db = sqlite3.connect(os.path.join(self.tmp, "online", "store.db"))
        db.execute("UPDATE item SET created_at = created_at - ?1, next_try = CASE WHEN state = "
                   "'deferred' THEN 0 ELSE next_try END", (seconds * 1000,))
        db.commit()
        db.close()

    def test_waiting_for_the_stick_counts_against_await_max_age_not_retry_max_age(self):
        # A stick trip takes longer than retry.max_age (one day by default): a request waiting
        # for the stick, or out on it, must not fail by that clock, only by the directory
        # endpoint's own await_max_age_seconds.
        self.start_cmc_ca()
        self.write_online(endpoint_extra="await_max_age_seconds = 3600")
        with open(self.online, "a") as f:
            f.write("[retry]\nmax_age_seconds = 60\ninitial_seconds = 1\n")
        self.csr("alice.p10")
        os.rename(self.stick, self.stick + ".away")
        self.agent(self.online, expect=75)
        self.assertEqual(self.item_state(1), "deferred")
        # Two minutes later (past retry.max_age, within await_max_age), the stick still away.
        self.age_items(120)
        proc = self.agent(self.online, expect=75)
        self.assertEqual(self.item_state(1), "deferred", proc.stderr)
        # The stick is back: written, and out on it longer than retry.max_age.
        os.rename(self.stick + ".away", self.stick)
        self.age_items(1)
        self.agent(self.online, expect=0)
        self.assertEqual(self.item_state(1), "awaiting")
        self.age_items(120)
        self.agent(self.online, expect=0)
        self.assertEqual(self.item_state(1), "awaiting")
        self.agent(self.offline, expect=0)
        self.agent(self.online, expect=0)
        self.assertIn("alice.p7c", os.listdir(self.inbox))

        # A request that waits for the stick past await_max_age fails, and says which limit.
        self.csr("bob.p10")
        os.rename(self.stick, self.stick + ".away")
        self.agent(self.online, expect=75)
        self.age_items(7200)
        proc = self.agent(self.online, expect=65)
        bob = [i for i in self.items() if i["origin"] == "bob.p10"][0]
        self.assertEqual(bob["state"], "failed")
        self.assertIn("await_max_age_seconds", self.show(bob["id"])["reason"])

    # --- signed manifests ---------------------------------------------------------------------

    def make_signer(self, name):
        key, cert = (os.path.join(self.tmp, f"{name}.{ext}") for ext in ("key", "crt"))
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", key, "-out", cert, "-subj", f"/CN={name}", "-days", "2")
        os.chmod(key, 0o600)
        return cert, key

    def test_signed_manifests(self):
        self.start_cmc_ca()
        on_cert, on_key = self.make_signer("online")
        off_cert, off_key = self.make_signer("offline")
        self.write_online(endpoint_extra=f'sign_cert = "{on_cert}"\nsign_key = "{on_key}"',
                          return_extra=f'verify_cert = "{off_cert}"')
        url = f"http://127.0.0.1:{self.peers[0].ready_line.split()[1]}/cmc"
        self.write_offline(url, source_extra=f'verify_cert = "{on_cert}"\n'
                                             f'sign_cert = "{off_cert}"\nsign_key = "{off_key}"')
        self.csr("alice.p10")
        self.agent(self.online, expect=0)
        self.assertIn("b000001.manifest.p7s", self.on_stick(self.requests))
        # A manifest changed in transit (its signature no longer fits) is refused.
        path = os.path.join(self.requests, "b000001.manifest")
        with open(path) as f:
            good = f.read()
        with open(path, "w") as f:
            f.write(good.replace("writer stick", "writer stack"))
        proc = self.agent(self.offline, expect=75)
        self.assertIn("refused: bad signature", proc.stderr)
        self.assertEqual(read_responder_log(self.log), [])
        with open(path, "w") as f:
            f.write(good)
        self.agent(self.offline, expect=0)
        self.assertIn("r000001.manifest.p7s", self.on_stick(self.responses))
        self.agent(self.online, expect=0)
        self.assertIn("alice.p7c", os.listdir(self.inbox))

    def test_unsigned_manifest_is_refused_when_signing_is_configured(self):
        self.start_cmc_ca()
        on_cert, _ = self.make_signer("online")
        url = f"http://127.0.0.1:{self.peers[0].ready_line.split()[1]}/cmc"
        self.write_offline(url, source_extra=f'verify_cert = "{on_cert}"')
        self.csr("alice.p10")
        self.agent(self.online, expect=0)
        proc = self.agent(self.offline, expect=75)
        self.assertIn("unsigned", proc.stderr)
        self.assertEqual(read_responder_log(self.log), [])

    # --- delayed answers across trips ---------------------------------------------------------

    def test_cmp_polling_across_two_trips(self):
        # The CA answers the ir with "waiting"; the requester's pollReq travels on the next
        # trip and is matched like any request.
        self.start_cmp_ca("-grant_implicitconf", "-poll_count", "1", "-check_after", "0")
        ir = os.path.join(self.inbox, "ir.der")
        self.offline_client("-cmd", "ir", "-subject", "/CN=Offline", "-implicit_confirm",
                            "-reqout", ir)
        self.agent(self.online, expect=0)
        self.agent(self.offline, expect=0)
        self.agent(self.online, expect=0)
        waiting = os.path.join(self.inbox, "ir.pki")
        self.assertTrue(os.path.exists(waiting), os.listdir(self.inbox))
        inspected = run([PKIRELAY, "inspect", "--json", waiting]).stdout
        self.assertIn('"ip"', inspected)

        # The client reads the waiting ip and writes its pollReq (it cannot send it).
        poll = os.path.join(self.inbox, "poll.der")
        self.offline_client("-cmd", "ir", "-subject", "/CN=Offline", "-implicit_confirm",
                            "-reqin", ir, "-rspin", waiting,
                            "-reqout", f"{os.path.join(self.tmp, 'ir2.der')},{poll}")
        self.assertTrue(os.path.exists(poll), "the client wrote no pollReq")
        self.agent(self.online, expect=0)
        self.assertTrue(any(n.startswith("b000002-") for n in self.on_stick(self.requests)))
        self.agent(self.offline, expect=0)
        self.agent(self.online, expect=0)
        final = os.path.join(self.inbox, "poll.pki")
        self.assertTrue(os.path.exists(final), os.listdir(self.inbox))
        cert = os.path.join(self.tmp, "cert.pem")
        cmp_client(self.creds, "-cmd", "ir", "-subject", "/CN=Offline", "-implicit_confirm",
                   "-reqin", f"{ir},{poll}", "-rspin", f"{waiting},{final}", "-certout", cert)
        self.assertIn("CN = enrolled-leaf",
                      openssl("x509", "-in", cert, "-noout", "-subject").stdout)


    def test_cmp_polling_with_a_pollrep_on_the_middle_trip(self):
        # -poll_count 2: the ip "waiting", then a pollRep (check again later) to the first
        # pollReq, and the ip with the certificate to the second; three trips, each answer
        # matched to the request that went out on it.
        self.start_cmp_ca("-grant_implicitconf", "-poll_count", "2", "-check_after", "0")
        ir = os.path.join(self.inbox, "ir.der")
        self.offline_client("-cmd", "ir", "-subject", "/CN=Offline", "-implicit_confirm",
                            "-reqout", ir)
        requests, answers = [ir], []
        for trip, (name, body) in enumerate((("ir", "ip"), ("poll1", "pollRep"),
                                             ("poll2", "ip")), start=1):
            self.agent(self.online, expect=0)
            self.assertTrue(any(n.startswith(f"b{trip:06d}-") for n in
                                self.on_stick(self.requests)), self.on_stick(self.requests))
            self.agent(self.offline, expect=0)
            self.agent(self.online, expect=0)
            answer = os.path.join(self.inbox, name + ".pki")
            self.assertTrue(os.path.exists(answer), os.listdir(self.inbox))
            self.assertEqual(self.inspect(answer)["cmp"]["body"], body)
            answers.append(answer)
            if trip == 3:
                break
            # The client reads the answers so far and writes its next pollReq (the files
            # before it hold the requests it already sent, written again).
            nxt = os.path.join(self.inbox, f"poll{trip}.der")
            again = [os.path.join(self.tmp, f"again{trip}-{i}.der") for i in range(trip)]
            self.offline_client("-cmd", "ir", "-subject", "/CN=Offline", "-implicit_confirm",
                                "-reqin", ",".join(requests), "-rspin", ",".join(answers),
                                "-reqout", ",".join(again + [nxt]))
            self.assertTrue(os.path.exists(nxt), "the client wrote no pollReq")
            requests.append(nxt)
        cert = os.path.join(self.tmp, "cert.pem")
        cmp_client(self.creds, "-cmd", "ir", "-subject", "/CN=Offline", "-implicit_confirm",
                   "-reqin", ",".join(requests), "-rspin", ",".join(answers), "-certout", cert)
        self.assertIn("CN = enrolled-leaf",
                      openssl("x509", "-in", cert, "-noout", "-subject").stdout)
        self.assertEqual([i["state"] for i in self.items()], ["answered"] * 3)

    def inspect(self, path):
        return json.loads(run([PKIRELAY, "inspect", "--json", path]).stdout)

    def drop(self, path, name):
        """Puts a finished request into the online inbox (written whole, then renamed)."""
        with open(path, "rb") as f:
            drop_into(self.inbox, name, f.read())

    def test_cmc_pending_then_query_pending_across_two_trips(self):
        # The CA answers the Full PKI Request "pending" with a pendToken (RFC 5272 §6.1.1); the
        # requester's queryPending (§6.13) travels on the next trip, is matched like any
        # request, and gets the final answer.
        self.start_cmc_ca("--pending", "1")
        request, nonce = cmc_full_request(self.tmp, "req.der")
        self.drop(request, "req.crq")
        self.agent(self.online, expect=0)
        self.agent(self.offline, expect=0)
        self.agent(self.online, expect=0)
        first = os.path.join(self.inbox, "req.crp")
        self.assertTrue(os.path.exists(first), os.listdir(self.inbox))
        pending = self.inspect(first)["cmc"]
        self.assertEqual(pending["status_name"], "pending")
        self.assertEqual(pending["recipient_nonce"], nonce)
        self.assertTrue(pending["pend_token"])
        self.assertEqual(self.item_state(1), "answered")

        query, query_nonce = cmc_full_request(self.tmp, "query.der",
                                              query_pending=bytes.fromhex(pending["pend_token"]))
        self.drop(query, "query.crq")
        self.agent(self.online, expect=0)
        self.assertTrue(any(n.startswith("b000002-") for n in self.on_stick(self.requests)))
        self.agent(self.offline, expect=0)
        self.agent(self.online, expect=0)
        final = os.path.join(self.inbox, "query.crp")
        self.assertTrue(os.path.exists(final), os.listdir(self.inbox))
        # OpenSSL checks the signature and the content type; the status is the CA's decision.
        openssl("cms", "-verify", "-noverify", "-inform", "DER", "-in", final,
                "-out", os.path.join(self.tmp, "pkiresponse.der"))
        printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", final).stdout
        self.assertRegex(printed, r"eContentType: (id-cct-PKIResponse|1\.3\.6\.1\.5\.5\.7\.12\.3)")
        answer = self.inspect(final)["cmc"]
        self.assertEqual(answer["status_name"], "success")
        self.assertEqual(answer["recipient_nonce"], query_nonce)
        self.assertEqual(answer["transaction_id"], pending["transaction_id"])
        self.assertEqual(len(read_responder_log(self.log)), 2)
        self.assertEqual([i["state"] for i in self.items()], ["answered", "answered"])
        self.assertEqual(self.media_status()["awaiting"], 0)



@unittest.skipIf(MISSING_MAIL, f"mail tests skipped: {MISSING_MAIL}")
class AirGapMail(AirGapBase):
    """The mail leg: Dovecot and the SMTP server of the mail tests (mail_peers) in front of the
    online agent; OpenSSL's CMP server and tests/cmc_responder.py behind the offline one.

      swaks -> SMTP -> Dovecot -> online pkirelay (IMAPS) -> stick -> offline pkirelay -> CA
      -> stick -> online pkirelay -> reply mail (SMTP) -> captured, checked by OpenSSL
    """

    def setUp(self):
        super().setUp()
        self.dovecot, self.smtp, secret = start_mail_peers(self, self.tmp)
        with open(self.online, "w") as f:
            f.write(f'[store]\npath = "{self.tmp}/online/store.db"\n'
                    f'[source.mail]\ntype = "imap"\n'
                    f'url = "imaps://127.0.0.1:{self.dovecot.imaps_port}/"\n'
                    f'user = "{Dovecot.USER}"\npassword_file = "{secret}"\n'
                    f'ca_file = "{self.dovecot.cert}"\n'
                    f'smtp_url = "smtp://127.0.0.1:{self.smtp.port}"\n'
                    f'reply_from = "{ENROLL}"\nendpoint = "stick"\n'
                    f'[source.return]\ntype = "media-return"\npath = "{self.responses}"\n'
                    f'endpoint = "stick"\n'
                    f'[endpoint.stick]\ntype = "directory"\npath = "{self.requests}"\n')
        # Both CAs behind the offline agent: CMP to OpenSSL's server, CMC to the responder.
        self.creds = CmpCredentials(self.tmp)
        peer, cmp_port = start_cmp_server(self.creds, "-grant_implicitconf")
        self.peers.append(peer)
        self.log = os.path.join(self.tmp, "ca.log")
        peer, cmc_port = start_cmc_responder("--log", self.log)
        self.peers.append(peer)
        with open(self.offline, "w") as f:
            f.write(f'[store]\npath = "{self.tmp}/offline/store.db"\n'
                    f'[source.stick]\ntype = "media"\npath = "{self.requests}"\n'
                    f'responses = "{self.responses}"\n'
                    f'[endpoint.cmp]\nurl = "http://127.0.0.1:{cmp_port}/pkix/"\n'
                    f'max_connections = 1\nkeep_alive = false\n'
                    f'[endpoint.cmc]\nurl = "http://127.0.0.1:{cmc_port}/cmc"\n'
                    f'[[route]]\nkind = "cmp"\nendpoint = "cmp"\n'
                    f'[[route]]\nendpoint = "cmc"\n')

    def mail_in(self, parts):
        """Mails the request to the enrollment address as a user would (swaks)."""
        raw, message_id = make_mail(parts)
        path = os.path.join(self.tmp, f"out-{secrets.token_hex(4)}.eml")
        with open(path, "wb") as f:
            f.write(raw)
        swaks(self.smtp.port, ALICE, ENROLL, "--data", f"@{path}")
        return message_id

    def trip(self):
        """Online (the mail is fetched, its request written onto the stick), offline (relayed
        to the CA, the answer written back), online again (matched, the reply mailed)."""
        self.agent(self.online, expect=0)
        self.assertEqual(len(self.data_files(self.requests)), 1, self.on_stick(self.requests))
        self.assertEqual(self.items()[0]["state"], "awaiting")
        self.assertEqual(self.smtp.mails(), [], "a reply before the answer came back")
        self.assertEqual(self.dovecot.count("processed"), 1)
        self.agent(self.offline, expect=0)
        self.assertEqual(len(self.data_files(self.responses)), 1, self.on_stick(self.responses))
        proc = self.agent(self.online, expect=0)
        self.assertIn("answer matched", proc.stderr)
        self.assertEqual(self.item_state(1), "answered")

    def test_cmp_ir_by_mail_answered_by_reply_mail_through_the_stick(self):
        ir = os.path.join(self.tmp, "ir.der")
        self.offline_client("-cmd", "ir", "-subject", "/CN=Mailed", "-implicit_confirm",
                            "-reqout", ir)
        with open(ir, "rb") as f:
            mid = self.mail_in([("application/pkixcmp", "ir.der", f.read())])
        self.trip()
        part, der = attachment(self, the_reply(self, self.smtp, mid))
        check_cmp_reply(self, self.creds, ir, part, der)
        self.assertEqual(read_responder_log(self.log), [], "CMP went to the CMC responder")
        # Nothing more: another pass mails nothing again.
        self.agent(self.online, expect=0)
        self.assertEqual(len(self.smtp.mails()), 1)

    def test_pkcs10_by_mail_answered_by_reply_mail_through_the_stick(self):
        key = os.path.join(self.tmp, "alice.key")
        csr = os.path.join(self.tmp, "alice.p10")
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", key, "-subj", "/CN=alice", "-outform", "DER", "-out", csr)
        with open(csr, "rb") as f:
            mid = self.mail_in([("application/pkcs10", "alice.p10", f.read())])
        self.trip()
        part, der = attachment(self, the_reply(self, self.smtp, mid))
        self.assertEqual(part.get_content_type(), "application/pkcs7-mime")
        self.assertEqual(part.get_param("smime-type").lower(), "certs-only")
        p7c = os.path.join(self.tmp, "reply.p7c")
        with open(p7c, "wb") as f:
            f.write(der)
        self.assertIn("CN = alice", openssl("pkcs7", "-inform", "DER", "-in", p7c,
                                            "-print_certs").stdout)
        self.assertEqual(len(read_responder_log(self.log)), 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
