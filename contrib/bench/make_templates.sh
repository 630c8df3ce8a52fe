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

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/fixtures/pki_lib.sh
. "$here/../../tests/fixtures/pki_lib.sh"
out=$1
mkdir -p "$out"
cd "$out"
make_keys "/O=pkirelay bench/CN=Bench CA" "/CN=bench-ee"

# PKCS#10 whose subject carries a 16-character placeholder; the generator writes a serial there.
openssl req -new -key ee.key -subj "/CN=bench-Xq7Zk9Wm2Lp4Rt8V" -outform DER -out req_p10.der

# CMC Full PKI Request (RFC 10002 §3.2.1): PKIData with a transactionId and a senderNonce
# control whose placeholder values the generator rewrites. The transactionId INTEGER keeps its
# first octet 01, so every rewrite stays a positive, minimally encoded INTEGER (X.690 §8.3.2).
txid=INTEGER:0x01F00DF00DF00DF00D
nonce=FORMAT:HEX,OCTETSTRING:5E4D3C2B1A09F8E7D6C5B4A392817065
{
    cmc_body pkidata txid snonce
    echo "[empty]"
    cmc_control txid 1 5 "$txid"
    cmc_control snonce 2 6 "$nonce"
} >pkidata.cnf
openssl asn1parse -genconf pkidata.cnf -noout -out pkidata.der
cmc_sign pkidata.der 1.3.6.1.5.5.7.12.2 req_cmc.der ee.crt ee.key

# CMC Full PKI Response (RFC 10002 §3.2.2): CMCStatusInfoV2 success; the answer to CMC requests.
# RFC 10002 §6.6: it carries the request's transactionId and returns its senderNonce as the
# recipientNonce, beside a senderNonce of its own. The values here are the request template's,
# at the same lengths, so the answerer (answerer.cc) copies each request's into place.
{
    cmc_body pkiresponse status txid snonce rnonce
    echo "[empty]"
    cmc_control status 1 25 SEQUENCE:statusinfo
    printf '[statusinfo]\nstatus = INTEGER:0\nbodies = SEQUENCE:bodyList\n[bodyList]\nb = INTEGER:1\n'
    cmc_control txid 2 5 "$txid"
    cmc_control snonce 3 6 FORMAT:HEX,OCTETSTRING:A1B2C3D4E5F60718293A4B5C6D7E8F90
    cmc_control rnonce 4 7 "$nonce"
} >pkiresponse.cnf
openssl asn1parse -genconf pkiresponse.cnf -noout -out pkiresponse.der
cmc_sign pkiresponse.der 1.3.6.1.5.5.7.12.3 rsp_cmc.der ca.crt ca.key

# CMC Simple PKI Response (certs-only, RFC 10002 §4.1): the answer to PKCS#10 requests, the
# certificate the CA issues for the request template, then the CA's. Its subject and public key
# are the request's, at the same lengths, so the answerer copies each request's into place.
openssl x509 -req -inform DER -in req_p10.der -CA ca.crt -CAkey ca.key -days 30 \
    -out p10.crt 2>/dev/null
openssl crl2pkcs7 -nocrl -certfile p10.crt -certfile ca.crt -outform DER -out rsp_p10.der

# CMP ir and its ip through OpenSSL's in-process mock server, MAC protected.
cmp_mock -cmd ir -newkey ee.key -subject /CN=bench-ee -certout ir_out.crt \
    -reqout req_cmp.der,certconf.der -rspout rsp_cmp.der,pkiconf.der >cmp.log 2>&1
