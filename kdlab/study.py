"""kdlab sweep plan|run and kdlab study: grids from sweeps/, launched through kdlab-train.

A study is a folder of sweeps/ with a ``study.yaml`` listing its stages in order
(teachers before the students that need them); each stage is a sweep file. Finished runs
are skipped by their run key, so a study can be rerun at will and only what is missing
trains.

On this machine (Hydra's basic launcher, or ``hydra/launcher=parallel``) the study runs
each job itself: every job of a group of stages from one queue, longest first, as many at
once as the launcher would, each forked from one process that imported torch and
Lightning once (kdlab.processes.Zygote). A demo job at a tenth of its budget trains for a
second or two; a process of its own would spend eight seconds of CPU importing. On a
cluster (``hydra/launcher=slurm`` or ``submitit_cpu``) each stage is one Hydra multirun,
which hands its jobs to the scheduler.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from rich.table import Table

from kdlab import sweep_design
from kdlab.accelerators import ACCELERATORS, GIB, get_accelerator
from kdlab.cluster_plan import (
    USABLE,
    ClusterPlan,
    Target,
    layout_entry,
    parse_duration,
    plan_cluster,
)
from kdlab.composition import PLANNED_ENV
from kdlab.configs import CONF_DIR
from kdlab.console import console
from kdlab.errors import ConfigError
from kdlab.processes import (
    STOP_SIGNALS,
    Zygote,
    new_program,
    run_child,
    run_children,
    threads_per_job,
)
from kdlab.progress import PROGRESS_ENV, StageBoard, fmt_seconds
from kdlab.rundb import shown_url
from kdlab.sweeps import (
    SWEEPS_DIR,
    JobPlan,
    SweepPlan,
    missing_teachers,
    plan_sweep,
    sweep_file,
)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    sweep = subparsers.add_parser("sweep", description="Plan or launch a grid from sweeps/.")
    sub = sweep.add_subparsers(dest="sweep_command", required=True)
    plan = sub.add_parser("plan", help="expand a grid: sizes, D, FLOPs, time, what is done")
    plan.add_argument("sweep", help="e.g. nano/teachers or sweeps/paper/supervised_isoflop.yaml")
    plan.add_argument("overrides", nargs="*", help="Hydra overrides, as for kdlab-train")
    plan.add_argument(
        "--gpu", help=f"also plan memory, layout and wall time on: {', '.join(ACCELERATORS)}"
    )
    plan.add_argument("--gpus-per-node", type=int, default=8, help="with --gpu (default 8)")
    plan.add_argument(
        "--wall-time", default="72h", help="target per job (default 72h; none: fewest nodes)"
    )
    plan.add_argument("--mfu", type=float, default=0.4, help="assumed MFU (default 0.4)")
    plan.set_defaults(func=_plan)
    sweep_design.add_command(sub)
    run = sub.add_parser("run", help="launch a grid (kdlab-train -m) after checking it")
    run.add_argument("sweep")
    run.add_argument("overrides", nargs="*")
    run.set_defaults(func=_run)
    study = subparsers.add_parser(
        "study", description="Run a study's stages in order, skipping what is done."
    )
    study.add_argument(
        "name", help="a folder of sweeps/ with a study.yaml (e.g. nano), or a path to one"
    )
    study.add_argument("overrides", nargs="*", help="Hydra overrides applied to every stage")
    study.set_defaults(func=lambda a: run_study(a.name, a.overrides))


def print_plan(title: str, jobs: list[JobPlan]) -> None:
    table = Table(title=title)
    columns = ("#", "role", "model", "N", "D", "M", "passes", "teacher", "FLOPs", "est. time")
    for column in (*columns, "status"):
        table.add_column(column, justify="right" if column not in ("role", "status") else "left")
    for i, job in enumerate(jobs):
        table.add_row(
            str(i),
            job.role,
            job.model,
            f"{job.n_params:.3g}",
            f"{job.tokens:.3g}",
            f"{job.tokens / job.n_params:.3g}",
            "-" if job.passes is None else f"{job.passes:.2g}",
            _teacher_cell(job.teacher),
            f"{job.flops:.3g}",
            "?" if job.seconds is None else fmt_seconds(job.seconds),
            job.status,
        )
    console.print(table)
    todo = [j for j in jobs if j.status != "done"]
    seconds = [j.seconds for j in todo if j.seconds is not None]
    console.print(
        f"{len(jobs)} jobs, {len(jobs) - len(todo)} done, {len(todo)} to run; "
        f"total {sum(j.flops for j in jobs):.3g} FLOPs, to run {sum(j.flops for j in todo):.3g}"
        + (f", about {fmt_seconds(sum(seconds))} at the measured rate" if seconds else "")
    )
    console.print(
        "N: non-embedding parameters; D: training tokens; M = D/N; passes: times over the "
        "job's data split; teacher: its size and tokens; est. time: from the throughput of "
        "finished runs of that shape in the database (? where none has run yet)",
        style="dim",
    )
    warn_repeats(jobs)


def _teacher_cell(teacher: str | None) -> str:
    """'546M@10919408640' as '546M, D 1.09e+10'."""
    if not teacher:
        return "-"
    model, _, tokens = teacher.partition("@")
    return f"{model}, D {int(tokens):.3g}" if tokens.isdigit() else teacher


def warn_repeats(jobs: list[JobPlan]) -> None:
    """One line when a job would see its split more than once (its data repeats)."""
    over = [j for j in jobs if j.passes is not None and j.passes > 1]
    if over:
        how = over[0].passes_how
        console.print(
            f"[bold red]warning:[/] {len(over)} job(s) pass over their data split more than "
            f"once (up to {max(j.passes for j in over):.3g} times: the data repeats)"
            + ("" if how == "exact" else f"; corpus size {how}")
        )


def _plan(args: argparse.Namespace) -> int:
    target = _cluster_target(args) if args.gpu else None  # a bad GPU fails before composing
    path = sweep_file(args.sweep)
    plan = plan_sweep(path, args.overrides)
    where = path.relative_to(SWEEPS_DIR) if path.is_relative_to(SWEEPS_DIR) else path
    database = shown_url(plan.url) or "no database set here, so no job counts as done"
    print_plan(f"{where} ({database})", plan.jobs)
    if target is not None:
        cluster = plan_cluster([(j.workload(), j.layout) for j in plan.jobs], target)
        print_cluster_plan(cluster, plan.jobs, path)
    return 0


def _cluster_target(args: argparse.Namespace) -> Target:
    try:
        accelerator = get_accelerator(args.gpu)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return Target(accelerator, args.gpus_per_node, parse_duration(args.wall_time), args.mfu)


def print_cluster_plan(cluster: ClusterPlan, jobs: list[JobPlan], path: Path) -> None:
    """Each job's GiB per GPU and wall time under the sweep's layout; the plan's layout
    for each model size where it differs, as the lines to put in the sweep file."""
    target = cluster.target
    gpu = target.accelerator
    table = Table(
        title=f"GiB per GPU on {gpu.description} ({gpu.memory_bytes / GIB:.0f} GiB, "
        f"{USABLE:.0%} usable) and wall time at {target.mfu:.0%} MFU"
    )
    columns = ("#", "model", "teacher", "layout", "weights", "grads", "AdamW", "activ.")
    for column in (*columns, "teacher", "other", "total", "fits", "time"):
        table.add_column(column, justify="left" if column in ("layout", "fits") else "right")
    for i, (job, fit_) in enumerate(zip(jobs, cluster.configured, strict=True)):
        memory = fit_.memory
        other = memory.total - memory.persistent - memory.activations
        table.add_row(
            str(i),
            job.model,
            job.teacher_shape.name if job.teacher_shape else "-",
            fit_.layout.describe(),
            *(f"{b / GIB:.1f}" for b in (memory.weights, memory.gradients, memory.optimizer)),
            *(f"{b / GIB:.1f}" for b in (memory.activations, memory.teacher, other)),
            f"{memory.total / GIB:.1f}",
            "yes" if fit_.fits else "[red]NO[/]",
            fmt_seconds(fit_.seconds),
        )
    console.print(table)
    unfit = sum(not f.fits for f in cluster.configured)
    wall = target.wall_seconds
    slow = sum(wall is not None and f.seconds > wall for f in cluster.configured)
    deadline = f" the {fmt_seconds(wall)} target" if wall is not None else " no target"
    console.print(
        f"{unfit} job(s) do not fit on {gpu.name}; {slow} miss{deadline}"
        if unfit or slow
        else f"every job fits on {gpu.name} and meets{deadline}"
    )
    changes = cluster.sizes_to_change()
    if changes:
        console.print(
            f"The plan for {gpu.name} (rules in kdlab/cluster_plan.py) sets other layouts; "
            f"to launch with them, put these lines under 'layouts:' in {path.name}:"
        )
        for model, layout in changes.items():
            console.print(f"  {model}: {layout_entry(layout)}", highlight=False)
    late = {j.model for j, on_time in zip(jobs, cluster.meets_target, strict=True) if not on_time}
    if late:
        console.print(f"[yellow]no layout meets the target for {', '.join(sorted(late))}")


def sweep_command(path: Path, overrides: Sequence[str] = ()) -> list[str]:
    """The sweep as one Hydra multirun in a child process, as a user would type it."""
    return [
        *(sys.executable, "-m", "kdlab.train", "-m", "-cd", str(path.parent), "-cn", path.stem),
        *overrides,
    ]


def launch(path: Path, overrides: Sequence[str]) -> int:
    """The sweep as a child that a stop signal to this command reaches (kdlab.processes)."""
    return run_child(sweep_command(path, overrides), env={**os.environ, PLANNED_ENV: "1"})


def _check_teachers(plan: SweepPlan) -> None:
    missing = missing_teachers(plan.jobs, plan.url, plan.path)
    if missing:
        raise ConfigError(
            f"{len(missing)} teacher run(s) are not done in {shown_url(plan.url)}; "
            "launch them first: " + "; ".join(missing)
        )


def _run(args: argparse.Namespace) -> int:
    path = sweep_file(args.sweep)
    plan = plan_sweep(path, args.overrides)
    _check_teachers(plan)
    return launch(path, args.overrides)


def _study_folder(name: str) -> Path | None:
    """A folder of sweeps/, or a path to any folder, with a study.yaml; else None."""
    return next((f for f in (SWEEPS_DIR / name, Path(name)) if (f / "study.yaml").is_file()), None)


def study_groups(name: str) -> list[list[Path]] | None:
    """The sweep files of a study's stages, in groups run in order; None when ``name`` is
    no study. A stage written in study.yaml as a list is a group of stages that need
    nothing from each other (teachers beside the supervised baselines), which may run side
    by side. A stage may name another study's sweep (``../pysrc/teachers``)."""
    folder = _study_folder(name)
    if folder is None:
        return None
    stages = OmegaConf.to_container(OmegaConf.load(folder / "study.yaml").stages)
    groups = [entry if isinstance(entry, list) else [entry] for entry in stages]
    return [[sweep_file(str(folder / stage)) for stage in group] for group in groups]


