"""The TCP endpoint types through `pkirelay run`, against real peers on loopback.

- CMC over TCP (RFC 5273 §5) against tests/cmc_tcp_responder.py, which answers with the CMC test
  responder's real messages and logs each connection and request: round trips with several
  requests on one connection; a server that closes idle connections, then the next request on a
  new one (no resend recorded); an answer dripped in 7-byte segments; an indefinite-length BER
  answer read whole; an oversize length, a never-ending answer and garbage refused; a reset
  retried later.
- Legacy CMP over TCP against tests/cmp_tcp_responder.py forwarding to OpenSSL's CMP mock
  server: an offline ir enrolled through it and accepted by the `openssl cmp` client; the
  fall-back to RFC 2510 framing; transport-level polling; errorMsgRep as a permanent failure.
- Routing rules ([[route]]): first match wins, CMP body types, no match a permanent failure.
- The configuration checks of the new endpoint keys.
Nothing sleeps to wait: every wait is for a condition with a deadline.
"""
import os
import sys
import unittest

from harness import (TESTS_DIR, CmpCredentials, Peer, PkirelayTestCase, cmp_client, openssl,
                     run, start_cmp_server, wait_until)

UNREACHABLE = "127.0.0.1:1/pkix/"


def start_tcp_peer(script, *args):
    peer = Peer([sys.executable, os.path.join(TESTS_DIR, script), *args], "LISTENING")
    return peer, int(peer.ready_line.split()[1])


def read_log(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f]


class TcpTestCase(PkirelayTestCase):

    def setUp(self):
        super().setUp()
        self.log = os.path.join(self.tmp, "peer.log")

    def start(self, script, *args):
        peer, port = start_tcp_peer(script, "--log", self.log, *args)
        self.peers.append(peer)
        return port

    def events(self, what):
        return [e for e in read_log(self.log) if e[0] == what]

    def item_by_file(self, name):
        for item in self.items():
            if item.get("file", "").endswith(name) or item.get("origin", "").endswith(name):
                return item
        raise AssertionError(f"no item for {name}: {self.items()}")

    def only_item(self):
        items = self.items()
        self.assertEqual(len(items), 1, items)
        return self.show(items[0]["id"])


