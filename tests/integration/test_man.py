"""The manual pages and the bash completion say what the program does: pkirelay.toml(5) names
every key that `pkirelay check-config --keys` prints (the parser's own table), pkirelay(1) and
contrib/completion/pkirelay.bash name every subcommand of `pkirelay --help`, and pkirelay(1)
every exit status the README lists. The completion runs in bash with bash-completion's two
helpers replaced by stand-ins, so the package need not be installed."""
import os
import re
import unittest

from harness import PKIRELAY, TESTS_DIR, run

MAN = os.path.join(os.path.dirname(TESTS_DIR), "contrib", "man")
COMPLETION = os.path.join(os.path.dirname(TESTS_DIR), "contrib", "completion", "pkirelay.bash")
STUBS = r"""
_init_completion() { cur=${COMP_WORDS[COMP_CWORD]}; prev=${COMP_WORDS[COMP_CWORD-1]};
                     words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD; }
_filedir() { COMPREPLY=(FILES); }
"""


def complete(*words):
    """What <Tab> offers after `words` (the last one is being typed)."""
    script = (STUBS + f"source {COMPLETION}\n"
              + "COMP_WORDS=(" + " ".join(f"'{w}'" for w in words) + ")\n"
              + f"COMP_CWORD={len(words) - 1}\n_pkirelay\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
    return run(["bash", "-c", script]).stdout.split()


def subcommands():
    helptext = run([PKIRELAY, "--help"]).stdout
    return re.findall(r"^  (\S+)\s", helptext.split("Subcommands:", 1)[1], re.M)


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
        commands = subcommands()
        self.assertIn("status", commands)
        for command in commands:
            self.assertIn(f"\n*{command}*", page, f"{command} is not in pkirelay(1)")
        for status in (0, 64, 65, 66, 73, 74, 75, 78):
            self.assertIn(f"\n*{status}*\n", page, f"exit status {status} is not in pkirelay(1)")


    def test_bash_completion_knows_the_commands_and_their_words(self):
        offered = complete("pkirelay", "")
        for command in subcommands():
            self.assertIn(command, offered)
        self.assertEqual(complete("pkirelay", "li"), ["list"])
        self.assertEqual(complete("pkirelay", "list", "--state", "re"), ["relaying", "review"])
        self.assertIn("--new-store", complete("pkirelay", "run", "--"))
        self.assertIn("--force", complete("pkirelay", "deliver", "1", "--"))
        self.assertEqual(complete("pkirelay", "inspect", "x"), ["FILES"])


if __name__ == "__main__":
    unittest.main()
