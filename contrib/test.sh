#!/usr/bin/env bash
# Builds pkirelay and runs the whole test suite (unit tests and the integration tests against
# real peers on loopback). The last line is "N passed, N failed", counted from meson's test log;
# the exit status is non-zero when anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
builddir=${BUILDDIR:-build}
if ! BUILDDIR=$builddir contrib/build.sh; then
    echo "0 passed, 1 failed"
    exit 1
fi
rm -f "$builddir/meson-logs/testlog.json"
meson test -C "$builddir" --print-errorlogs --num-processes 2
status=$?
python3 - "$builddir/meson-logs/testlog.json" "$status" <<'PY'
import json, sys
passed = failed = skipped = 0
try:
    with open(sys.argv[1]) as log:
        for line in log:
            result = json.loads(line).get("result", "")
            if result in ("OK", "EXPECTEDFAIL"):
                passed += 1
            elif result == "SKIP":
                skipped += 1
            else:
                failed += 1
except FileNotFoundError:
    failed = 1
if failed == 0 and sys.argv[2] != "0":
    failed = 1  # meson failed without logging a result
print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
sys.exit(1 if failed else 0)
PY
