#!/usr/bin/python3
"""An HTTP endpoint that misbehaves on purpose, for pkirelay's fault tests only.

It listens on 127.0.0.1 on a free port and prints "LISTENING <port>" on stdout once it accepts
connections. Every connection gets the behaviour chosen for the run with --mode:
  refuse           accept, then close at once without reading or answering
  reset            read the request, send the status line, headers and half of a valid body,
                   then reset the connection (SO_LINGER 0, close: the kernel sends RST)
  hang             read the request, never answer (until the endpoint is stopped)
  drip             send a valid answer one byte every --drip-ms milliseconds (default 50)
  503              503 with an empty body
  500-cmp-error    500 with a real CMP error PKIMessage (application/pkixcmp) as its body,
                   given a CMP request's transactionID and senderNonce (as recipNonce), as a
                   server answering that request would (RFC 9810 §5.1.1; tests/cmp_answer.py)
  200-garbage      200 with bytes that are no PKI message
  200-empty        200 with an empty body
  200-wrong-type   200 with a valid certs-only body labelled text/html
  200-trailing     200 with a valid certs-only body and one trailing byte
  200-oversize     200 with a well-formed certs-only answer of about --oversize bytes
                   (default 100 KiB: over a 64 KiB limits.max_message_size)
  200-cmp-for-cmc  200 with a CMP ip (application/pkixcmp), whatever was asked
  302-relative     302 with a relative Location (/moved), which curl resolves against the
                   endpoint's url
  200-cmp-other    the same ip for a CMP request: an answer of another transaction (its
                   transactionID and recipNonce are the mock server's own)
  drop-reused      a valid certs-only answer, kept alive, for the first request on a connection;
                   a later request on the same connection is read, then the connection closed
                   without an answer (a CA that died after taking it in)
"Valid" answers are made once at start by the openssl command line, independent of pkirelay:
certs-only with `openssl crl2pkcs7 -nocrl -certfile` over a throw-away certificate, the CMP
messages with `openssl cmp -use_mock_srv` (its -send_error makes the mock answer with an error
PKIMessage, the same way tests/fixtures/make_fixtures.sh makes cmp_error.der).
--save FILE writes the body of the answer this mode gives (before LISTENING, and again for each
answer made for its request), so a test can compare what pkirelay kept with what was sent;
nothing is written for modes without a body.
--log FILE appends one line per request read: MODE METHOD PATH "CONTENT-TYPE" LENGTH CLIENT-PORT
SHA256-OF-BODY, or one per connection with "- -" for method and path and "-" for the hash when
no request is read (refuse). It trusts its clients (it is a test peer). Every answer says
"Connection: close", so one connection carries one request, except in drop-reused.
"""
import argparse
import hashlib
import os
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading

from cmp_answer import answer_to

MODES = ["refuse", "reset", "hang", "drip", "503", "500-cmp-error", "200-garbage", "200-empty",
         "200-wrong-type", "200-trailing", "200-oversize", "200-cmp-for-cmc", "302-relative",
         "200-cmp-other",
         "drop-reused"]
CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
PKIXCMP = "application/pkixcmp"
GARBAGE = b"this is no PKI message\x00\xff" * 8
HEADER_LIMIT = 64 * 1024
BODY_LIMIT = 16 * 1024 * 1024


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, check=True,
                   env=dict(os.environ, OPENSSL_CONF="/dev/null"))


