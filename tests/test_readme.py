"""Every command in README.md that can run here is run, literally or by a named test.

Cheap commands (predict, plan, sweep plan, fitting a CSV) run here exactly as written; the
ones that train are exercised by the tests named in COVERED. A README command that is in
neither list fails this test, so the README cannot drift from what works.
"""

from __future__ import annotations

import re
import shlex

import pytest

from tests.conftest import REPO, run_cli

# command prefix -> the test that runs it (with smaller budgets or a temporary root)
COVERED = {
    "bash scripts/demo.sh": "tests/test_demo.py::test_demo_on_a_reduced_budget (kdlab demo)",
    "bash scripts/test.sh": ".ci/run",
    "kdlab-train model=": "tests/test_train.py",
    "kdlab-train objective=distill model=": "tests/test_distill.py",
    "kdlab-train data=markov objective=distill teacher=oracle": "tests/test_distill.py",
    "kdlab-train -m -cd sweeps/nano": "tests/test_sweeps.py",
    "kdlab study nano": "tests/test_demo.py",
    # hours of CPU: their stages are planned (shape, steps, passes) by tests/test_studies.py
    "kdlab study pysrc": "tests/test_studies.py",
    "kdlab study kernel": "tests/test_studies.py",
    "kdlab study pointer": "tests/test_studies.py",
    "kdlab fit supervised --form paper": "tests/test_laws_cli.py (database input)",
    "kdlab fit distillation --supervised": "tests/test_laws_cli.py",
    "kdlab report": "tests/test_report.py",
    "kdlab runs": "tests/test_rundb.py::test_cli_list_show_export, tests/test_transfer.py",
    "kdlab sweep design": "tests/test_design.py (smaller replicates; the pysrc line in RESULTS)",
    # cluster-only: need SLURM, a PostgreSQL URL and a W&B account; the overrides are
    # composed here by test_readme_cluster_command_composes
    "export ": "cluster environment",
    "wandb login": "W&B's own command (an account)",
    "kdlab study paper": "cluster only (SLURM)",
    "kdlab-train -m -cd sweeps/paper": "cluster only (SLURM)",
}
RUN_HERE = ("kdlab predict", "kdlab plan", "kdlab sweep plan", "kdlab fit supervised --csv")
# what the README's comments promise these commands print (the paper's numbers, PAPER.md)
PROMISED = {
    "kdlab sweep plan paper/students_fixed_m": "total 2.15e+23 FLOPs",
    "kdlab predict --coefficients paper --n 198e6 --d 3.96e9": "2.7894",
    "kdlab predict --coefficients paper --n 198e6 --d 3.96e9 --teacher-loss 2.004": "2.5439",
}


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
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
    only be missing its teacher, which the README trains in the line before."""
    from kdlab.errors import ConfigError
    from kdlab.runner import plan_run
    from tests.conftest import compose_run

    overrides = shlex.split(command)[1:]
    try:
        plan = plan_run(compose_run(tmp_path, *overrides))
    except ConfigError as err:
        assert "not in the run database" in str(err), str(err)
    else:
        assert plan.tokens > 0


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith(RUN_HERE)])
def test_readme_command_runs(command, tmp_path):
    argv = shlex.split(command)
    if "--out" in argv:  # keep the repository clean: outputs go to a temporary folder
        i = argv.index("--out") + 1
        argv[i] = str(tmp_path / argv[i])
    out = run_cli("kdlab.cli", *argv[1:], cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip()
    if command in PROMISED:
        assert PROMISED[command] in out.stdout, out.stdout[-2000:]


def test_every_promise_is_a_readme_command():
    assert set(PROMISED) <= set(COMMANDS)


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
