#!/bin/sh
# Makes the fuzzers' seed corpora in tests/fuzz/corpus/<driver>/ from the test fixtures (messages
# made by the openssl command line, tests/fixtures/make_fixtures.sh) and from the example
# configuration. The seeds are committed, so that the fuzzers and CI start from the same inputs;
# run this again after adding a fixture. Files named crash-* or regress-* are regression inputs
# (a crash once found, then fixed) and are never removed by this script. Private keys the
# fixtures make are never copied.
#
# usage: tests/fuzz/make_corpus.sh
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
fixtures=$(mktemp -d "${TMPDIR:-/tmp}/pkirelay-corpus.XXXXXX")
trap 'rm -rf "$fixtures"' EXIT
sh "$root/tests/fixtures/make_fixtures.sh" "$fixtures" >/dev/null 2>&1

seed() { # seed DRIVER FILE...: copies the files as seed-<name>, replacing older seeds
    dir="$here/corpus/$1"
    shift
    mkdir -p "$dir"
    for f in "$@"; do
        cp "$f" "$dir/seed-$(basename "$f")"
    done
}

for d in classify der armor config cmc_tcp cmp_tcp; do
    rm -f "$here/corpus/$d"/seed-*
done
seed classify "$fixtures"/*.der "$fixtures"/*.pem "$fixtures"/*.b64 "$fixtures"/*.p7c
seed der "$fixtures"/*.der "$fixtures"/*.p7c
seed armor "$fixtures"/*.pem "$fixtures"/*.b64 "$fixtures"/*.crt
seed config "$root/contrib/pkirelay.toml.example"

# The TCP readers: fuzz_cmc_tcp takes two control bytes (chunk size, limit) before the stream,
# here 7-byte chunks and a 16 KiB limit, over the CMC messages and one indefinite-length BER
# message (openssl cms -sign -stream writes BER); fuzz_cmp_tcp takes frames in both framings
# around the CMP messages, and the polling frames.
mkdir -p "$fixtures/tcp"
openssl cms -sign -stream -binary -nodetach -in "$fixtures/p10.der" -signer "$fixtures/ee.crt" \
    -inkey "$fixtures/ee.key" -outform DER -out "$fixtures/indefinite.der" 2>/dev/null
for f in "$fixtures"/cmc_*.der "$fixtures"/certs_only.p7c "$fixtures/indefinite.der"; do
    { printf '\007\377'; cat "$f"; } >"$fixtures/tcp/$(basename "$f")"
done
seed cmc_tcp "$fixtures"/tcp/*
be32() { printf "\\$(printf %03o $(($1 >> 24 & 255)))\\$(printf %03o $(($1 >> 16 & 255)))"
    printf "\\$(printf %03o $(($1 >> 8 & 255)))\\$(printf %03o $(($1 & 255)))"; }
mkdir -p "$fixtures/frames"
for f in "$fixtures"/cmp_ir.der "$fixtures"/cmp_ip.der "$fixtures"/cmp_error.der; do
    n=$(wc -c <"$f")
    b=$(basename "$f" .der)
    { be32 $((n + 1)); printf '\000'; cat "$f"; } >"$fixtures/frames/rfc2510-$b"
    { be32 $((n + 3)); printf '\012\001\000'; cat "$f"; } >"$fixtures/frames/v10-$b"
done
{ be32 9; printf '\001'; be32 42; be32 5; } >"$fixtures/frames/rfc2510-pollRep"
{ be32 7; printf '\012\000\002'; be32 42; } >"$fixtures/frames/v10-pollReq"
{ be32 13; printf '\012\000\006version 10?'; } >"$fixtures/frames/v10-errorMsgRep"
seed cmp_tcp "$fixtures"/frames/*

# Configurations that reach the consistency checks and every value type of the key table.
cat >"$fixtures/minimal.toml" <<'TOML'
[source.in]
path = "in"
[endpoint.ca]
url = "http://127.0.0.1:8080/.well-known/cmp"
TOML
cat >"$fixtures/full.toml" <<'TOML'
[store]
path = "state/pkirelay.db"
[limits]
max_message_size = 1048576
batch_size = 10
max_in_flight = 4
settle_seconds = 0
[run]
poll_seconds = 5
[retry]
initial_seconds = 30
max_delay_seconds = 600
max_age_seconds = 3600
[source.a]
path = "a"
responses = "a/out"
after = "move"
endpoint = "cmp"
routes = { cmc-full-request = "cmc", cmc-simple-request = "cmc" }
[source.b]
path = "/srv/b"
after = "delete"
endpoint = "cmc"
[endpoint.cmp]
url = "https://ca.example/.well-known/cmp"
ca_file = "ca.pem"
verify_tls = true
connect_timeout_seconds = 5
timeout_seconds = 30
max_connections = 1
keep_alive = false
[endpoint.cmc]
url = "http://127.0.0.1:1/cmc"
client_cert = "relay.crt"
client_key = "relay.key"
TOML
cat >"$fixtures/problems.toml" <<'TOML'
[source.a]
path = ""
after = "sideways"
routes = { not-a-kind = "x", cmp = 3 }
[source.b]
path = "a"
[endpoint.x]
url = "ftp://nowhere"
client_cert = "c.pem"
max_connections = 1000
[limits]
batch_size = "many"
[surprise]
TOML
seed config "$fixtures"/*.toml
echo "seeds written to $here/corpus/"
