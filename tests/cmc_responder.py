#!/usr/bin/python3
"""A small CMC responder over HTTP(S) (RFC 5273 §4 / RFC 10003 §4), for pkirelay's tests only.

It listens on 127.0.0.1 on a free port, prints "LISTENING <port>" on stdout once it accepts
connections (HTTPS when --tls-cert is given), and answers every POST (any path):
  application/pkcs10                                -> certs-only Simple PKI Response
  application/pkcs7-mime; smime-type=CMC-Request    -> signed Full PKI Response (statusInfoV2
                                                       success, nonce and transactionId echoed)
  anything else                                     -> 415
Certificates come from a throw-away CA made at start; all crypto is done by the `openssl`
command line, so the responses are independent of pkirelay's own code. It trusts its clients
(it is a test peer): bad input gives 400, nothing more. HTTP/1.1 with keep-alive, one thread per
connection.

Options: --fail-status N answers every request with HTTP N and an empty body;
         --log FILE appends one line per request: method path "content-type" length client-port,
           followed by client=CN when the client presented a (verified) certificate;
         --tls-cert FILE --tls-key FILE serve HTTPS (TLS 1.2 or later) with that PEM certificate
           (chain) and key instead of HTTP, on the same kind of port;
         --tls-client-ca FILE (with --tls-cert) requires a client certificate issued by a CA in
           that PEM file: connections without one fail in the handshake;
         --hang-every K: every K-th request (counted from 1) is read and logged, then never
           answered (a CA that hangs), until the responder is stopped;
         --delay-ms N waits N ms before answering each request (a slow CA);
         --fixed FILE answers every PKCS#10 with the certs-only response in FILE instead of
           issuing a certificate (a fast CA for many requests; still logged one by one; a
           Simple PKI Request carries nothing an answer could be matched on);
         --pending N: a CA that decides later (RFC 5272 §6.1.1 pending, §6.13 queryPending).
           A Full PKI Request without a queryPending control is answered with status pending
           and a PendInfo (a new random pendToken, pendTime now); a request whose queryPending
           control carries that token is answered pending again until it is the N-th such
           query, which gets success (and the token is spent); an unknown or spent token gets
           status failed with failInfo badRequest. The tokens live in memory only.
         --other-transaction answers a Full PKI Request as if it were another transaction's:
           a recipientNonce that is not its senderNonce and another transactionId (a CA or path
           that mixed answers up);
         --save FILE writes the body of each answer sent (the last one stays).
TLS handshakes run in the connection's thread, so a client that stalls or fails its handshake
never blocks the listener; a failed handshake is reported on stderr in one line.
"""
import argparse
import http.server
import os
import secrets
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time

ID_CMC = "1.3.6.1.5.5.7.7."
OID_TRANSACTION_ID = bytes.fromhex("2b06010505070705")  # id-cmc-transactionId (.7.5)
OID_SENDER_NONCE = bytes.fromhex("2b06010505070706")  # id-cmc-senderNonce (.7.6)
OID_QUERY_PENDING = bytes.fromhex("2b06010505070715")  # id-cmc-queryPending (.7.21)
CMC_SUCCESS, CMC_FAILED, CMC_PENDING = 0, 2, 3  # CMCStatus (RFC 5272 §6.1.1)
FAIL_BAD_REQUEST = 2  # CMCFailInfo badRequest (RFC 5272 §6.1.4)
MAX_BODY = 1 << 20


def openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


def der_items(data):
    """The TLVs of a DER sequence's content as (tag, value) pairs; short and long lengths."""
    items, i = [], 0
    while i < len(data):
        tag, n = data[i], data[i + 1]
        i += 2
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(data[i:i + k], "big")
            i += k
        items.append((tag, data[i:i + n]))
        i += n
    return items


def request_controls(pki_data):
    """transactionId (INTEGER content octets), senderNonce and queryPending (the pendToken)
    from a PKIData (RFC 5272 §3.2.1, §6.13)."""
    found = {}
    (tag, body), = der_items(pki_data)[:1]
    controls = der_items(body)[0][1]
    for _, attr in der_items(controls):
        _, oid, values = [v for _, v in der_items(attr)][:3]
        first = der_items(values)[0][1] if values else b""
        if oid == OID_TRANSACTION_ID:
            found["tid"] = first
        elif oid == OID_SENDER_NONCE:
            found["nonce"] = first
        elif oid == OID_QUERY_PENDING:
            found["query"] = first
    return found


def media_type(value):
    """('type/subtype', {param: value}) with lower-case names and smime-type value."""
    parts = [p.strip() for p in (value or "").split(";")]
    params = {}
    for p in parts[1:]:
        if "=" in p:
            k, v = p.split("=", 1)
            params[k.strip().lower()] = v.strip().strip('"').lower()
    return parts[0].lower(), params


