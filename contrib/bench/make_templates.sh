#!/bin/sh
# Makes the benchmark's templates with the openssl command line, once per run: one request of
# each kind (CMP ir, CMC Full PKI Request, PKCS#10) and the answer the loopback responder
# (answerer.cc) makes every answer of that kind from (CMP ip, CMC Full PKI Response, CMC
# certs-only). gen_requests.py derives every other request from these by rewriting placeholders
# at the same length, and the answerer copies each request's into its answer likewise, because
# running openssl 100,000 times would take longer than the benchmark itself.
#
# usage: make_templates.sh OUTPUT-DIRECTORY
# Writes req_cmp.der, req_cmc.der, req_p10.der, rsp_cmp.der, rsp_cmc.der, rsp_p10.der.
set -eu

out=$1
mkdir -p "$out"
cd "$out"
OPENSSL_CONF=/dev/null
export OPENSSL_CONF

ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
# shellcheck disable=SC2086
openssl req -x509 $ec -keyout ca.key -out ca.crt -subj "/O=pkirelay bench/CN=Bench CA" \
    -days 30 2>/dev/null
# shellcheck disable=SC2086
openssl req -x509 $ec -keyout ee.key -out ee.crt -subj "/CN=bench-ee" -days 30 2>/dev/null

# PKCS#10 whose subject carries a 16-character placeholder; the generator writes a serial there.
openssl req -new -key ee.key -subj "/CN=bench-Xq7Zk9Wm2Lp4Rt8V" -outform DER -out req_p10.der

# CMC Full PKI Request (RFC 10002 §3.2.1): PKIData with a transactionId and a senderNonce
# control whose placeholder values the generator rewrites. The transactionId INTEGER keeps its
# first octet 01, so every rewrite stays a positive, minimally encoded INTEGER (X.690 §8.3.2).
cat > pkidata.cnf <<'CNF'
asn1 = SEQUENCE:pkidata
[pkidata]
controls = SEQUENCE:controls
reqs = SEQUENCE:empty
cms = SEQUENCE:empty
other = SEQUENCE:empty
[empty]
[controls]
c1 = SEQUENCE:txid
c2 = SEQUENCE:snonce
[txid]
bpid = INTEGER:1
type = OID:1.3.6.1.5.5.7.7.5
values = SET:txidval
[txidval]
v = INTEGER:0x01F00DF00DF00DF00D
[snonce]
bpid = INTEGER:2
type = OID:1.3.6.1.5.5.7.7.6
values = SET:snonceval
[snonceval]
v = FORMAT:HEX,OCTETSTRING:5E4D3C2B1A09F8E7D6C5B4A392817065
CNF
openssl asn1parse -genconf pkidata.cnf -noout -out pkidata.der
openssl cms -sign -binary -nodetach -in pkidata.der -econtent_type 1.3.6.1.5.5.7.12.2 \
    -signer ee.crt -inkey ee.key -outform DER -out req_cmc.der

# CMC Full PKI Response (RFC 10002 §3.2.2): CMCStatusInfoV2 success; the answer to CMC requests.
# RFC 10002 §6.6: it carries the request's transactionId and returns its senderNonce as the
# recipientNonce, beside a senderNonce of its own. The values here are the request template's,
# at the same lengths, so the answerer (answerer.cc) copies each request's into place.
cat > pkiresponse.cnf <<'CNF'
asn1 = SEQUENCE:pkiresponse
[pkiresponse]
controls = SEQUENCE:controls
cms = SEQUENCE:empty
other = SEQUENCE:empty
[empty]
[controls]
c1 = SEQUENCE:status
c2 = SEQUENCE:txid
c3 = SEQUENCE:snonce
c4 = SEQUENCE:rnonce
[txid]
bpid = INTEGER:2
type = OID:1.3.6.1.5.5.7.7.5
values = SET:txidval
[txidval]
v = INTEGER:0x01F00DF00DF00DF00D
[snonce]
bpid = INTEGER:3
type = OID:1.3.6.1.5.5.7.7.6
values = SET:snonceval
[snonceval]
v = FORMAT:HEX,OCTETSTRING:A1B2C3D4E5F60718293A4B5C6D7E8F90
[rnonce]
bpid = INTEGER:4
type = OID:1.3.6.1.5.5.7.7.7
values = SET:rnonceval
[rnonceval]
v = FORMAT:HEX,OCTETSTRING:5E4D3C2B1A09F8E7D6C5B4A392817065
[status]
bpid = INTEGER:1
type = OID:1.3.6.1.5.5.7.7.25
values = SET:statusval
[statusval]
v = SEQUENCE:statusinfo
[statusinfo]
status = INTEGER:0
bodies = SEQUENCE:bodyList
[bodyList]
b = INTEGER:1
CNF
openssl asn1parse -genconf pkiresponse.cnf -noout -out pkiresponse.der
openssl cms -sign -binary -nodetach -in pkiresponse.der -econtent_type 1.3.6.1.5.5.7.12.3 \
    -signer ca.crt -inkey ca.key -outform DER -out rsp_cmc.der

# CMC Simple PKI Response (certs-only, RFC 10002 §4.1): the answer to PKCS#10 requests, the
# certificate the CA issues for the request template, then the CA's. Its subject and public key
# are the request's, at the same lengths, so the answerer copies each request's into place.
openssl x509 -req -inform DER -in req_p10.der -CA ca.crt -CAkey ca.key -days 30 \
    -out p10.crt 2>/dev/null
openssl crl2pkcs7 -nocrl -certfile p10.crt -certfile ca.crt -outform DER -out rsp_p10.der

# CMP ir and its ip through OpenSSL's in-process mock server, MAC protected.
openssl cmp -config '' -use_mock_srv -srv_cert ca.crt -srv_key ca.key \
    -srv_secret pass:1234-5678 -srv_ref 1234 -rsp_cert ee.crt -ref 1234 \
    -secret pass:1234-5678 -srvcert ca.crt -cmd ir -newkey ee.key -subject /CN=bench-ee \
    -certout ir_out.crt -reqout req_cmp.der,certconf.der -rspout rsp_cmp.der,pkiconf.der \
    >cmp.log 2>&1
