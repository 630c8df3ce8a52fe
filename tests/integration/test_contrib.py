"""What contrib/ ships for running pkirelay, checked by the tools that will read it.

- The systemd units (contrib/systemd/) pass `systemd-analyze verify` without a single warning
  about them. verify insists that ExecStart='s program exists, and /usr/bin/pkirelay is not
  installed here, so the units are verified as copies whose /usr/bin/pkirelay is the binary under
  test; nothing else is changed. `systemd-analyze security --offline` rates their sandbox.
- contrib/sysusers.d and contrib/tmpfiles.d are applied to an empty root folder (`--root=`) by
  systemd-sysusers and systemd-tmpfiles, which must accept them silently; the folders they make
  must have the owner and mode the files promise. (Debian 12's systemd-tmpfiles, 252, has no
  --dry-run; an alternative root is as safe and checks more.)
- `pkirelay check-config` accepts every example configuration as shipped (warning, not failing,
  about folders and files this machine does not have), and without a single warning once its
  absolute paths are moved into a temporary folder where they exist.
The systemd tests skip, with a message, only where systemd-analyze is absent.
"""

import os
import re
import shutil
import stat
import tempfile
import tomllib
import unittest

from harness import PKIRELAY, TESTS_DIR, run

CONTRIB = os.path.join(os.path.dirname(TESTS_DIR), "contrib")
UNITS = ["pkirelay.service", "pkirelay-once.service", "pkirelay-once.timer"]
INSTALLED_BINARY = "/usr/bin/pkirelay"
EXAMPLES = [os.path.join(CONTRIB, "pkirelay.toml.example")] + sorted(
    os.path.join(CONTRIB, "examples", name)
    for name in os.listdir(os.path.join(CONTRIB, "examples")) if name.endswith(".toml"))
EX_OK = 0


def binary_under_test():
    path = shutil.which(PKIRELAY)
    if path is None:
        raise AssertionError(f"pkirelay binary {PKIRELAY!r} not found")
    return os.path.abspath(path)


def unit_settings(text):
    """A unit file's assignments as {(section, key): [values]}, in file order."""
    settings, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


