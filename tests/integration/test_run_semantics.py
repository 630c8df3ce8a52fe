"""What `pkirelay run --once` promises about the requests it is given (DESIGN.md, "The store").

Against tests/cmc_responder.py on loopback, with PKCS#10 requests made by `openssl req`:
- bad input is quarantined with its reason, never sent, and the pass exits 65;
- a truncated file that is still young is left for the next pass (exit 75), not quarantined;
- the same bytes arriving twice are relayed once, and each arrival gets the answer;
- after = "delete" / "move" acknowledge only stored files, and a file seen again after a crash
  between commit and acknowledgement is acknowledged without being relayed again;
- a second pass sends nothing; a second concurrent run refuses (lock, exit 75);
- a transient failure defers (exit 75) with its reason recorded;
- a pass killed while a request is in flight leaves it to be sent again by the next pass, and
  that resend is visible in the item's history;
- symlinks in the watched folder are not followed; a response found in the folder is kept as
  unmatched, not relayed;
- a file over limits.max_message_size is quarantined unread and left where it is;
- `pkirelay run` (the polling loop) relays what appears, keeps its configuration when a reload
  (SIGHUP) finds the file broken, and stops cleanly on SIGTERM;
- and the regressions a review found: a new request that reuses the name of an earlier answer
  is relayed, a symlinked processed/ folder is refused, one unwritable response does not block
  the others, a slowly copied base64 file is not quarantined, and HTTP 201 is no answer.
"""
import base64
import sqlite3

import fcntl
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import unittest

from harness import PKIRELAY, TESTS_DIR, Peer, PkirelayTestCase, openssl, run, wait_until


