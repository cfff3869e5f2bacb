"""Runs another codebase logged to W&B, brought into the run database
(``kdlab runs import --wandb``) so ``kdlab fit`` and ``kdlab report`` use them.

The sources (an offline run folder, a CSV export of a runs table, entity/project) give
``WandbRun``s (``kdlab.rundb.wandb_sources``). One ``ImportMapping`` says which keys hold
N (non-embedding parameters), D (tokens) and the final validation loss, the role, a
student's teacher N, D and loss, and declares what W&B cannot know: the corpus, tokenizer
and context the losses were measured on.

Science identity: an imported run's corpus fingerprint is ``declared:<corpus>``. kdlab's
own corpora have content hashes there, so a fit never mixes imported runs with kdlab's
silently (it refuses two fingerprints) and ``kdlab fit --corpus <corpus>`` selects them.

Every run is read and checked before the first row is written: a key no run has, a
finished run without a loss, a value that is not a number is one sentence and no row.
A row's key is ``wandb-`` and a hash of the W&B run id, so importing a run again updates
its row, and a row kdlab trained (``imported_from`` null) is never written over.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlab.errors import ConfigError
from kdlab.rundb.store import RunStore
from kdlab.rundb.wandb_sources import WandbRun

ROLES = ("supervised", "teacher", "student")
# mapped keys: field -> what it gives
KEY_FIELDS = {
    "n": "N, non-embedding parameters",
    "d": "D, tokens trained on",
    "loss": "final validation loss, a summary key",
    "loss_history": "final validation loss, the last value logged under a history key",
    "role": "role: supervised, teacher or student",
    "teacher_n": "a student's teacher's N",
    "teacher_d": "a student's teacher's D",
    "teacher_loss": "a student's teacher's validation loss",
}
DECLARED_FIELDS = {
    "corpus": "the corpus's name (fit with --corpus NAME)",
    "tokenizer": "the tokenizer",
    "n_ctx": "the context length",
    "vocab_size": "the vocabulary size (a finished run not below ln V did not learn)",
    "role": "the role of every run (default supervised)",
    "study": "the study (default: the W&B project)",
}
_REQUIRED_DECLARED = ("corpus", "tokenizer", "n_ctx")
_INTS = ("n_ctx", "vocab_size")
FINGERPRINT_PREFIX = "declared:"
_FINGERPRINT_WIDTH = 64  # the runs.corpus_fingerprint column


@dataclass(frozen=True)
class ImportMapping:
    """Which W&B keys give N, D, the loss and the rest, and the declared data identity."""

    keys: dict[str, str]
    declared: dict[str, Any]

    @property
    def loss_key(self) -> str:
        return self.keys.get("loss") or self.keys["loss_history"]


# -- the mapping ------------------------------------------------------------------------


def load_mapping(
    path: str | None, map_keys: Iterable[str] = (), declares: Iterable[str] = ()
) -> ImportMapping:
    """The mapping of a YAML file (sections ``keys:`` and ``declare:``) with the command
    line's ``--map-key FIELD=KEY`` and ``--declare FIELD=VALUE`` over it, checked."""
    keys: dict[str, Any] = {}
    declared: dict[str, Any] = {}
    if path is not None:
        keys, declared = _read_yaml(Path(path))
    keys.update(_pairs(map_keys, "--map-key", "FIELD=KEY"))
    declared.update(_pairs(declares, "--declare", "FIELD=VALUE"))
    where = path or "the mapping"
    _known(keys, KEY_FIELDS, where, "keys")
    _known(declared, DECLARED_FIELDS, where, "declare")
    keys = {name: str(key) for name, key in keys.items()}
    for name in ("n", "d"):
        if name not in keys:
            raise ConfigError(f"{where} names no key for {name} ({KEY_FIELDS[name]})")
    if ("loss" in keys) == ("loss_history" in keys):
        raise ConfigError(f"{where} must name the loss by one of loss (summary) or loss_history")
    missing = [name for name in _REQUIRED_DECLARED if declared.get(name) in (None, "")]
    if missing:
        raise ConfigError(
            f"{where} does not declare {', '.join(missing)}: imported losses are compared "
            "only with runs of the same corpus, tokenizer and context"
        )
    for name in _INTS:
        if name in declared:
            declared[name] = _positive_int(declared[name], f"declared {name}")
    for name in ("corpus", "tokenizer", "study"):
        if name in declared:
            declared[name] = str(declared[name])
    if len(FINGERPRINT_PREFIX + declared["corpus"]) > _FINGERPRINT_WIDTH:
        raise ConfigError(f"the declared corpus name {declared['corpus']!r} is too long")
    if "role" in keys and "role" in declared:
        raise ConfigError(f"{where} both maps and declares role: give one")
    declared.setdefault("role", None if "role" in keys else "supervised")
    if declared["role"] is not None and declared["role"] not in ROLES:
        raise ConfigError(f"declared role {declared['role']!r} is not one of {', '.join(ROLES)}")
    if declared["role"] == "student":
        _teacher_keys(keys, where)
    return ImportMapping(keys=keys, declared=declared)


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"there is no mapping file {path}")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(doc, dict) or set(doc) - {"keys", "declare"}:
        extra = sorted(set(doc) - {"keys", "declare"}) if isinstance(doc, dict) else []
        raise ConfigError(
            f"{path} holds {', '.join(map(str, extra)) or 'no mapping'}; a mapping has the "
            "sections keys: (W&B keys of n, d, loss...) and declare: (corpus, tokenizer, n_ctx)"
        )
    sections = []
    for name in ("keys", "declare"):
        section = doc.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"the {name}: section of {path} is not a mapping of fields")
        sections.append(dict(section))
    return sections[0], sections[1]


