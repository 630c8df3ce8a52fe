#!/usr/bin/python3
"""A CMC-over-TCP responder (RFC 5273 §5 / RFC 10003 §5), for pkirelay's tests only.

It listens on 127.0.0.1 on a free port and prints "LISTENING <port>". Each connection carries
requests one after the other with no framing: a request is one DER value, read until its outer
length is complete, and is answered as tests/cmc_responder.py answers it over HTTP (its
Responder: a PKCS#10 gets a certs-only Simple PKI Response, a Full PKI Request a signed Full PKI
Response), all crypto by the openssl command line.

Options:
  --log FILE        one line per event: "open C", "request C N LENGTH", "close C why"
                    (C the connection's number from 1, N the request's number on it)
  --idle-close-ms N closes a connection that has been idle N ms after an answer (a server may
                    close idle connections, RFC 5273 §5)
  --tls-cert/--tls-key FILE   TLS on the listening socket; --tls-client-ca FILE requires a
                    client certificate from that CA
  --misbehave MODE  for every request, or only the K-th with --every K (counted over the
                    whole run, from 1):
      reset         read the request, then reset the connection (RST, nothing answered)
      drip          the right answer, in segments of 7 bytes (TCP_NODELAY, 2 ms apart)
      indefinite    the right answer with its outer SEQUENCE in the indefinite-length form
      oversize      a SEQUENCE header declaring 256 MiB, then a few bytes, then silence
      endless       an indefinite-length SEQUENCE that never ends (until the client hangs up)
      garbage       "HTTP/1.0 200 OK" instead of DER
      silent        read the request, never answer
It trusts its client (a test peer): a request that cannot be parsed closes the connection.
"""
import argparse
import os
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cmc_responder import Responder, tls_context  # noqa: E402

MAX_REQUEST = 1 << 20


def outer_length(buf):
    """Total length of the definite-length DER value at the start of buf, or None if the
    header is not complete yet."""
    if len(buf) < 2:
        return None
    n = buf[1]
    if n < 0x80:
        return 2 + n
    k = n & 0x7F
    if k == 0 or k > 4:
        raise ValueError("unsupported length form")
    if len(buf) < 2 + k:
        return None
    return 2 + k + int.from_bytes(buf[2:2 + k], "big")


def indefinite(der):
    """The same value with its outer SEQUENCE re-encoded in the indefinite-length form
    (X.690 §8.1.3.6): 30 80, the contents, 00 00."""
    n = der[1]
    head = 2 + (n & 0x7F if n & 0x80 else 0)
    return b"\x30\x80" + der[head:] + b"\x00\x00"


class Server:
    def __init__(self, args, workdir):
        self.args = args
        self.responder = Responder(workdir)
        self.workdir = workdir
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        self.log = open(args.log, "a") if args.log else None
        self.ctx = (tls_context(args.tls_cert, args.tls_key, args.tls_client_ca)
                    if args.tls_cert else None)

    def note(self, line):
        if self.log:
            with self.lock:
                self.log.write(line + "\n")
                self.log.flush()

    def answer(self, request):
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            # A PKCS#10 starts SEQUENCE { SEQUENCE { INTEGER 0 ...; a CMS ContentInfo
            # SEQUENCE { OBJECT IDENTIFIER ... (PROTOCOLS.md §8).
            inner = request[2 + (request[1] & 0x7F if request[1] & 0x80 else 0):]
            if inner[:1] == b"\x06":
                return self.responder.full(request, tmp)
            return self.responder.simple(request, tmp)

    def serve(self, sock, number):
        self.note("open %d" % number)
        why = "client closed"
        buf = b""
        served = 0
        try:
            if self.ctx:
                sock = self.ctx.wrap_socket(sock, server_side=True)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                if served and self.args.idle_close_ms:
                    sock.settimeout(self.args.idle_close_ms / 1000.0)
                try:
                    while True:
                        total = outer_length(buf)
                        if total is not None and len(buf) >= total:
                            break
                        chunk = sock.recv(65536)
                        if not chunk:
                            return
                        buf += chunk
                        sock.settimeout(None)
                        if len(buf) > MAX_REQUEST:
                            why = "request too large"
                            return
                except socket.timeout:
                    why = "idle"
                    return
                request, buf = buf[:total], buf[total:]
                served += 1
                with self.lock:
                    self.requests += 1
                    count = self.requests
                self.note("request %d %d %d" % (number, served, len(request)))
                mode = self.args.misbehave
                if mode and self.args.every and count % self.args.every != 0:
                    mode = None
                if mode == "reset":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    why = "reset"
                    return
                if mode == "silent":
                    why = "silent"
                    threading.Event().wait()
                if mode == "oversize":
                    sock.sendall(b"\x30\x84\x10\x00\x00\x00" + b"\x04\x00" * 8)
                    threading.Event().wait()
                if mode == "endless":
                    sock.sendall(b"\x30\x80")
                    while True:
                        sock.sendall(b"\x04\x82\x10\x00" + b"\x00" * 4096)
                if mode == "garbage":
                    sock.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
                    continue
                rsp = self.answer(request)
                if mode == "indefinite":
                    rsp = indefinite(rsp)
                if mode == "drip":
                    for i in range(0, len(rsp), 7):
                        sock.sendall(rsp[i:i + 7])
                        time.sleep(0.002)
                else:
                    sock.sendall(rsp)
        except (OSError, ValueError, ssl.SSLError) as e:
            why = "error %s" % e
        finally:
            self.note("close %d %s" % (number, why))
            try:
                sock.close()
            except OSError:
                pass

    def run(self):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        print("LISTENING %d" % listener.getsockname()[1], flush=True)
        while True:
            sock, _ = listener.accept()
            with self.lock:
                self.connections += 1
                number = self.connections
            threading.Thread(target=self.serve, args=(sock, number), daemon=True).start()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log")
    ap.add_argument("--idle-close-ms", type=int, default=0)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--tls-client-ca")
    ap.add_argument("--misbehave", choices=["reset", "drip", "indefinite", "oversize", "endless",
                                            "garbage", "silent"])
    ap.add_argument("--every", type=int, default=0)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with tempfile.TemporaryDirectory(prefix="cmc_tcp_responder.") as workdir:
        try:
            Server(args, workdir).run()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
