"""W&B artifacts kdlab logs (a run's weights, a fit JSON, a report) and the record it keeps
of each (the run row's ``wandb_artifacts``, a fit JSON's ``wandb_artifact``, a report's
report.json).

An artifact's name says what it holds and of which run; its digest (a hash of its files)
identifies the content. W&B numbers versions (v0, v1, ...) only once its server has the
artifact, so an offline run records the digest and no version; ``wandb sync`` numbers it
later. No Lightning here: ``kdlab fit`` and ``kdlab report`` use it too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kdlab.errors import ConfigError

RUN_ARTIFACTS = ("weights", "teacher_cache")  # what logger.wandb.artifacts may ask a run for


def artifact_name(*parts: str) -> str:
    """A W&B artifact name from its parts: letters, digits, '-', '_' and '.' only."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(p for p in parts if p)).strip("-")


def asked_artifacts(cfg: Any) -> list[str]:
    """The run artifacts ``logger.wandb.artifacts`` asks for (a name or a list); an
    unknown one is a ConfigError, raised before any compute."""
    node = (cfg.get("logger") or {}).get("wandb")
    asked = (node.get("artifacts") if node is not None else None) or []
    asked = [asked] if isinstance(asked, str) else [str(a) for a in asked]
    unknown = [a for a in asked if a not in RUN_ARTIFACTS]
    if unknown:
        raise ConfigError(
            f"logger.wandb.artifacts names {', '.join(unknown)}; a run can log "
            f"{' and '.join(RUN_ARTIFACTS)}"
        )
    return asked


def log_artifact(
    run: Any,
    name: str,
    kind: str,
    paths: Iterable[Path],
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Log ``paths`` (files or folders, each under its own name) as one artifact of the
    W&B run ``run``; returns its record: name, type, digest and version (None offline)."""
    import wandb

    artifact = wandb.Artifact(name, type=kind, metadata=dict(metadata or {}))
    for path in map(Path, paths):
        if path.is_dir():
            artifact.add_dir(str(path), name=path.name)
        else:
            artifact.add_file(str(path), name=path.name)
    run.log_artifact(artifact)
    record: dict[str, Any] = {"name": name, "type": kind, "digest": artifact.digest}
    record["version"] = None
    if not run.offline:  # the server numbers it once the upload is done
        artifact.wait()
        record["version"] = artifact.version
    return record


def table(frame: Any) -> Any:
    """A pandas frame as a ``wandb.Table``: W&B's table takes numbers, text and booleans,
    so anything else (timestamps, JSON, lists) goes as text."""
    import wandb

    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object or "datetime" in str(frame[column].dtype):
            frame[column] = [None if _missing(v) else _text(v) for v in frame[column]]
    return wandb.Table(dataframe=frame.reset_index(drop=True))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _text(value: Any) -> Any:
    return value if isinstance(value, (str, bool, int, float)) else str(value)


def log_fit(path: Path, doc: dict[str, Any], project: str, entity: str | None) -> dict[str, Any]:
    """A W&B run of job type ``fit`` holding the fit JSON at ``path`` as an artifact (its
    coefficients in the run's summary, so W&B's table compares fits); returns the
    artifact's record. The run's folder goes beside the JSON."""
    import wandb

    law, data = str(doc.get("law", "supervised")), doc.get("data") or {}
    run = wandb.init(
        project=project,
        entity=entity,
        name=f"fit-{law}-{path.stem}",
        job_type="fit",
        dir=str(path.parent),
        config={"law": law, "form": doc.get("form"), "source": data.get("source")},
    )
    try:
        run.summary.update(doc.get("coefficients") or {})
        meta = {"law": law, "form": doc.get("form"), "runs": len(data.get("run_keys") or [])}
        return log_artifact(run, artifact_name("fit", law, path.stem), "fit", [path], meta)
    finally:
        run.finish()


def add_record(path: Path, key: str, record: Any) -> None:
    """Write an artifact's record into the JSON file it was logged from (the digest is that
    of the file as logged, before the record was added)."""
    doc = json.loads(path.read_text())
    doc[key] = record
    path.write_text(json.dumps(doc, indent=2) + "\n")