def _pairs(items: Iterable[str], option: str, form: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ConfigError(f"{option} {item!r} is not {form}")
        out[name.strip()] = value.strip()
    return out


def _known(given: Mapping[str, Any], fields: Mapping[str, str], where: str, section: str) -> None:
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where} gives {', '.join(unknown)}, not a field of {section} (its fields: "
            f"{', '.join(fields)})"
        )


def _teacher_keys(keys: Mapping[str, str], where: str) -> None:
    missing = [name for name in ("teacher_n", "teacher_d", "teacher_loss") if name not in keys]
    if missing:
        raise ConfigError(
            f"{where} has students but names no key for {', '.join(missing)} (the teacher's "
            "N, D and loss, which the distillation law needs)"
        )


def _positive_int(value: Any, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} is {value!r}, not a number") from None
    if not number.is_integer() or number < 1:
        raise ConfigError(f"{what} is {value!r}, not a positive whole number")
    return int(number)


# -- rows -----------------------------------------------------------------------------


def run_key(run_id: str) -> str:
    """The row key of a W&B run: importing it again finds its row."""
    return "wandb-" + hashlib.sha256(run_id.encode()).hexdigest()[:16]


def import_rows(runs: list[WandbRun], mapping: ImportMapping) -> dict[str, dict[str, Any]]:
    """The run rows of ``runs`` by key, every value checked; nothing is written."""
    _check_keys_present(runs, mapping)
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        rows[run_key(run.run_id)] = _row(run, mapping)
    return rows


def _check_keys_present(runs: list[WandbRun], mapping: ImportMapping) -> None:
    """A mapped key that no run has is a typo or the wrong project: name the nearest keys."""
    for name, key in mapping.keys.items():
        if name == "loss_history":
            present = {k for run in runs for k in (run.history or {})}
            where = "history"
        elif name == "loss":
            present = {k for run in runs for k in run.summary}
            where = "summary"
        else:
            present = {k for run in runs for k in (*run.config, *run.summary)}
            where = "config or summary"
        if key in present:
            continue
        near = difflib.get_close_matches(key, sorted(present), n=3, cutoff=0.5)
        hint = f"; the nearest are {', '.join(near)}" if near else ""
        if name == "loss_history" and all(run.history is None for run in runs):
            hint = "; this source has no history (a CSV export): map loss to a summary column"
        raise ConfigError(f"no run has the {where} key {key!r} the mapping gives for {name}{hint}")


