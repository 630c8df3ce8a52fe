"""The daemon (`pkirelay run` without --once) against tests/cmc_responder.py on loopback.

What issue 12 asks of the event-driven pipeline, each case checking that every request ends with
exactly one complete response file and that the CA saw no request twice except recorded resends:
- a file written in chunks with pauses (one writer, and a writer that closes between chunks),
  a file moved in, a dotfile renamed into place;
- 1,000 files dropped at once while the daemon runs;
- the watched folder removed and put back (a stick pulled) while items are in flight;
- SIGTERM mid-batch against a CA that hangs: the daemon exits at once, and the next run resends
  only what was unanswered, each resend in the item's history;
- SIGHUP with a broken configuration keeps the running one; a good one is taken.
Nothing sleeps to wait: every wait is for a condition, with a deadline. (The chunked writers
pause on purpose: that is the slow writer being simulated, not a wait.)
"""
import concurrent.futures
import os
import signal
import socket
import sys
import time
import unittest

from harness import (PKIRELAY, Peer, PkirelayTestCase, openssl, read_responder_log,
                     start_cmc_responder, wait_until)


class Daemon:
    """`pkirelay run -c CONFIG`, ready once it has printed its "- running:" line."""

    def __init__(self, config, env=None):
        self.peer = Peer([PKIRELAY, "run", "-c", config], "- running:", env=env)

    def output(self):
        return "\n".join(self.peer.lines)

    def saw(self, text):
        return any(text in line for line in self.peer.lines)

    def signal(self, sig):
        self.peer.proc.send_signal(sig)

    def stop(self):
        self.peer.stop()