def study_overrides(name: str, overrides: Sequence[str] = ()) -> list[str]:
    """The study.yaml's ``overrides`` (applied to every stage: another corpus for the
    same grid), then the command line's, which win."""
    folder = _study_folder(name)
    own = OmegaConf.load(folder / "study.yaml").get("overrides") if folder else None
    return [*(str(o) for o in own or ()), *overrides]


def study_stages(name: str) -> list[Path] | None:
    """The sweep files of a study's stages in order (groups flattened)."""
    groups = study_groups(name)
    return None if groups is None else [path for group in groups for path in group]


def stage_slots(overrides: Sequence[str]) -> int:
    """How many jobs the study may run at once: ``hydra.launcher.n_jobs`` when given, the
    parallel launcher's own default with ``hydra/launcher=parallel``, else 1."""
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.launcher.n_jobs=")]
    if given:
        return int(given[-1]) if given[-1].isdigit() else 1
    launcher = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra/launcher=")]
    if launcher and launcher[-1] == "parallel":
        return int(OmegaConf.load(CONF_DIR / "hydra" / "launcher" / "parallel.yaml").n_jobs)
    return 1


LOCAL_LAUNCHERS = ("basic", "parallel", "joblib")  # whose jobs a study may run itself
LAUNCHER_OVERRIDES = ("hydra/launcher=", "hydra.launcher.", "hydra/sweeper=", "hydra.sweeper.")
TRAINING_MODULES = ("kdlab.train", "kdlab.runner")  # what every job imports


