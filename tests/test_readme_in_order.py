"""The README's commands, in the README's order, on a fresh clone (issue 16, item 3).

The README is the single source: every command of its ```bash blocks is taken in order
and run as written in a fresh clone of this working tree (cwd the clone, no KDLAB_ROOT or
KDLAB_DB_URL, W&B offline, no hub), except:

- SKIPPED: commands that cannot run in a test, each with its reason and the test that
  covers it elsewhere;
- substitutions (``Clone.argv``): the console scripts become ``python -m`` of the
  clone's own modules (the installed kdlab may point elsewhere); ``bash scripts/demo.sh``
  is its last line, ``kdlab demo``, at the README's quicker look (``--budget-scale
  0.25``, 16 bootstrap resamples; the install is tests/test_install.py's); every
  training command runs at that budget scale (``data.budget_scale=0.25``), so the runs
  the demo made are the ones the later lines find (and skip), with one torch thread;
  the placeholders ``<run key>`` and ``<key prefix>`` become the nano_L3 teacher's key;
  the dashboard serves on a free port until its page and its options answer.

After each command the test checks what the README promises it does (PROMISES: a check
per command, by prefix; a README command with none fails the test), and after the whole
sequence that the clone holds nothing new outside ``runs/``: no fit JSON, export or
W&B folder in the repository root.

The clone: ``git clone --shared`` of HEAD, then this tree's uncommitted changes (``git
diff HEAD`` and the untracked files git does not ignore) committed inside the clone, so
the test runs the code as it is now and ``git status`` in the clone starts empty. The
repository itself is only read.

It runs the demo first, and is the demo's end-to-end test: its runs, fits, plans, report
figures and progress, and that run again it trains nothing. The Hugging Face lines need the
hf extra (.ci/run installs it for this test); without it they fail, naming it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ALL_FIGURES, REPO, assert_figure
from tests.test_readme import (
    PROMISED_FIT,
    PROMISED_ROWS,
    PROMISED_TEXT,
    check_promised,
    readme_commands,
)

SCALE = "0.25"  # the README's quicker demo look: `kdlab demo --budget-scale 0.25`
DEMO = ["demo", "--budget-scale", SCALE, "--bootstrap", "16"]
# what a training command gets: the quicker look's budgets, and one torch thread per run
# (as every training test here: tiny models run faster so on a busy machine)
TRAINING_OVERRIDES = [f"data.budget_scale={SCALE}", "threads=1"]

# README command prefix -> why this test does not run it, and what covers it
SKIPPED = {
    "bash scripts/test.sh": "the test suite itself, which runs this test (.ci/run runs it)",
    "kdlab study pysrc": "hours of CPU; its stages are planned by tests/test_studies.py",
    "kdlab study kernel": "an hour of CPU; planned by tests/test_studies.py",
    "kdlab study pointer": "an hour of CPU; planned by tests/test_studies.py",
    "kdlab study markov": "half an hour of CPU; composed and planned by tests/test_studies.py",
    "pip install": "installs into the environment; tests/test_install.py (fresh venvs)",
    "export KDLAB_DB_URL=postgresql": "a cluster's PostgreSQL server; tests/test_postgres.py",
    "wandb login": "a W&B account; the runs here log offline (WANDB_MODE=offline)",
    "kdlab data prepare data=c4": "downloads C4 from the HF hub; no network in tests",
    "kdlab study paper": "SLURM; composed by tests/test_readme.py",
    "kdlab-train -m -cd sweeps/paper": "SLURM; composed by tests/test_readme.py",
    "kdlab runs import --wandb": (
        "another codebase's W&B runs and mapping (placeholders); tests/test_wandb_import.py "
        "imports offline run folders and CSV exports with a mapping"
    ),
    "kdlab fit supervised --corpus their-web-text": (
        "fits the runs imported above; tests/test_wandb_import.py fits them by that name"
    ),
}

TRAINING = ("kdlab-train", "kdlab study", "kdlab teacher cache", "kdlab generate")


class Clone:
    """A fresh clone of this working tree, and the README's commands run in it."""

    def __init__(self, path: Path):
        self.path = path
        git = ["git", "-c", "user.name=kdlab test", "-c", "user.email=test@localhost"]
        subprocess.run(["git", "clone", "-q", "--shared", str(REPO), str(path)], check=True)
        head = subprocess.run(  # a worktree's HEAD: a clone would take the main one's
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        subprocess.run(["git", "checkout", "-q", head], cwd=path, check=True)
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--binary"], cwd=REPO, capture_output=True, check=True
        ).stdout
        if diff:
            subprocess.run(["git", "apply", "--binary"], cwd=path, input=diff, check=True)
        untracked = subprocess.run(
            ["git", "ls-files", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\0")
        for name in filter(None, untracked):
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, path / name)
        subprocess.run([*git, "add", "-A"], cwd=path, check=True)
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "tree"], cwd=path, check=True)
        assert self.stray() == []
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("KDLAB_ROOT", "KDLAB_DB_URL")},
            "PYTHONPATH": str(path),
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
        }

    def stray(self) -> list[str]:
        """Files in the clone that git does not track, ignored ones included, outside
        runs/ (Python's bytecode caches aside)."""
        out = subprocess.run(
            ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
            cwd=self.path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        paths = [line[3:] for line in out.splitlines()]
        return [p for p in paths if not p.startswith("runs/") and "__pycache__/" not in p]

    def argv(self, command: str) -> list[str]:
        """The command as this test runs it: the clone's modules, a training command at
        the quicker look's budget scale."""
        argv = shlex.split(command)
        if argv[:2] == ["bash", "scripts/demo.sh"]:  # its install step: tests/test_install.py
            argv = ["kdlab", *DEMO, "threads=1", *argv[2:]]
        elif command.startswith(TRAINING):
            argv += TRAINING_OVERRIDES
        module = {"kdlab": "kdlab.cli", "kdlab-train": "kdlab.train"}[argv[0]]
        return [sys.executable, "-m", module, *argv[1:]]

    def run(self, command: str, timeout: int = 7200) -> subprocess.CompletedProcess:
        self.rows_before = len(self.rows()) if (self.path / "runs/kdlab.db").exists() else 0
        start = time.monotonic()
        out = subprocess.run(
            self.argv(command),
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        print(f"{time.monotonic() - start:7.1f}s  {command}", flush=True)  # shown on failure
        assert out.returncode == 0, f"{command}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out

    def rows(self, **match: object) -> list[dict]:
        from kdlab.rundb import RunStore

        rows = RunStore(f"sqlite:///{self.path}/runs/kdlab.db", create=False).find()
        return [r for r in rows if all(r[k] == v for k, v in match.items())]


# ------------------------------------------------------------------ what each promises


def check_demo(clone: Clone, out: subprocess.CompletedProcess) -> None:
    """2 teachers, 14 baselines and 12 students, both fits with intervals, a plan per
    scenario, the report with every figure, progress stage by stage."""
    runs = clone.path / "runs"
    roles = sorted(r["role"] for r in clone.rows())
    assert (roles.count("teacher"), roles.count("supervised"), roles.count("student")) == (
        2,
        14,
        12,
    )
    assert {r["status"] for r in clone.rows()} == {"done"}
    for law, names in (
        ("supervised", {"E", "A", "B", "alpha", "beta", "gamma"}),
        ("distillation", {"A", "B", "alpha", "beta", "gamma", "c0", "c1", "f1", "d1"}),
    ):
        fit = json.loads((runs / "demo" / f"{law}_fit.json").read_text())
        assert fit["law"] == law and set(fit["coefficients"]) >= names
        assert fit["n_points"] == (16 if law == "supervised" else 12)
        assert fit["bootstrap"]["resamples"] == 16
        for name in names:
            lo, hi = fit["intervals"][name]
            assert lo <= hi, name
    plans = sorted((runs / "demo").glob("plan-*.json"))
    assert len(plans) == 4
    for path in plans:
        plan = json.loads(path.read_text())
        shares = {"student", "teacher_logits", "teacher_pretraining"}
        assert plan["verdict"] and set(plan["compute_shares"]) == shares
    check_report_folder(runs / "report", ALL_FIGURES)
    for stage in ("teachers", "supervised", "supervised_isoflop", "students"):
        assert f"nano/{stage}: " in out.stdout, stage
    assert "$ kdlab fit distillation" in out.stdout and "$ kdlab report" in out.stdout
    # "Run again, it skips every finished run" (and redoes the fits, plans and report)
    again = clone.run("bash scripts/demo.sh")
    assert len(re.findall(r" jobs, 0 to run", again.stdout)) == 4, again.stdout[-3000:]
    assert "done." in again.stdout and len(clone.rows()) == clone.rows_before


def check_report_folder(folder: Path, figures: tuple[str, ...]) -> dict:
    html = (folder / "index.html").read_text()
    index = json.loads((folder / "report.json").read_text())
    assert sorted(index["figures"]) == sorted(figures) and not index["skipped"]
    for name in figures:
        assert_figure(folder / f"{name}.png")
        assert f"{name}.png" in html
    return index


def new_run(role: str, **match: object) -> Callable[[Clone, subprocess.CompletedProcess], None]:
    """The line trained one more finished run of this role (and these fields)."""

    def check(clone: Clone, out: subprocess.CompletedProcess) -> None:
        rows = clone.rows(role=role, **match)
        assert rows, (role, match)
        newest = max(rows, key=lambda r: r["created_at"])
        assert newest["status"] == "done" and newest["val_loss"] > 0
        assert (clone.path / "runs" / newest["key"] / "model.pt").is_file()

    return check


def tokens_per_param(role: str, model: str, ratio: float) -> Callable:
    """A run of this model whose D / N is the README's M times the budget scale."""

    def check(clone: Clone, out: subprocess.CompletedProcess) -> None:
        rows = [r for r in clone.rows(role=role) if r["model"] == model]
        assert any(r["tokens"] / r["n_params"] == pytest.approx(ratio, rel=0.02) for r in rows)
        new_run(role)(clone, out)

    return check


def kd_label(fragment: str) -> Callable:
    def check(clone: Clone, out: subprocess.CompletedProcess) -> None:
        from kdlab.rundb.query import runs_frame

        frame = runs_frame(f"sqlite:///{clone.path}/runs/kdlab.db", role="student", status="done")
        labels = list(frame["kd_objective"].fillna(""))
        assert any(fragment in label for label in labels), labels

    return check


def printed(*texts: str) -> Callable:
    def check(clone: Clone, out: subprocess.CompletedProcess) -> None:
        for text in texts:
            assert text in out.stdout, (text, out.stdout[-3000:])

    return check


def nothing_to_run(stages: int) -> Callable:
    """A study run again: every stage's jobs are done already (the demo ran them)."""

    def check(clone: Clone, out: subprocess.CompletedProcess) -> None:
        assert len(re.findall(r" jobs, 0 to run", out.stdout)) == stages, out.stdout[-3000:]
        assert len(clone.rows()) == clone.rows_before

    return check


def all_skipped(jobs: int) -> Callable:
    """A sweep launched again: each of its jobs is done already (the demo ran them)."""

    def check(clone: Clone, out: subprocess.CompletedProcess) -> None:
        assert out.stdout.count(" is already done (val_loss ") == jobs, out.stdout[-3000:]
        assert len(clone.rows()) == clone.rows_before

    return check


def fit_json(name: str, law: str, resamples: int = 0, held_out: bool = False) -> Callable:
    def check(clone: Clone, out: subprocess.CompletedProcess) -> None:
        doc = json.loads((clone.path / "runs" / name).read_text())
        assert doc["law"] == law and doc["data"]["corpus"]
        expected = len(clone.rows(role="student", status="done", corpus="stdlib"))
        if law == "supervised":
            expected = sum(
                len(clone.rows(role=r, status="done", corpus="stdlib"))
                for r in ("teacher", "supervised")
            )
        assert len(doc["data"]["run_keys"]) <= expected and doc["n_points"] >= 6
        if resamples:
            assert doc["bootstrap"]["resamples"] == resamples
        if held_out:
            assert doc["n_heldout"] > 0 and doc["heldout_error"]  # the stronger runs

    return check


def cache_folder(clone: Clone, out: subprocess.CompletedProcess) -> None:
    caches = [p for p in (clone.path / "runs/cache/teacher").iterdir() if p.is_dir()]
    assert caches and all(any(p.iterdir()) for p in caches)


def generated_corpus(clone: Clone, out: subprocess.CompletedProcess) -> None:
    [corpus] = (clone.path / "runs/cache/tokens").glob("generated-*.bin")
    assert corpus.stat().st_size > 0


def hf_export(clone: Clone, out: subprocess.CompletedProcess) -> None:
    folder = clone.path / "runs/hf/nano_L3"
    config = json.loads((folder / "config.json").read_text())
    assert config["num_hidden_layers"] == 3
    assert any(folder.glob("*.safetensors"))


def runs_table(clone: Clone, out: subprocess.CompletedProcess) -> None:
    keys = [r["key"][:8] for r in clone.rows()]
    assert all(k in out.stdout for k in keys)


def runs_filtered(clone: Clone, out: subprocess.CompletedProcess) -> None:
    assert not clone.rows(status="interrupted")
    assert "0 runs in" in out.stdout, out.stdout[-2000:]


def runs_show(clone: Clone, out: subprocess.CompletedProcess) -> None:
    assert f"run {teacher_key(clone)} in " in out.stdout
    points = re.search(r"validation curve \((\d+) points\)", out.stdout)
    assert points and int(points[1]) > 0, out.stdout[-2000:]


def csv_export(clone: Clone, out: subprocess.CompletedProcess) -> None:
    lines = (clone.path / "runs/runs.csv").read_text().splitlines()
    assert len(lines) == 1 + len(clone.rows())


def jsonl_export(clone: Clone, out: subprocess.CompletedProcess) -> None:
    lines = (clone.path / "runs/study.jsonl").read_text().splitlines()
    header, records = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    assert header["runs"] == len(records) == len(clone.rows())
    assert {r["key"] for r in records} == {r["key"] for r in clone.rows()}


def compute_table(clone: Clone, out: subprocess.CompletedProcess) -> None:
    assert "teachers" in out.stdout and "total" in out.stdout


def seeds(clone: Clone, out: subprocess.CompletedProcess) -> None:
    """The demo's nano_L2 teacher in three seeds, done."""
    teachers = [
        r
        for r in clone.rows(role="teacher", model="L2", status="done")
        if r["tokens"] / r["n_params"] == pytest.approx(20 * float(SCALE), rel=0.02)
    ]
    assert sorted(r["seed"] for r in teachers) == [0, 1, 2]
    assert len({r["tokens"] for r in teachers}) == 1


def wandb_run(clone: Clone, out: subprocess.CompletedProcess) -> None:
    [row] = [r for r in clone.rows(role="teacher", model="L2") if r["wandb_artifacts"]]
    assert list((clone.path / "runs" / row["key"]).rglob("*.wandb"))
    assert row["tokens"] / row["n_params"] == pytest.approx(10 * float(SCALE), rel=0.02)


def wandb_fit(clone: Clone, out: subprocess.CompletedProcess) -> None:
    fit_json("sup.json", "supervised")(clone, out)
    doc = json.loads((clone.path / "runs/sup.json").read_text())
    assert doc["wandb_artifact"]["name"] and doc["wandb_artifact"]["digest"]


def wandb_report(clone: Clone, out: subprocess.CompletedProcess) -> None:
    index = json.loads((clone.path / "runs/report/report.json").read_text())
    logged = {a["type"]: a for a in index["wandb_artifacts"]}  # the report and its fit
    assert logged["report"]["digest"] and logged["fit"]["name"] == "fit-supervised-sup"


def report_all(clone: Clone, out: subprocess.CompletedProcess) -> None:
    check_report_folder(clone.path / "runs/report", ALL_FIGURES)


def teacher_key(clone: Clone) -> str:
    """The run the README's `<run key>` stands for: the nano_L3 teacher of its first line."""
    [row] = [
        r
        for r in clone.rows(role="teacher", model="L3")
        if r["tokens"] / r["n_params"] == pytest.approx(20 * float(SCALE), rel=0.02)
    ]
    return row["key"]


def promised(command: str) -> Callable:
    def check(clone: Clone, out: subprocess.CompletedProcess) -> None:
        check_promised(command, out.stdout, clone.path / "runs")

    return check


PROMISES: dict[str, Callable] = {
    "bash scripts/demo.sh": check_demo,
    # the demo trained this teacher already (sweeps/nano/teachers.yaml): skipped, done
    "kdlab-train model=nano_L3 data.tokens_per_param=20": tokens_per_param(
        "teacher", "L3", 20 * float(SCALE)
    ),
    "kdlab-train model=nano_L3 role=supervised": new_run("supervised"),
    "kdlab-train objective=distill model=nano_L2": tokens_per_param(
        "student", "L2", 40 * float(SCALE)
    ),
    "kdlab-train data=markov objective=distill teacher=oracle": new_run("student", corpus="markov"),
    "kdlab teacher cache --sweep": cache_folder,
    "kdlab teacher cache": cache_folder,
    "kdlab-train objective=distill teacher=cache": kd_label("cache_k="),
    "kdlab generate": generated_corpus,
    "kdlab-train data=markov objective=seqkd": kd_label("sequence_kd"),
    "kdlab-train objective=features": kd_label("hidden="),
    "kdlab-train objective=distill teacher=mixture": kd_label("teachers=2"),
    "kdlab export hf": hf_export,
    "kdlab-train objective=distill teacher=hf": new_run("student", teacher_kind="hf"),
    "kdlab runs compute": compute_table,
    "kdlab-train -m -cd sweeps/nano -cn teachers": all_skipped(2),
    "kdlab-train -m -cd sweeps/nano -cn supervised": all_skipped(6),
    "kdlab-train -m model=nano_L2 data.tokens_per_param=20 seed=": seeds,
    "kdlab study nano": nothing_to_run(4),
    "kdlab sweep design pysrc --law paper --law-scale 5400": printed(
        "verdict:", "at 5400 x N and D"
    ),
    "kdlab sweep design micro --law results/": printed("verdict:"),
    "kdlab sweep design pysrc --noise db": printed("verdict:", "measured: "),
    "kdlab sweep design nano micro --budget 2e14": printed("grids ranked within 2e+14 FLOPs"),
    "kdlab-train model=nano_L2 data.tokens_per_param=10 logger=wandb": wandb_run,
    "kdlab fit supervised --form paper --out runs/sup.json --wandb": wandb_fit,
    "kdlab report --supervised-fit runs/sup.json --wandb": wandb_report,
    "kdlab fit supervised --form paper --bootstrap": fit_json("sup.json", "supervised", 200),
    "kdlab fit distillation": fit_json("dist.json", "distillation", 200),
    "kdlab fit supervised --form paper --fit-where": fit_json(
        "sup_small.json", "supervised", 0, True
    ),
    "kdlab report --supervised-fit runs/sup.json --distillation-fit": report_all,
    "kdlab runs list --study": runs_filtered,
    "kdlab runs list": runs_table,
    "kdlab runs show": runs_show,
    "kdlab runs export --format csv": csv_export,
    "kdlab runs export --format jsonl": jsonl_export,
    "kdlab runs import": printed("imported 0 runs"),
}


def promise_of(command: str) -> Callable:
    """The checks of what a README command promises; one it quotes numbers for
    (tests/test_readme.py's PROMISED_*) is held to them."""
    prefix = next((p for p in PROMISES if command.startswith(p)), None)
    numbers = command in {*PROMISED_TEXT, *PROMISED_ROWS, *PROMISED_FIT}
    assert prefix or numbers, f"the README's `{command}` promises nothing here: add its check"
    checks = [PROMISES[prefix]] if prefix else []
    checks += [promised(command)] if numbers else []

    def check(clone: Clone, out: subprocess.CompletedProcess) -> None:
        for one in checks:
            one(clone, out)

    return check


def dashboard(clone: Clone, command: str) -> None:
    """Serves until stopped: on a free port, until its page and its options answer with
    what the command preselected."""
    argv = clone.argv(command)
    if "--port" not in argv:
        argv += ["--port", "0"]
    proc = subprocess.Popen(
        argv,
        cwd=clone.path,
        env=clone.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("kdlab dashboard: http://127.0.0.1:"), proc.stderr.read()
        url = line.split()[2].rstrip("/")
        with urllib.request.urlopen(f"{url}/", timeout=120) as page:
            assert b"kdlab dashboard" in page.read()
        with urllib.request.urlopen(f"{url}/api/options", timeout=120) as answer:
            defaults = json.loads(answer.read())["defaults"]
        argv = shlex.split(command)
        for option in ("--fit", "--db"):
            if option in argv:
                given = argv[argv.index(option) + 1]
                assert Path(str(defaults[option[2:]])).name == Path(given).name, defaults
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.slow
def test_readme_commands_in_order_on_a_fresh_clone(tmp_path):
    clone = Clone(tmp_path / "kdlab")
    skipped = set()
    for command in readme_commands():
        prefix = next((p for p in SKIPPED if command.startswith(p)), None)
        if prefix:
            skipped.add(prefix)
            continue
        if command.startswith("kdlab dashboard"):
            dashboard(clone, command)
        else:
            check = promise_of(command)
            key = teacher_key(clone) if "<" in command else ""
            command = command.replace("<run key>", key).replace("<key prefix>", key[:8])
            check(clone, clone.run(command))
        assert clone.stray() == [], (command, clone.stray())  # nothing outside runs/
    assert skipped == set(SKIPPED)  # every skip still names a README command