class DaemonTest(PkirelayTestCase):

    def setUp(self):
        super().setUp()
        self.log = os.path.join(self.tmp, "ca.log")
        self.staging = os.path.join(self.tmp, "staging")
        os.mkdir(self.staging)
        self.daemon = None

    def tearDown(self):
        if self.daemon:
            self.daemon.stop()
        super().tearDown()

    def start_ca(self, *extra, log=None):
        peer, port = start_cmc_responder("--log", log or self.log, *extra)
        self.peers.append(peer)
        return port

    def fixed_response(self):
        """A certs-only response (DER) made by the openssl command line, for --fixed."""
        key, crt = os.path.join(self.tmp, "ca.key"), os.path.join(self.tmp, "ca.crt")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", key, "-out", crt, "-subj", "/CN=fixed", "-days", "2")
        out = os.path.join(self.tmp, "fixed.p7c")
        openssl("crl2pkcs7", "-nocrl", "-certfile", crt, "-outform", "DER", "-out", out)
        return out

    def configure(self, port, extra="", extra_source="", extra_endpoint=""):
        self.write_config(f"http://127.0.0.1:{port}/cmc", extra_source=extra_source,
                          extra_endpoint=extra_endpoint,
                          extra="[run]\npoll_seconds = 1\n" + extra)

    def start(self):
        self.daemon = Daemon(self.config)
        return self.daemon

    def csrs(self, names, folder=None):
        """Distinct DER PKCS#10 files, made in parallel by the openssl command line."""
        folder = folder or self.staging
        key = os.path.join(self.tmp, "key.pem")
        if not os.path.exists(key):
            openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", key)

        def one(name):
            path = os.path.join(folder, name)
            openssl("req", "-new", "-key", key, "-subj", f"/CN={name}", "-outform", "DER",
                    "-out", path)
            return path

        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(one, names))

    def responses(self, folder=None):
        return sorted(n for n in os.listdir(folder or self.inbox) if n.endswith(".p7c"))

    def check_one_response_each(self, requests, expected_sends=None):
        """Every request file has exactly one complete response and nothing half-written is
        left; the CA saw each request once, plus the resends the store recorded."""
        names = os.listdir(self.inbox)
        self.assertEqual([n for n in names if n.startswith(".")], [], "temporary files left")
        stems = sorted(os.path.splitext(r)[0] for r in requests)
        self.assertEqual([os.path.splitext(n)[0] for n in self.responses()], stems)
        for name in self.responses():
            with open(os.path.join(self.inbox, name), "rb") as f:
                body = f.read()
            self.assertGreater(len(body), 100, name)
        if expected_sends is not None:
            self.assertEqual(self.requests_seen(), expected_sends)

    def resends(self):
        """How many sends the store recorded as resends (an outcome never recorded)."""
        count = 0
        for item in self.items():
            shown = self.show(item["id"])
            count += sum(1 for e in shown["events"] if "resend" in e["detail"])
        return count

    # ---- completion -------------------------------------------------------------------------

    def test_a_file_written_in_chunks_is_read_once_whole(self):
        self.configure(self.start_ca())
        (source,) = self.csrs(["slow.p10"])
        with open(source, "rb") as f:
            body = f.read()
        self.start()
        # One writer that keeps the file open and pauses between chunks.
        with open(os.path.join(self.inbox, "slow.p10"), "wb") as f:
            for i in range(0, len(body), 50):
                f.write(body[i:i + 50])
                f.flush()
                time.sleep(0.15)
        wait_until(lambda: self.responses(), "the response to slow.p10")
        # A writer that opens, appends and closes for every chunk: each close shows a truncated
        # file, which waits for the settle time instead of being quarantined.
        (second,) = self.csrs(["appended.p10"])
        with open(second, "rb") as f:
            body = f.read()
        for i in range(0, len(body), 50):
            with open(os.path.join(self.inbox, "appended.p10"), "ab") as f:
                f.write(body[i:i + 50])
            time.sleep(0.15)
        wait_until(lambda: len(self.responses()) == 2, "the response to appended.p10")
        self.check_one_response_each(["slow.p10", "appended.p10"], expected_sends=2)
        self.assertEqual(len(self.items("quarantined")), 0)

    def test_moved_in_and_renamed_dotfile(self):
        self.configure(self.start_ca())
        moved, dotted = self.csrs(["moved.p10", "dotted.p10"])
        self.start()
        os.rename(moved, os.path.join(self.inbox, "moved.p10"))
        wait_until(lambda: self.responses() == ["moved.p7c"], "the response to moved.p10")
        # A dotfile is some tool's file in progress: never read, until it gets its real name.
        hidden = os.path.join(self.inbox, ".dotted.p10")
        os.rename(dotted, hidden)
        os.rename(hidden, os.path.join(self.inbox, "dotted.p10"))
        wait_until(lambda: len(self.responses()) == 2, "the response to dotted.p10")
        self.check_one_response_each(["moved.p10", "dotted.p10"], expected_sends=2)

    def test_a_thousand_files_dropped_at_once(self):
        self.configure(self.start_ca("--fixed", self.fixed_response()))
        names = [f"r{i:04d}.p10" for i in range(1000)]
        staged = self.csrs(names)
        self.start()
        for path, name in zip(staged, names):
            os.rename(path, os.path.join(self.inbox, name))
        wait_until(lambda: len(self.responses()) == 1000, "1000 responses", deadline=120)
        self.check_one_response_each(names, expected_sends=1000)
        self.assertEqual(len(self.items("answered")), 1000)

    # ---- media that comes and goes ----------------------------------------------------------

    def test_folder_pulled_and_put_back_while_items_are_in_flight(self):
        self.configure(self.start_ca("--delay-ms", "1500"),
                       extra_endpoint="max_connections = 8")
        names = [f"stick{i}.p10" for i in range(5)]
        staged = self.csrs(names)
        self.start()
        for path, name in zip(staged, names):
            os.rename(path, os.path.join(self.inbox, name))
        wait_until(lambda: self.requests_seen() == 5, "five requests at the CA")
        away = self.inbox + ".pulled"
        os.rename(self.inbox, away)  # the stick is pulled while the CA is still answering
        wait_until(lambda: self.daemon.saw("waiting for it to come back"), "the daemon noticing")
        wait_until(lambda: self.daemon.saw("stays pending"), "the answers waiting for the folder")
        self.assertEqual(self.responses(away), [])
        os.rename(away, self.inbox)  # and put back
        wait_until(lambda: len(self.responses()) == 5, "five responses after the stick came back")
        wait_until(lambda: self.daemon.saw("is back"), "the daemon saying the folder is back")
        self.check_one_response_each(names, expected_sends=5)

    def test_a_watched_folder_that_does_not_exist_yet_is_waited_for(self):
        os.rmdir(self.inbox)
        self.configure(self.start_ca())
        (staged,) = self.csrs(["late.p10"])
        self.start()
        os.mkdir(self.inbox)
        os.rename(staged, os.path.join(self.inbox, "late.p10"))
        wait_until(lambda: self.responses() == ["late.p7c"], "the response once the folder exists")
        self.check_one_response_each(["late.p10"], expected_sends=1)

    # ---- process life -----------------------------------------------------------------------

    def test_sigterm_against_a_hanging_ca_and_the_restart_resends_only_the_unanswered(self):
        self.configure(self.start_ca("--hang-every", "2", "--fixed", self.fixed_response()))
        names = [f"t{i}.p10" for i in range(6)]
        staged = self.csrs(names)
        self.start()
        for path, name in zip(staged, names):
            os.rename(path, os.path.join(self.inbox, name))
        wait_until(lambda: self.requests_seen() == 6 and len(self.responses()) == 3,
                   "three answers and three hanging exchanges")
        self.daemon.signal(signal.SIGTERM)
        started = time.monotonic()
        code = self.daemon.peer.proc.wait(timeout=2)  # issue 12: stops within 2 s
        self.assertEqual(code, 0, self.daemon.output())
        self.assertLess(time.monotonic() - started, 2)
        wait_until(lambda: self.daemon.saw("3 exchange(s) abandoned"), "the abandon line")
        self.assertEqual(len(self.items("queued")), 3)

        second_log = os.path.join(self.tmp, "ca2.log")
        self.configure(self.start_ca(log=second_log))
        self.run_once(expect=0)
        self.assertEqual(len(read_responder_log(second_log)), 3)  # only the unanswered
        self.assertEqual(self.resends(), 3)  # and each resend is in its item's history
        self.check_one_response_each(names, expected_sends=6)

    def test_sighup_keeps_the_running_configuration_when_the_new_one_is_broken(self):
        self.configure(self.start_ca())
        self.start()
        with open(self.config) as f:
            good = f.read()
        with open(self.config, "w") as f:
            f.write(good + "\n[source.broken]\nunknown_key = 1\n")
        self.daemon.signal(signal.SIGHUP)
        wait_until(lambda: self.daemon.saw("reload failed"), "the failed reload")
        (first,) = self.csrs(["after-bad-reload.p10"])
        os.rename(first, os.path.join(self.inbox, "after-bad-reload.p10"))
        wait_until(lambda: self.responses() == ["after-bad-reload.p7c"], "the old config at work")
        # A good configuration is taken: the next request goes to the new CA.
        second_log = os.path.join(self.tmp, "ca2.log")
        self.configure(self.start_ca(log=second_log))
        self.daemon.signal(signal.SIGHUP)
        wait_until(lambda: self.daemon.saw("reloaded"), "the reload")
        (second,) = self.csrs(["after-good-reload.p10"])
        os.rename(second, os.path.join(self.inbox, "after-good-reload.p10"))
        wait_until(lambda: len(self.responses()) == 2, "the new config at work")
        self.assertEqual(len(read_responder_log(second_log)), 1)
        self.check_one_response_each(["after-bad-reload.p10", "after-good-reload.p10"],
                                     expected_sends=1)


