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

for d in classify der armor config mime; do
    rm -f "$here/corpus/$d"/seed-*
done
seed classify "$fixtures"/*.der "$fixtures"/*.pem "$fixtures"/*.b64 "$fixtures"/*.p7c
seed der "$fixtures"/*.der "$fixtures"/*.p7c
seed mime "$fixtures"/mail_*.eml "$fixtures"/entity_*.p7m "$fixtures"/inner_*.mime
seed armor "$fixtures"/*.pem "$fixtures"/*.b64 "$fixtures"/*.crt
seed config "$root/contrib/pkirelay.toml.example"

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
