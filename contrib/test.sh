#!/usr/bin/env bash
# Builds pkirelay and runs the whole test suite (unit tests and the integration tests against
# real peers on loopback). The last line is "N passed, N failed", counted from meson's test log;
# the exit status is non-zero when anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
builddir=${BUILDDIR:-build}
# The test build has the crash points of lib/crash_point.h (inert unless PKIRELAY_CRASH_AT is
# set), which tests/integration/test_crash_points.py needs.
if [ -f "$builddir/build.ninja" ]; then
    meson configure "$builddir" -Dcrash_points=true >/dev/null
else
    meson setup "$builddir" -Dcrash_points=true >/dev/null
fi
if ! BUILDDIR=$builddir contrib/build.sh; then
    echo "0 passed, 1 failed"
    exit 1
fi
rm -f "$builddir/meson-logs/testlog.json"
meson test -C "$builddir" --print-errorlogs --num-processes 2
status=$?
python3 - "$builddir/meson-logs/testlog.json" "$status" <<'PY'
# Counts test cases, not test programs: Catch2's and unittest's own summaries are read from
# meson's log; a program whose summary cannot be read counts as one test, by its result.
import json, re, sys

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
        failed = sum(int(n) for n in re.findall(r"(?:failures|errors|unexpected successes)=(\d+)", tail))
        skipped = sum(int(n) for n in re.findall(r"skipped=(\d+)", tail))
        if not ok and failed == 0:
            failed = 1
        return total - failed - skipped, failed, skipped
    if entry.get("result") == "SKIP":
        return 0, 0, 1
    return (1, 0, 0) if ok else (0, 1, 0)

passed = failed = skipped = 0
try:
    with open(sys.argv[1]) as log:
        for line in log:
            p, f, s = cases(json.loads(line))
            passed, failed, skipped = passed + p, failed + f, skipped + s
except FileNotFoundError:
    failed = 1
if failed == 0 and sys.argv[2] != "0":
    failed = 1  # meson failed without logging a result
print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
sys.exit(1 if failed else 0)
PY
