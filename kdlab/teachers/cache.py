"""The teacher-logit cache: a teacher run once over the student's windows, read by many.

Per token it holds what distillation from a top-k truncated teacher needs: the k largest
log-probabilities (at tau = 1, sorted) and their token ids, the log of the mass outside
them, and the log-probability of the realised next token (the teacher's own loss L_T).
Renormalised over the k they are the online teacher truncated to its top k at any
temperature, so a student reading the cache follows the online student with ``top_k = k``
step by step (:class:`kdlab.losses.SparseTeacher`); the k + rest buckets also give a
validation KL (a lower bound of the full one).

Windows are the student's own: T + 1 tokens at offsets 0, T, 2T... of the split
(``kdlab.data.windows``), so window w of the cache is window w of every student with that
context, whatever its batch size. The cache covers either every window of the student
split, or only the windows the first ``samples`` samples of one seed read (a student of
that seed whose budget fits reads nothing else), plus every validation window.

Layout under ``<cache_dir>/teacher/<key>/``::

    manifest.json              identity, teacher facts, shards with their sha256 (written last)
    student.windows.npy        the cached window indices, sorted (int64)
    student-00000.npy ...      one record per window: log_probs, indices [T, k],
    validation-00000.npy ...   log_rest, target [T] (numpy structured arrays, no pickle)

Shards are written one at a time (temporary file, then rename) with a ``.sha256``
sidecar, so an interrupted build resumes from its last finished shard. Opening checks the
manifest against the student; reading first checks every shard's size and sha256, so a
truncated or corrupted shard is refused, never read as data.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlab.data.windows import WindowSchedule, eval_windows
from kdlab.errors import ConfigError
from kdlab.identity import run_key
from kdlab.locking import atomic_write_json, atomic_write_text, sha256_file, temp_path_for
from kdlab.losses import SparseTeacher, sparse_teacher

FORMAT = "kdlab-teacher-cache-v1"
MANIFEST = "manifest.json"
VALUE_DTYPES = ("float16", "float32")
SHARD_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class CacheIdentity:
    """Everything a cache's content depends on; its key is their hash."""

    teacher: str  # the teacher's key
    corpus: str  # corpus fingerprint
    tokenizer: str
    vocab_size: int
    val_tokens: int  # fixes the split layout
    split: str  # the training split whose windows are cached: student
    seq_len: int  # window length T
    k: int
    dtype: str  # storage of the log-probabilities: float16 | float32
    seed: int | None = None  # with samples: the windows this seed's first samples read
    samples: int | None = None  # None: every window of the split

    @property
    def key(self) -> str:
        return run_key(dataclasses.asdict(self))

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or not 1 <= self.k <= self.vocab_size:
            raise ConfigError(
                f"teacher.cache.k must be a whole number from 1 to the vocabulary "
                f"{self.vocab_size}, not {self.k}"
            )
        if self.dtype not in VALUE_DTYPES:
            raise ConfigError(
                f"teacher.cache.dtype must be one of {', '.join(VALUE_DTYPES)}, not {self.dtype}"
            )


