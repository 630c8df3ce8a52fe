#!/usr/bin/env python3
"""Renders run.sh's measurements as the benchmark's one Markdown table, the machine's
description above it, and the callgrind profiles' top self costs below it.

usage: report.py MACHINE RESULTS CALLGRIND-EMPTY CALLGRIND-FULL
RESULTS is run.sh's tab-separated log: fs, measure, N, seconds, user s, sys s, max RSS KiB, note.
Ratios compare a rate with the lower of the two ceilings measured on the same file system at the
nearest backlog size, and with the shell loop of curl on the same file system.
"""
import json
import os
import re
import sys


def num(s):
    try:
        return float(s)
    except ValueError:
        return None


def fmt_rate(r):
    return f"{r:,.0f}" if r >= 100 else f"{r:,.1f}"


def top(path, n_msgs, count=10):
    """(total Ir, [(percent, Ir, function)]) from callgrind_annotate --inclusive=no output."""
    if not os.path.exists(path):
        return None, []
    total, rows = None, []
    for line in open(path, errors="replace"):
        m = re.match(r"^\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)$", line.rstrip())
        if not m:
            continue
        ir, pct, what = int(m.group(1).replace(",", "")), m.group(2), m.group(3)
        if "PROGRAM TOTALS" in what:
            total = ir
            continue
        lib = re.search(r"\[([^\]]+)\]\s*$", what)
        fn = re.sub(r"\s*\[[^\]]+\]\s*$", "", what)
        fn = fn.split(":", 1)[1] if ":" in fn else fn
        where = os.path.basename(lib.group(1)) if lib else ""
        rows.append((pct, ir // max(1, n_msgs), fn.strip(), where))
        if len(rows) == count:
            break
    return total, rows


def main():
    machine = dict(line.rstrip("\n").split("=", 1) for line in open(sys.argv[1]) if "=" in line)
    results = [line.rstrip("\n").split("\t") for line in open(sys.argv[2]) if line.strip()]
    rows = []
    for r in results:
        r += [""] * (8 - len(r))
        fs, what, n, secs, user, sys_, rss, note = r[:8]
        rows.append(dict(fs=fs, what=what, n=int(n or 0), secs=num(secs), user=num(user),
                         sys=num(sys_), rss=num(rss), note=note))
        row = rows[-1]
        row["rate"] = row["n"] / row["secs"] if row["secs"] and row["n"] else None

    def ceiling(fs, n):
        best = {}
        for r in rows:
            if r["fs"] == fs and r["what"].split(":")[0] in ("network ceiling", "file ceiling") \
                    and r["rate"] and "FAILED" not in r["note"]:
                best.setdefault(r["n"], []).append(r["rate"])
        if not best:
            return None
        near = min(best, key=lambda k: (abs(k - n), -k))
        return min(best[near])

    def loop(fs):
        for r in rows:
            if r["fs"] == fs and r["what"].startswith("shell loop") and r["rate"]:
                return r["rate"]
        return None

    print(f"Machine: {machine.get('nproc')} CPUs ({machine.get('cpu')}), "
          f"{machine.get('memory')} memory, {machine.get('kernel')}; load average at the end "
          f"{machine.get('load')}.  ")
    fss = "; ".join(f"{k[3:]}: {v}" for k, v in machine.items() if k.startswith("fs_"))
    print(f"File systems (folders and store together): {fss}.  ")
    print(f"pkirelay {machine.get('commit')} ({machine.get('buildtype')} build), default settings, "
          f"requests deleted once stored; the CA is contrib/bench/answerer.cc on 127.0.0.1 "
          f"(one thread), each answer carrying its request's transaction ID and nonce; "
          f"curl {machine.get('curl')}. Requests: CMP ir, CMC Full PKI Request and PKCS#10 in "
          f"turn, all distinct. Run {machine.get('date')}, sizes {machine.get('sizes')}"
          f"{' (--quick)' if machine.get('quick') == '1' else ''}, "
          f"{int(machine.get('wall', 0)) // 60} min {int(machine.get('wall', 0)) % 60} s.  ")
    print(f"The CA at the end: {machine.get('answerer', 'no report').removeprefix('answerer: ')}.")
    print()
    print("| file system | measure | N | msg/s | CPU µs/msg | peak RSS MiB | of lower ceiling "
          "| × shell loop | notes |")
    print("|---|---|--:|--:|--:|--:|--:|--:|---|")
    for r in rows:
        rate = r["rate"] if "latency" not in r["what"] and not r["what"].startswith("callgrind") \
            else None
        cpu = ""
        if r["user"] is not None and r["n"]:
            cpu = f"{((r['user'] or 0) + (r['sys'] or 0)) / r['n'] * 1e6:,.0f}"
        rss = f"{r['rss'] / 1024:.1f}" if r["rss"] else ""
        of_ceiling = times_loop = ""
        if rate and "ceiling" not in r["what"] and r["fs"] != "loopback":
            c = ceiling(r["fs"], r["n"])
            if c:
                of_ceiling = f"{rate / c:.0%}"
            lp = loop(r["fs"])
            if lp and not r["what"].startswith("shell loop"):
                times_loop = f"{rate / lp:.1f}×"
        note = r["note"]
        if "latency" in r["what"] and note.startswith("{"):
            j = json.loads(note)
            note = (f"drop to response: p50 {j['p50_ms']:.0f} ms, p99 {j['p99_ms']:.0f} ms "
                    f"(mean {j['mean_ms']:.0f}, max {j['max_ms']:.0f})")
        m = re.match(r"ir=(\d+)(.*)", note)
        if m:
            per = int(m.group(1)) // max(1, r["n"])
            note = f"{per:,} instructions/msg (user space){m.group(2)}"
        print(f"| {r['fs']} | {r['what']} | {r['n']:,} | {fmt_rate(rate) if rate else ''} | "
              f"{cpu} | {rss} | {of_ceiling} | {times_loop} | {note} |")

    full = f"store holding {int(machine.get('old', 0)):,} finished items"
    for path, label in ((sys.argv[3], "empty store"), (sys.argv[4], full)):
        n = next((r["n"] for r in rows if r["what"].startswith("callgrind")), 1000)
        total, items = top(path, n)
        if not items:
            continue
        print()
        print(f"Callgrind, {n:,}-file pass, {label}: {total // n:,} instructions/msg; "
              f"top 10 self cost:")
        print()
        print("| self % | Ir/msg | function | object |")
        print("|--:|--:|---|---|")
        for pct, per, fn, where in items:
            print(f"| {pct} | {per:,} | `{fn.replace('|', '¦')}` | {where} |")


if __name__ == "__main__":
    main()
