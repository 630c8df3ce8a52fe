"""File-system and secret safety that `pkirelay check-config` (and so `run`) enforces.

A secret file (an endpoint's client_key) that group or others may read, or that belongs to
someone other than the running user or root, is refused with exit 78 (sysexits EX_CONFIG) and
an error naming the file and its mode; a safe one is accepted. A watched folder that anyone may
write to is accepted but warned about. A configuration that is not TOML at all, or not text, is a
configuration error with a place, never a crash. Keys are made by the openssl command line.
"""

import os
import stat
import unittest

from harness import PkirelayTestCase, openssl

EX_OK, EX_CONFIG = 0, 78
NOBODY = 65534


class SecretFiles(PkirelayTestCase):

    def setUp(self):
        super().setUp()
        self.key = os.path.join(self.tmp, "relay.key")
        self.crt = os.path.join(self.tmp, "relay.crt")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", self.key, "-out", self.crt, "-subj", "/CN=relay", "-days", "2")
        self.write_config("https://127.0.0.1:1/",
                          extra_endpoint=f'client_cert = "{self.crt}"\nclient_key = "{self.key}"')

    def check_config(self):
        proc = self.pkirelay("check-config", "-c", self.config)
        return proc.returncode, proc.stdout + proc.stderr

    def test_owner_only_key_is_accepted(self):
        os.chmod(self.key, 0o600)
        code, out = self.check_config()
        self.assertEqual(code, EX_OK, out)

    def test_key_readable_by_others_is_refused_naming_file_and_mode(self):
        for mode in (0o644, 0o640, 0o604, 0o620):
            with self.subTest(mode=oct(mode)):
                os.chmod(self.key, mode)
                code, out = self.check_config()
                self.assertEqual(code, EX_CONFIG, out)
                self.assertIn(self.key, out)
                self.assertIn(f"mode {mode:04o}", out)
                self.assertIn("endpoint.ca.client_key", out)
                self.assertIn("chmod 600", out)

    def test_loose_key_also_stops_run(self):
        os.chmod(self.key, 0o644)
        proc = self.pkirelay("run", "--once", "-c", self.config)
        self.assertEqual(proc.returncode, EX_CONFIG, proc.stderr)
        self.assertIn(self.key, proc.stderr)

    def test_key_reached_by_symlink_is_judged_by_the_file(self):
        link = os.path.join(self.tmp, "link.key")
        os.symlink(self.key, link)
        self.write_config("https://127.0.0.1:1/",
                          extra_endpoint=f'client_cert = "{self.crt}"\nclient_key = "{link}"')
        os.chmod(self.key, 0o600)
        self.assertEqual(self.check_config()[0], EX_OK)
        os.chmod(self.key, 0o644)
        code, out = self.check_config()
        self.assertEqual(code, EX_CONFIG, out)
        self.assertIn("mode 0644", out)

    @unittest.skipUnless(os.geteuid() == 0, "giving a file to another user needs root")
    def test_key_of_another_user_is_refused(self):
        os.chmod(self.key, 0o600)
        os.chown(self.key, NOBODY, -1)
        code, out = self.check_config()
        self.assertEqual(code, EX_CONFIG, out)
        self.assertIn(self.key, out)
        self.assertIn(f"uid {NOBODY}", out)

    def test_missing_key_is_a_configuration_error(self):
        # Like a missing ca_file (issue 13, defect 8): every exchange of the endpoint would fail,
        # so it is refused at check-config and start rather than deferring every request.
        os.unlink(self.key)
        code, out = self.check_config()
        self.assertEqual(code, 78, out)
        self.assertIn(f"cannot read {self.key}", out)


class WatchedFolders(PkirelayTestCase):

    def setUp(self):
        super().setUp()
        self.write_config("http://127.0.0.1:1/")

    def check_config(self):
        proc = self.pkirelay("check-config", "-c", self.config)
        self.assertEqual(proc.returncode, EX_OK, proc.stdout + proc.stderr)
        return proc.stderr

    def test_private_folder_gives_no_warning(self):
        os.chmod(self.inbox, 0o700)
        self.assertNotIn("world-writable", self.check_config())

    def test_world_writable_folder_is_warned_about(self):
        os.chmod(self.inbox, 0o777)
        err = self.check_config()
        self.assertIn(f"warning: source.inbox: folder {self.inbox} is world-writable", err)
        self.assertIn("mode 0777", err)
        self.assertIn("remove or rename", err)

    def test_sticky_world_writable_folder_is_still_warned_about(self):
        os.chmod(self.inbox, 0o777 | stat.S_ISVTX)
        err = self.check_config()
        self.assertIn("world-writable (mode 1777)", err)
        self.assertNotIn("remove or rename", err)


class HostileConfigurationText(PkirelayTestCase):

    def check(self, data):
        with open(self.config, "wb") as f:
            f.write(data)
        proc = self.pkirelay("check-config", "-c", self.config)
        self.assertEqual(proc.returncode, EX_CONFIG, proc.stdout + proc.stderr)
        self.assertIn(self.config, proc.stderr)
        return proc.stderr

    def test_binary_file_is_a_configuration_error(self):
        self.check(bytes(range(256)) * 4)

    def test_deeply_nested_arrays_are_a_configuration_error(self):
        self.check(b"x = " + b"[" * 100000 + b"]" * 100000 + b"\n")

    def test_missing_file_is_a_configuration_error_with_the_reason(self):
        proc = self.pkirelay("check-config", "-c", os.path.join(self.tmp, "absent.toml"))
        self.assertEqual(proc.returncode, EX_CONFIG)
        self.assertIn("No such file or directory", proc.stderr)

    def test_huge_file_is_refused_unread(self):
        with open(self.config, "wb") as f:
            f.truncate(2 * 1024 * 1024)
        proc = self.pkirelay("check-config", "-c", self.config)
        self.assertEqual(proc.returncode, EX_CONFIG)
        self.assertIn("too large for a configuration file", proc.stderr)


if __name__ == "__main__":
    unittest.main()
