#!/usr/bin/env python3
"""Counts test cases for contrib/test.sh and contrib/test-hardened.sh, and sums their counts.

  count-tests.py TESTLOG MESON_STATUS [EXTRA_PASSED EXTRA_FAILED]
      Counts the test cases in meson's testlog.json (not test programs: Catch2's and unittest's
      own summaries are read from the log; a program whose summary cannot be read counts as one
      test, by its result), adds the extra counts (e.g. fuzzer runs), and prints
      "N passed, N failed" (the skipped cases on a line of their own before it).
  count-tests.py --sum LINE...
      Adds up lines of that form (the last lines of the scripts above) into one.

Both exit non-zero when anything failed (or, for the first form, when meson failed without
logging a result).
"""
import json
import re
import sys

SUMMARY = re.compile(r"(\d+) passed, (\d+) failed(?:, (\d+) skipped)?")


def cases(entry):
    out = (entry.get("stdout") or "") + (entry.get("stderr") or "")
    ok = entry.get("result") in ("OK", "EXPECTEDFAIL")
    m = re.search(r"All tests passed \(\d+ assertions? in (\d+) test cases?\)", out)
    if m:
        return int(m.group(1)), 0, 0
    m = re.search(r"test cases:\s+(\d+) \|\s+(\d+) passed \|\s+(\d+) failed", out)
    if m:
        return int(m.group(2)), int(m.group(3)), 0
    m = re.search(r"^Ran (\d+) tests? in", out, re.M)
    if m:
        total = int(m.group(1))
        tail = out[m.end():]
        failed = sum(int(n) for n in re.findall(r"(?<!expected )(?:failures|errors|unexpected successes)=(\d+)", tail))
        skipped = sum(int(n) for n in re.findall(r"skipped=(\d+)", tail))
        if not ok and failed == 0:
            failed = 1
        return total - failed - skipped, failed, skipped
    if entry.get("result") == "SKIP":
        return 0, 0, 1
    return (1, 0, 0) if ok else (0, 1, 0)


def count(log_path, status, extra_passed=0, extra_failed=0):
    passed, failed, skipped = extra_passed, extra_failed, 0
    try:
        with open(log_path) as log:
            for line in log:
                p, f, s = cases(json.loads(line))
                passed, failed, skipped = passed + p, failed + f, skipped + s
    except FileNotFoundError:
        failed += 1
    if failed == extra_failed and status != "0":
        failed += 1  # meson failed without logging a result
    return passed, failed, skipped


def total(lines):
    passed = failed = skipped = 0
    for line in lines:
        m = SUMMARY.search(line)
        if not m:
            failed += 1  # a script that did not get as far as its count
            continue
        passed += int(m.group(1))
        failed += int(m.group(2))
        skipped += int(m.group(3) or 0)
    return passed, failed, skipped


def main(argv):
    if len(argv) >= 1 and argv[0] == "--sum":
        passed, failed, skipped = total(argv[1:])
    elif len(argv) in (2, 4):
        extra = [int(n) for n in argv[2:]] or [0, 0]
        passed, failed, skipped = count(argv[0], argv[1], *extra)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    # The last line is exactly "N passed, N failed" (what CI reads); skipped cases, counted
    # apart from both, are said on the line before it.
    if skipped:
        print(f"({skipped} test case(s) skipped, counted in neither)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