def runs_jobs_here(overrides: Sequence[str]) -> bool:
    """Whether the study's launcher runs jobs on this machine (no scheduler)."""
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra/launcher=")]
    return not chosen or chosen[-1] in LOCAL_LAUNCHERS


def run_study(name: str, overrides: Sequence[str] = ()) -> int:
    """Each group of stages in order with a progress board; stops at the first stage that
    fails. The stages of a group need nothing from each other: on this machine their jobs
    share one queue, so that no core waits at the end of a short stage (the nano
    teachers: one long job, one short); on a cluster they are side by side, each its own
    sweep process, the jobs shared out among them."""
    groups = study_groups(name)
    if groups is None:
        known = sorted(p.parent.name for p in SWEEPS_DIR.glob("*/study.yaml"))
        raise ConfigError(f"no study named '{name}'; known studies: {', '.join(known)}")
    overrides = study_overrides(name, overrides)
    here = runs_jobs_here(overrides)  # the zygote imports beside this process's planning
    with Zygote(TRAINING_MODULES) if here else contextlib.nullcontext() as zygote:
        return _run_groups(name, groups, overrides, stage_slots(overrides), zygote)


def _run_groups(
    name: str,
    groups: list[list[Path]],
    overrides: Sequence[str],
    slots: int,
    zygote: Zygote | None,
) -> int:
    folder = _study_folder(name)
    study = (folder or Path(name)).resolve().name  # `kdlab study .` too
    for i, group in enumerate(groups):
        todo: list[tuple[Path, SweepPlan]] = []
        for path in group:
            plan = plan_sweep(path, overrides)
            if i == 0 and path == group[0]:
                console.print(f"logs of this study: {plan.log_dir}", highlight=False)
            left = sum(j.status != "done" for j in plan.jobs)
            console.rule(f"[bold]{name}/{path.stem}[/]: {len(plan.jobs)} jobs, {left} to run")
            if left:
                _check_teachers(plan)
                todo.append((path, plan))
        if not todo:
            continue
        if zygote is not None:
            code = _run_jobs_here(study, todo, overrides, slots, zygote)
            if code:
                return code
            continue
        side_by_side = min(slots, len(todo))
        stage_overrides = list(overrides)
        if side_by_side > 1:  # the slots shared out among the stages that run at once
            stage_overrides = [o for o in overrides if not o.startswith("hydra.launcher.n_jobs=")]
            stage_overrides.append(f"hydra.launcher.n_jobs={max(1, slots // side_by_side)}")
            stage_overrides += _threads(overrides, slots)
        code = _launch_with_progress(study, todo, stage_overrides, side_by_side, slots)
        if code:
            return code
    return 0


