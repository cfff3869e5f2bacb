"""A misspelt group, value or setting on kdlab-train's command line: one sentence with the
nearest valid names, exit 2, before Hydra runs anything."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize(
    "argv, sentence",
    [
        (["model=nano_L7"], "unknown model 'nano_L7'; did you mean nano_L6"),
        (["data=stdlb"], "unknown data 'stdlb'; did you mean stdlib? (choices: c4, files"),
        (["objective=distil"], "unknown objective 'distil'; did you mean distill?"),
        (["optim.lrr=1"], "unknown setting 'optim.lrr'; did you mean optim.lr"),
        (  # one bad value inside a swept grid is found before any job starts
            ["-m", "-cd", "sweeps/nano", "-cn", "teachers", "model=nano_L2,nano_L9"],
            "unknown model 'nano_L9'",
        ),
    ],
)
def test_mistyped_command_line_is_one_sentence(argv, sentence, tmp_path):
    out = run_cli("kdlab.train", *argv, f"paths.root_dir={tmp_path}")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        line for line in out.stderr.strip().splitlines() if line.startswith("kdlab-train: error: ")
    ]
    assert f"kdlab-train: error: {sentence}" in out.stderr
    assert not list(tmp_path.iterdir())  # nothing was created: no runs/, no database
