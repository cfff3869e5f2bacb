"""Every command in README.md that can run here is run, literally or by a named test.

Cheap commands (predict, plan, sweep plan, fitting a CSV) run here exactly as written; the
ones that train are exercised by the tests named in COVERED. A README command that is in
neither list fails this test, so the README cannot drift from what works. All of them, in
the README's order on a fresh clone, are run by tests/test_readme_in_order.py (slow).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

# command prefix -> the test that runs it (with smaller budgets or a temporary root)
COVERED = {
    "pip install": "tests/test_install.py (slow: a wheel and git+file into fresh venvs)",
    "bash scripts/demo.sh": "tests/test_readme_in_order.py (kdlab demo, then the README in order)",
    "bash scripts/test.sh": ".ci/run",
    "kdlab-train model=": "tests/test_train.py",
    "kdlab-train objective=distill model=": "tests/test_distill.py",
    "kdlab-train data=markov objective=distill teacher=oracle": "tests/test_distill.py",
    "kdlab-train -m -cd sweeps/nano": "tests/test_sweeps.py",
    "kdlab-train -m model=": "tests/test_readme_in_order.py (slow: the README in order)",
    "kdlab study nano": "tests/test_readme_in_order.py (after the demo: nothing to run)",
    # hours of CPU: their stages are planned (shape, steps, passes) by tests/test_studies.py
    "kdlab study pysrc": "tests/test_studies.py",
    "kdlab study kernel": "tests/test_studies.py",
    "kdlab study pointer": "tests/test_studies.py",
    "kdlab study markov": "tests/test_studies.py",
    "kdlab fit supervised --form paper": "tests/test_laws_cli.py (database input)",
    "kdlab fit distillation --supervised": "tests/test_laws_cli.py",
    "kdlab report": "tests/test_report.py",
    "kdlab dashboard": "tests/test_dashboard.py (serves until stopped)",
    "kdlab runs import --wandb": "tests/test_wandb_import.py (its mapping: the README's)",
    "kdlab fit supervised --corpus": "tests/test_wandb_import.py (imported runs)",
    "kdlab runs compute": "tests/test_teacher_cache.py::test_students_share_one_cache_counted_once",
    "kdlab runs": "tests/test_rundb.py::test_cli_list_show_export, tests/test_transfer.py",
    "kdlab teacher cache": "tests/test_teacher_cache.py",
    "kdlab-train objective=distill teacher=cache": "tests/test_teacher_cache.py",
    "kdlab-train data=markov objective=seqkd": "tests/test_generate.py",
    "kdlab-train objective=features": "tests/test_teachers.py",
    "kdlab-train objective=distill teacher=mixture": "tests/test_teachers.py",
    "kdlab-train objective=distill teacher=hf": "tests/test_hf.py",
    "kdlab generate": "tests/test_generate.py",
    "kdlab export hf": "tests/test_hf.py::test_export_command_writes_a_finished_runs_checkpoint",
    "kdlab sweep design": "tests/test_design.py (smaller replicates; the pysrc line in RESULTS)",
    # cluster-only: need SLURM, a PostgreSQL URL and a W&B account; the overrides are
    # composed here by test_readme_cluster_command_composes
    "export ": "cluster environment",
    "wandb login": "W&B's own command (an account)",
    "kdlab data prepare data=c4": "tests/test_bad_input.py (data prepare; C4 needs the hub)",
    "kdlab study paper": "cluster only (SLURM)",
    "kdlab-train -m -cd sweeps/paper": "cluster only (SLURM)",
}
RUN_HERE = ("kdlab predict", "kdlab plan", "kdlab sweep plan", "kdlab fit supervised --csv")
PLAN = "kdlab plan --coefficients paper --student 198e6"
EPOCH_FIT = (
    'kdlab fit supervised --csv data/chinchilla_epoch_svg_extracted.csv --n-col "Model Size" '
    '--flops-col "Training FLOP" --loss-col loss --form chinchilla --huber-delta 1e-3 '
    "--grid epoch --drop-highest 5 --out runs/chinchilla.json"
)
# What the README's comments promise each command prints: the paper's published numbers,
# the plans' verdicts (rows of the printed table), Epoch AI's published Chinchilla fit
# (data/README.md) in the fit JSON.
PROMISED_TEXT = {
    "kdlab sweep plan nano/students": "12 jobs, ",
    "kdlab sweep plan paper/students_fixed_m": "total 2.15e+23 FLOPs",
    "kdlab sweep plan paper/teachers_fixed_m --gpu h100-80gb": (
        "every job fits on h100-80gb and meets the 72.0h target"
    ),
    "kdlab predict --coefficients paper --n 198e6 --d 3.96e9": "2.7894",
    "kdlab predict --coefficients paper --n 198e6 --d 3.96e9 --teacher-loss 2.004": "2.5439",
}
PROMISED_ROWS = {
    f"{PLAN} --compute 1e21 --scenario pretraining+inference": {
        "verdict": "train alone",
        "supervised_loss": "2.43497",
        "student_loss": "2.44844",
    },
    f"{PLAN} --compute 1e21 --scenario pretraining --students 8": {
        "verdict": "distil",
        "supervised_loss": "2.43497",
        "student_loss": "2.41919",
    },
    f"{PLAN} --crossover --scenario inference": {
        "note": "distillation is better over the whole range",
    },
}
PROMISED_FIT = {
    EPOCH_FIT: {"E": 1.81724, "A": 477.88, "B": 2143.96, "alpha": 0.347317, "beta": 0.367185}
}


def readme_commands() -> list[str]:
    """The README's ```bash commands in order, continuation lines joined, comments cut."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"(?:^|\s)#", line)[0].strip()
            if line:
                commands.append(" ".join(line.split()))
    return commands


