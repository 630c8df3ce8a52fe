#!/usr/bin/env bash
# pkirelay's benchmark (issue 18): pkirelay beside the alternatives an operator would use (a shell
# loop of curl, xargs -P 8 curl) and beside the two ceilings of this machine (a bare libcurl
# multi loop posting from memory, and a bare read / write-rename / unlink loop on the same file
# system), all in one run, on disk and on tmpfs, against the benchmark's CA on 127.0.0.1
# (answerer.cc), which answers every request with the template answer of its kind made to carry
# that request's transaction ID and nonce (or, for PKCS#10, its subject and key). Prints one
# Markdown table with the machine's description, then the callgrind profile's top entries. Not
# part of the test suite.
#
# usage: contrib/bench/run.sh [--sizes 1000,10000,100000] [--fs disk|tmpfs|both] [--quick]
#   --sizes   backlog sizes for the batch runs and the ceilings (default 1000,10000,100000)
#   --fs      where folders and store live: disk (a folder under /var/tmp, or $BENCH_DISK_DIR),
#             tmpfs (/dev/shm), or both (default)
#   --quick   sizes 1000,10000 unless --sizes is given, 300-file curl baselines, 2 s of wrk
#
# Needs root only to install what is missing (wrk, valgrind, time, g++, curl,
# libcurl4-openssl-dev). Uses only 127.0.0.1; every loop is bounded; the answerer, the daemon and
# the temporary folders are gone when it ends, also on failure or Ctrl-C.
set -euo pipefail

sizes=""
fsopt=both
quick=0
while [ $# -gt 0 ]; do
    case $1 in
    --sizes) sizes=$2; shift 2 ;;
    --sizes=*) sizes=${1#*=}; shift ;;
    --fs) fsopt=$2; shift 2 ;;
    --fs=*) fsopt=${1#*=}; shift ;;
    --quick) quick=1; shift ;;
    -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
done
[ -n "$sizes" ] || { [ $quick = 1 ] && sizes=1000,10000 || sizes=1000,10000,100000; }
case $fsopt in disk) fslist="disk" ;; tmpfs) fslist="tmpfs" ;; both) fslist="disk tmpfs" ;;
*) echo "run.sh: --fs takes disk, tmpfs or both" >&2; exit 64 ;; esac
IFS=, read -r -a sizelist <<<"$sizes"
for n in "${sizelist[@]}"; do
    [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 1000000 ] ||
        { echo "run.sh: sizes are 1 to 1000000" >&2; exit 64; }
done
loopn=$([ $quick = 1 ] && echo 300 || echo 1000) # files for the per-file curl baselines
wrksecs=$([ $quick = 1 ] && echo 2 || echo 5)
# Fixed by issue 18; the environment may lower them for a trial of the script itself.
latencyn=${BENCH_LATENCY_N:-200} # single files for the daemon's drop-to-response latency
dropn=${BENCH_DROP_N:-10000}     # files of the daemon's burst, and of the run on a full store
oldn=${BENCH_OLD_N:-500000}      # finished items already in that store
cgn=${BENCH_CALLGRIND_N:-1000}   # files of the callgrind pass

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
started=$(date +%s)
# shellcheck source=contrib/bench/common.sh
. "$here/common.sh"

# What is missing is installed from Debian's packages.
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v valgrind >/dev/null || need+=(valgrind)
[ -x /usr/bin/time ] || need+=(time)
command -v g++ >/dev/null || need+=(g++)
command -v curl >/dev/null || need+=(curl)
[ -f /usr/include/x86_64-linux-gnu/curl/curl.h ] || [ -f /usr/include/curl/curl.h ] ||
    need+=(libcurl4-openssl-dev)
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "run.sh: needs ${need[*]}; run as root to install" >&2; exit 69; }
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${need[@]}" >/dev/null
fi

echo "run.sh: building pkirelay" >&2
builddir=${BUILDDIR:-build}
(cd "$root" && BUILDDIR=$builddir contrib/build.sh >/dev/null)
pk=$root/$builddir/agent/pkirelay

