"""Crash points: `pkirelay run --once` killed with SIGKILL between every two steps that the
guarantees rest on, then run again, against tests/cmc_responder.py on loopback.

The points (lib/crash_point.h; the test build has them, `-Dcrash_points=true`):
  stored        the batch is committed, its files not acknowledged, nothing sent
  claimed       the requests are handed to the transport, the files not acknowledged
  held          a stored file renamed to its private name (.NAME.pkirelay-ack), not yet deleted
  acknowledged  the files are deleted, the acknowledgement not recorded
  answered      the CA answered, the outcome not recorded
  recorded      outcomes and response names committed, no response file written
  temporary     response files written under temporary names and synced, none renamed
  renamed       response files renamed, their folder not synced
  written       response files durable, their delivery not recorded
After the restart, for every point: every request has exactly one complete response file,
nothing half-written is left, no request is lost, and the CA saw a request a second time only
when its first outcome was not recorded, each such resend in the item's history.
"""
import os
import signal
import sys
import unittest

from harness import (PKIRELAY, PkirelayTestCase, openssl, read_responder_log, run,
                     start_cmc_responder)

POINTS = ["stored", "claimed", "held", "acknowledged", "answered", "recorded", "temporary", "renamed",
          "written"]
REQUESTS = [f"req{i}.p10" for i in range(4)]


class CrashPoints(PkirelayTestCase):

    def setUp(self):
        super().setUp()
        self.log = os.path.join(self.tmp, "ca.log")
        peer, port = start_cmc_responder("--log", self.log)
        self.peers.append(peer)
        self.write_config(f"http://127.0.0.1:{port}/cmc", extra_source='after = "delete"')
        key = os.path.join(self.tmp, "key.pem")
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", key)
        for name in REQUESTS:
            openssl("req", "-new", "-key", key, "-subj", f"/CN={name}", "-outform", "DER",
                    "-out", os.path.join(self.inbox, name))

    def crash_at(self, point):
        env = dict(os.environ, PKIRELAY_CRASH_AT=point)
        proc = run([PKIRELAY, "run", "--once", "-c", self.config], check=False, env=env)
        self.assertEqual(proc.returncode, -signal.SIGKILL,
                         f"the run did not die at {point!r} (is this a -Dcrash_points=true "
                         f"build?)\n{proc.stderr}")

    def resends(self):
        return sum(1 for item in self.items() for e in self.show(item["id"])["events"]
                   if "resend" in e["detail"])

    def check_after_restart(self, point):
        self.run_once(expect=0)
        names = sorted(os.listdir(self.inbox))
        self.assertEqual([n for n in names if n.startswith(".")], [], "temporary files left")
        self.assertEqual(names, sorted(n.replace(".p10", ".p7c") for n in REQUESTS),
                         "exactly one response per request, and every request acknowledged")
        for name in names:
            openssl("pkcs7", "-inform", "DER", "-in", os.path.join(self.inbox, name), "-noout")
        items = self.items()
        self.assertEqual(len(items), len(REQUESTS))
        self.assertTrue(all(i["state"] == "answered" for i in items), items)
        for item in items:
            deliveries = [a["delivery"] for a in self.show(item["id"])["arrivals"]]
            self.assertEqual(deliveries, ["delivered"], item)
        sent, resent = len(read_responder_log(self.log)), self.resends()
        # The CA sees each request once, plus at most the recorded resends: every extra send is
        # in some item's history. (A request in doubt that had not left when the run died is
        # recorded as a resend the CA sees only once.)
        self.assertGreaterEqual(sent, len(REQUESTS))
        self.assertLessEqual(sent, len(REQUESTS) + resent)
        return sent, resent


def make_case(point):
    def case(self):
        self.crash_at(point)
        sent, resent = self.check_after_restart(point)
        sys.stderr.write(f"[{point}: CA saw {sent} requests, {resent} recorded resend(s)] ")
    case.__name__ = f"test_killed_at_{point}"
    return case


for _point in POINTS:
    setattr(CrashPoints, f"test_killed_at_{_point}", make_case(_point))


if __name__ == "__main__":
    unittest.main()