COMMANDS = readme_commands()


def test_every_readme_command_is_run_or_covered():
    unclassified = [
        c
        for c in COMMANDS
        if not c.startswith(RUN_HERE) and not any(c.startswith(p) for p in COVERED)
    ]
    assert not unclassified, unclassified
    assert sum(c.startswith(RUN_HERE) for c in COMMANDS) >= 8


SINGLE_RUNS = [c for c in COMMANDS if c.startswith("kdlab-train ") and " -m " not in c]


@pytest.mark.parametrize("command", SINGLE_RUNS)
def test_readme_training_command_plans(command, tmp_path):
    """Each single-run example composes and plans as written (no compute); a student may
    only be missing what the README makes in the lines before: its teacher, its cache or
    generated corpus, its exported model."""
    from kdlab.errors import ConfigError
    from kdlab.run_plan import plan_run
    from tests.conftest import compose_run

    overrides = shlex.split(command)[1:]
    # made in the lines before: a teacher run, a cache or corpus, an exported model
    made_before = ("not in the run database", "make it with `kdlab", "tokenizer.json does not")
    try:
        plan = plan_run(compose_run(tmp_path, *overrides))
    except ConfigError as err:
        assert any(m in str(err) for m in made_before), str(err)
    else:
        assert plan.tokens > 0


def table_rows(text: str) -> dict[str, str]:
    """The two-column rows (quantity, value) of a table kdlab printed."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 2 and cells[0]:
            rows[cells[0]] = cells[1]
    return rows


def check_promised(command: str, stdout: str, out_dir: Path) -> None:
    """The numbers the README quotes for this command: in what it printed, or in the fit
    it wrote to ``out_dir`` (tests/test_readme_in_order.py holds the runs to them too)."""
    if command in PROMISED_TEXT:
        assert PROMISED_TEXT[command] in stdout, stdout[-2000:]
    if command in PROMISED_ROWS:
        rows = table_rows(stdout)
        assert {k: rows.get(k) for k in PROMISED_ROWS[command]} == PROMISED_ROWS[command]
    if command in PROMISED_FIT:
        doc = json.loads((out_dir / "chinchilla.json").read_text())
        for name, value in PROMISED_FIT[command].items():
            assert doc["coefficients"][name] == pytest.approx(value, rel=1e-3), name


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith(RUN_HERE)])
def test_readme_command_runs(command, tmp_path):
    """Each command as written, in a run root of its own (no database: nothing done yet),
    prints what the README says it does."""
    argv = shlex.split(command)
    if "--out" in argv:  # keep the repository clean: outputs go to a temporary folder
        i = argv.index("--out") + 1
        argv[i] = str(tmp_path / "out" / Path(argv[i]).name)
    env = {"KDLAB_ROOT": str(tmp_path), "KDLAB_DB_URL": ""}
    out = run_cli("kdlab.cli", *argv[1:], cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert command in {**PROMISED_TEXT, **PROMISED_ROWS, **PROMISED_FIT}, "promise nothing?"
    check_promised(command, out.stdout, tmp_path / "out")
    if command in PROMISED_FIT:
        doc = json.loads((tmp_path / "out" / "chinchilla.json").read_text())
        assert (doc["n_points"], doc["n_starts"], doc["coefficients"]["gamma"]) == (240, 4500, 1)
        assert doc["objective"] == pytest.approx(0.0010182740, rel=1e-5)
    if command == "kdlab sweep plan nano/students":  # a fresh run root: nothing done
        assert "12 jobs, 0 done, 12 to run" in out.stdout
    if command.startswith("kdlab sweep plan nano/"):  # every job's D = M N
        jobs = [line.split("│")[1:-1] for line in out.stdout.splitlines() if "│ student" in line]
        assert len(jobs) == 12
        for job in jobs:
            n, d, m = (float(job[i]) for i in (3, 4, 5))
            assert d == pytest.approx(m * n, rel=5e-3)
    assert not (tmp_path / "runs").exists()  # looking never creates a database


def test_every_promise_is_a_readme_command():
    assert {*PROMISED_TEXT, *PROMISED_ROWS, *PROMISED_FIT} <= set(COMMANDS)


CLUSTER = [c for c in COMMANDS if c.startswith(("kdlab study paper", "kdlab-train -m -cd sweeps/"))]


@pytest.mark.parametrize("command", [c for c in CLUSTER if "sweeps/paper" in c or "study" in c])
def test_readme_cluster_command_composes(command, monkeypatch):
    """SLURM is not here, but each cluster line's overrides must compose with the paper's
    grids as written (a misspelt launcher key fails here, not on the cluster). A study's
    overrides are tried on a teacher stage and a student stage."""
    from kdlab.sweeps import expand

    url = "postgresql+psycopg://user:password@dbhost:5432/kdlab"
    monkeypatch.setenv("KDLAB_DB_URL", url)  # the README's export line
    argv = shlex.split(command.replace("<partition>", "gpu").replace("<project>", "kd-paper"))
    if argv[1] == "study":
        stages, overrides = ["teachers_fixed_m", "ablation_tau"], argv[3:]
    else:
        i = argv.index("-cn") + 1
        stages, overrides = [argv[i]], argv[i + 1 :]
    for stage in stages:
        jobs = expand(REPO / "sweeps" / "paper" / f"{stage}.yaml", overrides)
        cfg = jobs[0][1]
        project = "kd-paper" if "<project>" in command else "kdlab"
        assert cfg.logger.wandb.project == project and cfg.db.url == url
