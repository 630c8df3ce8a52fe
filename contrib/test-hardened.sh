#!/usr/bin/env bash
# The hostile-input checks CI runs after contrib/test.sh: (a) the whole test suite (unit tests,
# and the integration tests driving the pkirelay binary of this same build) under
# AddressSanitizer and UndefinedBehaviorSanitizer, and (b) every libFuzzer driver in tests/fuzz/
# for a bounded time, starting from its seed corpus in tests/fuzz/corpus/. Any sanitizer report
# fails the test it happens in; any crash, leak, timeout or out-of-memory a fuzzer finds fails
# the run, and the input is kept in $BUILDDIR/fuzz-artifacts/ (tests/fuzz/README.md says what to
# do with it). The last line is "N passed, N failed" (each fuzzer counts as one test), counted by
# contrib/count-tests.py like contrib/test.sh; the exit status is non-zero when anything failed.
#
# One clang build serves both parts (the fuzzers need clang; building twice would double the
# time CI spends compiling). Environment: BUILDDIR (default build-hardened), FUZZ_SECONDS per
# driver (default 30), FUZZERS (default: every driver), FUZZ_JOBS (drivers run side by side;
# default: one per core).
set -uo pipefail
cd "$(dirname "$0")/.."
builddir=${BUILDDIR:-build-hardened}
fuzz_seconds=${FUZZ_SECONDS:-30}
fuzzers=${FUZZERS:-classify der armor config mime cmc_tcp cmp_tcp}

# Stop at the first report, with a stack, so that a finding is a failed test and not a line in
# a log nobody reads. Leaks count (detect_leaks is LeakSanitizer's default on x86-64 Linux).
export ASAN_OPTIONS=halt_on_error=1:abort_on_error=1:detect_leaks=1:print_summary=1
export UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1:print_summary=1

if [ ! -f "$builddir/build.ninja" ] &&
    ! CXX=clang++ meson setup "$builddir" -Dfuzz=true -Dcrash_points=true -Db_sanitize=address,undefined \
        -Db_lundef=false >/dev/null; then
    echo "0 passed, 1 failed"
    exit 1
fi
if ! ninja -C "$builddir"; then
    echo "0 passed, 1 failed"
    exit 1
fi

rm -f "$builddir/meson-logs/testlog.json"
meson test -C "$builddir" --print-errorlogs --num-processes 2
status=$?

# Each driver writes what it finds to its own work corpus (the committed seeds stay as they
# are) and its crashes under fuzz-artifacts/. Drivers are single-threaded: FUZZ_JOBS of them
# (default: one per core) run side by side.
artifacts="$builddir/fuzz-artifacts"
mkdir -p "$artifacts" "$builddir/fuzz-work"
jobs=${FUZZ_JOBS:-$(nproc)}
fuzz() { # fuzz NAME: runs one driver; its exit status goes to fuzz-work/NAME.rc
    local name=$1 work="$builddir/fuzz-work/$1"
    mkdir -p "$work"
    rm -f "$work.rc"
    "$builddir/tests/fuzz/fuzz_$name" -max_total_time="$fuzz_seconds" -timeout=10 \
        -rss_limit_mb=2048 -max_len=16384 -print_final_stats=1 \
        -artifact_prefix="$artifacts/fuzz_$name-" "$work" "tests/fuzz/corpus/$name" \
        >"$work.log" 2>&1
    echo $? >"$work.rc"
}
running=0
for name in $fuzzers; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
    fuzz "$name" &
    running=$((running + 1))
done
wait

fuzz_passed=0
fuzz_failed=0
for name in $fuzzers; do
    log="$builddir/fuzz-work/$name.log"
    rc=$(cat "$builddir/fuzz-work/$name.rc" 2>/dev/null || echo 1)
    # libFuzzer's last status line: "#123456 DONE cov: 789 ft: 1234 corp: ..."
    summary=$(grep -E '^#[0-9]+[[:space:]]+(DONE|INITED|pulse|NEW|REDUCE)' "$log" | tail -n 1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(printf '%s\n' "$summary" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    if [ "$rc" -eq 0 ]; then
        fuzz_passed=$((fuzz_passed + 1))
        echo "fuzz_$name: ok, ${execs:-?} executions in ${fuzz_seconds} s, cov: ${cov:-?}"
    else
        fuzz_failed=$((fuzz_failed + 1))
        echo "fuzz_$name: FAILED (exit $rc) after ${execs:-?} executions; its log ($log) ends:"
        tail -n 40 "$log"
        ls "$artifacts"/fuzz_"$name"-* 2>/dev/null
    fi
done

contrib/count-tests.py "$builddir/meson-logs/testlog.json" "$status" "$fuzz_passed" "$fuzz_failed"