def _run_jobs_here(
    study: str,
    stages: list[tuple[Path, SweepPlan]],
    overrides: Sequence[str],
    slots: int,
    zygote: Zygote,
) -> int:
    """The jobs left in a group of stages, longest first, ``slots`` at once, each one a
    single Hydra run forked from ``zygote``, with its output in a log file of its own
    (``<log dir>/<study>-<stage>/<job number>.log``, the number as ``kdlab sweep plan``
    shows it)."""
    jobs = [
        (path, number, job)
        for path, plan in stages
        for number, job in enumerate(plan.jobs)
        if job.status != "done"
    ]
    jobs.sort(key=lambda entry: -entry[2].flops)  # longest first: the slots end together
    at_once = min(slots, len(jobs))
    common = [
        o for o in overrides if o.startswith("hydra") and not o.startswith(LAUNCHER_OVERRIDES)
    ]
    common += [*_threads(overrides, at_once), "trainer.enable_progress_bar=false"]
    folders = {path: _job_log_folder(plan, study) for path, plan in stages}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
        console.print(f"logs: {folder}", highlight=False)
    children = [
        (
            [sys.executable, "-m", "kdlab.train", "-cd", str(path.parent), "-cn", path.stem]
            + [*job.overrides, *common],
            {"log": folders[path] / f"{number}.log"},
        )
        for path, number, job in jobs
    ]
    codes = _run_with_board(study, stages, children, at_once, at_once, zygote.start)
    for (path, number, _), code in zip(jobs, codes, strict=True):
        if code:
            failed = _ended_how(code)
            console.print(f"[red]job {number} of {path.stem} {failed}; later jobs not started")
            console.print(f"see {folders[path] / f'{number}.log'}", highlight=False)
            return code
    return 0


