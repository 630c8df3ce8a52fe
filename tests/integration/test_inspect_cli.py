"""`pkirelay inspect` and `pkirelay check-config` as an operator (or a script) meets them.

Inputs are hostile until classified (DESIGN.md, Security): whatever bytes a file holds, `inspect`
must say what it is or why it is rejected, and never crash. Real messages made by the openssl
command line (tests/fixtures/make_fixtures.sh: a CMP ir, a CMC Full PKI Request, a PKCS#10, a
certs-only) are damaged in every way a transfer can damage them: every truncation point, each
length byte of the outer and first inner TLV changed, garbage appended, bits flipped, an empty
file, PEM with a bad END line, base64 with garbage characters. All variants of one message go to
one `inspect --json` call (it takes many files and prints a JSON array), so the thousands of
variants cost a few process launches. The configuration checker must accept a minimal file and
name what is wrong in bad ones with exit 78 (sysexits EX_CONFIG), and `run` must refuse them too.
"""

import json
import os
import shutil
import tempfile
import unittest

from harness import TESTS_DIR, PkirelayTestCase, run

EX_OK, EX_DATAERR, EX_SOFTWARE, EX_CONFIG = 0, 65, 70, 78

ORIGINALS = {  # fixture file -> the kind inspect must find in it
    "cmp_ir.der": "cmp",
    "cmc_request.der": "cmc-full-request",
    "p10.der": "cmc-simple-request",
    "certs_only.p7c": "cmc-simple-response",
}


def header_length(data, at):
    """Length of the tag and length octets of the TLV at offset at (low-tag-number form)."""
    first = data[at + 1]
    return 2 + (first & 0x7F if first & 0x80 else 0)


