"""The laws the dashboard plans with: the published ones, a fit JSON, or a fit of the runs.

A fit of the run database is made by the ``kdlab fit`` command itself (supervised, then
distillation on top of it), in a child process: fitting imports torch and takes seconds
to minutes, and the server must stay light and answer meanwhile. The page asks again
until the fit is there; the fit JSONs live in the server's own temporary directory.
What the run database measured about speed (the MFU of its GPU runs) is read here too.
"""

from __future__ import annotations

import itertools
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdlab.dashboard.inputs import FieldError
from kdlab.laws.io import LawInputError, load_coefficients
from kdlab.laws.samples import resampled_coefficients

MAX_RESAMPLES = 100  # resamples planned for a verdict's robustness (each is a plan)


class Pending(Exception):
    """The laws are being fitted; the message says what is going on."""


@dataclass
class Laws:
    """Coefficients ready for the planner, what they are, and their resamples."""

    coefs: dict[str, Any]
    label: str
    spec: str  # what ``kdlab plan --coefficients`` takes for them
    resamples: list[dict[str, Any]] = field(default_factory=list)
    resamples_note: str = ""
    intervals: dict[str, Any] = field(default_factory=dict)
    # answers that do not depend on the budget (curves), by their inputs
    memo: dict[tuple, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "spec": self.spec,
            "resamples": len(self.resamples),
            "resamples_note": self.resamples_note,
            "intervals": self.intervals,
        }


def load_laws(spec: str, label: str) -> Laws:
    """``paper`` or a fit JSON path -> Laws (a supervised fit is refused: the planner
    needs the distillation law, and a distillation fit carries both)."""
    coefs = load_coefficients(spec)
    if coefs["distillation"] is None:
        raise LawInputError(
            f"{spec} is a supervised fit without the distillation law; give a "
            "distillation fit JSON (it carries the supervised law too)."
        )
    resamples, note = resampled_coefficients(coefs, MAX_RESAMPLES)
    doc = coefs["doc"]
    intervals = {
        "level": doc.get("interval_level"),
        "supervised": (doc.get("supervised") or {}).get("intervals"),
        "distillation": doc.get("intervals"),
    }
    return Laws(coefs, label, spec, resamples, note, intervals)


# the options of ``kdlab fit`` a page may pass on: which runs, and how hard to search
FIT_OPTIONS = (
    "--corpus",
    "--tokenizer",
    "--n-ctx",
    "--kd-objective",
    "--form",
    "--drop-highest",
    "--huber-delta",
    "--keep",
    "--final-keep",
    "--max-iter",
    "--polish",
)


