"""Token cache: each (corpus fingerprint, tokenizer) tokenized once, shared by a sweep.

Layout under ``cache_dir`` (default ``runs/cache``)::

    corpora/<corpus>-<source_key>.json        memoised CorpusInfo (fingerprint, sizes)
    tokenizers/bpe-<V>-<fingerprint>-<sel>.json   trained BPEs (see tokenizers.py)
    tokens/<fingerprint>-<tokenizer>.bin      raw little-endian uint16/uint32 token ids
    tokens/<fingerprint>-<tokenizer>.json     its metadata (written first)

The ``.bin`` is opened as a read-only ``numpy.memmap``, so many runs (and DDP ranks) share
one copy in the page cache. Files are built under an ``flock`` and published with an
atomic rename, so concurrent runs wait for the first builder instead of duplicating work.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdlab.data.corpora import Corpus, CorpusInfo, DocumentHasher
from kdlab.data.tokenizers import Tokenizer, TokenizerConfig, resolve_kind, token_dtype
from kdlab.locking import atomic_write_json, build_once, temp_path_for

DEFAULT_CACHE_DIR = "runs/cache"
FORMAT = "kdlab-tokens-v1"


def corpus_info(
    corpus: Corpus, cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR
) -> CorpusInfo:
    """The corpus' fingerprint and sizes, memoised on disk under its ``source_key``.

    Computing it reads the whole corpus, which for a streamed hub dataset is expensive;
    the memo makes that happen once per cache dir (and the token cache build re-checks it).
    """
    if not corpus.memoize_info:
        return corpus.info()
    path = Path(cache_dir) / "corpora" / f"{corpus.name}-{corpus.source_key()}.json"

    def build() -> None:
        info = corpus.info()
        atomic_write_json(path, {**dataclasses.asdict(info), "corpus": corpus.describe()})

    build_once(path, build)
    data = json.loads(path.read_text())
    fields = {f.name for f in dataclasses.fields(CorpusInfo)}
    return CorpusInfo(**{k: v for k, v in data.items() if k in fields})


@dataclass(frozen=True)
class TokenCount:
    """A corpus's size in tokens as known before training: ``how`` says how it is known."""

    n_tokens: int | None
    how: str  # "exact" | "estimate: <how>" | "unknown: <why>"

    @property
    def exact(self) -> bool:
        return self.how == "exact"


def planned_token_count(
    corpus: Corpus, tokenizer: Any, cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR
) -> TokenCount:
    """The corpus's token count without tokenizing it (``kdlab sweep plan``'s passes).

    Token corpora say it (``n_tokens``); under the byte tokenizer (one token per byte plus
    one per document) the corpus facts memoised by an earlier run say it exactly, and
    file corpora are estimated from their files' sizes. A BPE's count is unknown until
    the corpus is tokenized.
    """
    if corpus.kind == "tokens":
        return TokenCount(int(corpus.config.n_tokens), "exact")
    if resolve_kind(TokenizerConfig.from_any(tokenizer), corpus) != "byte":
        return TokenCount(None, "unknown: a BPE's token count is known once it has run")
    memo = Path(cache_dir) / "corpora" / f"{corpus.name}-{corpus.source_key()}.json"
    if corpus.memoize_info and memo.is_file():
        info = json.loads(memo.read_text())
        return TokenCount(int(info["n_bytes"]) + int(info["n_documents"]), "exact")
    estimate = getattr(corpus, "byte_tokens_estimate", None)
    if estimate is not None:
        return TokenCount(int(estimate()), "estimate: from the files' sizes")
    return TokenCount(None, f"unknown: the {corpus.name} corpus has not been read yet")


@dataclass(frozen=True)
class TokenCache:
    """An opened token array and its metadata."""

    path: Path
    meta: dict[str, Any]
    tokens: np.ndarray  # read-only memmap, shape [n_tokens]

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def train_prefix_tokens(self) -> int | None:
        """Tokens of the documents the tokenizer was trained on (None: not trained here)."""
        value = self.meta.get("train_prefix_tokens")
        return None if value is None else int(value)


def token_cache_path(
    cache_dir: str | os.PathLike[str], fingerprint: str, tokenizer_name: str
) -> Path:
    """Path of the ``.bin`` token array for (corpus fingerprint, tokenizer name)."""
    return Path(cache_dir) / "tokens" / f"{fingerprint}-{tokenizer_name}.bin"


