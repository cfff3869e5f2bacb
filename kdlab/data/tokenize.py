"""Tokenizing a document stream into one token file: in one pass, in parallel, resumable.

The documents are read once, in corpus order, by this process, which also hashes them
(the corpus fingerprint of ``corpora.DocumentHasher``, so reading and fingerprinting are
one pass). Batches of about ``BATCH_BYTES`` of text go to ``num_proc`` worker processes
and come back in order, so the file is byte for byte the one a single process writes:
every tokenizer encodes each document on its own and appends its EOS.

Progress is committed every ``COMMIT_BYTES`` of tokens: the file is synced and a JSON
beside it records the documents, bytes and tokens written and the fingerprint of the
documents so far. A killed run resumes there: it reads the finished documents again (it
must, to hash them), checks they hash as recorded, truncates the file to the committed
tokens and tokenizes only the rest. Documents that hash otherwise (the corpus changed)
start the file over.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdlab.data.corpora import DocumentHasher
from kdlab.data.tokenizers import Tokenizer, token_dtype
from kdlab.locking import atomic_write_json

BATCH_BYTES = 1 << 20  # text per worker task: large enough that pickling is noise
COMMIT_BYTES = 64 << 20  # token bytes between two resumable commits
PENDING_PER_PROCESS = 4  # batches in flight per worker: bounded memory on any corpus


@dataclass(frozen=True)
class Tokenized:
    """What one pass over the corpus found: its facts and the tokens written."""

    fingerprint: str
    n_documents: int
    n_bytes: int
    n_tokens: int
    train_prefix_tokens: int | None  # tokens of the tokenizer's training documents


@dataclass
class _Progress:
    """Committed state of a partial token file (what a resumed pass skips)."""

    tokenizer: str
    documents: int = 0
    bytes: int = 0
    tokens: int = 0
    digest: str = field(default_factory=lambda: DocumentHasher().digest())
    train_prefix_tokens: int | None = None


def tokenize_documents(
    documents: Callable[[], Iterator[str]],
    tokenizer: Tokenizer,
    out: Path,
    num_proc: int = 1,
    commit_bytes: int | None = None,
) -> Tokenized:
    """Tokenize ``documents()`` into ``out`` (little-endian ids, each document followed
    by the tokenizer's EOS), resuming a partial ``out`` left by a killed pass.

    ``tokenizer.train_documents`` (a BPE trained on the corpus's first documents) is
    where ``train_prefix_tokens`` is counted. ``out`` is left complete; the caller
    renames it into place. Progress is committed every ``commit_bytes`` of tokens
    (default ``COMMIT_BYTES``).
    """
    commit_bytes = commit_bytes or COMMIT_BYTES
    dtype = token_dtype(tokenizer.vocab_size).newbyteorder("<")
    progress_path = out.with_name(out.name + ".progress.json")
    progress = _resumable(progress_path, out, tokenizer.name, dtype.itemsize)
    # the finished documents are read again: the fingerprint needs them, and they must
    # be the documents the file holds
    hasher, docs = _rehash(documents, progress.documents)
    if hasher.n_documents != progress.documents or hasher.digest() != progress.digest:
        progress = _Progress(tokenizer.name)
        hasher, docs = DocumentHasher(), documents()
    mark = getattr(tokenizer, "train_documents", None)
    with open(out, "r+b" if out.exists() else "wb") as handle:
        handle.truncate(progress.tokens * dtype.itemsize)
        handle.seek(0, os.SEEK_END)
        with _encoder(tokenizer, num_proc) as encode:
            pending: deque[tuple[Any, _Progress]] = deque()
            committed = handle.tell()
            for batch in _batches(docs, hasher, mark):
                pending.append((encode(batch), _snapshot(progress, hasher)))
                while len(pending) > PENDING_PER_PROCESS * num_proc:
                    progress = _write(handle, *pending.popleft(), progress, mark, dtype.itemsize)
                    if handle.tell() - committed >= commit_bytes:
                        committed = _commit(handle, progress, progress_path)
            while pending:
                progress = _write(handle, *pending.popleft(), progress, mark, dtype.itemsize)
        handle.flush()
        os.fsync(handle.fileno())
    progress_path.unlink(missing_ok=True)
    prefix = progress.train_prefix_tokens
    if mark is not None and prefix is None:  # fewer documents than the tokenizer read
        prefix = progress.tokens
    return Tokenized(
        hasher.hexdigest(),
        hasher.n_documents,
        hasher.n_bytes,
        progress.tokens,
        prefix,
    )


def _resumable(path: Path, out: Path, tokenizer: str, itemsize: int) -> _Progress:
    """The committed progress of ``out``, or none (no record, another tokenizer's, or a
    file shorter than what it records)."""
    try:
        saved = _Progress(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return _Progress(tokenizer)
    if saved.tokenizer != tokenizer or not out.exists():
        return _Progress(tokenizer)
    if out.stat().st_size < saved.tokens * itemsize:
        return _Progress(tokenizer)
    return saved


def _rehash(documents: Callable[[], Iterator[str]], n: int) -> tuple[DocumentHasher, Iterator[str]]:
    """A fresh pass over the documents with its first ``n`` hashed (and consumed)."""
    hasher, docs = DocumentHasher(), documents()
    for doc in docs if n else ():
        hasher.update(doc)
        if hasher.n_documents == n:
            break
    return hasher, docs


def _batches(docs: Iterator[str], hasher: DocumentHasher, mark: int | None) -> Iterator[list[str]]:
    """Documents in batches of about BATCH_BYTES, hashed as read; a batch ends at the
    tokenizer's training documents so that their token count is known."""
    batch: list[str] = []
    size = 0
    for doc in docs:
        size += len(hasher.update(doc))
        batch.append(doc)
        if size >= BATCH_BYTES or hasher.n_documents == mark:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _snapshot(progress: _Progress, hasher: DocumentHasher) -> _Progress:
    """Where the pass will be once the batch just read is written."""
    return _Progress(progress.tokenizer, hasher.n_documents, hasher.n_bytes, 0, hasher.digest())


def _write(
    handle: Any, result: Any, after: _Progress, before: _Progress, mark: int | None, itemsize: int
) -> _Progress:
    """Append a batch's tokens (``result``: bytes, or a pool's pending bytes); returns the
    progress ``after`` it, its token counts filled in."""
    handle.write(result.get() if hasattr(result, "get") else result)
    after.tokens = handle.tell() // itemsize
    after.train_prefix_tokens = (
        after.tokens if after.documents == mark else before.train_prefix_tokens
    )
    return after


def _commit(handle: Any, progress: _Progress, path: Path) -> int:
    handle.flush()
    os.fsync(handle.fileno())
    atomic_write_json(path, asdict(progress))
    return handle.tell()


# ------------------------------------------------------------------ the workers

_WORKER: dict[str, Any] = {}


def _start_worker(tokenizer: Tokenizer) -> None:
    # each worker encodes one batch at a time: the processes are the parallelism
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER["tokenizer"] = tokenizer


def _encode_batch(docs: list[str]) -> bytes:
    tokenizer = _WORKER["tokenizer"]
    dtype = token_dtype(tokenizer.vocab_size).newbyteorder("<")
    chunks = tokenizer.encode_documents(docs)
    return b"".join(np.ascontiguousarray(c, dtype=dtype).tobytes() for c in chunks)


class _encoder:
    """``encode(batch)`` in this process (``num_proc`` 1) or in a pool of spawned ones
    (spawned, not forked: the reading process may hold threads of ``datasets``)."""

    def __init__(self, tokenizer: Tokenizer, num_proc: int) -> None:
        self.tokenizer, self.num_proc = tokenizer, num_proc
        self.pool: Any = None

    def __enter__(self) -> Callable[[list[str]], Any]:
        if self.num_proc <= 1:
            _WORKER["tokenizer"] = self.tokenizer
            return _encode_batch
        context = multiprocessing.get_context("spawn")
        self.pool = context.Pool(self.num_proc, _start_worker, (self.tokenizer,))
        return lambda batch: self.pool.apply_async(_encode_batch, (batch,))

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate() if exc[0] else self.pool.close()
            self.pool.join()


__all__ = ["BATCH_BYTES", "COMMIT_BYTES", "Tokenized", "tokenize_documents"]