class CmcOverTcp(TcpTestCase):

    def configure(self, port, extra="", timeout=20):
        self.write_config(f"cmc-tcp://127.0.0.1:{port}",
                          extra_endpoint=f"max_connections = 1\ntimeout_seconds = {timeout}\n",
                          extra=extra)

    def test_round_trips_share_one_connection(self):
        self.configure(self.start("cmc_tcp_responder.py"))
        for name in ("a", "b", "c"):
            self.csr(f"{name}.p10")
        self.run_once(expect=0)
        self.assertEqual(self.inbox_files(),
                         ["a.p10", "a.p7c", "b.p10", "b.p7c", "c.p10", "c.p7c"])
        for name in ("a", "b", "c"):
            self.assertIn("CMC Simple PKI Response",
                          self.pkirelay("inspect", os.path.join(self.inbox, name + ".p7c"),
                                        check=True).stdout)
        # RFC 5273 §5: successive requests on the same connection.
        self.assertEqual(len(self.events("open")), 1, read_log(self.log))
        self.assertEqual([e[1] for e in self.events("request")], ["1", "1", "1"])

    def test_idle_close_then_a_new_connection(self):
        from test_daemon import Daemon
        self.configure(self.start("cmc_tcp_responder.py", "--idle-close-ms", "100"),
                       extra="[run]\npoll_seconds = 1\n")
        daemon = Daemon(self.config)
        try:
            self.csr("a.p10")
            wait_until(lambda: os.path.exists(os.path.join(self.inbox, "a.p7c")), "a.p7c")
            # The server closes the idle connection; pkirelay notices and forgets it.
            wait_until(lambda: any(e[2:3] == ["idle"] for e in self.events("close")),
                       "the server closing the idle connection")
            self.csr("b.p10")
            wait_until(lambda: os.path.exists(os.path.join(self.inbox, "b.p7c")), "b.p7c")
        finally:
            daemon.stop()
        self.assertEqual(len(self.events("open")), 2, read_log(self.log))
        self.assertEqual(len(self.events("request")), 2, read_log(self.log))
        for item in self.items():
            history = " ".join(e["what"] + " " + e["detail"]
                               for e in self.show(item["id"])["events"])
            self.assertNotIn("resend", history)

    def test_connection_dying_after_the_request_is_a_recorded_resend(self):
        # The second request goes out on the kept connection, the server reads it and resets
        # the connection: it may have seen it, so it is sent again on a new connection and the
        # item's history says so.
        self.configure(self.start("cmc_tcp_responder.py", "--misbehave", "reset",
                                  "--every", "2"))
        self.csr("a.p10")
        self.csr("b.p10", cn="b")
        self.run_once(expect=0)
        self.assertEqual(self.inbox_files(), ["a.p10", "a.p7c", "b.p10", "b.p7c"])
        self.assertEqual(len(self.events("request")), 3, read_log(self.log))
        # Whichever went second on the connection was sent twice, and says so.
        histories = [" ".join(e["what"] + " " + e["detail"] for e in self.show(i["id"])["events"])
                     for i in self.items()]
        self.assertEqual(sum("resen" in h for h in histories), 1, histories)

    def test_answer_split_across_many_segments(self):
        self.configure(self.start("cmc_tcp_responder.py", "--misbehave", "drip"))
        self.csr("a.p10")
        self.run_once(expect=0)
        self.assertIn("a.p7c", self.inbox_files())
        self.assertIn("CMC Simple PKI Response",
                      self.pkirelay("inspect", os.path.join(self.inbox, "a.p7c"),
                                    check=True).stdout)

    def test_indefinite_length_answer_read_whole(self):
        self.configure(self.start("cmc_tcp_responder.py", "--misbehave", "indefinite"))
        self.csr("a.p10")
        self.run_once(expect=0)
        with open(os.path.join(self.inbox, "a.p7c"), "rb") as f:
            answer = f.read()
        self.assertEqual(answer[:2], b"\x30\x80")
        self.assertEqual(answer[-2:], b"\x00\x00")

    def assert_failed(self, text):
        item = self.only_item()
        self.assertEqual(item["state"], "failed", item)
        self.assertIn(text, str(item))

    def test_oversize_length_refused(self):
        self.configure(self.start("cmc_tcp_responder.py", "--misbehave", "oversize"))
        self.csr("a.p10")
        self.run_once(expect=65)
        self.assert_failed("too large")

    def test_never_ending_answer_refused(self):
        self.configure(self.start("cmc_tcp_responder.py", "--misbehave", "endless"))
        self.csr("a.p10")
        self.run_once(expect=65)
        self.assert_failed("answer too large")

    def test_garbage_refused(self):
        self.configure(self.start("cmc_tcp_responder.py", "--misbehave", "garbage"))
        self.csr("a.p10")
        self.run_once(expect=65)
        self.assert_failed("starts with a SEQUENCE")

    def test_reset_is_retried_later(self):
        self.configure(self.start("cmc_tcp_responder.py", "--misbehave", "reset"))
        self.csr("a.p10")
        self.run_once(expect=75)
        item = self.only_item()
        self.assertEqual(item["state"], "deferred", item)

    def test_silent_server_times_out(self):
        self.configure(self.start("cmc_tcp_responder.py", "--misbehave", "silent"), timeout=1)
        self.csr("a.p10")
        self.run_once(expect=75)
        self.assertIn("no complete answer within 1000 ms", str(self.only_item()))