class InspectDamagedMessages(PkirelayTestCase):

    @classmethod
    def setUpClass(cls):
        # Made once for the class: the fixtures are only read.
        cls.fixtures = tempfile.mkdtemp(prefix="pkirelay-it-fixtures-")
        run(["sh", os.path.join(TESTS_DIR, "fixtures", "make_fixtures.sh"), cls.fixtures])

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.fixtures, ignore_errors=True)

    def original(self, name):
        with open(os.path.join(self.fixtures, name), "rb") as f:
            return f.read()

    def write_variants(self, stem, variants):
        """Writes {label: bytes} into a folder; returns {path: label} in argument order."""
        folder = os.path.join(self.tmp, stem)
        os.makedirs(folder, exist_ok=True)
        paths = {}
        for i, (label, data) in enumerate(variants.items()):
            path = os.path.join(folder, f"{i:05d}")
            with open(path, "wb") as f:
                f.write(data)
            paths[path] = label
        return paths

    def inspect(self, paths):
        """One `inspect --json` call over paths; returns (process, {path: entry})."""
        proc = self.pkirelay("inspect", "--json", *paths)
        self.assertGreaterEqual(proc.returncode, 0,
                                f"inspect died of signal {-proc.returncode}: {proc.stderr}")
        self.assertNotEqual(proc.returncode, EX_SOFTWARE, proc.stderr)
        try:
            entries = json.loads(proc.stdout)
        except ValueError:
            self.fail(f"inspect --json printed no JSON (exit {proc.returncode}):\n"
                      f"{proc.stdout[:2000]}\n{proc.stderr}")
        if isinstance(entries, dict):
            entries = [entries]
        self.assertEqual([e.get("file") for e in entries], list(paths),
                         "one entry per file, in argument order")
        return proc, dict(zip(paths, entries))

    def check_batch(self, variants, stem, all_rejected=False):
        """Inspects {label: bytes}; checks the invariants; returns {label: entry}."""
        paths = self.write_variants(stem, variants)
        proc, entries = self.inspect(paths)
        by_label = {paths[p]: e for p, e in entries.items()}
        rejected = [label for label, e in by_label.items() if e.get("rejected")]
        self.assertEqual(proc.returncode, EX_DATAERR if rejected else EX_OK,
                         f"{stem}: {len(rejected)} of {len(variants)} rejected\n{proc.stderr}")
        for label, e in by_label.items():
            if e.get("rejected"):
                self.assertTrue(e.get("reason", "").strip(), f"{stem} {label}: no reason: {e}")
                self.assertIsInstance(e.get("offset"), int, f"{stem} {label}: {e}")
            else:
                self.assertTrue(e.get("kind"), f"{stem} {label}: neither kind nor reason: {e}")
        if all_rejected:
            accepted = {label: e["kind"] for label, e in by_label.items()
                        if not e.get("rejected")}
            self.assertEqual(accepted, {}, f"{stem}: damaged variants accepted")
        return by_label

    def test_originals_are_classified(self):
        paths = [os.path.join(self.fixtures, name) for name in ORIGINALS]
        proc, entries = self.inspect(paths)
        self.assertEqual(proc.returncode, EX_OK, proc.stderr)
        for path, name in zip(paths, ORIGINALS):
            self.assertFalse(entries[path]["rejected"], entries[path])
            self.assertEqual(entries[path]["kind"], ORIGINALS[name])
            self.assertEqual(entries[path]["size"], len(self.original(name)))
        for name in ORIGINALS:  # one at a time too: a single file prints a single object
            proc = self.pkirelay("inspect", "--json", os.path.join(self.fixtures, name))
            self.assertEqual(proc.returncode, EX_OK, proc.stderr)
            self.assertEqual(json.loads(proc.stdout)["kind"], ORIGINALS[name])

    def test_every_truncation_is_reported_as_truncated(self):
        for name in ORIGINALS:
            with self.subTest(name):
                data = self.original(name)
                entries = self.check_batch({n: data[:n] for n in range(len(data))},
                                           "trunc-" + name, all_rejected=True)
                not_truncated = {n: e["reason"] for n, e in entries.items()
                                 if e.get("truncated") is not True}
                self.assertEqual(not_truncated, {}, f"{name}: prefixes not called truncated")

    def test_length_bytes_changed(self):
        for name in ORIGINALS:
            with self.subTest(name):
                data = self.original(name)
                inner = header_length(data, 0)  # the first inner TLV starts after the outer header
                positions = [*range(1, header_length(data, 0)),
                             *range(inner + 1, inner + header_length(data, inner))]
                variants = {}
                for at in positions:
                    for how, value in (("+1", (data[at] + 1) & 0xFF), ("^ff", data[at] ^ 0xFF),
                                       ("-1", (data[at] - 1) & 0xFF)):
                        variants[f"byte {at} {how}"] = data[:at] + bytes([value]) + data[at + 1:]
                self.check_batch(variants, "len-" + name, all_rejected=True)

    def test_appended_garbage_is_trailing_bytes_at_the_end(self):
        for name in ORIGINALS:
            with self.subTest(name):
                data = self.original(name)
                entries = self.check_batch({1: data + b"\x00", 100: data + os.urandom(100)},
                                           "trail-" + name, all_rejected=True)
                for extra, e in entries.items():
                    self.assertIn("trailing", e["reason"], e)
                    self.assertRegex(e["reason"], rf"\b{extra}\b", e)
                    self.assertIn(f"offset {len(data)}", e["reason"], e)
                    self.assertEqual(e["offset"], len(data), e)
                    self.assertFalse(e["truncated"], e)

    def test_bit_flips_never_crash(self):
        for name in ORIGINALS:
            with self.subTest(name):
                data = self.original(name)
                variants = {}
                for i in range(50):
                    at = i * len(data) // 50
                    bit = i % 8
                    flipped = data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1:]
                    variants[f"byte {at} bit {bit}"] = flipped
                # Some flips land in a signature or a key and are still well-formed messages;
                # check_batch holds each outcome to a kind or a reason and the exit code to 65.
                self.check_batch(variants, "flip-" + name)

    def test_empty_bad_pem_and_bad_base64(self):
        pem = self.original("cmc_request.pem")
        b64 = self.original("cmp_ir.b64")
        lines = b64.split(b"\n")
        lines[2] = b"!!@@" + lines[2][4:]
        variants = {
            "empty": b"",
            "pem bad END": pem.replace(b"-----END CMS-----", b"-----END PKCS7-----"),
            "pem END missing": pem.replace(b"-----END CMS-----", b""),
            "pem garbage": pem.replace(pem.split(b"\n")[3][:4], b"*&^%", 1),
            "base64 garbage": b"\n".join(lines),
            "binary junk": b"\xff" * 64,
        }
        entries = self.check_batch(variants, "armour", all_rejected=True)
        self.assertTrue(entries["empty"]["truncated"], entries["empty"])
        self.assertIn("END", entries["pem bad END"]["reason"])
        self.assertIn("base64", entries["base64 garbage"]["reason"])
        self.assertIn("base64", entries["pem garbage"]["reason"])
        # The clean armoured copies are still accepted (a convenience, decoded strictly).
        proc, good = self.inspect([os.path.join(self.fixtures, "cmc_request.pem"),
                                   os.path.join(self.fixtures, "cmp_ir.b64")])
        self.assertEqual(proc.returncode, EX_OK, proc.stderr)
        self.assertEqual([e["kind"] for e in good.values()], ["cmc-full-request", "cmp"])

    def test_human_output_says_rejected(self):
        path = os.path.join(self.tmp, "half.crq")
        data = self.original("cmc_request.der")
        with open(path, "wb") as f:
            f.write(data[:len(data) // 2])
        proc = self.pkirelay("inspect", path)
        self.assertEqual(proc.returncode, EX_DATAERR, proc.stdout + proc.stderr)
        self.assertRegex(proc.stdout, r"(?m)^rejected:\s+\S")
        self.assertIn("truncated", proc.stdout)

    def test_directory_is_not_called_an_empty_message(self):
        proc = self.pkirelay("inspect", self.tmp)
        self.assertEqual(proc.returncode, 66, proc.stderr)  # EX_NOINPUT
        self.assertNotIn("truncated", proc.stdout + proc.stderr)
        self.assertIn("directory", (proc.stdout + proc.stderr).lower())

    def test_missing_file_keeps_its_place_in_json(self):
        good = os.path.join(self.fixtures, "p10.der")
        proc = self.pkirelay("inspect", "--json", good, os.path.join(self.tmp, "absent"), good)
        self.assertEqual(proc.returncode, 66, proc.stderr)
        entries = json.loads(proc.stdout)
        self.assertEqual(len(entries), 3)
        self.assertIn("error", entries[1])
        self.assertEqual(entries[2]["kind"], "cmc-simple-request")

    def test_hostile_names_and_bytes_stay_printable(self):
        # A CMP sender whose name bytes are not valid UTF-8 and hold a terminal escape must come
        # out escaped, and --json must still be valid JSON (found by tests/fuzz).
        path = os.path.join(self.tmp, "bad\x1b[31mname.der")
        with open(os.path.join(self.fixtures, "p10.der"), "rb") as src, open(path, "wb") as dst:
            dst.write(src.read())
        not_utf8 = os.path.join(os.fsencode(self.tmp), b"absent\xff")
        proc = self.pkirelay("inspect", "--json", path, not_utf8)
        entries = json.loads(proc.stdout)
        self.assertIn("\\x1b", entries[0]["file"])
        self.assertIn("\\xff", entries[1]["file"])
        self.assertNotIn("\x1b", proc.stdout)


class CheckConfig(PkirelayTestCase):

    def test_readme_has_the_current_key_reference(self):
        # The reference is generated from the table the parser uses; the README must carry it
        # as it is now (update it with `pkirelay check-config --keys`).
        keys = self.pkirelay("check-config", "--keys", check=True).stdout
        with open(os.path.join(os.path.dirname(TESTS_DIR), "README.md")) as f:
            self.assertIn(keys, f.read())

    def config_file(self, text):
        with open(self.config, "w") as f:
            f.write(f'[store]\npath = "{self.tmp}/store.db"\n' + text)
        return self.config

    def check(self, text, expect):
        proc = self.pkirelay("check-config", "-c", self.config_file(text))
        self.assertEqual(proc.returncode, expect, proc.stdout + proc.stderr)
        return proc.stdout + proc.stderr

    def test_minimal_config_is_valid(self):
        self.check(f'[source.in]\npath = "{self.inbox}"\n'
                   '[endpoint.ca]\nurl = "http://127.0.0.1:1/"\n', EX_OK)

    def test_misspelt_key_is_named_with_file_and_line(self):
        out = self.check(f'[source.in]\npath = "{self.inbox}"\nendpont = "ca"\n'
                         '[endpoint.ca]\nurl = "http://127.0.0.1:1/"\n', EX_CONFIG)
        self.assertIn("endpont", out)
        self.assertIn(f"{self.config}:5", out)  # line 5: two [store] lines come first

    def test_two_endpoints_need_an_endpoint_per_source(self):
        out = self.check(f'[source.in]\npath = "{self.inbox}"\n'
                         '[endpoint.a]\nurl = "http://127.0.0.1:1/"\n'
                         '[endpoint.b]\nurl = "http://127.0.0.1:2/"\n', EX_CONFIG)
        self.assertIn("source.in", out)
        self.assertIn("endpoint", out)

    def test_bad_url_scheme(self):
        out = self.check(f'[source.in]\npath = "{self.inbox}"\n'
                         '[endpoint.ca]\nurl = "ftp://127.0.0.1:1/"\n', EX_CONFIG)
        self.assertIn("endpoint.ca.url", out)
        self.assertIn("ftp://", out)

    def test_run_refuses_an_invalid_config(self):
        with open(os.path.join(self.inbox, "user.p10"), "wb") as f:
            f.write(b"\x30\x00")
        self.config_file(f'[source.in]\npath = "{self.inbox}"\n'
                         '[endpoint.ca]\nurl = "gopher://127.0.0.1:1/"\n')
        proc = self.pkirelay("run", "--once", "-c", self.config)
        self.assertEqual(proc.returncode, EX_CONFIG, proc.stderr)
        self.assertIn("endpoint.ca.url", proc.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "store.db")),
                         "an invalid configuration must not start a pass")


if __name__ == "__main__":
    unittest.main(verbosity=2)
