#!/usr/bin/env python3
"""Drops request files into a folder watched by a running `pkirelay run` and times, with
inotify, when each response file appears (its final rename: IN_MOVED_TO; IN_CLOSE_WRITE too,
for a writer that creates the final name directly). Names that start with a dot are temporary
files and are ignored.

  drop_watch.py latency STAGING IN OUT [--timeout S]
      one file at a time: rename it from STAGING into IN, wait for its response in OUT, next.
      Prints JSON {"count", "p50_ms", "p99_ms", "mean_ms", "max_ms"}.
  drop_watch.py burst STAGING IN OUT [--timeout S]
      renames every file of STAGING into IN at once, waits until as many responses appeared.
      Prints JSON {"count", "seconds"} (from the first rename to the last response).

STAGING must be on the file system of IN, so that a drop is one atomic rename, as a careful
client would do it. Every wait has a deadline (--timeout, per file or for the burst); on a
timeout it exits 1.
"""
import argparse
import ctypes
import json
import os
import select
import struct
import sys
import time

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CLOEXEC = 0o2000000

libc = ctypes.CDLL(None, use_errno=True)


class Watch:
    def __init__(self, folder):
        self.fd = libc.inotify_init1(IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self.fd, folder.encode(), IN_MOVED_TO | IN_CLOSE_WRITE) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
        self.seen = set()

    def wait(self, deadline):
        """The final names that appeared since the last call, waiting until `deadline`."""
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self.fd], [], [], left)[0]:
            return None
        now = time.monotonic_ns()
        buf = os.read(self.fd, 1 << 16)
        names, at = [], 0
        while at < len(buf):
            _, _, _, n = struct.unpack_from("iIII", buf, at)
            name = buf[at + 16:at + 16 + n].rstrip(b"\0").decode(errors="replace")
            at += 16 + n
            if name and not name.startswith(".") and name not in self.seen:
                self.seen.add(name)
                names.append(name)
        return now, names

    def close(self):
        os.close(self.fd)


def stem(name):
    return name.rsplit(".", 1)[0]


def latency(a, files, watch):
    samples = []
    for f in files:
        want = stem(f)
        t0 = time.monotonic_ns()
        os.rename(os.path.join(a.staging, f), os.path.join(a.inbox, f))
        deadline = time.monotonic() + a.timeout
        while True:
            got = watch.wait(deadline)
            if got is None:
                sys.exit(f"drop_watch: no response for {f} within {a.timeout} s")
            if any(stem(n) == want for n in got[1]):
                samples.append((got[0] - t0) / 1e6)
                break
    samples.sort()

    def pct(p):  # nearest rank
        return samples[min(len(samples) - 1, max(0, round(p / 100 * len(samples)) - 1))]

    return {"count": len(samples), "p50_ms": round(pct(50), 2), "p99_ms": round(pct(99), 2),
            "mean_ms": round(sum(samples) / len(samples), 2), "max_ms": round(samples[-1], 2)}


def burst(a, files, watch):
    t0 = time.monotonic_ns()
    for f in files:
        os.rename(os.path.join(a.staging, f), os.path.join(a.inbox, f))
    deadline = time.monotonic() + a.timeout
    count, last = 0, t0
    while count < len(files):
        got = watch.wait(deadline)
        if got is None:
            sys.exit(f"drop_watch: {count} of {len(files)} responses within {a.timeout} s")
        count += len(got[1])
        last = got[0]
    return {"count": count, "seconds": round((last - t0) / 1e9, 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["latency", "burst"])
    ap.add_argument("staging")
    ap.add_argument("inbox")
    ap.add_argument("out")
    ap.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args()
    files = sorted(n for n in os.listdir(a.staging) if not n.startswith("."))
    watch = Watch(a.out)
    result = (latency if a.mode == "latency" else burst)(a, files, watch)
    watch.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
