# shellcheck shell=bash
# Shell functions shared by run.sh and profile.sh (sourced, not run): the loopback CA
# (answerer.cc) built, started and stopped, and the pkirelay configuration both measure with.
# Expects $here (this folder) to be set by the sourcing script.

# build_answerer OUT: compiles answerer.cc to OUT, as run.sh compiles ceiling.cc.
build_answerer() {
    # shellcheck disable=SC2154 # $here is the sourcing script's
    g++ -std=c++20 -O2 -Wall -Wextra -Werror "$here/answerer.cc" -o "$1"
}

# start_answerer BIN TEMPLATES DIR: starts the answerer on a free 127.0.0.1 port with its log in
# DIR/answerer.log; sets answerer_pid and url once it answers a CMP request, or exits.
start_answerer() {
    local bin=$1 tpl=$2 dir=$3 port
    mkdir -p "$dir"
    rm -f "$dir/port"
    "$bin" "$tpl" "$dir/port" 2>"$dir/answerer.log" &
    answerer_pid=$!
    for _ in $(seq 100); do
        [ -s "$dir/port" ] && break
        kill -0 "$answerer_pid" 2>/dev/null || break
        sleep 0.05
    done
    port=$(cat "$dir/port" 2>/dev/null) || port=""
    url=http://127.0.0.1:$port
    if [ -z "$port" ] || ! curl -sf -o /dev/null --data-binary @"$tpl/req_cmp.der" "$url/cmp"; then
        echo "$(basename "$0"): the answerer did not answer on 127.0.0.1 ($dir/answerer.log):" \
            "$(cat "$dir/answerer.log" 2>/dev/null)" >&2
        exit 1
    fi
}

# stop_pid PID [SECONDS]: TERM, up to SECONDS (default 10) to end, then KILL; reaps it. Quiet
# if it is gone already.
stop_pid() {
    [ -n "$1" ] || return 0
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq $((${2:-10} * 10))); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# bench_config DIR URL [POLL]: DIR/pkirelay.toml for DIR/{in,out,store}, default limits;
# requests are deleted once stored, as the file ceiling does; each kind goes to the location of
# the answerer that answers it.
bench_config() {
    cat >"$1/pkirelay.toml" <<EOF
# Made by contrib/bench (common.sh).
[store]
path = "$1/store/pkirelay.db"
[source.bench]
path = "$1/in"
responses = "$1/out"
after = "delete"
endpoint = "cmp"
routes = { cmc-full-request = "cmc", cmc-simple-request = "p10" }
[endpoint.cmp]
url = "$2/cmp"
[endpoint.cmc]
url = "$2/cmc"
[endpoint.p10]
url = "$2/p10"
[run]
poll_seconds = ${3:-10}
EOF
}

# unfinished PKIRELAY CONFIG: nothing when every item of CONFIG's store is answered; otherwise the
# counts of the other states (`pkirelay status --json`), e.g. "1000 review": an answer the relay
# did not take as its request's (lib/correlate.h) is not delivered, and is no throughput.
unfinished() {
    "$1" status --json -c "$2" 2>/dev/null | python3 -c '
import json, sys
try:
    counts = json.load(sys.stdin)["counts"]
except (ValueError, KeyError):
    sys.exit(print("store unreadable by pkirelay status"))
print(", ".join("%d %s" % (v, k) for k, v in sorted(counts.items()) if v and k != "answered"))'
}
