#!/usr/bin/env python3
"""Writes N distinct requests for the benchmark, derived from make_templates.sh's templates.

Each request is a template with its correlation values rewritten in place, at the same length,
so the DER stays well formed and classifies exactly like the template (signatures and MACs no
longer verify; pkirelay relays bytes and does not check them):
  CMP ir (.der)           PKIHeader transactionID and senderNonce (RFC 9810 §5.1.1)
  CMC Full PKI Request    transactionId control INTEGER (after its 01 octet) and senderNonce
  (.crq)                  control (RFC 10002 §6.6, §6.3)
  PKCS#10 (.p10)          a 16-character placeholder in the subject CN, as 16 hex digits
The values come from a per-run salt and the request's index, so no two requests of one run, nor
of two runs, share a transaction, a nonce or a content hash.

usage: gen_requests.py --templates DIR --pkirelay BIN --out DIR --count N
                       [--kinds cmp,cmc,p10] [--start I] [--verify K]
--verify K runs `pkirelay inspect --json` on K requests spread over the output and checks kind,
body type and the rewritten values; it prints nothing on success and exits 1 on a mismatch.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys

EXT = {"cmp": ".der", "cmc": ".crq", "p10": ".p10"}
EXPECTED_KIND = {"cmp": "cmp", "cmc": "cmc-full-request", "p10": "cmc-simple-request"}


def inspect(pkirelay, paths):
    out = subprocess.run([pkirelay, "inspect", "--json", *paths], check=False,
                         capture_output=True).stdout
    return json.loads(out)


def find_once(data, needle, what):
    at = data.find(needle)
    if at < 0 or data.find(needle, at + 1) >= 0:
        sys.exit(f"gen_requests: {what} not found exactly once in its template")
    return at


class Templates:
    def __init__(self, tdir, pkirelay):
        self.data = {}
        self.fields = {}  # kind -> [(offset, length)]
        for kind in EXT:
            with open(os.path.join(tdir, f"req_{kind}.der"), "rb") as f:
                self.data[kind] = f.read()
        info = {e["file"]: e for e in inspect(pkirelay, [os.path.join(tdir, f"req_{k}.der")
                                                         for k in EXT])}
        cmp = info[os.path.join(tdir, "req_cmp.der")]["cmp"]
        d = self.data["cmp"]
        txid, nonce = bytes.fromhex(cmp["transaction_id"]), bytes.fromhex(cmp["sender_nonce"])
        self.fields["cmp"] = [(find_once(d, txid, "CMP transactionID"), len(txid)),
                              (find_once(d, nonce, "CMP senderNonce"), len(nonce))]
        d = self.data["cmc"]
        # The INTEGER's content after its leading 01 octet, and the 16-octet nonce.
        self.fields["cmc"] = [(find_once(d, bytes.fromhex("01f00df00df00df00d"),
                                         "CMC transactionId") + 1, 8),
                              (find_once(d, bytes.fromhex("5e4d3c2b1a09f8e7d6c5b4a392817065"),
                                         "CMC senderNonce"), 16)]
        d = self.data["p10"]
        self.fields["p10"] = [(find_once(d, b"Xq7Zk9Wm2Lp4Rt8V", "PKCS#10 CN placeholder"), 16)]


def values(kind, salt, index):
    """The rewritten values of request `index`: unique per (salt, index)."""
    h = hashlib.blake2b(salt + index.to_bytes(8, "big"), digest_size=32).digest()
    if kind == "cmp":
        return [salt[:8] + index.to_bytes(8, "big"), h[:16]]
    if kind == "cmc":
        return [salt[:4] + index.to_bytes(4, "big"), h[:16]]
    return [(salt[:4] + index.to_bytes(4, "big")).hex().encode()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--templates", required=True)
    ap.add_argument("--pkirelay", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--kinds", default="cmp,cmc,p10")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--verify", type=int, default=0)
    a = ap.parse_args()
    kinds = a.kinds.split(",")
    if not kinds or any(k not in EXT for k in kinds):
        sys.exit(f"gen_requests: --kinds takes some of {','.join(EXT)}")
    t = Templates(a.templates, a.pkirelay)
    salt = os.urandom(8)
    os.makedirs(a.out, exist_ok=True)
    made = []
    for i in range(a.start, a.start + a.count):
        kind = kinds[i % len(kinds)]
        buf = bytearray(t.data[kind])
        for (at, n), v in zip(t.fields[kind], values(kind, salt, i)):
            buf[at:at + n] = v
        name = os.path.join(a.out, f"r{i:08d}{EXT[kind]}")
        with open(name, "wb") as f:
            f.write(buf)
        made.append((name, kind, i))

    if a.verify:
        step = max(1, len(made) // a.verify)
        sample = made[::step][:a.verify]
        got = {e["file"]: e for e in inspect(a.pkirelay, [m[0] for m in sample])}
        seen = set()
        for name, kind, i in sample:
            e = got.get(name)
            if not e or e.get("rejected") or e.get("kind") != EXPECTED_KIND[kind]:
                sys.exit(f"gen_requests: {name} does not classify as {EXPECTED_KIND[kind]}")
            if kind == "cmp":
                c = e["cmp"]
                pair = [bytes.fromhex(c["transaction_id"]), bytes.fromhex(c["sender_nonce"])]
                ok = c["body"] == "ir" and pair == values(kind, salt, i)
                key = (c["transaction_id"], c["sender_nonce"])
            elif kind == "cmc":
                c = e["cmc"]
                v = values(kind, salt, i)
                ok = (c["transaction_id"] == "01" + v[0].hex() and
                      c["sender_nonce"] == v[1].hex())
                key = (c["transaction_id"], c["sender_nonce"])
            else:
                ok, key = True, e["sha256"]
            if not ok or key in seen:
                sys.exit(f"gen_requests: {name}: inspect disagrees with what was written")
            seen.add(key)


if __name__ == "__main__":
    main()