class RunSemantics(PkirelayTestCase):

    def setUp(self):
        super().setUp()
        self.log = os.path.join(self.tmp, "responder.log")
        self.responder = None

    def start_responder(self, *extra):
        peer = Peer([sys.executable, os.path.join(TESTS_DIR, "cmc_responder.py"),
                     "--log", self.log, *extra], "LISTENING")
        self.peers.append(peer)
        self.responder = peer
        return int(peer.ready_line.split()[1])

    def configure(self, *extra, port=None, **kw):
        port = port or self.start_responder(*extra)
        self.write_config(f"http://127.0.0.1:{port}/cmc", **kw)


    def test_bad_input_is_quarantined_and_never_sent(self):
        self.configure()
        self.csr("good.p10")
        with open(os.path.join(self.inbox, "garbage.der"), "wb") as f:
            f.write(b"\x30\x03\x02\x01\x00trailing")
        truncated = os.path.join(self.inbox, "old-truncated.p10")
        with open(self.csr("whole.p10", folder=self.tmp), "rb") as f:
            data = f.read()
        with open(truncated, "wb") as f:
            f.write(data[:len(data) // 2])
        os.utime(truncated, (time.time() - 3600, time.time() - 3600))  # not still arriving

        proc = self.run_once(expect=65)
        self.assertEqual(self.requests_seen(), 1, "only the good request may reach the CA")
        self.assertTrue(os.path.exists(os.path.join(self.inbox, "good.p7c")))
        quarantined = {i["origin"]: i for i in self.items("quarantined")}
        self.assertEqual(set(quarantined), {"garbage.der", "old-truncated.p10"})
        self.assertIn("trailing", quarantined["garbage.der"]["reason"])
        self.assertIn("truncated", quarantined["old-truncated.p10"]["reason"])
        self.assertIn("quarantined", proc.stderr)
        # Kept files are not recorded again by the next pass.
        self.run_once(expect=0)
        self.assertEqual(len(self.items("quarantined")), 2)

    def test_young_truncated_file_is_left_for_the_next_pass(self):
        self.configure()
        with open(self.csr("slow.p10", folder=self.tmp), "rb") as f:
            data = f.read()
        path = os.path.join(self.inbox, "slow.p10")
        with open(path, "wb") as f:
            f.write(data[:20])
        proc = self.run_once(expect=75)
        self.assertIn("still arriving", proc.stderr)
        self.assertEqual(self.items(), [])
        with open(path, "ab") as f:
            f.write(data[20:])
        self.run_once(expect=0)
        self.assertTrue(os.path.exists(os.path.join(self.inbox, "slow.p7c")))

    def test_duplicate_is_relayed_once_and_answered_for_each_arrival(self):
        self.configure()
        first = self.csr("first.p10")
        with open(first, "rb") as src, open(os.path.join(self.inbox, "again.p10"), "wb") as dst:
            dst.write(src.read())
        self.run_once(expect=0)
        self.assertEqual(self.requests_seen(), 1)
        with open(os.path.join(self.inbox, "first.p7c"), "rb") as a, \
                open(os.path.join(self.inbox, "again.p7c"), "rb") as b:
            self.assertEqual(a.read(), b.read())
        (item,) = self.items()
        self.assertEqual(len(self.show(item["id"])["arrivals"]), 2)

        # The same bytes arriving in a later pass get the recorded answer, without the CA.
        with open(first, "rb") as src, open(os.path.join(self.inbox, "later.p10"), "wb") as dst:
            dst.write(src.read())
        self.run_once(expect=0)
        self.assertEqual(self.requests_seen(), 1)
        self.assertTrue(os.path.exists(os.path.join(self.inbox, "later.p7c")))

    def test_recorded_hash_is_the_message_der_bare_or_armoured(self):
        # A bare DER file's hash serves as its message's (one SHA-256 instead of two); a PEM
        # file's message is the DER inside it, hashed on its own. Either way the item's sha256
        # is the DER's, or the claim would take the item for damaged.
        import hashlib
        self.configure()
        bare = self.csr("bare.p10")
        armoured = self.csr("armoured.der", folder=self.tmp)
        with open(armoured, "rb") as f:
            der = f.read()
        with open(os.path.join(self.inbox, "armoured.p10"), "w") as f:
            f.write("-----BEGIN CERTIFICATE REQUEST-----\n")
            f.write(base64.encodebytes(der).decode())
            f.write("-----END CERTIFICATE REQUEST-----\n")
        with open(bare, "rb") as f:
            bare_der = f.read()
        self.run_once(expect=0)
        self.assertEqual(self.requests_seen(), 2)
        got = {i["origin"]: self.show(i["id"])["sha256"] for i in self.items("answered")}
        self.assertEqual(got, {"bare.p10": hashlib.sha256(bare_der).hexdigest(),
                               "armoured.p10": hashlib.sha256(der).hexdigest()})

    def test_second_pass_sends_nothing(self):
        self.configure()
        for n in range(5):
            self.csr(f"r{n}.p10")
        self.run_once(expect=0)
        self.assertEqual(self.requests_seen(), 5)
        listing = sorted(os.listdir(self.inbox))
        self.run_once(expect=0)
        self.assertEqual(self.requests_seen(), 5)
        self.assertEqual(sorted(os.listdir(self.inbox)), listing)

    def test_delete_and_move_acknowledge_after_storing(self):
        responses = os.path.join(self.tmp, "out")
        self.configure(extra_source=f'after = "delete"\nresponses = "{responses}"')
        with open(self.csr("gone.p10"), "rb") as f:
            data = f.read()
        self.run_once(expect=0)
        self.assertEqual(self.inbox_files(), [])
        self.assertEqual(os.listdir(responses), ["gone.p7c"])

        # A file seen again with the same name and bytes is what a crash between commit and
        # acknowledgement leaves: it is acknowledged, not relayed again.
        with open(os.path.join(self.inbox, "gone.p10"), "wb") as f:
            f.write(data)
        os.remove(os.path.join(responses, "gone.p7c"))
        self.run_once(expect=0)
        self.assertEqual(self.inbox_files(), [])
        self.assertEqual(self.requests_seen(), 1)

    def test_move(self):
        self.configure(extra_source='after = "move"')
        self.csr("moved.p10")
        self.run_once(expect=0)
        self.assertEqual(self.inbox_files(), ["moved.p7c", "processed"])
        self.assertEqual(os.listdir(os.path.join(self.inbox, "processed")), ["moved.p10"])

    def test_second_run_refuses_while_one_holds_the_lock(self):
        self.configure()
        self.run_once(expect=0)  # creates the store
        self.csr("locked.p10")
        # The lock is on the database file itself, so naming the store through a symlink (or
        # any other path) does not get around it.
        link = os.path.join(self.tmp, "alias.db")
        os.symlink(os.path.join(self.tmp, "store.db"), link)
        with open(os.path.join(self.tmp, "store.db"), "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            proc = self.run_once(expect=75)
            self.assertIn("another pkirelay run", proc.stderr)
            with open(self.config) as f:
                text = f.read()
            alias = os.path.join(self.tmp, "alias.toml")
            with open(alias, "w") as f:
                f.write(text.replace(os.path.join(self.tmp, "store.db"), link))
            proc = self.pkirelay("run", "--once", "-c", alias, check=False)
            self.assertEqual(proc.returncode, 75, proc.stderr)
            self.assertIn("another pkirelay run", proc.stderr)
        self.assertEqual(self.requests_seen(), 0)
        self.run_once(expect=0)

    def test_transient_failure_defers_with_reason(self):
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.write_config(f"http://127.0.0.1:{port}/cmc")
        self.csr("later.p10")
        self.run_once(expect=75)
        (item,) = self.items()
        self.assertEqual(item["state"], "deferred")
        self.assertTrue(item["reason"], "the reason must be recorded")

    def test_killed_pass_resends_and_records_it(self):
        # A listener that accepts and never answers: the request is in flight when we kill.
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        self.addCleanup(silent.close)
        self.write_config(f"http://127.0.0.1:{silent.getsockname()[1]}/cmc")
        self.csr("inflight.p10")
        proc = subprocess.Popen([PKIRELAY, "run", "--once", "-c", self.config],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        silent.settimeout(30)
        conn, _ = silent.accept()  # the request is being sent: the item is relaying
        self.addCleanup(conn.close)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if [i for i in self.items() if i["state"] == "relaying"]:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.assertEqual(self.items()[0]["state"], "relaying")

        port = self.start_responder()
        self.write_config(f"http://127.0.0.1:{port}/cmc")
        proc = self.run_once(expect=0)
        self.assertIn("queued again", proc.stderr)
        (item,) = self.items()
        self.assertEqual(item["state"], "answered")
        self.assertEqual(item["attempts"], 2)
        events = self.show(item["id"])["events"]
        history = " ".join(e["detail"] for e in events)
        self.assertIn("again", history)
        # Every event is stamped with the time it happened (not a sentinel far in the future).
        self.assertLess(max(e["at_ms"] for e in events), (time.time() + 3600) * 1000)
        self.assertLess(item["updated_at_ms"], (time.time() + 3600) * 1000)
        self.pkirelay("show", str(item["id"]), "-c", self.config, check=True)
        self.assertTrue(os.path.exists(os.path.join(self.inbox, "inflight.p7c")))

    def test_a_file_is_acknowledged_while_its_request_is_out(self):
        # Pipeline::intake leaves the acknowledgement of a batch whose requests are in flight
        # until their answers are written, but bounded: a CA that does not answer does not keep
        # the committed file in the folder.
        silent = socket.socket()  # accepts and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        self.addCleanup(silent.close)
        self.write_config(f"http://127.0.0.1:{silent.getsockname()[1]}/cmc",
                          extra_source='after = "delete"')
        self.csr("slow.p10")
        proc = subprocess.Popen([PKIRELAY, "run", "--once", "-c", self.config],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        silent.settimeout(30)
        conn, _ = silent.accept()  # the request is out
        self.addCleanup(conn.close)
        wait_until(lambda: not os.path.exists(os.path.join(self.inbox, "slow.p10")),
                   "the stored file acknowledged while its request is unanswered")
        self.assertEqual([i["state"] for i in self.items()], ["relaying"])
        self.assertIsNone(proc.poll(), "the run waits for the answer")

    def test_claims_waiting_for_a_place_are_given_back_unsent_at_a_stop(self):
        # Pipeline::claimReady claims up to limits.batch_size, more than the endpoint's places:
        # at SIGTERM the one in flight is abandoned (a possible resend, recorded), the ones that
        # waited for a place are given back unsent, and the next run sends each once more only
        # where the CA may have seen it.
        silent = socket.socket()  # accepts and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        self.addCleanup(silent.close)
        self.write_config(f"http://127.0.0.1:{silent.getsockname()[1]}/cmc",
                          extra_endpoint="max_connections = 1")
        for name in ("w1.p10", "w2.p10", "w3.p10"):
            self.csr(name)
        proc = subprocess.Popen([PKIRELAY, "run", "-c", self.config],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        silent.settimeout(30)
        conn, _ = silent.accept()  # one request out, two claims waiting for its place
        self.addCleanup(conn.close)
        wait_until(lambda: [i["state"] for i in self.items()] == ["relaying"] * 3,
                   "three items claimed")
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=30), 0)
        whats = {i["origin"]: [e["what"] for e in self.show(i["id"])["events"]]
                 for i in self.items()}
        self.assertEqual(sorted(w[-1] for w in whats.values()),
                         ["abandoned", "unclaimed", "unclaimed"], whats)
        self.assertTrue(all(i["state"] == "queued" for i in self.items()))

        self.configure()
        self.run_once(expect=0)
        self.assertEqual(self.requests_seen(), 3)
        self.assertTrue(all(i["state"] == "answered" for i in self.items()))
        resends = [e["detail"] for i in self.items() for e in self.show(i["id"])["events"]
                   if "resend" in e["detail"]]
        self.assertEqual(len(resends), 1, resends)  # only the abandoned one

    def test_a_lost_store_is_refused_when_an_answer_lies_beside_its_request(self):
        # run.cc's answerInFolders: requests (kept in place) with pkirelay's answers beside them
        # say an earlier store relayed them; a run without that store must not relay them again.
        self.configure()
        self.csr("lost.p10")
        self.csr("other.p10")
        self.run_once(expect=0)
        self.assertTrue(os.path.exists(os.path.join(self.inbox, "lost.p7c")))
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(os.path.join(self.tmp, "store.db" + suffix)):
                os.unlink(os.path.join(self.tmp, "store.db" + suffix))
        proc = self.run_once(expect=66)
        self.assertIn("is an answer beside its request", proc.stderr)
        self.assertEqual(self.requests_seen(), 2, "nothing may be relayed again")
        # Only the answers gone: requests alone are a first start.
        for name in ("lost.p7c", "other.p7c"):
            os.unlink(os.path.join(self.inbox, name))
        self.run_once(expect=0)

    def test_symlink_not_followed_and_response_kept_unmatched(self):
        self.configure()
        outside = self.csr("outside.p10", folder=self.tmp)
        os.symlink(outside, os.path.join(self.inbox, "link.p10"))
        # A certs-only response found in the request folder is not a request.
        certs = os.path.join(self.tmp, "cert.pem")
        key = os.path.join(self.tmp, "k.pem")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", key, "-out", certs, "-subj", "/CN=x", "-days", "1")
        openssl("crl2pkcs7", "-nocrl", "-certfile", certs, "-outform", "DER",
                "-out", os.path.join(self.inbox, "stray.p7c"))
        proc = self.run_once(expect=0)
        self.assertIn("symlink", proc.stderr)
        self.assertEqual(self.requests_seen(), 0)
        (item,) = self.items()
        self.assertEqual((item["state"], item["origin"]), ("unmatched", "stray.p7c"))

    def test_too_large_is_quarantined_unread_and_left_in_place(self):
        self.configure(extra="[limits]\nmax_message_size = 1024")
        big = os.path.join(self.inbox, "big.der")
        with open(big, "wb") as f:
            f.write(b"\x30\x82\x07\xd0" + bytes(2000))
        proc = self.run_once(expect=65)
        self.assertIn("too large", proc.stderr)
        self.assertTrue(os.path.exists(big), "a file that was not stored whole must stay")
        (item,) = self.items("quarantined")
        self.assertIn("2004 bytes", item["reason"])
        self.run_once(expect=0)  # seen again, not recorded again
        self.assertEqual(len(self.items()), 1)
        self.assertEqual(self.requests_seen(), 0)

    def test_polling_loop_reload_and_stop(self):
        port = self.start_responder()
        self.write_config(f"http://127.0.0.1:{port}/cmc", extra="[run]\npoll_seconds = 1")
        daemon = subprocess.Popen([PKIRELAY, "run", "-c", self.config],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            self.csr("polled.p10")
            response = os.path.join(self.inbox, "polled.p7c")
            deadline = time.monotonic() + 30
            while not os.path.exists(response) and time.monotonic() < deadline:
                time.sleep(0.05)  # polling the condition, bounded by the deadline
            self.assertTrue(os.path.exists(response), "the loop did not relay the request")

            with open(self.config, "a") as f:
                f.write("[nonsense]\n")
            daemon.send_signal(signal.SIGHUP)
            self.csr("after-reload.p10")
            response = os.path.join(self.inbox, "after-reload.p7c")
            deadline = time.monotonic() + 30
            while not os.path.exists(response) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertTrue(os.path.exists(response), "a broken reload must keep the old config")
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=60)
        self.assertEqual(daemon.returncode, 0, err)
        self.assertIn("keeping the running configuration", err)
        self.assertIn("stopping on signal", err)

    def test_new_request_reusing_an_answer_name_is_relayed(self):
        # The openssl cmp client writes fixed names: the next request may carry the name of
        # an earlier answer (here the response folder is the watched one, after = "delete").
        self.configure(extra_source='after = "delete"')
        self.csr("req.p10")
        self.run_once(expect=0)
        self.assertEqual(self.inbox_files(), ["req.p7c"])
        os.replace(self.csr("next.p10", cn="second", folder=self.tmp),
                   os.path.join(self.inbox, "req.p7c"))  # a request named like our answer
        self.run_once(expect=0)
        self.assertEqual(self.requests_seen(), 2)
        self.assertEqual(len(self.items()), 2)

    def test_symlinked_processed_folder_is_refused(self):
        elsewhere = os.path.join(self.tmp, "elsewhere")
        os.mkdir(elsewhere)
        os.symlink(elsewhere, os.path.join(self.inbox, "processed"))
        self.configure(extra_source='after = "move"')
        self.csr("req.p10")
        # A configuration error (78), found by check-config and at start alike.
        proc = self.pkirelay("check-config", "-c", self.config)
        self.assertEqual(proc.returncode, 78, proc.stdout + proc.stderr)
        self.assertIn("symlink", proc.stderr)
        proc = self.run_once(expect=78)
        self.assertIn("symlink", proc.stderr)
        self.assertEqual(os.listdir(elsewhere), [])
        self.assertIn("req.p10", self.inbox_files())
        self.assertEqual(self.requests_seen(), 0)

    def test_symlinked_watched_folder_is_refused(self):
        # Issue 13, defect 7: a watched folder that is a symlink was followed, while a
        # symlinked responses folder was refused. Both are refused the same way now.
        real = os.path.join(self.tmp, "real-inbox")
        os.rename(self.inbox, real)
        os.symlink(real, self.inbox)
        self.configure()
        self.csr("req.p10", folder=real)
        proc = self.pkirelay("check-config", "-c", self.config)
        self.assertEqual(proc.returncode, 78, proc.stdout + proc.stderr)
        self.assertIn("symlink", proc.stderr)
        self.run_once(expect=78)
        self.assertEqual(os.listdir(real), ["req.p10"])
        self.assertEqual(self.requests_seen(), 0)

    def test_same_bytes_put_back_after_delete_are_a_new_arrival(self):
        # Issue 13, defect 3: a request answered earlier and put back under the same name (a
        # client retrying) was deleted without a trace. Acknowledgement is in the store now, so
        # this is a second arrival: it gets the recorded answer, and the CA is not asked again.
        self.configure(extra_source='after = "delete"')
        path = self.csr("req.p10")
        with open(path, "rb") as f:
            request = f.read()
        self.run_once(expect=0)
        self.assertEqual(self.inbox_files(), ["req.p7c"])
        with open(os.path.join(self.inbox, "req.p7c"), "rb") as f:
            answer = f.read()
        os.unlink(os.path.join(self.inbox, "req.p7c"))  # the client took its answer
        with open(path, "wb") as f:
            f.write(request)
        self.run_once(expect=0)
        self.assertEqual(self.inbox_files(), ["req.p7c"])
        with open(os.path.join(self.inbox, "req.p7c"), "rb") as f:
            self.assertEqual(f.read(), answer)
        self.assertEqual(self.requests_seen(), 1)
        (item,) = self.items()
        detail = json.loads(self.pkirelay("show", str(item["id"]), "--json", "-c",
                                          self.config, check=True).stdout)
        self.assertEqual(len(detail["arrivals"]), 2)
        self.assertEqual([a["delivery"] for a in detail["arrivals"]], ["delivered", "delivered"])

    def test_two_requests_of_one_name_never_share_a_response(self):
        # Issue 13, defect 1: two sources whose responses were ".../out" and ".../out/", each
        # with a request named req.p10, got the same response name (and temporary file): one
        # answer was never written. Folders are canonical now and names are reserved per folder.
        out = os.path.join(self.tmp, "out")
        other = os.path.join(self.tmp, "other")
        os.mkdir(out)
        os.mkdir(other)
        port = self.start_responder()
        with open(self.config, "w") as f:
            f.write(f'[store]\npath = "{self.tmp}/store.db"\n'
                    f'[source.a]\npath = "{self.inbox}"\nresponses = "{out}"\n'
                    f'[source.b]\npath = "{other}"\nresponses = "{out}/"\n'
                    f'[endpoint.ca]\nurl = "http://127.0.0.1:{port}/cmc"\n')
        self.csr("req.p10", cn="first")
        self.csr("req.p10", cn="second", folder=other)
        self.run_once(expect=0)
        names = sorted(os.listdir(out))
        self.assertEqual(names, ["req.p7c", "req.response.p7c"])
        subjects = set()
        for name in names:
            printed = openssl("pkcs7", "-inform", "DER", "-in", os.path.join(out, name),
                              "-print_certs", "-noout").stdout
            subjects.add("first" if "CN = first" in printed else
                         "second" if "CN = second" in printed else printed)
        self.assertEqual(subjects, {"first", "second"})

    def test_a_missing_ca_file_is_a_configuration_error(self):
        # Issue 13, defect 8: a missing or unparsable ca_file passed check-config and then
        # deferred every request; it is a configuration error (78).
        self.configure(extra_endpoint=f'ca_file = "{self.tmp}/no-such-ca.pem"')
        self.csr("req.p10")
        proc = self.pkirelay("check-config", "-c", self.config)
        self.assertEqual(proc.returncode, 78, proc.stderr)
        self.assertIn("no-such-ca.pem", proc.stderr)
        with open(os.path.join(self.tmp, "not-a-ca.pem"), "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        self.configure(extra_endpoint=f'ca_file = "{self.tmp}/not-a-ca.pem"')
        self.run_once(expect=78)
        self.assertEqual(self.requests_seen(), 0)

    def as_nobody(self):
        """setpriv prefix that runs pkirelay as an unprivileged user (root reads anything)."""
        if os.geteuid() != 0:
            return []
        nobody = pwd.getpwnam("nobody")
        for root, dirs, files in os.walk(self.tmp):
            for name in dirs + files:
                os.chown(os.path.join(root, name), nobody.pw_uid, nobody.pw_gid)
        os.chown(self.tmp, nobody.pw_uid, nobody.pw_gid)
        return ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                "--clear-groups"]

    def test_an_unreadable_request_or_a_failed_delete_is_not_done(self):
        # Issue 13, defect 8: an unreadable request file, and a delete that failed, exited 0
        # ("0 folder error(s)"): the run said done when it was not. Both defer now (75).
        self.configure(extra_source='after = "delete"')
        self.csr("fine.p10")
        locked = self.csr("locked.p10")
        prefix = self.as_nobody()
        os.chmod(locked, 0o000)
        proc = run(prefix + [PKIRELAY, "run", "--once", "-c", self.config], check=False)
        self.assertEqual(proc.returncode, 75, proc.stderr)
        self.assertIn("locked.p10", proc.stderr)
        os.unlink(locked)
        # A watched folder the agent may read but not change: stored, relayed, answered; the
        # delete fails, and that is not "done".
        self.csr("stuck.p10")
        if prefix:
            os.chown(os.path.join(self.inbox, "stuck.p10"), 0, 0)
        responses = os.path.join(self.tmp, "responses")
        os.mkdir(responses)
        if prefix:
            os.chown(responses, pwd.getpwnam("nobody").pw_uid, 0)
        with open(self.config) as f:
            text = f.read()
        with open(self.config, "w") as f:
            f.write(text.replace('after = "delete"', f'after = "delete"\nresponses = "{responses}"'))
        os.chmod(self.inbox, 0o555)
        if prefix:
            os.chown(self.inbox, 0, 0)
        try:
            proc = run(prefix + [PKIRELAY, "run", "--once", "-c", self.config], check=False)
        finally:
            os.chmod(self.inbox, 0o755)
        self.assertEqual(proc.returncode, 75, proc.stderr)
        self.assertIn("stuck.p7c", os.listdir(responses))
        self.assertIn("stuck.p10", os.listdir(self.inbox))

    def test_metrics_file_for_the_textfile_collector(self):
        metrics = os.path.join(self.tmp, "pkirelay.prom")
        self.configure(extra=f'[metrics]\nfile = "{metrics}"')
        self.csr("req.p10")
        self.csr("junk.p10")
        with open(os.path.join(self.inbox, "junk.p10"), "wb") as f:
            f.write(b"not a request")
        self.run_once(expect=65)
        with open(metrics) as f:
            text = f.read()
        self.assertIn('pkirelay_items{state="answered"} 1', text)
        self.assertIn('pkirelay_items{state="quarantined"} 1', text)
        self.assertIn('pkirelay_relays_total{endpoint="ca",outcome="answered"} 1', text)
        self.assertIn('pkirelay_relay_seconds_count{endpoint="ca"} 1', text)
        self.assertIn("pkirelay_oldest_waiting_seconds 0", text)
        self.assertEqual([n for n in os.listdir(self.tmp) if n.endswith("-tmp")], [])

    def test_trailing_slash_in_responses_is_the_same_folder(self):
        # Issue 13, defect 2: responses = "<path>/" made the scan take pkirelay's own answer as
        # an unmatched response and, with after = "delete", delete it.
        self.configure(extra_source=f'responses = "{self.inbox}/"\nafter = "delete"')
        self.csr("req.p10")
        self.run_once(expect=0)
        self.assertEqual(self.inbox_files(), ["req.p7c"])
        self.run_once(expect=0)
        self.assertEqual(self.inbox_files(), ["req.p7c"])
        states = sorted(i["state"] for i in self.items())
        self.assertEqual(states, ["answered"])

    def test_long_name_does_not_block_other_responses(self):
        self.configure(extra="[limits]\nbatch_size = 1")
        long_name = "a" * 240 + ".p10"
        self.csr(long_name, cn="long")
        self.csr("b.p10")
        self.run_once(expect=0)
        names = self.inbox_files()
        self.assertIn("b.p7c", names)
        answers = [n for n in names if n.endswith(".p7c") and n != "b.p7c"]
        self.assertEqual(len(answers), 1, names)
        self.assertLessEqual(len(answers[0]), 200)

    def test_base64_file_still_being_copied_is_not_quarantined(self):
        self.configure(extra_source='after = "delete"')
        with open(self.csr("whole.p10", folder=self.tmp), "rb") as f:
            text = base64.b64encode(f.read())
        path = os.path.join(self.inbox, "slow.b64")
        with open(path, "wb") as f:
            f.write(text[:len(text) // 2 + 1])  # not a multiple of 4 characters
        self.run_once(expect=75)
        self.assertTrue(os.path.exists(path))
        self.assertEqual(self.items(), [])
        with open(path, "wb") as f:
            f.write(text)
        self.run_once(expect=0)
        self.assertIn("slow.p7c", self.inbox_files())

    def test_http_201_is_no_answer_for_a_request(self):
        self.configure("--fail-status", "201")
        self.csr("req.p10")
        self.run_once(expect=65)
        (item,) = self.items()
        self.assertEqual(item["state"], "failed")
        self.assertIn("201", item["reason"])
        self.assertEqual(self.inbox_files(), ["req.p10"])

    def test_a_response_never_replaces_a_file_it_did_not_write(self):
        # The window of a crash after the response's name was recorded and before the file was
        # written: simulated by putting the delivery back to 'writing' in the store.
        out = os.path.join(self.tmp, "out")  # apart from the inbox: only the writer is tested
        self.configure(extra_source=f'responses = "{out}"')
        self.csr("req.p10")
        self.run_once(expect=0)
        answer = os.path.join(out, "req.p7c")
        with open(answer, "rb") as f:
            response = f.read()
        db = sqlite3.connect(os.path.join(self.tmp, "store.db"))
        with db:
            db.execute("UPDATE delivery SET state = 'writing'")
        db.close()
        with open(answer, "wb") as f:
            f.write(b"someone else's file")
        proc = self.run_once(expect=75)
        self.assertIn("not replaced", proc.stderr)
        with open(answer, "rb") as f:
            self.assertEqual(f.read(), b"someone else's file")
        # With the response itself there (written, not recorded), it is simply delivered.
        with open(answer, "wb") as f:
            f.write(response)
        self.run_once(expect=0)
        (item,) = self.items()
        self.assertEqual(self.show(item["id"])["arrivals"][0]["delivery"], "delivered")
        self.assertEqual(self.requests_seen(), 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
