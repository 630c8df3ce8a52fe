#!/usr/bin/python3
"""An SMTP server for the mail tests (Debian python3-aiosmtpd), on one loopback port.

Mail for --local is delivered into Dovecot with dovecot-lda (the enrollment mailbox); every other
message is captured: NNNNNN.eml holds the DATA bytes exactly as received (CRLF kept), NNNNNN.rcpt
its envelope ("from" then the recipients), both written under a temporary name and renamed, so a
reader never sees half a file. Prints "LISTENING port" once it accepts connections.
"""

import argparse
import asyncio
import itertools
import os
import signal
import subprocess

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, args):
        self.args = args
        self.counter = itertools.count(len([n for n in os.listdir(args.capture)
                                            if n.endswith(".eml")]) + 1)

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content
        local = [r for r in envelope.rcpt_tos if self.args.local and r.lower() == self.args.local]
        others = [r for r in envelope.rcpt_tos if r not in local]
        if local:
            proc = subprocess.run(["/usr/lib/dovecot/dovecot-lda", "-c", self.args.lda_config,
                                   "-d", self.args.lda_user, "-f", envelope.mail_from or ""],
                                  input=raw, capture_output=True)
            if proc.returncode != 0:
                return f"451 delivery failed: {proc.stderr[:200]!r}"
        if others:
            n = next(self.counter)
            base = os.path.join(self.args.capture, f"{n:06d}")
            for ext, data in ((".rcpt", "\n".join([envelope.mail_from or "<>", *others]).encode()),
                              (".eml", raw)):
                with open(base + ext + ".tmp", "wb") as f:
                    f.write(data)
                os.rename(base + ext + ".tmp", base + ext)
        return "250 OK"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--capture", required=True)
    parser.add_argument("--local", default="")
    parser.add_argument("--lda-config", default="")
    parser.add_argument("--lda-user", default="")
    args = parser.parse_args()
    args.local = args.local.lower()
    controller = Controller(Handler(args), hostname="127.0.0.1", port=args.port,
                            decode_data=False, enable_SMTPUTF8=True)
    controller.start()
    print(f"LISTENING {args.port}", flush=True)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()


if __name__ == "__main__":
    main()
