"""kdlab demo: the whole nano study on this machine, from nothing to a report.

Teachers, supervised baselines and students (kdlab study nano), both scaling-law fits with
bootstrap intervals, the compute-optimal plan in every scenario, and the report. Each step
is the same command a user would type; a rerun skips every finished run.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kdlab.console import console
from kdlab.models.ladder import get_shape, non_embedding_params
from kdlab.study import run_study

SCENARIOS = ("best", "inference", "pretraining", "pretraining+inference")
MAX_JOBS = 4  # each job's process holds torch; more buys little for the demo's stages


def core_layout(cores: int, overrides: list[str]) -> list[str]:
    """Jobs at once and torch threads per job so that jobs x threads = cores, where the
    user's overrides do not set them: the demo's runs are small enough that one thread
    per job uses a core best, and a job with two threads on a shared core waits on the
    other half of every matmul."""
    given = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    if given & {"hydra/launcher", "hydra.launcher.n_jobs"}:
        return []
    jobs = max(1, min(cores, MAX_JOBS))
    layout = ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={jobs}"]
    return layout if "threads" in given else [f"threads={max(1, cores // jobs)}", *layout]


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the system tells)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", description="Run the built-in nano study end to end: runs, fits, plans, report."
    )
    demo.add_argument("--root", default=".", help="where runs/ (database, runs, report) goes")
    demo.add_argument(
        "--budget-scale", type=float, default=1.0, help="multiply every token budget (quick demo)"
    )
    demo.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per fit")
    demo.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    demo.set_defaults(func=run_demo)


def _step(title: str, argv: list[str]) -> None:
    from kdlab.cli import main

    console.rule(f"[bold]{title}[/]")
    console.print("$ kdlab " + " ".join(argv), style="dim")
    code = main(argv)
    if code:
        raise SystemExit(code)


def report_wandb_args(overrides: list[str]) -> list[str]:
    """With the W&B logger on for the runs, the report's figures go to W&B as well."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    values = {o.key_or_group: o.value() for o in parsed if not o.is_delete()}
    if values.get("logger") != "wandb":
        return []
    args = ["--wandb"]
    for key in ("project", "entity"):
        if values.get(f"logger.wandb.{key}") is not None:
            args += [f"--wandb-{key}", str(values[f"logger.wandb.{key}"])]
    return args


def run_demo(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    runs = root / "runs"
    out = runs / "demo"
    out.mkdir(parents=True, exist_ok=True)
    db = f"sqlite:///{runs}/kdlab.db"
    overrides = [f"paths.root_dir={root}", f"data.budget_scale={args.budget_scale}"]
    overrides += core_layout(usable_cores(), args.overrides)
    code = run_study("nano", [*overrides, *args.overrides])
    if code:
        return code

    sup, dist = str(out / "supervised_fit.json"), str(out / "distillation_fit.json")
    boot = ["--bootstrap", str(args.bootstrap)]
    _step(
        "supervised law",
        ["fit", "supervised", "--db", db, "--form", "paper", *boot, "--out", sup],
    )
    _step(
        "distillation law",
        ["fit", "distillation", "--db", db, "--supervised", sup, *boot, "--out", dist],
    )
    student = non_embedding_params(get_shape("nano", "L2"))
    for scenario in SCENARIOS:
        _step(
            f"plan: {scenario}",
            [
                "plan",
                "--coefficients",
                dist,
                "--student",
                str(student),
                "--tokens-per-param",
                "40",
                "--scenario",
                scenario,
                "--out",
                str(out / f"plan-{scenario.replace('+', '-')}.json"),
            ],
        )
    _step(
        "report",
        [
            "report",
            "--db",
            db,
            "--supervised-fit",
            sup,
            "--distillation-fit",
            dist,
            "--out",
            str(runs / "report"),
            *report_wandb_args(args.overrides),
        ],
    )
    console.print(
        f"\n[bold green]done.[/] database {runs / 'kdlab.db'}; fits and plans in {out}; "
        f"report {runs / 'report' / 'index.html'}"
    )
    return 0
