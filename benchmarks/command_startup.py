"""Cold-start time of the light kdlab commands, against the interpreter alone and the same
commands at an older revision of kdlab (one that imported torch and Lightning first).

Each command runs in a fresh interpreter (python -m kdlab.cli ...), ``--repeats`` times
round-robin so machine load hits all variants alike; the median wall time is reported.

    python benchmarks/command_startup.py --baseline-rev 3649454 --out startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "kdlab --help": ["-m", "kdlab.cli", "--help"],
    "kdlab predict": ["-m", "kdlab.cli", "predict", "--n", "198e6", "--d", "3.96e9"],
    "kdlab plan": ["-m", "kdlab.cli", "plan", "--student", "198e6", "--compute", "1e21"],
    "kdlab runs list": ["-m", "kdlab.cli", "runs", "--db", "DB", "list"],
}


def _seconds(argv: list[str], env: dict, cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], env=env, cwd=cwd, capture_output=True, check=True)
    return time.perf_counter() - start


def _database(folder: Path, env: dict, cwd: Path) -> str:
    """A small run database made by the code under test (schemas differ by revision)."""
    url = f"sqlite:///{folder / 'runs.db'}"
    code = (
        "from kdlab.rundb import RunStore\n"
        f"s = RunStore({url!r})\n"
        "for i in range(50): s.start(f'k{i}', role='teacher', model='L1', n_params=1000)\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, check=True)
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-rev", help="git revision to compare with (e.g. 3649454)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        variants = {"now": REPO}
        if args.baseline_rev:
            old = tmp / "baseline"
            subprocess.run(
                ["git", "worktree", "add", "-q", "--detach", str(old), args.baseline_rev],
                cwd=REPO,
                check=True,
            )
            variants[args.baseline_rev] = old
        try:
            times: dict[tuple[str, str], list[float]] = {}
            envs = {}
            for name, root in variants.items():
                env = {**os.environ, "PYTHONPATH": str(root), "OPENBLAS_NUM_THREADS": "1"}
                (tmp / name).mkdir()
                envs[name] = (env, _database(tmp / name, env, tmp / name))
            for _ in range(args.repeats):
                for label, argv in COMMANDS.items():
                    for name in variants if label.startswith("kdlab") else ["now"]:
                        env, url = envs[name]
                        cmd = [url if a == "DB" else a for a in argv]
                        times.setdefault((label, name), []).append(_seconds(cmd, env, tmp / name))
        finally:
            if args.baseline_rev:
                subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO)

    load = os.getloadavg()
    rows = [
        {"command": label, "kdlab": name, "median_s": statistics.median(t), "runs_s": t}
        for (label, name), t in times.items()
    ]
    for row in rows:
        print(f"{row['command']:<18} {row['kdlab']:<9} median {row['median_s']:.2f} s")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"load": load, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