def _row(run: WandbRun, mapping: ImportMapping) -> dict[str, Any]:
    keys, declared = mapping.keys, mapping.declared
    what = f"run {run.name} ({run.source})"
    role = declared["role"] or str(_value(run, keys["role"]))
    if role not in ROLES:
        raise ConfigError(f"{what} has role {role!r} under {keys['role']!r}, not one of {ROLES}")
    if role == "student":
        _teacher_keys(keys, "the mapping")
    finished = run.state == "finished"
    loss = _loss(run, mapping)
    if finished and loss is None:
        raise ConfigError(f"{what} finished without a loss under {mapping.loss_key!r}")

    def number(name: str) -> float | None:
        """A finished run's N, D or teacher value is a positive number; an unfinished
        run's may be missing (None)."""
        value = _number(run, keys[name], what) if name in keys else None
        if value is not None and not (math.isfinite(value) and value > 0):
            if finished:
                raise ConfigError(f"{what} has {value} under {keys[name]!r}, not a positive number")
            value = None
        if finished and value is None and name in keys:
            raise ConfigError(f"{what} has no value under {keys[name]!r} (its {name})")
        return value

    n_params, tokens = number("n"), number("d")
    teacher = [number(n) if role == "student" else None for n in ("teacher_n", "teacher_d")]
    teacher_loss = number("teacher_loss") if role == "student" else None
    status, failure = "done", None
    if not finished:
        status, failure = "failed", f"W&B state {run.state}: the run did not finish"
    elif not math.isfinite(loss) or (
        declared.get("vocab_size") and loss >= math.log(declared["vocab_size"])
    ):
        status = "failed"  # the uniform loss ln V, the rule kdlab's own runs are held to
        failure = (
            f"did not learn: loss {loss:.4f} is not below ln V (V = {declared.get('vocab_size')})"
        )
    return {
        "status": status,
        "failure": failure,
        "role": role,
        "study": declared.get("study") or run.project,
        "family": run.group,
        "corpus": declared["corpus"],
        "corpus_fingerprint": FINGERPRINT_PREFIX + declared["corpus"],
        "tokenizer": declared["tokenizer"],
        "vocab_size": declared.get("vocab_size"),
        "n_ctx": declared["n_ctx"],
        "n_params": _int(n_params),
        "tokens": _int(tokens),
        "tokens_per_param": tokens / n_params if tokens and n_params else None,
        "val_loss": loss,
        "val_ppl": math.exp(loss) if loss is not None and loss < 700 else None,
        "teacher_kind": "imported" if role == "student" else None,
        "teacher_n_params": _int(teacher[0]),
        "teacher_tokens": _int(teacher[1]),
        "teacher_loss": teacher_loss,
        "wandb_url": run.url,
        "imported_from": f"W&B run {run.run_id} of {run.source}",
        "config": {
            "imported": {
                "wandb_run_id": run.run_id,
                "wandb_name": run.name,
                "wandb_project": run.project,
                "wandb_state": run.state,
                "source": run.source,
                "mapping": {"keys": mapping.keys, "declare": declared},
                "config": run.config,
            }
        },
    }


def _value(run: WandbRun, key: str) -> Any:
    return run.config.get(key, run.summary.get(key))


def _loss(run: WandbRun, mapping: ImportMapping) -> float | None:
    what = f"run {run.name} ({run.source})"
    if "loss" in mapping.keys:
        return _as_number(run.summary.get(mapping.keys["loss"]), mapping.keys["loss"], what)
    key = mapping.keys["loss_history"]
    return _as_number((run.history or {}).get(key), key, what)


def _number(run: WandbRun, key: str, what: str) -> float | None:
    return _as_number(_value(run, key), key, what)


def _as_number(value: Any, key: str, what: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} has {value!r} under {key!r}, not a number") from None


def _int(value: float | None) -> int | None:
    return None if value is None else int(round(value))


# -- writing ------------------------------------------------------------------------------


def write_rows(store: RunStore, rows: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Write the imported rows; returns how many were added and updated (imported again).

    A key held by a run kdlab trained, or by a run imported from another W&B project, is
    refused before anything is written."""
    existing = {key: store.get(key) for key in rows}
    for key, row in existing.items():
        if row is None:
            continue
        if not row.get("imported_from"):
            raise ConfigError(
                f"run {key} in the database was trained by kdlab, not imported: an import "
                "never writes over it"
            )
        before = ((row.get("config") or {}).get("imported") or {}).get("wandb_project")
        now = rows[key]["config"]["imported"]["wandb_project"]
        if before and now and before != now:
            run_id = rows[key]["config"]["imported"]["wandb_run_id"]
            raise ConfigError(
                f"W&B run {run_id} of project {now} has the key {key} of a run already "
                f"imported from project {before}"
            )
    for key, row in rows.items():
        store.upsert(key, **row)
    added = sum(row is None for row in existing.values())
    return {"added": added, "updated": len(rows) - added}