diskbase=${BENCH_DISK_DIR:-/var/tmp}
work=$(mktemp -d "$diskbase/pkirelay-bench.XXXXXX")
shm=""
answerer_pid=""
daemon_pid=""
cleanup() {
    set +e
    stop_pid "$daemon_pid"
    stop_pid "$answerer_pid"
    rm -rf "$work" ${shm:+"$shm"}
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[[ " $fslist " == *" tmpfs "* ]] && shm=$(mktemp -d /dev/shm/pkirelay-bench.XXXXXX)
results=$work/results.tsv
: >"$results"
log() { echo "run.sh: $(date +%T) $*" >&2; }

# record FS MEASURE N SECONDS USER SYS MAXRSS_KB NOTE...
record() { local IFS=$'\t'; echo "$*" >>"$results"; }
now() { date +%s.%N; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", a - b }'; }
count_out() { find "$1" -maxdepth 1 -type f ! -name '.*' | wc -l; }
# timed OUTFILE CMD...: runs CMD under /usr/bin/time; OUTFILE gets "wall user sys maxrss_kb".
timed() {
    local out=$1
    shift
    /usr/bin/time -f '%e %U %S %M' -o "$out" "$@"
}

# ---- templates, tools, responder ----
tpl=$work/templates
"$here/make_templates.sh" "$tpl"
gen() { # gen DIR COUNT START [VERIFY]
    "$here/gen_requests.py" --templates "$tpl" --pkirelay "$pk" --out "$1" --count "$2" \
        --start "$3" --verify "${4:-0}"
}
next=0 # the index of the next request made: every request of the run is distinct
fresh() { # fresh DIR COUNT: DIR/in with COUNT new requests, DIR/out and DIR/store empty
    rm -rf "$1"
    mkdir -p "$1/in" "$1/out" "$1/store"
    gen "$1/in" "$2" "$next" "${3:-0}"
    next=$((next + $2))
}
g++ -std=c++20 -O2 -Wall -Wextra -Werror -I"$root" "$here/ceiling.cc" -o "$work/ceiling" -lcurl

build_answerer "$work/answerer"
start_answerer "$work/answerer" "$tpl" "$work/ca"

config() { bench_config "$1" "$url" "${2:-10}"; } # config DIR [POLL]

# pkirelay_once FS MEASURE DIR N: one timed `pkirelay run --once` over DIR/in.
pkirelay_once() {
    local fs=$1 what=$2 d=$3 n=$4 rc=0 t0 t1 note=""
    config "$d"
    t0=$(now)
    timed "$d/time" timeout 3600 "$pk" run --once -c "$d/pkirelay.toml" 2>"$d/log" || rc=$?
    t1=$(now)
    read -r _ u s m <"$d/time"
    got=$(count_out "$d/out")
    left=$(unfinished "$pk" "$d/pkirelay.toml")
    [ "$rc" = 0 ] && [ "$got" = "$n" ] && [ -z "$left" ] ||
        note="FAILED: exit $rc, $got of $n responses${left:+, $left}"
    record "$fs" "$what" "$n" "$(minus "$t1" "$t0")" "$u" "$s" "$m" "$note"
}

# ---- wrk, for reference (network only, one location) ----
log "wrk ${wrksecs}s"
cat >"$work/post.lua" <<EOF
local f = assert(io.open("$tpl/req_cmp.der", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/pkixcmp"
EOF
wrkout=$(timeout 120 wrk -t1 -c32 -d"${wrksecs}s" -s "$work/post.lua" "$url/cmp" 2>&1)
wrkrate=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$wrkout")
wrkreqs=$(awk '/requests in/ { print $1 }' <<<"$wrkout")
record loopback "wrk -t1 -c32, one CMP body" "${wrkreqs:-0}" \
    "$(awk -v n="${wrkreqs:-0}" -v r="${wrkrate:-1}" 'BEGIN { printf "%.6f", n / r }')" "" "" "" ""

# ---- the 500k store: made once, on tmpfs when there is one, copied where needed ----
log "seed store and $oldn finished items"
seed=${shm:-$work}/seed
fresh "$seed" 30 9
config "$seed"
"$pk" run --once -c "$seed/pkirelay.toml" 2>"$seed/log"
big=${shm:-$work}/big.db
timeout 1800 "$here/make_store.py" "$seed/store/pkirelay.db" "$big" "$oldn"

for fs in $fslist; do
    base=$([ "$fs" = disk ] && echo "$work" || echo "$shm")
    fsdesc=$(df -PT "$base" | awk 'NR == 2 { print $2 }')
    log "$fs ($fsdesc, $base)"

    for n in "${sizelist[@]}"; do
        # Ceilings: the network one reads the requests, the file one then consumes them.
        log "$fs: ceilings at $n"
        fresh "$base/c" "$n"
        timed "$base/c/time" timeout 600 "$work/ceiling" net "$base/c/in" "$url" 32 \
            >"$base/c/result" || true
        read -r cnt secs failed <"$base/c/result"
        read -r _ u s m <"$base/c/time"
        record "$fs" "network ceiling: libcurl multi, 32 in flight, from memory" "$cnt" "$secs" \
            "$u" "$s" "$m" "$([ "$failed" = 0 ] || echo "FAILED: $failed errors")"
        timed "$base/c/time" timeout 600 "$work/ceiling" files "$base/c/in" "$base/c/out" \
            "$tpl" >"$base/c/result" || true
        read -r cnt secs failed <"$base/c/result"
        read -r _ u s m <"$base/c/time"
        record "$fs" "file ceiling: read, write tmp, rename, unlink, 1 syncfs" "$cnt" "$secs" \
            "$u" "$s" "$m" "$([ "$failed" = 0 ] || echo "FAILED: $failed errors")"
        rm -rf "$base/c"

        log "$fs: pkirelay run --once, $n files"
        fresh "$base/p" "$n" 300
        pkirelay_once "$fs" "pkirelay run --once" "$base/p" "$n"
        rm -rf "$base/p"
    done

    log "$fs: pkirelay run --once, $dropn files, $oldn finished items in the store"
    fresh "$base/p" "$dropn"
    cp "$big" "$base/p/store/pkirelay.db"
    pkirelay_once "$fs" "pkirelay run --once, store holds ${oldn} finished" "$base/p" "$dropn"
    rm -rf "$base/p"

    # Baselines an operator would script: one curl per file.
    log "$fs: shell loop of curl, $loopn files"
    fresh "$base/l" "$loopn"
    cat >"$base/l/loop.sh" <<'EOF'
# One curl per file, the response written beside, the request removed once answered.
cd "$1/in"
for f in *; do
    case $f in
    *.der) u=cmp t=application/pkixcmp e=pki ;;
    *.crq) u=cmc t="application/pkcs7-mime; smime-type=CMC-Request" e=crp ;;
    *.p10) u=p10 t=application/pkcs10 e=p7c ;;
    esac
    curl -sS --fail -H "Content-Type: $t" --data-binary "@$f" -o "$1/out/${f%.*}.$e" "$2/$u" &&
        rm -f -- "$f"
done
EOF
    t0=$(now)
    timed "$base/l/time" timeout 1200 bash "$base/l/loop.sh" "$base/l" "$url"
    t1=$(now)
    read -r _ u s m <"$base/l/time"
    got=$(count_out "$base/l/out")
    record "$fs" "shell loop: curl --data-binary @file per file" "$loopn" \
        "$(minus "$t1" "$t0")" "$u" "$s" "$m" \
        "$([ "$got" = "$loopn" ] || echo "FAILED: $got of $loopn")"

    log "$fs: xargs -P 8 curl, $loopn files"
    fresh "$base/l" "$loopn"
    for f in "$base/l/in"/*; do
        b=$(basename "$f")
        case $b in
        *.der) u=cmp t=application/pkixcmp e=pki ;;
        *.crq) u=cmc t="application/pkcs7-mime; smime-type=CMC-Request" e=crp ;;
        *.p10) u=p10 t=application/pkcs10 e=p7c ;;
        esac
        echo "-H \"Content-Type: $t\" --data-binary @$f -o $base/l/out/${b%.*}.$e $url/$u"
    done >"$base/l/args"
    t0=$(now)
    timed "$base/l/time" timeout 1200 xargs -P 8 -L 1 curl -sS --fail <"$base/l/args"
    t1=$(now)
    read -r _ u s m <"$base/l/time"
    got=$(count_out "$base/l/out")
    record "$fs" "xargs -P 8 curl (requests not removed)" "$loopn" "$(minus "$t1" "$t0")" \
        "$u" "$s" "$m" "$([ "$got" = "$loopn" ] || echo "FAILED: $got of $loopn")"
    rm -rf "$base/l"

    # Daemon mode: `pkirelay run` without --once, polling every second (its minimum).
    log "$fs: daemon, $latencyn single drops and a $dropn drop"
    d=$base/d
    rm -rf "$d"
    mkdir -p "$d/in" "$d/out" "$d/store" "$d/warm" "$d/one" "$d/many"
    config "$d" 1
    gen "$d/warm" 1 "$next"
    gen "$d/one" "$latencyn" $((next + 1))
    gen "$d/many" "$dropn" $((next + 1 + latencyn))
    next=$((next + 1 + latencyn + dropn))
    "$pk" run -c "$d/pkirelay.toml" 2>"$d/log" &
    daemon_pid=$!
    # The first drop waits for the daemon to be up; it is not counted.
    "$here/drop_watch.py" latency "$d/warm" "$d/in" "$d/out" --timeout 60 >/dev/null
    lat=$("$here/drop_watch.py" latency "$d/one" "$d/in" "$d/out" --timeout 60)
    cpu0=$(awk '{ print $14 + $15 }' "/proc/$daemon_pid/stat")
    burst=$("$here/drop_watch.py" burst "$d/many" "$d/in" "$d/out" --timeout 1800)
    cpu1=$(awk '{ print $14 + $15 }' "/proc/$daemon_pid/stat")
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$daemon_pid/status")
    stop_pid "$daemon_pid" 30
    daemon_pid=""
    left=$(unfinished "$pk" "$d/pkirelay.toml")
    tck=$(getconf CLK_TCK)
    record "$fs" "pkirelay run (daemon, poll_seconds = 1): one drop" "$dropn" \
        "$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['seconds'])" "$burst")" \
        "$(awk -v a="$cpu0" -v b="$cpu1" -v t="$tck" 'BEGIN { printf "%.3f", (b - a) / t }')" \
        0 "$hwm" "${left:+FAILED: $left}"
    record "$fs" "pkirelay run (daemon, poll_seconds = 1): latency" \
        "$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['count'])" "$lat")" \
        "" "" "" "" "$lat"
    rm -rf "$d"
done

# Callgrind: user-space instructions per message of a 1,000-file pass, on tmpfs when there is one.
cgbase=${shm:-$work}
cgfs=$([ -n "$shm" ] && echo tmpfs || echo disk)
for store in empty full; do
    log "callgrind, $cgn files, $store store"
    fresh "$cgbase/g" "$cgn"
    [ $store = full ] && cp "$big" "$cgbase/g/store/pkirelay.db"
    config "$cgbase/g"
    rc=0
    timeout 3600 valgrind --tool=callgrind --callgrind-out-file="$cgbase/g/cg.out" \
        "$pk" run --once -c "$cgbase/g/pkirelay.toml" 2>"$cgbase/g/log" || rc=$?
    got=$(count_out "$cgbase/g/out")
    callgrind_annotate --inclusive=no "$cgbase/g/cg.out" >"$work/callgrind-$store.txt" 2>&1 ||
        true
    total=$(awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }' \
        "$work/callgrind-$store.txt")
    what=$([ $store = full ] && echo "holds $oldn finished" || echo empty)
    left=$(unfinished "$pk" "$cgbase/g/pkirelay.toml")
    failed=$([ "$rc" = 0 ] && [ "$got" = "$cgn" ] && [ -z "$left" ] ||
        echo " FAILED: exit $rc, $got of $cgn${left:+, $left}")
    record "$cgfs" "callgrind, pkirelay run --once, store $what" "$cgn" "" "" "" "" \
        "ir=${total:-0}$failed"
    rm -rf "$cgbase/g"
done

# ---- the machine, and the table ----
# The answerer says on its way out what it answered and refused; a refusal is a request the
# benchmark made wrong, or a template answer it cannot fill in.
stop_pid "$answerer_pid"
answerer_pid=""
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    commit=$(git -C "$root" rev-parse --short HEAD)
    # Only the program's own sources decide what was measured.
    [ -z "$(git -C "$root" status --porcelain --untracked-files=no -- lib spool agent schemas \
        meson.build meson_options.txt)" ] || commit="$commit (sources modified)"
    echo "commit=$commit"
    echo "buildtype=$(meson introspect "$root/$builddir" --buildoptions 2>/dev/null |
        python3 -c 'import json, sys
print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "buildtype"))' ||
        echo unknown)"
    echo "nproc=$(nproc)"
    echo "cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "memory=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "load=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "kernel=$(uname -sr)"
    for fs in $fslist; do
        base=$([ "$fs" = disk ] && echo "$work" || echo "$shm")
        echo "fs_$fs=$(df -PT "$base" | awk 'NR == 2 { print $2 " on " $1 }'), $(dirname "$base")"
    done
    echo "answerer=$(tail -1 "$work/ca/answerer.log")"
    echo "curl=$(curl --version | awk 'NR == 1 { print $2 }')"
    echo "sizes=$sizes"
    echo "quick=$quick"
    echo "old=$oldn"
    echo "wall=$(($(date +%s) - started))"
} >"$work/machine.txt"
python3 "$here/report.py" "$work/machine.txt" "$results" "$work/callgrind-empty.txt" \
    "$work/callgrind-full.txt"