def fit_options(text: str) -> list[str]:
    """The page's extra ``kdlab fit`` options, split as a shell would, or a FieldError
    for any option not in FIT_OPTIONS (no output paths, nothing else)."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise FieldError("fit_options", f"Cannot read the fit options: {exc}.") from None
    for word in words:
        if word.startswith("-") and word.split("=", 1)[0] not in FIT_OPTIONS:
            raise FieldError(
                "fit_options",
                f"The fit option {word.split('=', 1)[0]} is not one the page passes on; "
                f"use {', '.join(FIT_OPTIONS)}.",
            )
    return words


class _FitJob:
    """``kdlab fit supervised`` then ``kdlab fit distillation`` on one database."""

    def __init__(self, db: str, bootstrap: int, options: list[str], workdir: Path):
        self.db, self.bootstrap, self.options, self.workdir = db, bootstrap, options, workdir
        self.started = time.monotonic()
        self.laws: Laws | None = None
        self.error: str | None = None
        self.stage = "supervised law"
        self.process: subprocess.Popen[str] | None = None
        self.cancelled = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _fit(self, *args: str) -> None:
        if self.cancelled:
            raise LawInputError("The fit was stopped.")
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "kdlab.cli", "fit", *args, "--db", self.db]
        self.process = subprocess.Popen(
            [*command, *self.options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        _, stderr = self.process.communicate()
        if self.process.returncode:
            lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
            last = lines[-1] if lines else f"kdlab fit ended with code {self.process.returncode}"
            raise LawInputError(last.removeprefix("kdlab: ").removeprefix("error: ").strip())

    def _run(self) -> None:
        sup, dist = self.workdir / "supervised.json", self.workdir / "distillation.json"
        boot = ["--bootstrap", str(self.bootstrap)]
        try:
            self._fit("supervised", *boot, "--out", str(sup))
            self.stage = "distillation law"
            self._fit("distillation", "--supervised", str(sup), *boot, "--out", str(dist))
            self.laws = load_laws(str(dist), f"fit of the runs in {_shown(self.db)}")
        except (LawInputError, OSError) as exc:
            self.error = str(exc)

    def cancel(self) -> None:
        """Stop the fit (the server is closing)."""
        self.cancelled = True
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait()


class LawsCatalog:
    """Laws by the page's choice, each loaded once (fit JSONs again when they change)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self._files: dict[tuple[str, float], Laws] = {}
        self._jobs: dict[tuple[str, int, tuple[str, ...]], _FitJob] = {}
        self._count = itertools.count()
        self._lock = threading.Lock()

    def get(self, fields: Mapping[str, str]) -> Laws:
        """The laws the fields choose; FieldError (field laws, fit or db) when they
        cannot be had, Pending while a fit of the run database runs."""
        kind = fields["laws"]
        if kind == "paper":
            return self._file("paper", "published coefficients (Busbridge et al. 2025)")
        if kind == "file":
            path = fields["fit"].strip()
            if not path:
                raise FieldError("fit", "Enter the path of a distillation fit JSON.")
            try:
                return self._file(path, f"fit {Path(path).name}")
            except LawInputError as exc:
                raise FieldError("fit", str(exc)) from None
        return self._db_fit(fields)

    def _file(self, spec: str, label: str) -> Laws:
        stamp = 0.0 if spec == "paper" else _mtime(spec)
        key = (spec, stamp)
        if key not in self._files:
            self._files[key] = load_laws(spec, label)
        return self._files[key]

    def _db_fit(self, fields: Mapping[str, str]) -> Laws:
        db = fields["db"].strip()
        if not db:
            raise FieldError("db", "Enter the run database URL (e.g. sqlite:///runs/kdlab.db).")
        try:
            bootstrap = int(fields["bootstrap"])
        except ValueError:
            bootstrap = -1
        if not 0 <= bootstrap <= 4096:
            raise FieldError(
                "bootstrap",
                f"Bootstrap resamples must be a whole number from 0 to 4096, not "
                f"{fields['bootstrap']!r}.",
            )
        options = fit_options(fields["fit_options"])
        missing = _missing_file(db)
        if missing:
            raise FieldError("db", f"The run database file {missing} does not exist.")
        key = (db, bootstrap, tuple(options))
        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                workdir = self.workdir / f"fit{next(self._count)}"
                workdir.mkdir(parents=True, exist_ok=True)
                job = self._jobs[key] = _FitJob(db, bootstrap, options, workdir)
            elif job.error is not None:  # said once; asking again fits again
                del self._jobs[key]
                raise FieldError("db", job.error)
        if job.laws is not None:
            return job.laws
        seconds = time.monotonic() - job.started
        raise Pending(
            f"Fitting the {job.stage} to the runs in {_shown(db)} with {bootstrap} "
            f"bootstrap resamples ({seconds:.0f} s so far)."
        )

    def close(self) -> None:
        """Stop every fit still running."""
        for job in list(self._jobs.values()):
            job.cancel()


def measured_mfu(db: str) -> tuple[float, int] | None:
    """(median MFU, number of runs) of the finished GPU runs in the run database; None
    without any (or without a readable database)."""
    if not db or _missing_file(db):
        return None
    try:
        from kdlab.rundb import RunStore  # SQLAlchemy: only with a database

        rows = RunStore(db).find(status="done")
    except Exception:  # any database error: no measurement to offer
        return None
    mfus = [
        float(r["mfu"])
        for r in rows
        if r.get("mfu") and _accelerator(r.get("config")) in ("gpu", "cuda")
    ]
    return (float(np.median(mfus)), len(mfus)) if mfus else None


def _accelerator(config: Any) -> str | None:
    trainer = (config or {}).get("trainer") if isinstance(config, Mapping) else None
    return str(trainer.get("accelerator")) if isinstance(trainer, Mapping) else None


def _missing_file(db: str) -> Path | None:
    from kdlab.rundb import missing_sqlite_file

    return missing_sqlite_file(db)


def _shown(db: str) -> str:
    from kdlab.rundb import shown_url

    return shown_url(db)


def _mtime(path: str) -> float:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        raise LawInputError(f"The file {path} does not exist.") from None
