#!/usr/bin/env bash
# Builds pkirelay and runs the whole test suite (unit tests and the integration tests against
# real peers on loopback). The last line is "N passed, N failed", counted from meson's test log
# by contrib/count-tests.py (shared with contrib/test-hardened.sh);
# the exit status is non-zero when anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
builddir=${BUILDDIR:-build}
# The test build has the crash points of lib/crash_point.h (inert unless PKIRELAY_CRASH_AT is
# set), which tests/integration/test_crash_points.py needs.
if [ -f "$builddir/build.ninja" ]; then
    meson setup --reconfigure "$builddir" -Dcrash_points=true >/dev/null
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
contrib/count-tests.py "$builddir/meson-logs/testlog.json" "$status"
