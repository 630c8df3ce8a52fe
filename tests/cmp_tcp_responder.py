#!/usr/bin/python3
"""A legacy CMP-over-TCP server (RFC 2510 §5.2 and the drafts' version 10 framing), for
pkirelay's tests only.

It listens on 127.0.0.1 on a free port and prints "LISTENING <port>". Each PKIMessage that comes
in a frame is POSTed to OpenSSL's CMP mock server (--forward URL, e.g.
http://127.0.0.1:PORT/pkix/, one HTTP/1.0 connection per message) and its answer sent back in
the framing the request came in: version 10 pkiRep, or RFC 2510 pkiMsg. With --fixed FILE it
answers every request with the PKIMessage in FILE instead, given the request's transactionID and
its senderNonce as recipNonce (tests/cmp_answer.py), as a server answering that request would
(RFC 9810 §5.1.1).

Options:
  --log FILE        one line per event: "open C", "frame C FRAMING TYPE LENGTH", "close C why"
  --rfc2510-only    a server of the old protocol: a version 10 frame gets an RFC 2510
                    errorMsgRep and the connection is closed
  --idle-close-ms N closes a connection idle N ms after an answer
  --poll N          answer each request with pollRep (polling reference, time-to-check-back
                    --check-after S, default 0) N times before the real answer, which comes
                    as finalMsgRep (RFC 2510) or pkiRep (version 10) to the last pollReq
  --error TEXT      answer every request with errorMsgRep TEXT
  --other-transaction  with --fixed: FILE exactly as it is, whatever the request (an answer that
                    belongs to another transaction)
  --misbehave MODE  reset | drip | oversize | silent (as tests/cmc_tcp_responder.py);
                    maxlength: a frame header declaring 2^32-1 bytes, then nothing;
                    truncate: the first half of the answer's frame, then the connection closed;
                    crawl: the answer one byte every 50 ms (a slowloris), until the client
                    gives up
"""
import argparse
import http.client
import os
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse

from cmp_answer import answer_to

V10 = 10
PKI_REQ, POLL_REP, POLL_REQ, ERROR = 0, 1, 2, 6
FINAL_MSG_REP = PKI_REP = 5


def frame(framing, ftype, value, flags=0):
    if framing == V10:
        return struct.pack(">IBBB", 3 + len(value), V10, flags, ftype) + value
    return struct.pack(">IB", 1 + len(value), ftype) + value


def read_frame(sock, buf):
    """(framing, type, value, rest) for the next frame, or None when the peer closed."""
    while True:
        if len(buf) >= 5:
            length = struct.unpack(">I", buf[:4])[0]
            if len(buf) >= 4 + length:
                body, rest = buf[4:4 + length], buf[4 + length:]
                if body[0] == V10:
                    return V10, body[2], body[3:], rest
                return 0, body[0], body[1:], rest
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk


class Server:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.connections = 0
        self.log = open(args.log, "a") if args.log else None
        self.fixed = open(args.fixed, "rb").read() if args.fixed else None
        self.pending = {}  # polling reference -> [polls left, answer]
        self.next_ref = 1

    def note(self, line):
        if self.log:
            with self.lock:
                self.log.write(line + "\n")
                self.log.flush()

    def forward(self, message):
        if self.fixed is not None:
            return self.fixed if self.args.other_transaction else answer_to(message, self.fixed)
        url = urllib.parse.urlsplit(self.args.forward)
        # Connection: close: OpenSSL 3.0's server cancels an open CMP transaction when a kept
        # connection closes, so each message gets a connection of its own that the server ends.
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.request("POST", url.path or "/", body=message,
                     headers={"Content-Type": "application/pkixcmp", "Connection": "close"})
        rsp = conn.getresponse()
        body = rsp.read()
        conn.close()
        return body

    def serve(self, sock, number):
        self.note("open %d" % number)
        why = "client closed"
        buf = b""
        answered = False
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                if answered and self.args.idle_close_ms:
                    sock.settimeout(self.args.idle_close_ms / 1000.0)
                try:
                    got = read_frame(sock, buf)
                except socket.timeout:
                    why = "idle"
                    return
                sock.settimeout(None)
                if got is None:
                    return
                framing, ftype, value, buf = got
                self.note("frame %d %s %d %d" % (number, "v10" if framing == V10 else "rfc2510",
                                                 ftype, len(value)))
                answered = True
                if framing == V10 and self.args.rfc2510_only:
                    sock.sendall(frame(0, ERROR, b"unsupported version 10"))
                    why = "version"
                    return
                mode = self.args.misbehave
                if mode == "reset":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    why = "reset"
                    return
                if mode == "silent":
                    threading.Event().wait()
                if mode == "oversize":
                    sock.sendall(struct.pack(">IBBB", 0x7FFFFFF0, V10, 0, PKI_REP) + b"\x30\x80")
                    threading.Event().wait()
                if mode == "maxlength":
                    sock.sendall(struct.pack(">IBBB", 0xFFFFFFFF, V10, 0, PKI_REP) + b"\x30\x80")
                    threading.Event().wait()
                if self.args.error:
                    sock.sendall(frame(framing, ERROR, self.args.error.encode()))
                    continue
                if ftype == POLL_REQ:
                    ref = struct.unpack(">I", value)[0]
                    with self.lock:
                        entry = self.pending.get(ref)
                        if entry and entry[0] > 0:
                            entry[0] -= 1
                    if entry is None:
                        sock.sendall(frame(framing, ERROR, b"unknown polling reference"))
                    elif entry[0] > 0:
                        sock.sendall(frame(framing, POLL_REP,
                                           struct.pack(">II", ref, self.args.check_after)))
                    else:
                        sock.sendall(frame(framing, FINAL_MSG_REP, entry[1]))
                    continue
                if ftype != PKI_REQ:
                    sock.sendall(frame(framing, ERROR, b"unexpected message type"))
                    continue
                answer = self.forward(value)
                if self.args.poll:
                    with self.lock:
                        ref = self.next_ref
                        self.next_ref += 1
                        self.pending[ref] = [self.args.poll - 1, answer]
                    sock.sendall(frame(framing, POLL_REP,
                                       struct.pack(">II", ref, self.args.check_after)))
                    continue
                out = frame(framing, PKI_REP if framing == V10 else PKI_REQ, answer)
                if mode == "truncate":
                    sock.sendall(out[:len(out) // 2])
                    why = "truncated"
                    return
                if mode == "crawl":
                    for i in range(len(out)):
                        sock.sendall(out[i:i + 1])
                        time.sleep(0.05)
                    continue
                if mode == "drip":
                    for i in range(0, len(out), 7):
                        sock.sendall(out[i:i + 7])
                        time.sleep(0.002)
                else:
                    sock.sendall(out)
        except (OSError, ValueError, http.client.HTTPException) as e:
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
    ap.add_argument("--forward")
    ap.add_argument("--fixed")
    ap.add_argument("--log")
    ap.add_argument("--rfc2510-only", action="store_true")
    ap.add_argument("--idle-close-ms", type=int, default=0)
    ap.add_argument("--poll", type=int, default=0)
    ap.add_argument("--check-after", type=int, default=0)
    ap.add_argument("--error")
    ap.add_argument("--other-transaction", action="store_true")
    ap.add_argument("--misbehave", choices=["reset", "drip", "oversize", "silent",
                                                    "maxlength", "truncate", "crawl"])
    args = ap.parse_args()
    if not args.forward and not args.fixed:
        ap.error("--forward URL or --fixed FILE")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        Server(args).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
