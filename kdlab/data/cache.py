"""Token cache: each (corpus fingerprint, tokenizer) tokenized once, shared by a sweep.

Layout under ``cache_dir`` (default ``runs/cache``)::

    corpora/<corpus>-<source_key>.json        memoised CorpusInfo (fingerprint, sizes)
    tokenizers/bpe-<V>-<fingerprint>-<sel>.json   trained BPEs (see tokenizers.py)
    tokens/<fingerprint>-<tokenizer>.bin      raw little-endian uint16/uint32 token ids
    tokens/<fingerprint>-<tokenizer>.json     its metadata (written first)
    tokens/.<corpus>-<source_key>-<tokenizer>.partial   a pass in progress (resumable)

The ``.bin`` is opened as a read-only ``numpy.memmap``, so many runs (and DDP ranks) share
one copy in the page cache. Files are built under an ``flock`` and published with an
atomic rename, so concurrent builders wait for the first instead of duplicating work.
Corpora read from outside (files, the hub) are tokenized before the runs, by ``kdlab data
prepare`` (in parallel); runs only build the caches of the built-in corpora.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdlab.data.corpora import Corpus, CorpusInfo
from kdlab.data.tokenize import tokenize_documents
from kdlab.data.tokenizers import (
    BPETokenizer,
    Tokenizer,
    TokenizerConfig,
    bpe_cache_path,
    build_tokenizer,
    resolve_kind,
    token_dtype,
)
from kdlab.errors import ConfigError
from kdlab.locking import atomic_file, atomic_write_json, build_once, file_lock

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
    path = info_memo_path(corpus, cache_dir)
    build_once(path, lambda: _write_info(path, corpus.info(), corpus))
    return _read_info(path)


def info_memo_path(corpus: Corpus, cache_dir: str | os.PathLike[str]) -> Path:
    """Where ``corpus_info`` memoises a corpus's facts (keyed by its cheap source key)."""
    return Path(cache_dir) / "corpora" / f"{corpus.name}-{corpus.source_key()}.json"


def _write_info(path: Path, info: CorpusInfo, corpus: Corpus) -> None:
    atomic_write_json(path, {**dataclasses.asdict(info), "corpus": corpus.describe()})