class TempFolder(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="pkirelay-contrib-")

    def tearDown(self):
        if os.environ.get("PKIRELAY_KEEP_TMP"):
            print(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


class SystemdUnits(TempFolder):

    def setUp(self):
        self.analyze = shutil.which("systemd-analyze")
        if self.analyze is None:
            self.skipTest("systemd-analyze is not installed (Debian package systemd)")
        super().setUp()
        self.binary = binary_under_test()
        for name in UNITS:
            with open(os.path.join(CONTRIB, "systemd", name)) as f:
                text = f.read()
            with open(os.path.join(self.tmp, name), "w") as f:
                f.write(text.replace(INSTALLED_BINARY, self.binary))

    def test_units_verify_without_warnings(self):
        paths = [os.path.join(self.tmp, name) for name in UNITS]
        proc = run([self.analyze, "verify", *paths], check=False, cwd=self.tmp)
        # verify also loads the units these refer to (multi-user.target, ...) from the machine;
        # a warning about one of those is the machine's business, not ours.
        ours = [line for line in (proc.stdout + proc.stderr).splitlines()
                if self.tmp in line or any(name in line for name in UNITS)]
        self.assertEqual(ours, [], f"systemd-analyze verify:\n{proc.stdout}{proc.stderr}")
        self.assertEqual(proc.returncode, 0, f"systemd-analyze verify:\n{proc.stderr}")

    def test_the_program_is_where_the_units_say(self):
        # Guards the substitution above: a unit naming another path would be verified against
        # a program that is not there, and fail for the wrong reason or pass without it.
        for name in ["pkirelay.service", "pkirelay-once.service"]:
            with open(os.path.join(CONTRIB, "systemd", name)) as f:
                starts = unit_settings(f.read())[("Service", "ExecStart")]
            self.assertEqual(len(starts), 1, name)
            self.assertTrue(starts[0].startswith(INSTALLED_BINARY + " run "), starts[0])

    def test_units_keep_the_promises_the_daemon_relies_on(self):
        with open(os.path.join(CONTRIB, "systemd", "pkirelay.service")) as f:
            daemon = unit_settings(f.read())
        with open(os.path.join(CONTRIB, "systemd", "pkirelay-once.service")) as f:
            once = unit_settings(f.read())
        self.assertEqual(daemon[("Service", "Type")], ["notify"])
        self.assertEqual(daemon[("Service", "ExecStart")],
                         [INSTALLED_BINARY + " run -c /etc/pkirelay/pkirelay.toml"])
        self.assertEqual(daemon[("Service", "ExecReload")], ["/bin/kill -HUP $MAINPID"])
        self.assertEqual(daemon[("Service", "RestartPreventExitStatus")], ["78"])
        self.assertEqual(once[("Service", "Type")], ["oneshot"])
        self.assertIn("--once", once[("Service", "ExecStart")][0])
        self.assertEqual(once[("Service", "SuccessExitStatus")], ["75"])
        for unit in (daemon, once):
            self.assertEqual(unit[("Service", "User")], ["pkirelay"])
            self.assertEqual(unit[("Service", "RestrictAddressFamilies")],
                             ["AF_UNIX AF_INET AF_INET6"])

    def test_sandbox_rating(self):
        # `security` scores each service's sandbox from 0.0 (tight) to 10.0; --threshold, in
        # tenths, makes it exit non-zero above that. Both units scored 1.4 when written.
        for name in ["pkirelay.service", "pkirelay-once.service"]:
            proc = run([self.analyze, "security", "--offline=yes", "--threshold=20",
                        "--no-pager", os.path.join(self.tmp, name)], check=False, cwd=self.tmp)
            self.assertEqual(proc.returncode, 0,
                             f"{name} is less confined than expected:\n{proc.stdout}{proc.stderr}")


class UsersAndFolders(TempFolder):
    """sysusers.d and tmpfiles.d applied to an empty root folder, as at first boot."""

    def setUp(self):
        self.sysusers = shutil.which("systemd-sysusers")
        self.tmpfiles = shutil.which("systemd-tmpfiles")
        if self.sysusers is None or self.tmpfiles is None:
            self.skipTest("systemd-sysusers/systemd-tmpfiles are not installed (Debian package "
                          "systemd)")
        if os.geteuid() != 0:
            self.skipTest("systemd-tmpfiles can give folders to pkirelay only as root")
        super().setUp()
        self.root = os.path.join(self.tmp, "root")
        # sysusers edits the root's account files in place, so they must exist (empty).
        os.makedirs(os.path.join(self.root, "etc"))
        for name in ["passwd", "group", "shadow", "gshadow"]:
            open(os.path.join(self.root, "etc", name), "w").close()

    def test_sysusers_then_tmpfiles(self):
        proc = run([self.sysusers, f"--root={self.root}",
                    os.path.join(CONTRIB, "sysusers.d", "pkirelay.conf")])
        self.assertNotIn("warn", proc.stderr.lower(), proc.stderr)
        with open(os.path.join(self.root, "etc", "passwd")) as f:
            users = {line.split(":")[0]: line.split(":") for line in f if line.strip()}
        self.assertIn("pkirelay", users)
        uid, gid = int(users["pkirelay"][2]), int(users["pkirelay"][3])
        self.assertEqual(users["pkirelay"][5], "/var/lib/pkirelay")

        proc = run([self.tmpfiles, f"--root={self.root}", "--create",
                    os.path.join(CONTRIB, "tmpfiles.d", "pkirelay.conf")])
        self.assertEqual(proc.stderr, "", "systemd-tmpfiles complained")
        expected = {"var/lib/pkirelay": (0o700, uid, gid),
                    "var/log/pkirelay": (0o750, uid, gid),
                    "srv/pkirelay/inbox": (0o2770, uid, gid)}
        for folder, (mode, owner, group) in expected.items():
            st = os.lstat(os.path.join(self.root, folder))
            self.assertTrue(stat.S_ISDIR(st.st_mode), folder)
            self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid),
                             (mode, owner, group), folder)


