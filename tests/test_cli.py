"""The kdlab command: subcommands load lazily, light commands stay light, one error style."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from kdlab import cli
from tests.conftest import REPO

# modules a command must not import: planning, listing and help need neither
HEAVY = ("torch", "lightning")


def _modules_after(*argv: str, cwd=REPO) -> tuple[set[str], subprocess.CompletedProcess]:
    """Run ``kdlab ARGV`` in a fresh interpreter; the modules it imported, and its output."""
    code = (
        "import sys, json\n"
        "from kdlab.cli import main\n"
        "try:\n"
        f"    code = main({list(argv)!r})\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "print('\\nMODULES=' + json.dumps(sorted(sys.modules)))\n"
        "sys.exit(code)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    listed = out.stdout.rsplit("MODULES=", 1)[-1]
    return set(json.loads(listed)), out


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["predict", "--coefficients", "paper", "--n", "198e6", "--d", "3.96e9"],
        ["plan", "--coefficients", "paper", "--student", "198e6", "--compute", "1e21"],
        ["runs", "--db", "sqlite:////nonexistent/kdlab.db", "list"],
    ],
)
def test_light_commands_import_neither_torch_nor_lightning(argv):
    modules, out = _modules_after(*argv)
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], f"kdlab {' '.join(argv)} imported {heavy[:5]}"
    if argv[0] == "predict":
        assert "2.7894" in out.stdout  # the paper's 198M at 20 tokens per parameter
    if argv[0] == "runs":  # a database that is not there: one sentence, exit 2
        assert out.returncode == 2
        assert "kdlab: error: there is no run database at /nonexistent/kdlab.db" in out.stderr


def test_only_the_asked_command_is_imported():
    modules, out = _modules_after("--help")
    assert out.returncode == 0
    assert not {m for _, (m, _) in cli.COMMANDS.items()} & modules
    listed = re.findall(r"^    (\S+)", out.stdout, flags=re.M)
    assert listed == list(cli.COMMANDS)  # every command listed, with its line of help
    for _, help_line in cli.COMMANDS.values():
        assert help_line in " ".join(out.stdout.split())


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_registers_from_its_module(name, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: kdlab {name}")


def test_unknown_command_names_the_choices(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["fitt"])
    assert done.value.code == 2
    assert "invalid choice: 'fitt'" in capsys.readouterr().err