def _read_info(path: Path) -> CorpusInfo:
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

    Token corpora say it (``n_tokens``), and so does a built token cache; under the byte
    tokenizer (one token per byte plus one per document) the corpus facts memoised by an
    earlier run say it exactly, and file corpora are estimated from their files' sizes.
    A BPE's count is unknown until the corpus is tokenized (``kdlab data prepare``).
    """
    if corpus.kind == "tokens":
        return TokenCount(int(corpus.config.n_tokens), "exact")
    prepared = prepared_token_cache(corpus, tokenizer, cache_dir)
    if prepared is not None:
        meta = json.loads(prepared.with_suffix(".json").read_text())
        return TokenCount(int(meta["n_tokens"]), "exact")
    if resolve_kind(TokenizerConfig.from_any(tokenizer), corpus) != "byte":
        return TokenCount(None, "unknown: a BPE's token count is known once it has run")
    memo = info_memo_path(corpus, cache_dir)
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
    if not path.is_file():
        build_token_cache(corpus, tokenizer, cache_dir, info=info)
    meta = json.loads(path.with_suffix(".json").read_text())
    if (meta.get("fingerprint"), meta.get("tokenizer")) != (info.fingerprint, tokenizer.name):
        raise ConfigError(
            f"the token cache {path} was built for corpus {meta.get('fingerprint')} and "
            f"tokenizer {meta.get('tokenizer')}, not for this run's corpus {info.fingerprint} "
            f"and tokenizer {tokenizer.name}: delete it and run `kdlab data prepare` again"
        )
    tokens = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r", shape=(meta["n_tokens"],))
    return TokenCache(path, meta, tokens)


def build_token_cache(
    corpus: Corpus,
    tokenizer: Tokenizer,
    cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
    num_proc: int = 1,
    info: CorpusInfo | None = None,
) -> Path:
    """Tokenize ``corpus`` into its token cache unless it is there; returns its path.

    Without ``info`` (the corpus not read before) the pass that tokenizes also
    fingerprints the corpus and memoises its facts, so the corpus is read once. A pass
    that is killed resumes where it last committed (``kdlab.data.tokenize``).
    """
    staging = Path(cache_dir) / "tokens" / f".{corpus.name}-{corpus.source_key()}-{tokenizer.name}"
    staging = staging.with_name(staging.name + ".partial")
    staging.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(staging.with_name(staging.name + ".lock")):
        memo = info_memo_path(corpus, cache_dir)
        if info is None and corpus.memoize_info and memo.is_file():
            info = _read_info(memo)
        if info is not None:
            path = token_cache_path(cache_dir, info.fingerprint, tokenizer.name)
            if path.is_file():  # built while this call waited for the lock
                return path
        meta: dict[str, Any] = {"train_prefix_tokens": None, "n_documents": 1}
        if corpus.kind == "tokens":
            ids = corpus.token_ids()
            found = corpus.info()
            if info is not None and found.fingerprint != info.fingerprint:
                raise RuntimeError(_changed(corpus, info))
            info = found
            dtype = token_dtype(tokenizer.vocab_size).newbyteorder("<")
            with atomic_file(staging) as out:
                np.ascontiguousarray(ids, dtype=dtype).tofile(out)
            meta["n_tokens"] = int(ids.size)
        else:
            done = tokenize_documents(corpus.documents, tokenizer, staging, num_proc)
            if info is not None and done.fingerprint != info.fingerprint:
                staging.unlink()
                raise RuntimeError(_changed(corpus, info))
            if info is None:
                info = CorpusInfo(done.fingerprint, done.n_documents, done.n_bytes)
                if corpus.memoize_info:
                    _write_info(memo, info, corpus)
            meta.update(
                n_tokens=done.n_tokens,
                n_documents=done.n_documents,
                train_prefix_tokens=done.train_prefix_tokens,
            )
        path = token_cache_path(cache_dir, info.fingerprint, tokenizer.name)
        if meta["n_tokens"] == 0:
            staging.unlink()
            raise ValueError(f"corpus {corpus.name!r} ({info.fingerprint}) produced no tokens")
        meta.update(
            format=FORMAT,
            fingerprint=info.fingerprint,
            tokenizer=tokenizer.name,
            vocab_size=tokenizer.vocab_size,
            eos_id=tokenizer.eos_id,
            dtype=token_dtype(tokenizer.vocab_size).newbyteorder("<").str,
            corpus=corpus.describe(),
        )
        atomic_write_json(path.with_suffix(".json"), meta)
        os.replace(staging, path)
    return path


def prepared_token_cache(
    corpus: Corpus,
    tokenizer: TokenizerConfig | Any,
    cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
) -> Path | None:
    """The token cache of ``corpus`` under ``tokenizer`` if it has been built, found
    without reading the corpus (its memoised facts name its fingerprint); else None."""
    memo = info_memo_path(corpus, cache_dir)
    if not memo.is_file():
        return None
    name = _tokenizer_name(TokenizerConfig.from_any(tokenizer), corpus, _read_info(memo), cache_dir)
    if name is None:
        return None
    path = token_cache_path(cache_dir, _read_info(memo).fingerprint, name)
    return path if path.is_file() and path.with_suffix(".json").is_file() else None


def prepared_tokenizers(corpus: Corpus, cache_dir: str | os.PathLike[str]) -> list[str]:
    """Names of the tokenizers ``corpus`` has a token cache for (none when unread)."""
    memo = info_memo_path(corpus, cache_dir)
    if not memo.is_file():
        return []
    fingerprint = _read_info(memo).fingerprint
    folder = Path(cache_dir) / "tokens"
    return sorted(
        p.stem[len(fingerprint) + 1 :]
        for p in folder.glob(f"{fingerprint}-*.bin")
        if p.with_suffix(".json").is_file()
    )


def _tokenizer_name(
    config: TokenizerConfig, corpus: Corpus, info: CorpusInfo, cache_dir: str | os.PathLike[str]
) -> str | None:
    """The tokenizer's name without training it (None: a BPE not trained yet)."""
    kind = resolve_kind(config, corpus)
    if kind != "bpe":
        return build_tokenizer(config, corpus, info=info, cache_dir=cache_dir).name
    path = Path(config.path) if config.path else bpe_cache_path(config, info, Path(cache_dir))
    return BPETokenizer.from_file(path).name if path.is_file() else None


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


def _changed(corpus: Corpus, info: CorpusInfo) -> str:
    return (
        f"corpus {corpus.name!r} no longer matches its memoised fingerprint {info.fingerprint}; "
        "its content changed (pin a revision, or delete the memo under <cache_dir>/corpora)"
    )


__all__ = [
    "DEFAULT_CACHE_DIR",
    "TokenCache",
    "TokenCount",
    "build_token_cache",
    "corpus_info",
    "info_memo_path",
    "open_token_cache",
    "planned_token_count",
    "prepared_token_cache",
    "prepared_tokenizers",
    "token_cache_path",
    "unigram_entropy",
]
