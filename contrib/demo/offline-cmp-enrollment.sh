#!/usr/bin/env bash
# Demo: an offline CMP enrollment carried by pkirelay, everything on loopback.
#   1. The `openssl cmp` client writes its initialization request (ir) into a folder; it cannot
#      reach any CA (as on an air-gapped or offline host).
#   2. `pkirelay run --once` stores the request, relays it to OpenSSL's CMP mock server over
#      HTTP, and writes the CA's answer (ip) beside the request as ir.pki.
#   3. The client reads ir.pki (-rspin), accepts it, and writes the issued certificate.
# Usage: offline-cmp-enrollment.sh [PKIRELAY-BINARY]
set -euo pipefail
pkirelay=$(realpath "${1:-build/agent/pkirelay}")
work=$(mktemp -d /tmp/pkirelay-demo.XXXXXX)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
mkdir inbox

for name in ca:/O=pkirelay-demo/CN=demo-ca leaf:/CN=enrolled-leaf; do
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -keyout "${name%%:*}.key" -out "${name%%:*}.crt" -subj "${name#*:}" 2>/dev/null
done

# OpenSSL 3.0's mock CA on a port the kernel chooses; it prints "ACCEPT [::]:PORT PID=N".
exec {server_out}< <(exec openssl cmp -config "" -port 0 -srv_cert ca.crt -srv_key ca.key \
    -srv_ref 1234 -srv_secret pass:1234-5678 -rsp_cert leaf.crt -grant_implicitconf 2>&1)
port=
while IFS= read -r -t 30 -u "$server_out" line; do
    if [[ $line == *ACCEPT* ]]; then
        port=${line##*:}; port=${port%% *}
        server_pid=${line##*PID=}
        break
    fi
done
[ -n "$port" ] || { echo "demo: the CMP server did not start" >&2; exit 1; }
echo "demo: OpenSSL CMP mock CA listening on port $port"

client=(openssl cmp -config "" -cmd ir -ref 1234 -secret pass:1234-5678 -srvcert ca.crt
        -newkey leaf.key -subject /CN=enrolled-leaf -implicit_confirm -certout issued.crt)

# Leg 1: the client writes the request; the CA is unreachable from its side.
"${client[@]}" -server 127.0.0.1:1/pkix/ -msg_timeout 2 -reqout inbox/ir.der >/dev/null 2>&1 || true
[ -f inbox/ir.der ] || { echo "demo: openssl cmp wrote no request" >&2; exit 1; }
echo "demo: client wrote inbox/ir.der"

cat > pkirelay.toml <<TOML
[store]
path = "$work/pkirelay.db"

[source.inbox]
path = "$work/inbox"

[endpoint.demo-ca]
url = "http://127.0.0.1:$port/pkix/"
max_connections = 1
keep_alive = false
TOML

# Leg 2: pkirelay relays it and writes the answer.
"$pkirelay" run --once -c pkirelay.toml
"$pkirelay" inspect inbox/ir.pki | sed 's/^/demo:   /'

# Leg 3: the client accepts the answer from the file.
"${client[@]}" -rspin inbox/ir.pki >/dev/null 2>&1
echo "demo: the client accepted pkirelay's response and wrote the certificate:"
openssl x509 -in issued.crt -noout -subject -issuer
"$pkirelay" show 1 -c pkirelay.toml