class ExampleConfigs(TempFolder):

    def check_config(self, path, cwd=None):
        return run([binary_under_test(), "check-config", "-c", path], check=False, cwd=cwd)

    def test_examples_are_valid_as_shipped(self):
        self.assertGreaterEqual(len(EXAMPLES), 2)
        for example in EXAMPLES:
            proc = self.check_config(example)
            # Only what this machine lacks: folders that do not exist (warnings), and the CA
            # and client certificate files it does not have (errors: an endpoint cannot work
            # without them), never anything else.
            for line in proc.stderr.splitlines():
                self.assertRegex(line, r"(^warning: .*(does not exist|cannot read))|"
                                       r"((ca_file|client_cert|client_key): cannot read)|"
                                       r"is not valid$", example)
            if proc.returncode != EX_OK:
                self.assertEqual(proc.returncode, 78, f"{example}:\n{proc.stderr}")
                self.assertIn("cannot read", proc.stderr)

    def test_examples_are_clean_where_their_paths_exist(self):
        for example in EXAMPLES:
            with open(example) as f:
                text = f.read()
            # Every absolute path is a quoted string starting with "/" (URLs start with a
            # scheme); move each under the temporary folder.
            root = os.path.join(self.tmp, os.path.basename(example) + ".root")
            moved = re.sub(r'= "(/[^"]*)"', lambda m: f'= "{root}{m.group(1)}"', text)
            self.assertNotEqual(moved, text, example)
            config = tomllib.loads(moved)
            folders = [os.path.dirname(config.get("store", {}).get(
                "path", root + "/var/lib/pkirelay/pkirelay.db"))]
            files = []
            for source in config.get("source", {}).values():
                folders += [source[key] for key in ("path", "responses", "move_to")
                            if key in source]
            for endpoint in config.get("endpoint", {}).values():
                files += [endpoint[key] for key in ("ca_file", "client_cert", "client_key")
                          if key in endpoint]
            for folder in folders:
                os.makedirs(folder, exist_ok=True)
            pem = os.path.join(self.tmp, "cert.pem")
            key = os.path.join(self.tmp, "key.pem")
            if not os.path.exists(pem):
                run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                     "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", pem,
                     "-subj", "/CN=example", "-days", "2"])
            for path in files:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                shutil.copyfile(key if path.endswith(".key") else pem, path)
                os.chmod(path, 0o600)
            path = os.path.join(self.tmp, os.path.basename(example))
            with open(path, "w") as f:
                f.write(moved)
            proc = self.check_config(path)
            self.assertEqual(proc.returncode, EX_OK, f"{example}:\n{proc.stderr}")
            self.assertEqual(proc.stderr, "", f"{example} warns where its paths exist")

    def test_relative_paths_are_relative_to_the_file(self):
        # The stick example moved, folders and all, to another folder with relative paths, and
        # checked from a third folder: the paths must be resolved against the file's folder.
        with open(os.path.join(CONTRIB, "examples", "offline-ca-stick.toml")) as f:
            text = f.read()
        relative = re.sub(r'= "/([^"]*)"', r'= "\1"', text)
        home = os.path.join(self.tmp, "ca")
        os.makedirs(os.path.join(home, "media/operator/CA-STICK/requests"))
        os.makedirs(os.path.join(home, "var/lib/pkirelay"))
        path = os.path.join(home, "pkirelay.toml")
        with open(path, "w") as f:
            f.write(relative)
        elsewhere = os.path.join(self.tmp, "elsewhere")
        os.mkdir(elsewhere)
        proc = self.check_config(path, cwd=elsewhere)
        self.assertEqual(proc.returncode, EX_OK, proc.stderr)
        self.assertEqual(proc.stderr, "")
        self.assertIn(f"source stick: {home}/media/operator/CA-STICK/requests ", proc.stdout)
        self.assertIn(f"store {home}/var/lib/pkirelay/pkirelay.db", proc.stdout)


if __name__ == "__main__":
    unittest.main()