def cache_identity(
    teacher_key: str, data: Any, k: int, dtype: str, tokens: int | None = None
) -> CacheIdentity:
    """The cache a student of ``data`` needs: ``tokens`` (None: the whole split) are the
    budget it must serve, rounded up to whole batches of the student's seed."""
    samples = None
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise ConfigError(f"teacher.cache.tokens must be a positive whole number, not {tokens}")
        per_batch = data.batch_size * data.seq_len
        samples = -(-tokens // per_batch) * data.batch_size
        if samples >= data.schedule.n_windows:  # the first pass reads every window anyway
            samples = None
    return CacheIdentity(
        teacher=teacher_key,
        corpus=data.fingerprint,
        tokenizer=data.tokenizer_name,
        vocab_size=data.vocab_size,
        val_tokens=data.val_tokens,
        split=data.split,
        seq_len=data.seq_len,
        k=k,
        dtype=dtype,
        seed=None if samples is None else data.seed,
        samples=samples,
    )


def cache_path(cache_dir: str | os.PathLike[str], identity: CacheIdentity) -> Path:
    return Path(cache_dir) / "teacher" / identity.key


def index_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer holding every token id."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype).newbyteorder("<")
    raise ValueError(f"vocabulary {vocab_size} is too large for a teacher cache")


def record_dtype(identity: CacheIdentity) -> np.dtype:
    """One window's record: [T, k] log-probabilities and ids, [T] rest mass and target."""
    value = np.dtype(identity.dtype).newbyteorder("<")
    shape = (identity.seq_len, identity.k)
    return np.dtype(
        [
            ("log_probs", value, shape),
            ("indices", index_dtype(identity.vocab_size), shape),
            ("log_rest", value, (identity.seq_len,)),
            ("target", value, (identity.seq_len,)),
        ]
    )


def bytes_per_token(identity: CacheIdentity) -> float:
    return record_dtype(identity).itemsize / identity.seq_len


def split_windows(identity: CacheIdentity, data: Any) -> dict[str, np.ndarray]:
    """The window indices the cache holds, per split, sorted."""
    n_windows = data.schedule.n_windows
    if identity.samples is None:
        student = np.arange(n_windows, dtype=np.int64)
    else:
        order = WindowSchedule(
            n_windows * identity.seq_len + 1,
            identity.seq_len,
            batch_size=identity.samples,
            train_tokens=identity.samples * identity.seq_len,
            seed=identity.seed,
        )
        student = np.unique(order.windows(0))
    n_val = eval_windows(identity.val_tokens, identity.seq_len).size
    return {identity.split: student, "validation": np.arange(n_val, dtype=np.int64)}


# ------------------------------------------------------------------------------ writing


def write_cache(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    data: Any,
    identity: CacheIdentity,
    directory: Path,
    facts: dict[str, Any],
    batch_windows: int = 16,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run ``teacher`` over every cached window and write the cache; returns its manifest.

    Finished shards (file and matching ``.sha256`` sidecar) are kept, so a killed build
    picks up where it stopped. ``progress(done, total)`` counts windows.
    """
    directory.mkdir(parents=True, exist_ok=True)
    record = record_dtype(identity)
    per_shard = max(1, SHARD_BYTES // record.itemsize)
    windows = split_windows(identity, data)
    windows_file = directory / f"{identity.split}.windows.npy"
    _save_npy(windows_file, windows[identity.split])
    total = sum(w.size for w in windows.values())
    done = 0
    splits: dict[str, Any] = {}
    for split, split_windows_ in windows.items():
        tokens = data.split_array(split)
        shards = []
        for index, start in enumerate(range(0, split_windows_.size, per_shard)):
            chunk = split_windows_[start : start + per_shard]
            path = directory / f"{split}-{index:05d}.npy"
            if not _finished(path):
                rows = _records(teacher, tokens, chunk, identity, record, batch_windows, device)
                _save_npy(path, rows)
                atomic_write_text(_sidecar(path), sha256_file(path) + "\n")
            shards.append(
                {
                    "file": path.name,
                    "n_windows": int(chunk.size),
                    "bytes": path.stat().st_size,
                    "sha256": _sidecar(path).read_text().strip(),
                }
            )
            done += chunk.size
            if progress:
                progress(done, total)
        splits[split] = {"n_windows": int(split_windows_.size), "shards": shards}
    splits[identity.split]["windows_file"] = windows_file.name
    splits[identity.split]["windows_sha256"] = sha256_file(windows_file)
    tokens_run = total * identity.seq_len
    manifest = {
        "format": FORMAT,
        "key": identity.key,
        "identity": dataclasses.asdict(identity),
        "teacher": facts,
        "windows_per_shard": per_shard,
        "bytes_per_token": bytes_per_token(identity),
        "tokens": tokens_run,
        "flops": facts["flops_per_token"] * tokens_run,
        "bytes": sum(s["bytes"] for sp in splits.values() for s in sp["shards"]),
        "splits": splits,
    }
    atomic_write_json(directory / MANIFEST, manifest)
    return manifest


def _records(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    tokens: np.ndarray,
    windows: np.ndarray,
    identity: CacheIdentity,
    record: np.dtype,
    batch_windows: int,
    device: str,
) -> np.ndarray:
    T = identity.seq_len
    out = np.zeros(windows.size, dtype=record)
    for start in range(0, windows.size, batch_windows):
        part = windows[start : start + batch_windows]
        idx = part[:, None] * T + np.arange(T + 1, dtype=np.int64)
        win = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64)).to(device)
        with torch.no_grad():
            top = sparse_teacher(teacher(win[:, :-1]), identity.k, win[:, 1:])
        rows = out[start : start + part.size]
        rows["log_probs"] = top.log_probs.cpu().numpy()
        rows["indices"] = top.indices.cpu().numpy()
        rows["log_rest"] = top.log_rest.cpu().numpy()
        rows["target"] = top.target_log_prob.cpu().numpy()
    return out


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _finished(path: Path) -> bool:
    sidecar = _sidecar(path)
    return path.exists() and sidecar.exists() and sha256_file(path) == sidecar.read_text().strip()


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ reading


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a finished cache; a missing or foreign one is a ConfigError."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{directory} holds no finished teacher cache (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"the teacher cache manifest {path} is unreadable: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a kdlab teacher cache manifest ({FORMAT})")
    return manifest


def check_identity(
    manifest: dict[str, Any], expected: CacheIdentity, where: Path, data: Any
) -> None:
    """Refuse a cache made for another teacher, corpus, split, tokenizer, window or k, or
    one that lacks windows the student of ``data`` reads (another seed's, too few)."""
    theirs = manifest["identity"]
    ours = dataclasses.asdict(expected)
    wrong = [
        f"{name} {theirs.get(name)} vs the student's {value}"
        for name, value in ours.items()
        if name not in ("seed", "samples") and theirs.get(name) != value
    ]
    held = theirs.get("samples")
    needed = data.num_steps * data.batch_size  # every row of every batch, masked or not
    reads_all = needed >= data.schedule.n_windows
    if held is not None and (reads_all or theirs.get("seed") != data.seed or held < needed):
        reads = "every window" if reads_all else f"the first {needed} samples"
        wrong.append(
            f"it holds the windows of seed {theirs.get('seed')}'s first {held} samples and "
            f"the student (seed {data.seed}) reads {reads}"
        )
    if wrong:
        raise ConfigError(
            f"the teacher cache {where} does not match the student: {'; '.join(wrong)}"
        )


class TeacherCache:
    """An opened, verified cache: the sparse teacher of any student or validation window."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest
        self.identity = CacheIdentity(**manifest["identity"])
        self.per_shard = int(manifest["windows_per_shard"])
        self._shards: dict[str, list[np.ndarray]] = {}
        split = self.identity.split
        self.windows = {
            split: np.load(directory / manifest["splits"][split]["windows_file"]),
            "validation": np.arange(manifest["splits"]["validation"]["n_windows"]),
        }

    @classmethod
    def open(cls, directory: Path) -> TeacherCache:
        """Open a cache after checking every file's size and sha256 against its manifest."""
        manifest = read_manifest(directory)
        for name, digest, size in _files(manifest):
            path = directory / name
            if not path.is_file():
                raise ConfigError(f"the teacher cache shard {path} is missing; rebuild the cache")
            if size is not None and path.stat().st_size != size:
                raise ConfigError(
                    f"the teacher cache shard {path} is truncated ({path.stat().st_size} of "
                    f"{size} bytes); rebuild the cache"
                )
            if sha256_file(path) != digest:
                raise ConfigError(
                    f"the teacher cache shard {path} fails its sha256 check (corrupted); "
                    "rebuild the cache"
                )
        return cls(directory, manifest)

    def train(self, windows: np.ndarray) -> SparseTeacher:
        """The sparse teacher of student-split windows [n] as [n, T, k] tensors."""
        return self._read(self.identity.split, windows)

    def validation(self, indices: np.ndarray) -> SparseTeacher:
        """The sparse teacher of validation windows (their order in ``eval_windows``)."""
        return self._read("validation", indices)

    def _read(self, split: str, windows: np.ndarray) -> SparseTeacher:
        held = self.windows[split]
        pos = np.searchsorted(held, windows)
        if np.any(pos >= held.size) or np.any(held[np.minimum(pos, held.size - 1)] != windows):
            raise ConfigError(
                f"the teacher cache {self.directory} does not hold those {split} windows"
            )
        out = np.empty(len(windows), dtype=self._shard(split, 0).dtype)
        shard_of, row_of = np.divmod(pos, self.per_shard)
        for shard in np.unique(shard_of):
            sel = shard_of == shard
            out[sel] = self._shard(split, int(shard))[row_of[sel]]
        value = np.dtype(self.identity.dtype)  # native byte order for torch
        return SparseTeacher(
            torch.from_numpy(out["log_probs"].astype(value)),
            torch.from_numpy(out["indices"].astype(np.int64)),
            torch.from_numpy(out["log_rest"].astype(value)),
            torch.from_numpy(out["target"].astype(value)),
        )

    def _shard(self, split: str, index: int) -> np.ndarray:
        shards = self._shards.setdefault(split, [])
        if not shards:
            for entry in self.manifest["splits"][split]["shards"]:
                path = self.directory / entry["file"]
                shards.append(np.load(path, mmap_mode="r", allow_pickle=False))
        return shards[index]

    def __getstate__(self) -> dict[str, Any]:
        """Pickled into spawned workers without the memmaps (reopened there)."""
        return {**self.__dict__, "_shards": {}}


def _files(manifest: dict[str, Any]) -> Iterator[tuple[str, str, int | None]]:
    for split in manifest["splits"].values():
        if "windows_file" in split:
            yield split["windows_file"], split["windows_sha256"], None
        for shard in split["shards"]:
            yield shard["file"], shard["sha256"], shard["bytes"]