def open_token_cache(
    corpus: Corpus,
    tokenizer: Tokenizer,
    cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
    info: CorpusInfo | None = None,
) -> TokenCache:
    """Open the token array of ``corpus`` under ``tokenizer``, building it first if missing."""
    info = info or corpus_info(corpus, cache_dir)
    path = token_cache_path(cache_dir, info.fingerprint, tokenizer.name)
    meta_path = path.with_suffix(".json")
    build_once(path, lambda: _build(corpus, tokenizer, info, path, meta_path))
    meta = json.loads(meta_path.read_text())
    tokens = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r", shape=(meta["n_tokens"],))
    return TokenCache(path, meta, tokens)


def _build(
    corpus: Corpus, tokenizer: Tokenizer, info: CorpusInfo, path: Path, meta_path: Path
) -> None:
    dtype = token_dtype(tokenizer.vocab_size)
    tmp = temp_path_for(path)
    prefix: int | None = None
    try:
        with open(tmp, "wb") as out:
            if corpus.kind == "tokens":
                ids = corpus.token_ids()
                if corpus.info().fingerprint != info.fingerprint:
                    raise RuntimeError(_changed(corpus, info))
                np.ascontiguousarray(ids, dtype=dtype.newbyteorder("<")).tofile(out)
                n_tokens, n_docs = int(ids.size), 1
            else:
                hasher = DocumentHasher()
                docs = _hashed(corpus.documents(), hasher)
                n_tokens = 0
                mark = getattr(tokenizer, "train_documents", None)
                if mark is not None:
                    n_tokens += _write(
                        tokenizer.encode_documents(itertools.islice(docs, mark)), out, dtype
                    )
                    prefix = n_tokens
                n_tokens += _write(tokenizer.encode_documents(docs), out, dtype)
                if hasher.hexdigest() != info.fingerprint:
                    raise RuntimeError(_changed(corpus, info))
                n_docs = hasher.n_documents
            out.flush()
            os.fsync(out.fileno())
        if n_tokens == 0:
            raise ValueError(f"corpus {corpus.name!r} ({info.fingerprint}) produced no tokens")
        meta = {
            "format": FORMAT,
            "fingerprint": info.fingerprint,
            "tokenizer": tokenizer.name,
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id,
            "dtype": dtype.newbyteorder("<").str,
            "n_tokens": n_tokens,
            "n_documents": n_docs,
            "train_prefix_tokens": prefix,
            "corpus": corpus.describe(),
        }
        atomic_write_json(meta_path, meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def unigram_entropy(cache: TokenCache, start: int, stop: int, vocab_size: int) -> float:
    """Entropy in nats of the token frequencies of ``cache.tokens[start:stop]``.

    The loss of a model that ignores context, so a run that does not beat it on its own
    split learned nothing. Counted once (in chunks, one pass over the memmap) and kept in
    a JSON beside the token array.
    """
    path = cache.path.with_name(f"{cache.path.stem}.unigram-{start}-{stop}.json")

    def build() -> None:
        counts = np.zeros(vocab_size, dtype=np.int64)
        for lo in range(start, stop, _COUNT_CHUNK):
            chunk = np.asarray(cache.tokens[lo : min(stop, lo + _COUNT_CHUNK)])
            counts += np.bincount(chunk, minlength=vocab_size)[:vocab_size]
        p = counts[counts > 0] / counts.sum()
        entropy = float(-(p * np.log(p)).sum())
        atomic_write_json(path, {"start": start, "stop": stop, "unigram_entropy": entropy})

    build_once(path, build)
    return float(json.loads(path.read_text())["unigram_entropy"])


_COUNT_CHUNK = 1 << 24  # tokens per bincount: bounded memory on a paper-scale split


def _hashed(docs: Iterator[str], hasher: DocumentHasher) -> Iterator[str]:
    for doc in docs:
        hasher.update(doc)
        yield doc


def _write(chunks: Iterator[np.ndarray], out: Any, dtype: np.dtype) -> int:
    n = 0
    for chunk in chunks:
        np.ascontiguousarray(chunk, dtype=dtype.newbyteorder("<")).tofile(out)
        n += int(chunk.size)
    return n


def _changed(corpus: Corpus, info: CorpusInfo) -> str:
    return (
        f"corpus {corpus.name!r} no longer matches its memoised fingerprint {info.fingerprint}; "
        "its content changed (pin a revision, or delete the memo under <cache_dir>/corpora)"
    )


__all__ = [
    "DEFAULT_CACHE_DIR",
    "TokenCache",
    "TokenCount",
    "corpus_info",
    "open_token_cache",
    "planned_token_count",
    "token_cache_path",
    "unigram_entropy",
]