def _threads(overrides: Sequence[str], jobs_at_once: int) -> list[str]:
    """``threads=`` for jobs that share the cores, unless the user set it."""
    if any(o.lstrip("+~").startswith("threads=") for o in overrides):
        return []
    return [f"threads={threads_per_job(jobs_at_once)}"]


def _job_log_folder(plan: SweepPlan, study: str) -> Path:
    """Named by the study, not the sweep's folder: a study may run another's sweeps."""
    return plan.log_dir / f"{study}-{plan.path.stem}"


def _ended_how(code: int) -> str:
    forwarded = {128 + s for s in STOP_SIGNALS}  # exits of a stop signal it forwarded
    return (
        f"stopped by {signal.Signals(code - 128).name}"
        if code in forwarded
        else f"failed (exit {code})"
    )


def _run_with_board(
    study: str,
    stages: list[tuple[Path, SweepPlan]],
    children: list[tuple[list[str], dict]],
    at_once: int,
    jobs_at_once: int,
    start_child: Callable[[Sequence[str], dict], Any],
) -> list[int | None]:
    """``children`` run ``at_once``, while each job's progress file (kdlab.progress) is
    drawn here on one board for the group of stages (``jobs_at_once`` in all divide the
    plan's time estimate); their exit codes."""
    plans = [plan for _, plan in stages]
    name = f"{study}-{stages[0][0].stem}"
    folder = plans[0].log_dir / "progress" / f"{name}-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, PROGRESS_ENV: str(folder), PLANNED_ENV: "1"}
    todo = [job for plan in plans for job in plan.jobs if job.status != "done"]
    seconds = [job.seconds for job in todo if job.seconds is not None]
    estimate = sum(seconds) / jobs_at_once if len(seconds) == len(todo) else None
    label = ", ".join(path.stem for path, _ in stages)
    board = StageBoard(label, len(todo), sum(j.flops for j in todo), folder, console, estimate)
    with board:
        commands = [(argv, {**options, "env": env}) for argv, options in children]
        return run_children(commands, at_once, board.tick, tick_s=1.0, start_child=start_child)


def _launch_with_progress(
    study: str,
    stages: list[tuple[Path, SweepPlan]],
    overrides: Sequence[str],
    side_by_side: int,
    jobs_at_once: int,
) -> int:
    """The stages as sweep processes (``side_by_side`` at once), each with its output in
    a log file, for a launcher that hands jobs to a scheduler."""
    logs = [_job_log_folder(plan, study).with_suffix(".log") for _, plan in stages]
    for log in logs:
        console.print(f"log: {log}", highlight=False)
    with contextlib.ExitStack() as files:
        children = [
            (
                sweep_command(path, [*overrides, "trainer.enable_progress_bar=false"]),
                dict(stdout=files.enter_context(log.open("w")), stderr=subprocess.STDOUT),
            )
            for (path, _), log in zip(stages, logs, strict=True)
        ]
        codes = _run_with_board(study, stages, children, side_by_side, jobs_at_once, new_program)
    for (path, _), log, code in zip(stages, logs, codes, strict=True):
        if code:
            console.print(f"[red]stage {path.stem} {_ended_how(code)}; later stages not run")
            console.print(f"see {log}", highlight=False)
            return code
    return 0