class CmpOverTcp(TcpTestCase):

    def setUp(self):
        super().setUp()
        self.creds = CmpCredentials(self.tmp)

    def start_ca(self, *relay_args, ca_args=()):
        peer, port = start_cmp_server(self.creds, "-grant_implicitconf", *ca_args)
        self.peers.append(peer)
        relay = self.start("cmp_tcp_responder.py", "--forward",
                           f"http://127.0.0.1:{port}/pkix/", *relay_args)
        self.write_config(f"cmp-tcp://127.0.0.1:{relay}",
                          extra_endpoint="max_connections = 1\ntimeout_seconds = 20")

    def offline_ir(self):
        ir = os.path.join(self.inbox, "ir.der")
        cmp_client(self.creds, "-server", UNREACHABLE, "-msg_timeout", "2", "-certout",
                   os.path.join(self.tmp, "unused.crt"), "-cmd", "ir", "-subject", "/CN=Tcp",
                   "-implicit_confirm", "-reqout", ir, check=False)
        self.assertTrue(os.path.exists(ir), "openssl cmp did not write the request")
        return ir

    def enrolled(self, ir):
        cert = os.path.join(self.tmp, "cert.pem")
        cmp_client(self.creds, "-cmd", "ir", "-subject", "/CN=Tcp", "-implicit_confirm",
                   "-reqin", ir, "-rspin", os.path.join(self.inbox, "ir.pki"), "-certout", cert)
        return openssl("x509", "-in", cert, "-noout", "-subject").stdout

    def test_version_10_round_trip_accepted_by_openssl(self):
        self.start_ca()
        ir = self.offline_ir()
        self.run_once(expect=0)
        self.assertIn("CN = enrolled-leaf", self.enrolled(ir))
        self.assertEqual([e[2:4] for e in self.events("frame")], [["v10", "0"]])

    def test_falls_back_to_rfc2510_framing(self):
        self.start_ca("--rfc2510-only")
        ir = self.offline_ir()
        self.run_once(expect=0)
        self.assertIn("CN = enrolled-leaf", self.enrolled(ir))
        self.assertEqual([e[2:4] for e in self.events("frame")], [["v10", "0"], ["rfc2510", "0"]])

    def test_transport_level_polling(self):
        self.start_ca("--poll", "3")
        ir = self.offline_ir()
        self.run_once(expect=0)
        self.assertIn("CN = enrolled-leaf", self.enrolled(ir))
        self.assertEqual([e[3] for e in self.events("frame")], ["0", "2", "2"])

    def test_error_msg_rep_is_a_permanent_failure(self):
        self.start_ca("--error", "CA is closed for maintenance")
        self.offline_ir()
        self.run_once(expect=65)
        item = self.only_item()
        self.assertEqual(item["state"], "failed", item)
        self.assertIn("CA is closed for maintenance", str(item))


class Routing(TcpTestCase):

    def fixtures(self):
        out = os.path.join(self.tmp, "fx")
        run(["sh", os.path.join(TESTS_DIR, "fixtures", "make_fixtures.sh"), out])
        return out

    def test_first_matching_rule_wins_and_no_match_fails(self):
        fx = self.fixtures()
        log_a, log_b = os.path.join(self.tmp, "a.log"), os.path.join(self.tmp, "b.log")
        a, pa = start_tcp_peer("cmp_tcp_responder.py", "--fixed", os.path.join(fx, "cmp_cp.der"),
                               "--log", log_a)
        b, pb = start_tcp_peer("cmp_tcp_responder.py", "--fixed", os.path.join(fx, "cmp_ip.der"),
                               "--log", log_b)
        self.peers += [a, b]
        other = os.path.join(self.tmp, "other")
        os.mkdir(other)
        with open(self.config, "w") as f:
            f.write(f'[store]\npath = "{self.tmp}/store.db"\n'
                    f'[source.inbox]\npath = "{self.inbox}"\n'
                    f'[source.other]\npath = "{other}"\n'
                    f'[endpoint.p10]\nurl = "cmp-tcp://127.0.0.1:{pa}"\n'
                    f'[endpoint.rest]\nurl = "cmp-tcp://127.0.0.1:{pb}"\n'
                    '[[route]]\nsource = "inbox"\ncmp_body = "p10cr"\nendpoint = "p10"\n'
                    '[[route]]\nsource = "inbox"\nkind = "cmp"\nendpoint = "rest"\n'
                    '[[route]]\nkind = "cmp"\ncmp_body = "ir"\nendpoint = "p10"\n')
        for name in ("cmp_p10cr.der", "cmp_ir.der"):
            with open(os.path.join(fx, name), "rb") as src, \
                    open(os.path.join(self.inbox, name), "wb") as dst:
                dst.write(src.read())
        # From "other" a PKCS#10 matches no rule.
        self.csr("lost.p10", folder=other)
        self.run_once(expect=65)
        self.assertEqual(len(read_log(log_a)), 3, read_log(log_a))  # open, frame, close
        self.assertEqual(len([e for e in read_log(log_b) if e[0] == "frame"]), 1)
        lost = [i for i in self.items() if i["state"] == "failed"]
        self.assertEqual(len(lost), 1, self.items())
        self.assertIn("no route", str(self.show(lost[0]["id"])))
        self.assertIn("source other", str(self.show(lost[0]["id"])))


