"""Attacks on the air-gap chain (issue 17), as a hostile stick and an unlucky operator would
make them: the agents killed at every step on each side, the stick pulled or full, media content
that lies, and configuration mistakes. The chain and its helpers are test_airgap's (imported,
not copied); this file only adds the cases.

Each test that fails on the current code is marked @unittest.expectedFailure with a comment
saying what goes wrong; the others are behaviours checked good. The crash cases need a
-Dcrash_points=true build (as test_crash_points does).
"""

import contextlib
import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import unittest

import test_airgap
from harness import PKIRELAY, openssl, read_responder_log, run, wait_until
from test_daemon import Daemon

# Online side: points the online run passes through with a directory endpoint (the source's
# own points, then the endpoint's: temporary/renamed are the request files' writes).
ONLINE_POINTS = ["stored", "claimed", "held", "acknowledged", "temporary", "renamed",
                 "media-files", "media-written"]
# Offline side: the relay to the CA and the responses' writes, then the return manifest.
OFFLINE_POINTS = ["stored", "claimed", "held", "acknowledged", "answered", "recorded",
                  "temporary", "renamed", "written", "media-responses"]


class AttackGap(test_airgap.AirGap):
    """test_airgap's two agents and stick; only the tests defined here run (load_tests)."""

    def csr_with_own_key(self, name, folder=None):
        """A PKCS#10 with a key of its own (harness.csr shares one key between requests)."""
        key = os.path.join(self.tmp, name + ".key")
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", key)
        path = os.path.join(folder or self.inbox, name + ".p10")
        openssl("req", "-new", "-key", key, "-subj", f"/CN={name}", "-outform", "DER",
                "-out", path)
        return path

    def set_offline(self, old, new):
        with open(self.offline) as f:
            text = f.read()
        self.assertIn(old, text)
        with open(self.offline, "w") as f:
            f.write(text.replace(old, new, 1))

    def subject_of(self, p7c):
        out = openssl("pkcs7", "-inform", "DER", "-in", p7c, "-print_certs", "-noout").stdout
        return re.findall(r"subject=.*CN\s*=\s*(\S+)", out)

    def manifest_lines(self, path):
        with open(path) as f:
            return f.read().splitlines()

    def write_manifest(self, path, lines):
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def quarantined(self):
        return self.items(state="quarantined")

    # --- SIGKILL at every step, each side ---------------------------------------------------

    def check_chain_after_crash(self, names, requests_kept=True):
        """Every request has exactly one answer delivered, the CA saw each once, every item is
        answered; whatever the crash left on the stick is not delivered twice."""
        responses = sorted(n.replace(".p10", ".p7c") for n in names)
        self.assertEqual(sorted(os.listdir(self.inbox)),
                         sorted((names if requests_kept else []) + responses))
        for r in responses:
            self.assertIn(r[:-4], self.subject_of(os.path.join(self.inbox, r)))
        states = sorted(i["state"] for i in self.items() if i["state"] != "quarantined")
        self.assertEqual(states, ["answered"] * len(names))
        # The CA sees each request once, plus at most the resends the offline store recorded
        # (a request whose outcome was not recorded when the run was killed).
        self.config = self.offline
        resent = sum(1 for item in self.items() for e in self.show(item["id"])["events"]
                     if "resend" in e["detail"])
        self.config = self.online
        sent = len(read_responder_log(self.log))
        self.assertGreaterEqual(sent, len(names))
        self.assertLessEqual(sent, len(names) + resent, "a resend that is in no history")

    def online_crash_case(self, point):
        self.start_cmc_ca()
        names = ["alice.p10", "bob.p10"]
        for n in names:
            self.csr_with_own_key(n[:-4])
        self.write_online(return_extra='after = "delete"')
        with open(self.online) as f:
            text = f.read()
        with open(self.online, "w") as f:  # the inbox too, so that "held" is passed
            f.write(text.replace('endpoint = "stick"\n', 'endpoint = "stick"\nafter = "delete"\n',
                                 1))
        self.crash(self.online, point)
        self.agent(self.online)  # the restart: writes what the killed run did not
        self.agent(self.offline)
        self.agent(self.online)
        self.check_chain_after_crash(names, requests_kept=False)

    def offline_crash_case(self, point):
        self.start_cmc_ca()
        names = ["alice.p10", "bob.p10"]
        for n in names:
            self.csr_with_own_key(n[:-4])
        self.set_offline('type = "media"\n', 'type = "media"\nafter = "delete"\n')
        self.agent(self.online, expect=0)
        self.crash(self.offline, point)
        self.agent(self.offline, expect=0)
        self.assertEqual([n for n in os.listdir(self.responses) if n.startswith(".")], [],
                         "temporary files left on the stick")
        self.assertEqual(len(self.data_files(self.responses)), len(names),
                         self.on_stick(self.responses))
        self.agent(self.online, expect=0)
        self.check_chain_after_crash(names)
        self.assertEqual(self.quarantined(), [])

    def test_online_killed_after_the_batch_and_the_stick_carried_at_once(self):
        # The online agent is killed after a batch and its manifest are durable, before the
        # items are recorded as out ("media-written"), and the stick goes to the CA before the
        # agent is started again. At the restart the items are queued again with their outcome
        # unknown; the answer that came back on the stick is theirs (name, hash and protocol
        # fields checked as for an awaiting item), so it is taken, not quarantined (which asked
        # a person to look at a good answer and sent the request on another trip).
        self.start_cmc_ca()
        self.csr_with_own_key("alice")
        self.crash(self.online, "media-written")
        self.agent(self.offline, expect=0)
        self.agent(self.online, expect=0)
        self.assertIn("alice.p7c", os.listdir(self.inbox))
        self.assertEqual(self.quarantined(), [])

    # --- the stick pulled, the stick full ---------------------------------------------------

    @contextlib.contextmanager
    def small_tmpfs(self, folder, size="64k"):
        """A tiny file system mounted on folder (the stick almost full); skips when it cannot."""
        if os.geteuid() != 0:
            self.skipTest("a small tmpfs needs root (mount -t tmpfs)")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            self.skipTest(f"mount -t tmpfs failed: {proc.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["umount", "-l", folder], capture_output=True)

    def fill(self, folder, leave):
        """Fills the file system of folder until at most `leave` bytes are free."""
        filler = os.path.join(folder, ".filler")  # a dot name: no agent takes it as its own
        with open(filler, "wb") as f:
            while True:
                st = os.statvfs(folder)
                free = st.f_bavail * st.f_frsize
                if free <= leave:
                    break
                try:
                    f.write(b"\0" * min(4096, free - leave))
                    f.flush()
                except OSError:
                    break
        return filler

    def test_online_stick_full_writes_nothing_half_and_recovers(self):
        self.start_cmc_ca()
        with self.small_tmpfs(self.requests):
            for i in range(3):
                self.csr_with_own_key(f"user{i}")
            filler = self.fill(self.requests, 4096)  # room for one file, not the batch
            proc = self.agent(self.online, expect=75)
            self.assertIn("writing to the media folder", proc.stderr)
            # Nothing of the cut batch counts: no manifest, the items not out.
            self.assertEqual([n for n in self.on_stick(self.requests) if n.endswith(".manifest")],
                             [])
            self.assertEqual(self.media_status()["awaiting"], 0)
            os.unlink(filler)
            # The deferred items are due again only after retry's delay: make them due now.
            db = sqlite3.connect(os.path.join(self.tmp, "online", "store.db"))
            db.execute("UPDATE item SET next_try = 0 WHERE state = 'deferred'")
            db.commit()
            db.close()
            self.agent(self.online, expect=0)
            self.assertEqual(self.media_status()["awaiting"], 3)
            self.agent(self.offline, expect=0)
            self.agent(self.online, expect=0)
            self.assertEqual(len([n for n in os.listdir(self.inbox) if n.endswith(".p7c")]), 3)

    def test_offline_stick_full_for_the_return_manifest(self):
        # The answers fit, their return manifest does not: the next run covers them.
        self.start_cmc_ca()
        self.csr_with_own_key("alice")
        self.agent(self.online, expect=0)
        with self.small_tmpfs(self.responses):
            # One page for the answer; the manifest's temporary file finds the disk full.
            filler = self.fill(self.responses, 4096)
            self.agent(self.offline)
            self.assertEqual(len(self.data_files(self.responses)), 1,
                             self.on_stick(self.responses))
            self.assertEqual([n for n in self.on_stick(self.responses)
                              if n.endswith(".manifest")], [])
            os.unlink(filler)
            self.agent(self.offline, expect=0)
            # (The number the failed manifest took is not used again.)
            self.assertEqual(len([n for n in self.on_stick(self.responses)
                                  if n.endswith(".manifest")]), 1)
            self.agent(self.online, expect=0)
            self.assertIn("alice.p7c", os.listdir(self.inbox))
            self.assertEqual(len(read_responder_log(self.log)), 1)

    def test_offline_daemon_writes_a_return_manifest_that_failed_once(self):
        # The offline daemon writes an answer; the stick is too full for its return manifest.
        # The operator makes room. WHAT GOES WRONG: the delivery is recorded, and the manifest
        # that failed is written only by MediaResponder::recover(), which runs once at start
        # (Pipeline::start): while the daemon runs the answer stays in no manifest, and the
        # online side leaves it waiting ("in no manifest yet") until the daemon is restarted.
        # (A kill between the answers and their manifest is fine: the delivery is not recorded,
        # so it is made again, manifest and all.)
        self.start_cmc_ca()
        self.csr_with_own_key("alice")
        self.agent(self.online, expect=0)
        with open(self.offline, "a") as f:
            f.write("[run]\npoll_seconds = 1\n")
        with self.small_tmpfs(self.responses):
            filler = self.fill(self.responses, 4096)
            daemon = Daemon(self.offline)
            try:
                wait_until(lambda: daemon.saw("was not written"), "the manifest to fail")
                self.assertEqual(len(self.data_files(self.responses)), 1)
                os.unlink(filler)
                wait_until(lambda: any(n.endswith(".manifest")
                                       for n in os.listdir(self.responses)),
                           "a return manifest covering the answer", deadline=10)
            finally:
                daemon.stop()

    def test_offline_stick_pulled_after_the_ca_answered(self):
        # The CA has answered (the outcomes are recorded) when the stick is pulled, leaving its
        # empty mount point: nothing is written under it (the answers wait in the store), and
        # they go onto the stick, with their manifest, when it is back.
        self.start_cmc_ca()
        self.csr_with_own_key("alice")
        self.agent(self.online, expect=0)
        self.crash(self.offline, "recorded")
        away = self.stick + ".away"
        os.rename(self.stick, away)
        os.mkdir(self.stick)  # the mount point, with the stick out
        proc = self.agent(self.offline)
        self.assertNotEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(os.listdir(self.stick), [], "written under the mount point")
        os.rmdir(self.stick)
        os.rename(away, self.stick)
        self.agent(self.offline, expect=0)
        self.assertEqual(len(read_responder_log(self.log)), 1, "the CA was asked again")
        self.agent(self.online, expect=0)
        self.assertIn("alice.p7c", os.listdir(self.inbox))

    def test_a_lost_request_manifest_does_not_remove_requests_that_are_out(self):
        # Batch 1 is out (its items awaiting) when its manifest goes missing on the stick
        # (removed by a person, lost by a file system check, or by an attacker). WHAT GOES
        # WRONG: before batch 2 is written, tidy() removes every file of a batch without a
        # manifest, taking them for a batch of ours cut short whose "request is written again".
        # These were recorded as handed over, so nothing writes them again: alice's request is
        # gone from the stick and her item waits until await_max_age fails it. tidy() should
        # remove only files whose items the store does not have as out on the media (or queue
        # those again).
        self.start_cmc_ca()
        self.csr_with_own_key("alice")
        self.agent(self.online, expect=0)
        os.unlink(os.path.join(self.requests, "b000001.manifest"))
        self.csr_with_own_key("bob")
        self.agent(self.online, expect=0)
        self.agent(self.offline)
        self.agent(self.online)
        self.assertIn("alice.p7c", os.listdir(self.inbox),
                      f"alice is {self.item_state(1)}, her request not on the stick")

    # --- a manifest that lies -----------------------------------------------------------------

    def test_planted_manifest_with_the_largest_batch_number(self):
        # The directory endpoint takes the highest batch number named by a "b*.manifest" on
        # the stick as a floor for its own (tidy()), and nextSequence() adds one to it. A
        # planted, even empty, b9223372036854775807.manifest made that a signed overflow: the
        # batch was numbered -9223372036854775808, the offline side refused its manifest (the
        # sequence does not parse) and its files waited for ever, every later batch likewise.
        # A floor over media::maxSequence is now not taken.
        self.start_cmc_ca()
        open(os.path.join(self.requests, "b9223372036854775807.manifest"), "w").close()
        self.csr_with_own_key("alice")
        self.agent(self.online, expect=0)
        self.assertIn("b000001.manifest", self.on_stick(self.requests))
        self.agent(self.offline, expect=0)
        self.assertEqual(len(read_responder_log(self.log)), 1)

    def test_planted_return_manifest_with_the_largest_sequence(self):
        # The same on the way back: the media responder takes the highest sequence of the
        # return manifests on the stick as its floor; a planted, well-formed
        # r9223372036854775807.manifest overflowed it, the return manifest got a negative
        # sequence, which the online side refused, and the answers waited for ever.
        self.start_cmc_ca()
        self.csr_with_own_key("alice")
        self.agent(self.online, expect=0)
        self.write_manifest(os.path.join(self.responses, "r9223372036854775807.manifest"),
                            ["pkirelay-manifest 1", "direction responses",
                             "sequence 9223372036854775807", "created 0 1970-01-01T00:00:00Z",
                             "writer x", "count 0", "end"])
        self.agent(self.offline, expect=0)
        self.assertIn("r000001.manifest", self.on_stick(self.responses))
        self.agent(self.online, expect=0)
        self.assertIn("alice.p7c", os.listdir(self.inbox))

    def test_manifests_that_do_not_parse_are_refused_and_their_files_wait(self):
        self.start_cmc_ca()
        self.csr_with_own_key("alice")
        self.agent(self.online, expect=0)
        manifest = os.path.join(self.requests, "b000001.manifest")
        good = self.manifest_lines(manifest)
        [entry] = [ln for ln in good if ln.startswith("file ")]
        _, name, size, sha = entry.split()
        hostile = {
            "a name with a slash": [ln if ln != entry else f"file ../{name} {size} {sha}"
                                    for ln in good],
            "a dot-dot name": [ln if ln != entry else f"file .. {size} {sha}" for ln in good],
            "a huge count": [ln if not ln.startswith("count ") else "count 99999999999"
                             for ln in good],
            "a count that lies": [ln if not ln.startswith("count ") else "count 2"
                                  for ln in good],
            "a size over 19 digits": [ln if ln != entry else f"file {name} 1{'0' * 19} {sha}"
                                      for ln in good],
            "a hash that is not hex": [ln if ln != entry else f"file {name} {size} {'g' * 64}"
                                       for ln in good],
            "no end line": good[:-1],
        }
        for what, lines in hostile.items():
            with self.subTest(what):
                self.write_manifest(manifest, lines)
                proc = self.agent(self.offline, expect=75)
                self.assertIn("manifest b000001.manifest is not used", proc.stderr)
                self.assertEqual(read_responder_log(self.log), [])
        with self.subTest("non-UTF-8 name"):
            with open(manifest, "wb") as f:
                f.write("\n".join(good).replace(name, name + "\udcff", 1)
                        .encode("utf-8", "surrogateescape") + b"\n")
            self.agent(self.offline, expect=75)
            self.assertEqual(read_responder_log(self.log), [])
        self.write_manifest(manifest, good)
        self.agent(self.offline, expect=0)
        self.assertEqual(len(read_responder_log(self.log)), 1)

    def test_manifest_listing_a_name_twice_relays_once(self):
        self.start_cmc_ca()
        self.csr_with_own_key("alice")
        self.agent(self.online, expect=0)
        manifest = os.path.join(self.requests, "b000001.manifest")
        lines = self.manifest_lines(manifest)
        [entry] = [ln for ln in lines if ln.startswith("file ")]
        lines = [ln if not ln.startswith("count ") else "count 2" for ln in lines]
        lines.insert(lines.index(entry), entry)
        self.write_manifest(manifest, lines)
        self.agent(self.offline)
        self.assertEqual(len(read_responder_log(self.log)), 1)
        self.agent(self.online, expect=0)
        self.assertIn("alice.p7c", os.listdir(self.inbox))

    def test_manifest_replayed_from_an_earlier_trip(self):
        # Trip 1 answered; on trip 2 the stick also carries trip 1's manifest and request again
        # (a fresh offline store, as on a second CA host): the old request is answered again
        # there, and its answer is refused online as a replay. Nothing is delivered twice.
        self.start_cmc_ca()
        self.csr_with_own_key("alice")
        self.agent(self.online, expect=0)
        saved = os.path.join(self.tmp, "trip1")
        shutil.copytree(self.requests, saved)
        self.agent(self.offline, expect=0)
        self.agent(self.online, expect=0)
        self.assertIn("alice.p7c", os.listdir(self.inbox))
        for name in os.listdir(self.responses):
            os.unlink(os.path.join(self.responses, name))
        self.csr_with_own_key("bob")
        self.agent(self.online, expect=0)
        for name in os.listdir(saved):
            shutil.copy(os.path.join(saved, name), self.requests)
        os.unlink(os.path.join(self.tmp, "offline", "store.db"))
        self.agent(self.offline, expect=0)
        proc = self.agent(self.online, expect=65)
        self.assertIn("not waiting for an answer", proc.stderr)
        self.assertEqual(sorted(n for n in os.listdir(self.inbox) if n.endswith(".p7c")),
                         ["alice.p7c", "bob.p7c"])

    def test_signature_that_is_a_fifo_or_a_symlink_is_refused_without_hanging(self):
        # With verify_cert, NAME.manifest.p7s is read: a FIFO there must not block the agent
        # (no writer ever comes), a symlink must not be followed to a good signature elsewhere.
        self.start_cmc_ca()
        on_cert, on_key = self.make_signer("online")
        self.write_online(endpoint_extra=f'sign_cert = "{on_cert}"\nsign_key = "{on_key}"')
        self.set_offline('type = "media"\n', f'type = "media"\nverify_cert = "{on_cert}"\n')
        self.csr_with_own_key("alice")
        self.agent(self.online, expect=0)
        sig = os.path.join(self.requests, "b000001.manifest.p7s")
        saved = os.path.join(self.tmp, "good.p7s")
        os.rename(sig, saved)
        for make in (lambda: os.mkfifo(sig), lambda: os.symlink(saved, sig)):
            make()
            proc = self.agent(self.offline, expect=75)
            self.assertIn("refused", proc.stderr)
            self.assertEqual(read_responder_log(self.log), [])
            os.unlink(sig)
        os.rename(saved, sig)
        self.agent(self.offline, expect=0)
        self.assertEqual(len(read_responder_log(self.log)), 1)

    # --- answers that lie ---------------------------------------------------------------------

    def swap_answers_and_manifest(self):
        """Swaps the contents of the two answers and rewrites the return manifest to match
        (an unsigned manifest is only a check against accidents)."""
        a, b = self.data_files(self.responses)
        pa, pb = (os.path.join(self.responses, n) for n in (a, b))
        with open(pa, "rb") as f:
            da = f.read()
        with open(pb, "rb") as f:
            db = f.read()
        for path, data in ((pa, db), (pb, da)):
            with open(path, "wb") as f:
                f.write(data)
        manifest = os.path.join(self.responses, "r000001.manifest")
        lines = self.manifest_lines(manifest)
        sizes = {a: len(db), b: len(da)}
        hashes = {a: hashlib.sha256(db).hexdigest(), b: hashlib.sha256(da).hexdigest()}
        out = []
        for ln in lines:
            if ln.startswith("file "):
                _, name, _, _ = ln.split()
                ln = f"file {name} {sizes[name]} {hashes[name]}"
            out.append(ln)
        self.write_manifest(manifest, out)

    def test_certs_only_answers_swapped_between_two_requests(self):
        # WHAT GOES WRONG: a Simple PKI Response (certs-only) carries no transactionId and no
        # nonce, so matchReturn accepts it on its name and kind alone. With the two answers'
        # contents swapped (and the unsigned return manifest rewritten to fit), alice gets
        # bob's certificate and bob alice's. A certs-only answer to a PKCS#10 could be bound to
        # the request by the public key: one of its certificates must carry the request's
        # subjectPublicKeyInfo.
        self.start_cmc_ca()
        self.csr_with_own_key("alice")
        self.csr_with_own_key("bob")
        self.agent(self.online, expect=0)
        self.agent(self.offline, expect=0)
        self.swap_answers_and_manifest()
        self.agent(self.online)
        for name in ("alice", "bob"):
            p7c = os.path.join(self.inbox, name + ".p7c")
            if os.path.exists(p7c):
                self.assertIn(name, self.subject_of(p7c), f"{name} got another's answer")

    def test_cmp_answers_swapped_between_two_requests_are_refused(self):
        self.start_cmp_ca("-grant_implicitconf")
        for name in ("one", "two"):
            self.offline_client("-cmd", "ir", "-subject", f"/CN={name}", "-implicit_confirm",
                                "-reqout", os.path.join(self.inbox, f"{name}.der"))
        self.agent(self.online, expect=0)
        self.agent(self.offline, expect=0)
        self.swap_answers_and_manifest()
        proc = self.agent(self.online, expect=65)
        self.assertIn("transactionID is not item", proc.stderr)
        self.assertEqual(sorted(os.listdir(self.inbox)), ["one.der", "two.der"])
        self.assertEqual([i["state"] for i in self.items() if i["state"] != "quarantined"],
                         ["awaiting", "awaiting"])

    def test_truncated_answer_then_the_intact_one(self):
        self.start_cmc_ca()
        self.csr_with_own_key("alice")
        self.agent(self.online, expect=0)
        self.agent(self.offline, expect=0)
        [name] = self.data_files(self.responses)
        path = os.path.join(self.responses, name)
        with open(path, "rb") as f:
            intact = f.read()
        with open(path, "r+b") as f:
            f.truncate(len(intact) // 2)
        proc = self.agent(self.online, expect=65)
        self.assertIn("truncated", proc.stderr)
        self.assertEqual(self.item_state(1), "awaiting")
        # The next trip brings the whole answer: it is still taken.
        with open(path, "wb") as f:
            f.write(intact)
        self.agent(self.online, expect=0)
        self.assertIn("alice.p7c", os.listdir(self.inbox))
        self.assertEqual(self.item_state(1), "answered")

    def test_answer_for_an_answered_item_on_a_second_trip(self):
        # A second copy of an answer (another name, the ".response" form) for an item already
        # answered: refused, nothing delivered twice.
        self.start_cmc_ca()
        self.csr_with_own_key("alice")
        self.agent(self.online, expect=0)
        self.agent(self.offline, expect=0)
        [name] = self.data_files(self.responses)
        with open(os.path.join(self.responses, name), "rb") as f:
            answer = f.read()
        self.agent(self.online, expect=0)
        other = name.replace(".p7c", ".response.p7c")
        with open(os.path.join(self.responses, other), "wb") as f:
            f.write(answer)
        self.write_online(return_extra="require_manifest = false")
        proc = self.agent(self.online, expect=65)
        self.assertIn("a replay", proc.stderr)
        self.assertEqual(sorted(os.listdir(self.inbox)), ["alice.p10", "alice.p7c"])

    def test_answer_replaced_by_a_symlink_fifo_or_folder_is_recorded(self):
        # A file the return manifest lists that is a symlink, a FIFO or a folder is (rightly)
        # not read. It was not recorded either: findMissing() skipped any name that exists,
        # whatever its type, so the store held nothing about the answer, the item stayed
        # awaiting with no word of why, and `run --once` exited 0 ("everything done"). Such an
        # entry is now recorded as quarantined, as a missing one is, and counted by `media
        # status` with the other refused returns (a missing answer was not counted either: its
        # reason lacked the "return leg:" mark).
        self.start_cmc_ca()
        self.csr_with_own_key("alice")
        self.csr_with_own_key("bob")
        self.csr_with_own_key("carol")
        self.agent(self.online, expect=0)
        self.agent(self.offline, expect=0)
        files = self.data_files(self.responses)
        elsewhere = os.path.join(self.tmp, "elsewhere")
        os.mkdir(elsewhere)
        for i, name in enumerate(files):
            path = os.path.join(self.responses, name)
            os.rename(path, os.path.join(elsewhere, name))
            [lambda: os.symlink(os.path.join(elsewhere, name), path),
             lambda: os.mkfifo(path),
             lambda: os.mkdir(path)][i]()
        proc = self.agent(self.online)
        self.assertEqual(sorted(os.listdir(self.inbox)),
                         ["alice.p10", "bob.p10", "carol.p10"])
        self.assertEqual(proc.returncode, 65, "three answers unread")
        self.assertEqual(len(self.quarantined()), 3, proc.stderr)
        for what in ("a symlink", "a FIFO", "a folder"):
            self.assertIn(f"{what}", proc.stderr)
        self.assertEqual(self.media_status()["quarantined_returns"], 3)
        self.assertEqual(self.media_status()["awaiting"], 3)
        # Put right (the files back), the answers are taken.
        for name in files:
            path = os.path.join(self.responses, name)
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)
            os.rename(os.path.join(elsewhere, name), path)
        self.agent(self.online, expect=0)
        self.assertEqual(len([n for n in os.listdir(self.inbox) if n.endswith(".p7c")]), 3)

    def test_return_manifest_lists_only_answers(self):
        # WHAT GOES WRONG: at start the media responder covers every regular file of the return
        # folder that no manifest lists (MediaResponder::recover: "they are ours (nothing else
        # writes into the return folder)"). A file a person left there (notes.txt) is listed in
        # a return manifest as if it were an answer; online it is then taken and quarantined as
        # not a PKI message (exit 65). recover() should cover only response files the store
        # says it delivered there (Ledger::isOurResponse), as the sources already ask.
        self.start_cmc_ca()
        self.csr_with_own_key("alice")
        self.agent(self.online, expect=0)
        with open(os.path.join(self.responses, "notes.txt"), "w") as f:
            f.write("stick 3, carried by B.\n")
        self.agent(self.offline, expect=0)
        listed = [ln.split()[1] for name in self.on_stick(self.responses)
                  if name.endswith(".manifest")
                  for ln in self.manifest_lines(os.path.join(self.responses, name))
                  if ln.startswith("file ")]
        self.assertNotIn("notes.txt", listed)

    # --- two sticks' worth of files, and two agents on one stick ------------------------------

    def test_two_online_agents_share_a_stick(self):
        # Two online agents (two stores) write onto one stick for one CA. Their batches do not
        # collide (each takes the stick's highest batch number as a floor). WHAT GOES WRONG on
        # the way back: agent A's media-return source takes agent B's answers too; their names
        # claim items A does not have ("no request of this agent"), so A quarantines them and,
        # with after = "move" (or "delete"), takes them off the stick: B never sees them, and
        # its requests wait until await_max_age fails them. An answer whose name claims no
        # request of this agent should be left on the media for the agent it belongs to.
        self.start_cmc_ca()
        other = os.path.join(self.tmp, "other")
        other_inbox = os.path.join(other, "inbox")
        os.makedirs(other_inbox)
        other_cfg = os.path.join(other, "pkirelay.toml")
        with open(other_cfg, "w") as f:
            f.write(f'[store]\npath = "{other}/store.db"\n'
                    f'[source.inbox]\npath = "{other_inbox}"\nendpoint = "stick"\n'
                    f'[source.return]\ntype = "media-return"\npath = "{self.responses}"\n'
                    f'endpoint = "stick"\nafter = "move"\nmove_to = "{other}/returned"\n'
                    f'[endpoint.stick]\ntype = "directory"\npath = "{self.requests}"\n')
        self.write_online(return_extra=f'after = "move"\nmove_to = "{self.tmp}/returned"')
        self.csr_with_own_key("alice")
        self.csr_with_own_key("bob", folder=other_inbox)
        self.agent(self.online, expect=0)
        self.agent(other_cfg, expect=0)
        self.assertIn("b000002.manifest", self.on_stick(self.requests))
        self.agent(self.offline, expect=0)
        self.agent(self.online)
        self.agent(other_cfg)
        self.assertIn("alice.p7c", os.listdir(self.inbox))
        self.assertIn("bob.p7c", os.listdir(other_inbox), "agent A took B's answer")

    # --- operator mistakes --------------------------------------------------------------------

    def test_one_folder_for_both_legs(self):
        # One folder on the stick for everything: the online endpoint writes into the folder
        # its media-return source reads, and the offline answers go beside the requests (the
        # default responses). The return source took the requests just written as answers ("a
        # request, not an answer, on the return leg"), quarantined them and, with after =
        # "delete", removed them from the stick before it left: the CA never saw them. With
        # each source counting only the manifests of its own leg, the requests are not taken
        # on the return leg, and the chain completes.
        self.start_cmc_ca()
        with open(self.online, "w") as f:
            f.write(f'[store]\npath = "{self.tmp}/online/store.db"\n'
                    f'[source.inbox]\npath = "{self.inbox}"\nendpoint = "stick"\n'
                    f'[source.return]\ntype = "media-return"\npath = "{self.requests}"\n'
                    f'endpoint = "stick"\nafter = "delete"\n'
                    f'[endpoint.stick]\ntype = "directory"\npath = "{self.requests}"\n')
        self.set_offline(f'responses = "{self.responses}"\n', "")
        self.csr_with_own_key("alice")
        first = self.agent(self.online)
        second = self.agent(self.online)
        self.assertEqual(len(self.data_files(self.requests)), 1,
                         "the request was taken off the stick before it left")
        self.assertEqual(self.quarantined(), [], first.stderr + second.stderr)
        self.agent(self.offline, expect=0)
        self.agent(self.online)
        self.assertIn("alice.p7c", os.listdir(self.inbox))
        self.assertEqual(len(read_responder_log(self.log)), 1)
        self.assertEqual(self.quarantined(), [])

    def test_one_folder_for_both_legs_is_not_a_deferral(self):
        # WHAT GOES WRONG: in that one folder the return source waits on the request files
        # the endpoint wrote ("in no manifest yet; it waits for one": their manifest is of the
        # other leg), so every online run exits 75 (deferred) and counts them as still
        # arriving, for as long as they are on the stick. Files a request manifest lists should
        # be skipped on the return leg like the manifests themselves (DirectorySource applies
        # its ignore hook on rescans only, not to names from inotify events, so the media
        # source cannot do it alone) - or check-config should refuse the one folder.
        self.start_cmc_ca()
        with open(self.online, "w") as f:
            f.write(f'[store]\npath = "{self.tmp}/online/store.db"\n'
                    f'[source.inbox]\npath = "{self.inbox}"\nendpoint = "stick"\n'
                    f'[source.return]\ntype = "media-return"\npath = "{self.requests}"\n'
                    f'endpoint = "stick"\n'
                    f'[endpoint.stick]\ntype = "directory"\npath = "{self.requests}"\n')
        self.csr_with_own_key("alice")
        self.agent(self.online)
        self.agent(self.online, expect=0)

    def test_offline_responses_beside_the_requests_do_not_cover_a_cut_batch(self):
        # The offline source's responses default to its own folder. At start the media
        # responder covers every file of that folder that no manifest lists with a return
        # manifest (MediaResponder::recover: "they are ours") - including the request files of
        # a batch whose own manifest was never written (the online agent killed, the stick
        # pulled mid-write). The media source found those files in that return manifest
        # (FolderManifests::find looks at manifests of either direction) and relayed them,
        # past require_manifest (so would a file cut short or planted be). A source now counts
        # only the manifests of its own leg. (recover() itself still lists files that are not
        # its own answers.)
        self.start_cmc_ca()
        self.set_offline(f'responses = "{self.responses}"\n', "")
        self.csr_with_own_key("alice")
        self.crash(self.online, "media-files")
        self.assertNotIn("b000001.manifest", self.on_stick(self.requests))
        proc = self.agent(self.offline)
        self.assertEqual(read_responder_log(self.log), [], proc.stderr)
        self.assertEqual(proc.returncode, 75)

    def test_planted_file_without_a_manifest_waits(self):
        # A file in no manifest, offline, with responses in their own folder: it waits; one
        # that claims a batch whose manifest does not list it is quarantined as extra.
        self.start_cmc_ca()
        self.csr_with_own_key("alice")
        self.agent(self.online, expect=0)
        planted = self.csr_with_own_key("mallory", folder=self.tmp)
        shutil.copy(planted, os.path.join(self.requests, "mallory.p10"))
        shutil.copy(planted, os.path.join(self.requests, "b000001-9-0badc0de.p10"))
        proc = self.agent(self.offline, expect=65)
        self.assertIn("extra: not listed in manifest b000001.manifest", proc.stderr)
        self.assertIn("mallory.p10 is in no manifest yet", proc.stderr)
        self.assertEqual(len(read_responder_log(self.log)), 1)

    def test_media_status_and_report_while_the_daemon_runs(self):
        self.start_cmc_ca()
        with open(self.online, "a") as f:
            f.write("[run]\npoll_seconds = 1\n")
        daemon = Daemon(self.online)
        try:
            self.csr_with_own_key("alice")
            wait_until(lambda: self.media_status()["awaiting"] == 1, "the request to go out")
            report = run([PKIRELAY, "media", "report", "-c", self.online]).stdout
            self.assertIn("b000001-1-", report)
            # The stick goes away and comes back answered while the daemon runs.
            self.agent(self.offline, expect=0)
            wait_until(lambda: "alice.p7c" in os.listdir(self.inbox), "the answer delivered")
            status = self.media_status()
            self.assertEqual((status["awaiting"], status["returned"]), (0, 1))
            self.assertIsNone(status["oldest"])
        finally:
            daemon.stop()

    def test_retry_of_an_awaiting_item_answers_once(self):
        # The operator writes a request out again while the first copy is still out: both
        # copies come back answered; one answer is delivered.
        self.start_cmc_ca()
        self.csr_with_own_key("alice")
        self.agent(self.online, expect=0)
        proc = run([PKIRELAY, "retry", "1", "-c", self.online], check=False)
        if proc.returncode != 0:
            self.assertEqual(self.item_state(1), "awaiting", proc.stderr)
            return  # refused: nothing can be answered twice
        self.agent(self.online)
        self.agent(self.offline, expect=0)
        self.agent(self.online)
        self.assertEqual(sorted(os.listdir(self.inbox)), ["alice.p10", "alice.p7c"])
        self.assertEqual(self.item_state(1), "answered")


for _point in ONLINE_POINTS:
    setattr(AttackGap, f"test_online_killed_at_{_point.replace('-', '_')}",
            lambda self, p=_point: self.online_crash_case(p))
for _point in OFFLINE_POINTS:
    setattr(AttackGap, f"test_offline_killed_at_{_point.replace('-', '_')}",
            lambda self, p=_point: self.offline_crash_case(p))


def load_tests(loader, tests, pattern):
    """Only this file's tests: AttackGap inherits test_airgap's, which run there."""
    suite = unittest.TestSuite()
    for name in sorted(vars(AttackGap)):
        if name.startswith("test"):
            suite.addTest(AttackGap(name))
    return suite


if __name__ == "__main__":
    unittest.main(verbosity=2)