def make_answers(mode, workdir, oversize):
    """(content type, body) for the modes that answer, made with the openssl command line."""
    def read(name):
        with open(os.path.join(workdir, name), "rb") as f:
            return f.read()

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=fault-endpoint", "-days", "2",
            cwd=workdir)
    if mode in ("500-cmp-error", "200-cmp-for-cmc", "200-cmp-other"):
        # The in-process mock server answers the client's request; -rspout keeps its answer.
        # -send_error makes it answer with an error PKIMessage (body 23, RFC 9810 §5.3.21).
        cmp = ["cmp", "-config", "", "-use_mock_srv", "-srv_cert", "ca.crt", "-srv_key", "ca.key",
               "-srv_secret", "pass:1234-5678", "-srv_ref", "1234", "-rsp_cert", "ca.crt",
               "-ref", "1234", "-secret", "pass:1234-5678", "-srvcert", "ca.crt",
               "-newkey", "ca.key", "-subject", "/CN=fault-ee", "-certout", "enrolled.crt"]
        if mode == "500-cmp-error":
            try:
                openssl(*cmp, "-cmd", "cr", "-send_error", "-rspout", "answer.der", cwd=workdir)
            except subprocess.CalledProcessError:
                pass  # the client fails on the error it received; the file is what we want
        else:
            openssl(*cmp, "-cmd", "ir", "-implicit_confirm", "-rspout", "answer.der",
                    cwd=workdir)
        return PKIXCMP, read("answer.der")
    certfile = "ca.crt"
    if mode == "200-oversize":
        # The same certificate many times: still a well-formed certs-only SignedData.
        one = read("ca.crt")
        with open(os.path.join(workdir, "many.crt"), "wb") as f:
            f.write(one * (oversize // max(len(one) // 2, 1) + 1))
        certfile = "many.crt"
    openssl("crl2pkcs7", "-nocrl", "-certfile", certfile, "-outform", "DER", "-out", "answer.der",
            cwd=workdir)
    body = read("answer.der")
    if mode == "200-oversize":
        assert len(body) >= oversize, (len(body), oversize)
    return CERTS_ONLY, body


def http_answer(status, reason, body=b"", ctype=None, close=True):
    head = [f"HTTP/1.1 {status} {reason}"]
    if ctype:
        head.append(f"Content-Type: {ctype}")
    head += [f"Content-Length: {len(body)}"] + (["Connection: close"] if close else []) + ["", ""]
    return "\r\n".join(head).encode() + body


class Handler(socketserver.BaseRequestHandler):
    def read_request(self):
        """(method, path, content type, body) of one request, or None if the client left."""
        sock, data = self.request, self.pending
        self.pending = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk or len(data) > HEADER_LIMIT:
                return None
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path = (lines[0].split() + ["-", "-"])[:2]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = min(int(headers.get("content-length", "0")), BODY_LIMIT)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            body += chunk
        body, self.pending = body[:length], body[length:]
        return method, path, headers.get("content-type", ""), body

    def log(self, method, path, ctype, body):
        srv = self.server
        digest = hashlib.sha256(body).hexdigest() if body is not None else "-"
        if srv.log:
            with srv.lock:
                srv.log.write('%s %s %s "%s" %d %d %s\n' % (
                    srv.mode, method, path, ctype, len(body or b""), self.client_address[1],
                    digest))
                srv.log.flush()

    def handle(self):
        srv, sock = self.server, self.request
        mode = srv.mode
        if mode == "refuse":
            self.log("-", "-", "", None)
            return  # socketserver closes the connection: nothing was read or answered
        self.pending = b""
        if mode == "drop-reused":
            first = True
            while (request := self.read_request()) is not None:
                self.log(*request)
                if not first:
                    return  # read, never answered: socketserver closes the connection
                first = False
                sock.sendall(http_answer(200, "OK", srv.body, srv.ctype, close=False))
            return
        request = self.read_request()
        if request is None:
            return
        method, path, ctype, body = request
        self.log(method, path, ctype, body)
        if mode == "hang":
            srv.stopping.wait()
            return
        if mode == "reset":
            whole = http_answer(200, "OK", srv.body, srv.ctype)
            sock.sendall(whole[:len(whole) - len(srv.body) // 2])
            # SO_LINGER on with a zero timeout: close() discards the rest and sends RST.
            # Closed here: socketserver would shut the writing side down first (a FIN, not RST).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            return
        if mode == "drip":
            data = http_answer(200, "OK", srv.body, srv.ctype)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                for i in range(len(data)):
                    sock.sendall(data[i:i + 1])
                    if srv.stopping.wait(srv.drip):
                        return
            except OSError:
                return  # the client gave up (its timeout)
            return
        def for_request():
            # A CMP request gets the error as its own (a PKCS#10 gets it as it is: it cannot be
            # answered in CMP anyway).
            if ctype.split(";")[0].strip().lower() != PKIXCMP:
                return srv.body
            answer = answer_to(body, srv.body)
            if srv.save:
                with open(srv.save, "wb") as f:
                    f.write(answer)
            return answer

        answers = {
            "503": lambda: http_answer(503, "Service Unavailable"),
            "500-cmp-error": lambda: http_answer(500, "Internal Server Error", for_request(),
                                                 srv.ctype),
            "200-garbage": lambda: http_answer(200, "OK", GARBAGE, CERTS_ONLY),
            "200-empty": lambda: http_answer(200, "OK", b"", CERTS_ONLY),
            "200-wrong-type": lambda: http_answer(200, "OK", srv.body, "text/html"),
            "200-trailing": lambda: http_answer(200, "OK", srv.body + b"\x00", srv.ctype),
            "200-oversize": lambda: http_answer(200, "OK", srv.body, srv.ctype),
            "200-cmp-for-cmc": lambda: http_answer(200, "OK", srv.body, srv.ctype),
            "302-relative": lambda: http_answer(302, "Found").replace(
                b"\r\n\r\n", b"\r\nLocation: /moved\r\n\r\n", 1),
            "200-cmp-other": lambda: http_answer(200, "OK", srv.body, srv.ctype),
        }
        try:
            sock.sendall(answers[mode]())
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", required=True, choices=MODES)
    ap.add_argument("--log")
    ap.add_argument("--save")
    ap.add_argument("--drip-ms", type=int, default=50)
    ap.add_argument("--oversize", type=int, default=100 * 1024)
    args = ap.parse_args()
    # SIGTERM (how tests stop it) unwinds normally, so the temporary directory goes away.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with tempfile.TemporaryDirectory(prefix="fault_endpoint.") as workdir:
        server = Server(("127.0.0.1", 0), Handler)
        server.mode = args.mode
        server.drip = args.drip_ms / 1000.0
        server.ctype, server.body = make_answers(args.mode, workdir, args.oversize)
        server.stopping = threading.Event()
        server.save = args.save
        if args.save:
            sent = {"500-cmp-error": server.body, "200-garbage": GARBAGE,
                    "200-wrong-type": server.body, "200-trailing": server.body + b"\x00",
                    "200-oversize": server.body, "200-cmp-for-cmc": server.body,
                    "200-cmp-other": server.body,
                    "drip": server.body, "reset": server.body}.get(args.mode)
            if sent is not None:
                with open(args.save, "wb") as f:
                    f.write(sent)
        server.lock = threading.Lock()
        server.log = open(args.log, "a") if args.log else None
        print("LISTENING %d" % server.server_address[1], flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.stopping.set()


if __name__ == "__main__":
    main()