class TcpConfiguration(PkirelayTestCase):

    def check(self, endpoint, expect, extra=""):
        with open(self.config, "w") as f:
            f.write(f'[store]\npath = "{self.tmp}/store.db"\n'
                    f'[source.in]\npath = "{self.inbox}"\n[endpoint.ca]\n{endpoint}\n{extra}')
        proc = self.pkirelay("check-config", "-c", self.config)
        self.assertEqual(proc.returncode, expect, proc.stdout + proc.stderr)
        return proc.stdout + proc.stderr

    def test_tcp_urls(self):
        self.check('url = "cmc-tcp://127.0.0.1"', 0)
        self.check('url = "cmp-tcp://[::1]:1829/"', 0)
        self.check('type = "cmc-tcp"\nurl = "cmc-tcps://ca.example:5318"', 0)
        self.assertIn("does not go with the url",
                      self.check('type = "cmp-tcp"\nurl = "cmc-tcp://ca.example"', 78))
        self.assertIn("is not 1 to 65535", self.check('url = "cmc-tcp://ca.example:70000"', 78))
        self.assertIn("no path or user", self.check('url = "cmc-tcp://ca.example/cmc"', 78))
        self.assertIn("needs TLS", self.check(
            f'url = "cmp-tcp://ca.example"\nca_file = "{self.tmp}/ca.pem"', 78))
        self.assertIn("http endpoints only",
                      self.check('url = "cmc-tcp://ca.example"\nproxy = "http://p:3128"', 78))
        self.assertIn("cmp-tcp endpoints only",
                      self.check('url = "cmc-tcp://ca.example"\npoll_max_seconds = 5', 78))

    def test_cmp_well_known_paths(self):
        self.check('url = "https://ca.example/.well-known/cmp"', 0)
        self.check('url = "https://ca.example/.well-known/cmp/p/issuing-ca"', 0)
        self.check('url = "https://ca.example/.well-known/cmp/p/issuing-ca/certification"', 0)
        self.check('url = "https://ca.example"\ncmp_profile = "tls-clients"', 0)
        self.assertIn("not a CMP well-known path",
                      self.check('url = "https://ca.example/.well-known/cmp/p/"', 78))
        self.assertIn("not a CMP well-known path",
                      self.check('url = "https://ca.example/.well-known/cmp/x/y/z"', 78))
        self.assertIn("must then have no path",
                      self.check('url = "https://ca.example/pkix/"\ncmp_profile = "a"', 78))
        self.check('url = "https://ca.example/pkix/"\nfollow_redirects = true\n'
                   'tls_min_version = "1.3"\npinned_public_key = "sha256//'
                   'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="\nproxy = "http://127.0.0.1:3128"',
                   0)

    def test_route_rules(self):
        self.check('url = "cmc-tcp://127.0.0.1"', 0,
                   '[[route]]\nkind = "cmp"\ncmp_body = "ann,ir"\nendpoint = "ca"\n')
        out = self.check('url = "cmc-tcp://127.0.0.1"', 78,
                         '[[route]]\nkind = "cmc-full-request"\ncmp_body = "ir,bogus"\n'
                         'endpoint = "nowhere"\nsource = "ghost"\n')
        for text in ('"bogus" is not a CMP body type', 'names "nowhere", which is not an '
                     'endpoint', 'names "ghost", which is not a source',
                     "cmp_body matches only CMP messages"):
            self.assertIn(text, out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