class SystemdNotify(DaemonTest):
    """The daemon speaks systemd's notification protocol (sd_notify(3): datagrams on the
    AF_UNIX socket named by $NOTIFY_SOCKET), checked here with a socket of the test's own in
    the place of systemd: READY=1 once the sources are armed, STATUS=, RELOADING=1 and READY=1
    around a reload, STOPPING=1 on SIGTERM, and WATCHDOG=1 while $WATCHDOG_USEC asks for it."""

    def test_readiness_status_reload_stopping_and_watchdog(self):
        self.configure(self.start_ca())
        path = os.path.join(self.tmp, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(0.2)
        received = []

        def saw(text):
            while True:
                try:
                    received.append(sock.recv(4096).decode())
                except (socket.timeout, BlockingIOError):
                    break
            return any(text in m for m in received)

        env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
        self.daemon = Daemon(self.config, env=env)
        try:
            wait_until(lambda: saw("READY=1"), "READY=1")
            wait_until(lambda: saw("WATCHDOG=1"), "WATCHDOG=1")
            wait_until(lambda: saw("STATUS="), "a STATUS= line", deadline=10)
            received.clear()
            self.daemon.signal(signal.SIGHUP)
            wait_until(lambda: saw("RELOADING=1"), "RELOADING=1")
            wait_until(lambda: saw("READY=1"), "READY=1 after the reload")
            self.daemon.signal(signal.SIGTERM)
            wait_until(lambda: saw("STOPPING=1"), "STOPPING=1")
            self.assertEqual(self.daemon.peer.proc.wait(timeout=10), 0)
        finally:
            sock.close()


# SystemdNotify shares DaemonTest's fixtures; DaemonTest's own cases run once, there.
for _name in dir(DaemonTest):
    if _name.startswith("test_") and _name not in vars(SystemdNotify):
        setattr(SystemdNotify, _name, None)

if __name__ == "__main__":
    unittest.main()
