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


def test_a_users_config_folder_adds_to_the_shipped_configs(tmp_path):
    """`-cd DIR` with only the user's own group files: they compose with the shipped
    train.yaml and groups (Hydra search path), and a name in neither is one sentence."""
    mine = tmp_path / "my_conf" / "model"
    mine.mkdir(parents=True)
    (mine / "my_nano.yaml").write_text(
        "_target_: kdlab.models.ladder.get_shape\nladder: nano\nname: L2\nn_ctx: null\n"
    )
    job = run_cli("kdlab.train", "-cd", str(tmp_path / "my_conf"), "model=my_nano", "--cfg", "job")
    assert job.returncode == 0, job.stderr[-2000:]
    assert "ladder: nano\n  name: L2" in job.stdout and "optim:" in job.stdout
    wrong = run_cli("kdlab.train", "-cd", str(tmp_path / "my_conf"), "model=my_nan", "--cfg", "job")
    assert wrong.returncode == 2
    assert "my_nano" in wrong.stderr.strip().splitlines()[-1]  # the nearest name, the user's
