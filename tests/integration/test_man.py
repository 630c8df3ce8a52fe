"""The manual pages say what the program does: pkirelay.toml(5) names every key that
`pkirelay check-config --keys` prints (the parser's own table), and pkirelay(1) names every
subcommand of `pkirelay --help` and every exit status the README lists."""
import os
import re
import unittest

from harness import PKIRELAY, TESTS_DIR, run

MAN = os.path.join(os.path.dirname(TESTS_DIR), "contrib", "man")


def read(name):
    with open(os.path.join(MAN, name)) as f:
        return f.read()


class ManPages(unittest.TestCase):

    def test_every_configuration_key_is_in_pkirelay_toml_5(self):
        page = read("pkirelay.toml.5.scd")
        keys = run([PKIRELAY, "check-config", "--keys"]).stdout
        for key in re.findall(r"^\| `([^`]+)`", keys, re.M):
            section, _, name = key.rpartition(".")
            self.assertIn(f"*{name}* =", page, f"{key} is not in pkirelay.toml(5)")
            if section:
                self.assertIn(f"# [{section}]", page, f"[{section}] is not in pkirelay.toml(5)")

    def test_every_command_and_exit_status_is_in_pkirelay_1(self):
        page = read("pkirelay.1.scd")
        helptext = run([PKIRELAY, "--help"]).stdout
        commands = re.findall(r"^  (\S+)\s", helptext.split("Subcommands:", 1)[1], re.M)
        self.assertIn("status", commands)
        for command in commands:
            self.assertIn(f"\n*{command}*", page, f"{command} is not in pkirelay(1)")
        for status in (0, 64, 65, 66, 73, 74, 75, 78):
            self.assertIn(f"\n*{status}*\n", page, f"exit status {status} is not in pkirelay(1)")


if __name__ == "__main__":
    unittest.main()