class Responder:
    def __init__(self, workdir, pending=0):
        self.dir = workdir
        self.pending = pending  # queries until success; 0: answer at once
        self.tokens = {}  # pendToken -> queries still answered pending
        self.lock = threading.Lock()
        self.key = os.path.join(workdir, "ca.key")
        self.crt = os.path.join(workdir, "ca.crt")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", self.key, "-out", self.crt, "-subj", "/CN=cmc-test-responder",
                "-days", "2")

    def simple(self, csr, tmp):
        req, leaf = os.path.join(tmp, "csr.der"), os.path.join(tmp, "leaf.pem")
        with open(req, "wb") as f:
            f.write(csr)
        openssl("x509", "-req", "-inform", "DER", "-in", req, "-CA", self.crt, "-CAkey", self.key,
                "-set_serial", str(secrets.randbits(63)), "-days", "1", "-out", leaf)
        return openssl("crl2pkcs7", "-nocrl", "-certfile", leaf, "-certfile", self.crt,
                       "-outform", "DER")

    def full(self, request, tmp, other_transaction=False):
        pki_data = openssl("cms", "-verify", "-noverify", "-binary", "-inform", "DER", "-out", "-",
                           data=request)
        found = request_controls(pki_data)
        status, token = self.decide(found)
        other = []  # the status's otherInfo (RFC 5272 §6.1.1 OtherStatusInfo)
        if status == CMC_PENDING:
            other = ["other=SEQUENCE:pend"]
        elif status == CMC_FAILED:
            other = ["other=INTEGER:%d" % FAIL_BAD_REQUEST]
        if other_transaction:
            # Another request's controls: a fresh nonce and the next transactionId.
            found["nonce"] = secrets.token_bytes(16)
            tid = int.from_bytes(found.get("tid", b"\x00"), "big", signed=True) + 1
            found["tid"] = tid.to_bytes((tid.bit_length() + 8) // 8, "big", signed=True)
        # RFC 5272 §6.6: recipientNonce echoes the request's senderNonce; §6.6 also wants the
        # transactionId copied when present.
        controls, extra = ["c1=SEQUENCE:status", "c2=SEQUENCE:snonce"], []
        if "nonce" in found:
            controls.append("c3=SEQUENCE:rnonce")
            extra += ["[rnonce]", "id=INTEGER:3", "type=OID:" + ID_CMC + "7", "vals=SET:rnv",
                      "[rnv]", "v=FORMAT:HEX,OCTETSTRING:" + found["nonce"].hex()]
        if "tid" in found:
            controls.append("c4=SEQUENCE:tid")
            value = int.from_bytes(found["tid"], "big", signed=True)
            extra += ["[tid]", "id=INTEGER:4", "type=OID:" + ID_CMC + "5", "vals=SET:tidv",
                      "[tidv]", "v=INTEGER:%d" % value]
        if status == CMC_PENDING:
            # PendInfo ::= SEQUENCE { pendToken OCTET STRING, pendTime GeneralizedTime }
            extra += ["[pend]", "token=FORMAT:HEX,OCTETSTRING:" + token.hex(),
                      "time=GENTIME:" + time.strftime("%Y%m%d%H%M%SZ", time.gmtime())]
        conf = "\n".join([
            "asn1=SEQUENCE:resp", "[resp]", "controls=SEQUENCE:controls", "cms=SEQUENCE:empty",
            "other=SEQUENCE:empty", "[empty]", "[controls]", *controls,
            # CMCStatusInfoV2 (RFC 5272 §6.1.1) for body part 1, with its otherInfo.
            "[status]", "id=INTEGER:1", "type=OID:" + ID_CMC + "25", "vals=SET:sv",
            "[sv]", "v=SEQUENCE:si", "[si]", "status=INTEGER:%d" % status, "list=SEQUENCE:bl",
            *other, "[bl]", "b=INTEGER:1",
            "[snonce]", "id=INTEGER:2", "type=OID:" + ID_CMC + "6", "vals=SET:snv",
            "[snv]", "v=FORMAT:HEX,OCTETSTRING:" + secrets.token_hex(16), *extra, ""])
        cnf, der = os.path.join(tmp, "resp.cnf"), os.path.join(tmp, "resp.der")
        with open(cnf, "w") as f:
            f.write(conf)
        openssl("asn1parse", "-genconf", cnf, "-noout", "-out", der)
        return openssl("cms", "-sign", "-binary", "-in", der, "-econtent_type",
                       "1.3.6.1.5.5.7.12.3", "-nodetach", "-outform", "DER", "-signer", self.crt,
                       "-inkey", self.key)

    def decide(self, found):
        """(CMCStatus, pendToken or None) for a Full PKI Request's controls: success unless
        --pending is given (see the options above)."""
        if not self.pending:
            return CMC_SUCCESS, None
        with self.lock:
            query = found.get("query")
            if query is None:
                token = secrets.token_bytes(16)
                self.tokens[token] = self.pending
                return CMC_PENDING, token
            left = self.tokens.get(query)
            if left is None:
                return CMC_FAILED, None
            if left > 1:
                self.tokens[query] = left - 1
                return CMC_PENDING, query
            del self.tokens[query]
            return CMC_SUCCESS, None


HANDSHAKE_TIMEOUT = 30  # seconds a client gets to finish its TLS handshake


def tls_context(cert, key, client_ca):
    """The server's SSLContext: TLS 1.2 or later, and a required client certificate when
    client_ca is given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def peer_cn(sock):
    """The subject CN of the client's verified certificate, or None (plain HTTP, no cert)."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert = sock.getpeercert()  # {} unless a certificate was requested and verified
    for rdn in (cert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return value
    return None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries Content-Length
    # Headers and body go out in two writes: without TCP_NODELAY the body waits for the
    # client's delayed ACK of the headers (about 40 ms on Linux), which would be measured as
    # pkirelay's latency.
    disable_nagle_algorithm = True

    def setup(self):
        self.tls_failed = False
        if isinstance(self.request, ssl.SSLSocket):
            # The listening socket was wrapped with do_handshake_on_connect=False: the
            # handshake happens here, in this connection's thread, with a deadline.
            self.request.settimeout(HANDSHAKE_TIMEOUT)
            try:
                self.request.do_handshake()
            except (ssl.SSLError, OSError) as e:
                sys.stderr.write("cmc_responder: TLS handshake with port %d failed: %s\n"
                                 % (self.client_address[1], e))
                sys.stderr.flush()
                self.tls_failed = True
            self.request.settimeout(None)
        super().setup()

    def handle(self):
        if not self.tls_failed:
            super().handle()

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        if length > MAX_BODY:
            self.answer(413)
            self.close_connection = True
            return
        body = self.rfile.read(length)
        ctype = self.headers.get("Content-Type", "")
        srv = self.server
        if srv.log:
            with srv.lock:
                cn = peer_cn(self.request)
                srv.log.write('%s %s "%s" %d %d%s\n' % (self.command, self.path, ctype, len(body),
                                                       self.client_address[1],
                                                       "" if cn is None else " client=" + cn))
                srv.log.flush()
        if srv.hang_every:
            with srv.lock:
                srv.count += 1
                hang = srv.count % srv.hang_every == 0
            if hang:
                srv.stopping.wait()  # never answered; the connection dies with the responder
                return
        if srv.delay:
            srv.stopping.wait(srv.delay)
        if srv.fail_status:
            return self.answer(srv.fail_status)
        mtype, params = media_type(ctype)
        try:
            with tempfile.TemporaryDirectory(dir=srv.responder.dir) as tmp:
                if mtype == "application/pkcs10" and srv.fixed is not None:
                    rsp, rtype = srv.fixed, "certs-only"
                elif mtype == "application/pkcs10":
                    rsp, rtype = srv.responder.simple(body, tmp), "certs-only"
                elif mtype == "application/pkcs7-mime" and params.get("smime-type") == "cmc-request":
                    rsp = srv.responder.full(body, tmp, srv.other_transaction)
                    rtype = "CMC-Response"
                else:
                    return self.answer(415)
        except (subprocess.CalledProcessError, ValueError, IndexError) as e:
            sys.stderr.write("cmc_responder: bad request: %s\n" % e)
            return self.answer(400)
        if srv.save:
            with open(srv.save, "wb") as f:
                f.write(rsp)
        self.answer(200, rsp, "application/pkcs7-mime; smime-type=" + rtype)

    def answer(self, status, body=b"", ctype=None):
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # stdout carries only the LISTENING line; --log has the requests


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fail-status", type=int, default=0)
    ap.add_argument("--log")
    ap.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS")
    ap.add_argument("--tls-key", help="PEM private key of --tls-cert")
    ap.add_argument("--tls-client-ca", help="PEM CA file: require a client certificate from it")
    ap.add_argument("--hang-every", type=int, default=0)
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--fixed", help="certs-only response (DER) for every PKCS#10")
    ap.add_argument("--pending", type=int, default=0,
                    help="answer Full PKI Requests pending until the N-th queryPending")
    ap.add_argument("--other-transaction", action="store_true")
    ap.add_argument("--save")
    args = ap.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        ap.error("--tls-client-ca needs --tls-cert and --tls-key")
    # SIGTERM (how tests stop it) unwinds normally, so the CA's temporary directory goes away.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with tempfile.TemporaryDirectory(prefix="cmc_responder.") as workdir:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        if args.tls_cert:
            ctx = tls_context(args.tls_cert, args.tls_key, args.tls_client_ca)
            server.socket = ctx.wrap_socket(server.socket, server_side=True,
                                            do_handshake_on_connect=False)
        server.responder = Responder(workdir, args.pending)
        server.fail_status = args.fail_status
        server.hang_every = args.hang_every
        server.count = 0
        server.delay = args.delay_ms / 1000.0
        server.stopping = threading.Event()
        server.fixed = None
        server.other_transaction = args.other_transaction
        server.save = args.save
        if args.fixed:
            with open(args.fixed, "rb") as f:
                server.fixed = f.read()
        server.lock = threading.Lock()
        server.log = open(args.log, "a") if args.log else None
        print("LISTENING %d" % server.server_address[1], flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
