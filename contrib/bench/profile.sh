#!/usr/bin/env bash
# One pkirelay `run --once` pass over N fresh requests, under a chosen tool, for working on
# pkirelay's speed: the same templates, generator and loopback CA (answerer.cc) as run.sh,
# without the ceilings and baselines. Callgrind's instruction counts repeat from run to run on a shared
# machine where wall-clock times do not, so this is the tool for comparing two builds.
#
# usage: contrib/bench/profile.sh [--n N] [--fs tmpfs|disk] [--store FILE] [--keep DIR]
#                                 [--tool time|callgrind|strace] [--rounds R]
#   --n      requests (default 1000)
#   --fs     where folders and store live: tmpfs (/dev/shm, default) or disk ($BENCH_DISK_DIR or
#            /var/tmp)
#   --store  start from a copy of this store (e.g. one made by make_store.py)
#   --tool   time: /usr/bin/time (default); callgrind: instructions per message and the top
#            self costs; strace: system calls per message (strace -c -f)
#   --rounds R passes of N requests each into the same store (default 1): cost against history
#   --keep DIR  keep the callgrind output (cg.out) and logs in DIR
#   --set 'TOML' a line added at the end of the configuration (e.g. '[limits] max_in_flight = 64'
#            is two: pass '--set "[limits]" --set "max_in_flight = 64"'); repeatable
#   --endpoint-set 'TOML'  a line added to each endpoint's table ('max_connections = 16')
# Needs g++, curl, valgrind, strace and /usr/bin/time (run.sh installs all but strace). Uses only
# 127.0.0.1.
set -euo pipefail

n=1000
fsopt=tmpfs
store=""
tool=time
rounds=1
keep=""
extra=()
eextra=""
while [ $# -gt 0 ]; do
    case $1 in
    --n) n=$2; shift 2 ;;
    --fs) fsopt=$2; shift 2 ;;
    --store) store=$2; shift 2 ;;
    --tool) tool=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    --set) extra+=("$2"); shift 2 ;;
    --endpoint-set) eextra="$eextra$2"$'\n'; shift 2 ;;
    -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "profile.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
done
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
pk=$root/${BUILDDIR:-build}/agent/pkirelay
[ -x "$pk" ] || { echo "profile.sh: build first ($pk missing)" >&2; exit 69; }
base=$([ "$fsopt" = disk ] && echo "${BENCH_DISK_DIR:-/var/tmp}" || echo /dev/shm)
work=$(mktemp -d "$base/pkirelay-profile.XXXXXX")
# shellcheck source=contrib/bench/common.sh
. "$here/common.sh"
answerer_pid=""
cleanup() {
    set +e
    stop_pid "$answerer_pid"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$here/make_templates.sh" "$work/tpl" >/dev/null
build_answerer "$work/answerer"
start_answerer "$work/answerer" "$work/tpl" "$work/ca"

d=$work/p
mkdir -p "$d/in" "$d/out" "$d/store"
[ -z "$store" ] || cp "$store" "$d/store/pkirelay.db"
bench_config "$d" "$url"
if [ -n "$eextra" ]; then # each endpoint's table gets the --endpoint-set lines
    awk -v extra="$eextra" '{ print } /^\[endpoint\./ { printf "%s", extra }' \
        "$d/pkirelay.toml" >"$d/pkirelay.toml.new"
    mv "$d/pkirelay.toml.new" "$d/pkirelay.toml"
fi
[ ${#extra[@]} -eq 0 ] || printf '%s\n' "${extra[@]}" >>"$d/pkirelay.toml"

for r in $(seq "$rounds"); do
    "$here/gen_requests.py" --templates "$work/tpl" --pkirelay "$pk" --out "$d/in" --count "$n" \
        --start $((r * n)) --verify 0
    rm -f "$d/out"/*
    case $tool in
    time)
        /usr/bin/time -f '%e s wall, %U s user, %S s sys, %M KiB peak RSS' \
            "$pk" run --once -c "$d/pkirelay.toml" 2>"$d/log" || echo "exit $?"
        tail -1 "$d/log"
        ;;
    callgrind)
        valgrind --tool=callgrind --callgrind-out-file="$d/cg.out" \
            "$pk" run --once -c "$d/pkirelay.toml" 2>"$d/log" || echo "exit $?"
        callgrind_annotate --inclusive=no "$d/cg.out" 2>/dev/null >"$d/cg.txt"
        total=$(awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }' "$d/cg.txt")
        echo "round $r: $((total / n)) instructions/msg (total $total)"
        grep -A 25 'file:function' "$d/cg.txt" | sed -n '3,25p' | cut -c1-150
        ;;
    strace)
        strace -c -f -o "$d/strace.txt" "$pk" run --once -c "$d/pkirelay.toml" 2>"$d/log" ||
            echo "exit $?"
        awk -v n="$n" 'NR > 2 && $NF != "total" && $4 ~ /^[0-9]+$/ {
            printf "%8.2f/msg  %s\n", $4 / n, $NF }' "$d/strace.txt" | sort -rn | head -25
        ;;
    *) echo "profile.sh: --tool is time, callgrind or strace" >&2; exit 64 ;;
    esac
    got=$(find "$d/out" -maxdepth 1 -type f ! -name '.*' | wc -l)
    [ "$got" = "$n" ] || echo "profile.sh: round $r: $got of $n responses" >&2
    left=$(unfinished "$pk" "$d/pkirelay.toml")
    [ -z "$left" ] || echo "profile.sh: round $r: not answered: $left" >&2
done
[ -z "$keep" ] || { mkdir -p "$keep"; cp -r "$d/log" "$d"/cg.* "$d"/strace.txt "$keep"/ 2>/dev/null || true; cp "$d/store/pkirelay.db" "$keep/" 2>/dev/null || true; }
