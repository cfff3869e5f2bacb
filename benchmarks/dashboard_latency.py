"""How fast kdlab dashboard answers a change on the page (issue 12); results go to
BENCHMARKS.md "## dashboard_latency". Target: within 1 s per change.

The dashboard runs as its command (``python -m kdlab.cli dashboard --port 0``). A client
posts the page's fields after each change of a fixed sequence (budget, its unit, the GPU,
the MFU, K, the student, the teacher, a target loss), as the page does, and times each
answer from request to the last byte. Two sets of laws: the published coefficients (no
resamples) and a fit of synthetic runs with bootstrap resamples, where every change also
plans the verdict once per resample. Baseline in the same run: ``kdlab plan --json`` (the
command line the page prints, for the same plan), as a command and as the plan() call
inside it.

    python benchmarks/dashboard_latency.py [--resamples 100] [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads, as kdlab's commands

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from common import load_average, log, md_table, median, quantile  # noqa: E402

from kdlab.laws.fit import SearchSettings, fit_distillation, fit_supervised  # noqa: E402
from kdlab.laws.forms import DISTILLATION_SPEC, PAPER_SPEC  # noqa: E402
from kdlab.laws.io import load_coefficients  # noqa: E402
from kdlab.laws.plan import plan  # noqa: E402
from kdlab.laws.published import PAPER_DISTILLATION, PAPER_SUPERVISED  # noqa: E402
from kdlab.laws.synthetic import (  # noqa: E402
    paper_like_distillation_runs,
    paper_like_supervised_runs,
)

ROOT = Path(__file__).resolve().parents[1]
# each change applies to the fields left by the ones before it
CHANGES: list[tuple[str, dict[str, str]]] = [
    ("budget 1e21 FLOPs", {"budget": "1e21"}),
    ("budget 2e21", {"budget": "2e21"}),
    ("budget 5e20", {"budget": "5e20"}),
    ("unit: GPU-hours", {"budget_unit": "gpu_hours", "budget": "20000"}),
    ("GPU: A100", {"gpu": "a100-80gb"}),
    ("MFU 35%", {"mfu": "35"}),
    ("unit: money", {"budget_unit": "money", "budget": "50k", "price": "3"}),
    ("K = 8 students", {"students": "8"}),
    ("logits stored", {"logits": "0"}),
    ("student 1.82B", {"student": "1.82B"}),
    ("teacher exists", {"teacher": "exists", "teacher_kind": "optimal", "logits": "1"}),
    (
        "teacher 7.75B, 155B tokens",
        {"teacher_kind": "size", "teacher_params": "7.75B", "teacher_tokens": "155B"},
    ),
    ("target loss 2.4", {"teacher": "train", "student_by": "target", "target": "2.4"}),
    ("student 546M", {"student_by": "size", "student": "546M"}),
    ("budget 1e6 $", {"budget": "1M"}),
]


def fit_with_resamples(out: Path, resamples: int) -> Path:
    """Both laws fitted to synthetic runs from the published ones, with ``resamples``
    bootstrap resamples each (one start at the truth: the fit is not what is timed)."""
    search = SearchSettings(keep=None, final_keep=None, n_polish=1)

    def truth(spec, coefs):
        return {
            p: [float(v)] for p, v in zip(spec.params, spec.from_coefficients(coefs), strict=True)
        }

    sup = fit_supervised(
        paper_like_supervised_runs(noise=0.003, seed=1),
        grid=truth(PAPER_SPEC, PAPER_SUPERVISED),
        search=search,
        bootstrap=resamples,
    )
    dist = fit_distillation(
        paper_like_distillation_runs(n_runs=300, seed=1),
        sup["coefficients"],
        grid=truth(DISTILLATION_SPEC, PAPER_DISTILLATION),
        search=search,
        bootstrap=resamples,
        supervised_doc=sup,
    )
    out.write_text(json.dumps(dist))
    return out


def post(url: str, fields: dict[str, str]) -> tuple[float, int, dict[str, Any]]:
    """(seconds, HTTP status, body) of one change."""
    request = urllib.request.Request(
        f"{url}/api/plan", json.dumps(fields).encode(), {"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=600) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    return time.perf_counter() - start, status, json.loads(raw)


def start_dashboard() -> tuple[subprocess.Popen, str, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdlab.cli", "dashboard", "--port", "0", "--quiet"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    line = proc.stdout.readline()
    url = line.split()[2].rstrip("/")
    with urllib.request.urlopen(f"{url}/api/options", timeout=60):
        pass
    return proc, url, time.perf_counter() - start


def baseline(command: str) -> tuple[float, float]:
    """Seconds of the page's ``kdlab plan --json`` as a command, and of its plan() call."""
    args = shlex.split(command)[1:]
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "kdlab.cli", *args],
        check=True,
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    cli = time.perf_counter() - start
    opts = dict(zip(args[1:-1:2], args[2:-1:2], strict=True))  # plan --opt value ... --json
    coefs = load_coefficients(opts["--coefficients"])
    start = time.perf_counter()
    plan(
        coefs,
        float(opts["--student"]),
        float(opts["--compute"]),
        opts["--scenario"],
        int(opts["--students"]),
    )
    return cli, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=100, help="bootstrap resamples")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the changes")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kdlab-bench-"))
    log(f"fitting synthetic runs with {args.resamples} bootstrap resamples ...")
    fit = fit_with_resamples(tmp / "distillation.json", args.resamples)
    log(f"load average before: {load_average()}")
    proc, url, startup = start_dashboard()
    results: dict[str, Any] = {"startup_s": startup, "laws": {}}
    commands: list[str] = []
    try:
        for label, laws in (("published", {"laws": "paper"}), ("fit", {"laws": "file"})):
            fields = {**laws, "fit": str(fit)}
            times, server = [], []
            for _ in range(args.repeats):
                for name, change in CHANGES:
                    fields.update(change)
                    seconds, status, body = post(url, fields)
                    assert status == 200, (name, body)
                    times.append(seconds)
                    server.append(body["cpu_seconds"])
                    if body["command"].startswith("kdlab plan") and len(commands) < 4:
                        commands.append(body["command"])
                    log(f"{label:9s} {name:28s} {seconds:6.3f} s")
            robust = body["robustness"].get("resamples", 0)
            results["laws"][label] = {"times": times, "cpu": server, "resamples": robust}
        cli = [baseline(c) for c in commands]
    finally:
        proc.terminate()
        proc.wait()
    results["baseline"] = cli
    results["load_after"] = load_average()
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def report(results: dict[str, Any]) -> None:
    """The measurements as BENCHMARKS.md shows them."""

    def row(name: str, t: list[float], cpu: list[float] | None = None) -> list[str]:
        stats = [median(t), quantile(t, 0.9), max(t)]
        return [
            name,
            str(len(t)),
            *(f"{v:.3f}" for v in stats),
            f"{median(cpu):.3f}" if cpu else "",
        ]

    rows = [
        row(f"dashboard, {label} laws ({r['resamples']} resamples)", r["times"], r["cpu"])
        for label, r in results["laws"].items()
    ]
    rows.append(row("kdlab plan --json (command)", [c[0] for c in results["baseline"]]))
    rows.append(row("plan() in process", [c[1] for c in results["baseline"]]))
    print(f"dashboard start to first answer of /api/options: {results['startup_s']:.2f} s")
    header = ["per change", "n", "median s", "p90 s", "max s", "server CPU median s"]
    print(md_table(header, rows))
    print(f"load average at end: {results['load_after']}")


if __name__ == "__main__":
    main()
