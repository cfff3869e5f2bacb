"""Tokenizers: text -> token ids, with a name that identifies the mapping.

- ``byte``: UTF-8 bytes, V = 256 (the default; needs nothing, never changes);
- ``identity``: for corpora that already are token ids (the Markov corpus), V = n_states;
- ``bpe``: a byte-level BPE from HF ``tokenizers``, loaded from a JSON file or trained on
  a prefix of the *teacher* split's text and cached under the cache dir, keyed by corpus
  fingerprint, vocabulary size and training-text selection.

A tokenizer's ``name`` goes into every run's key and cache path, so it is derived from
the mapping itself (``bpe-4096-<sha256 of the tokenizer JSON>``), not from where it came
from. Documents are separated by ``eos_id`` in the token stream (byte 0 for ``byte``,
``<|endoftext|>`` for a trained BPE).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from kdlab.data.corpora import Corpus, CorpusInfo, short_hash, to_plain
from kdlab.locking import atomic_write_json, atomic_write_text, build_once

EOS_TOKEN = "<|endoftext|>"
TOKENIZER_KINDS = ("auto", "byte", "identity", "bpe")
_CHUNK_BYTES = 1 << 22  # documents are encoded and written in ~4 MB chunks


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest storage dtype for ids below ``vocab_size`` (uint16, else uint32)."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    name: str
    vocab_size: int
    eos_id: int | None

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def encode_documents(self, docs: Iterable[str]) -> Iterator[np.ndarray]: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens; byte 0 (absent from text in practice) separates documents."""

    name = "byte"
    vocab_size = 256
    eos_id: int | None = 0
    train_documents: int | None = None

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def encode_documents(self, docs: Iterable[str]) -> Iterator[np.ndarray]:
        """Concatenated documents, each followed by byte 0, in uint16 chunks."""
        buf: list[bytes] = []
        size = 0
        for doc in docs:
            data = doc.encode("utf-8")
            buf.append(data)
            size += len(data) + 1
            if size >= _CHUNK_BYTES:
                yield self._join(buf)
                buf, size = [], 0
        if buf:
            yield self._join(buf)

    @staticmethod
    def _join(buf: list[bytes]) -> np.ndarray:
        blob = b"\0".join(buf) + b"\0"
        return np.frombuffer(blob, dtype=np.uint8).astype(np.uint16)


class IdentityTokenizer:
    """Ids are already tokens (synthetic corpora); only names the vocabulary."""

    eos_id: int | None = None
    train_documents: int | None = None

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = int(vocab_size)
        self.name = f"identity-{self.vocab_size}"

    def encode(self, text: str) -> np.ndarray:
        raise TypeError("the identity tokenizer takes token ids, not text")

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

    def encode_documents(self, docs: Iterable[str]) -> Iterator[np.ndarray]:
        raise TypeError("the identity tokenizer takes token ids, not text")


class BPETokenizer:
    """A HF ``tokenizers`` tokenizer (byte-level BPE when trained here)."""

    def __init__(self, tokenizer: Any, train_documents: int | None = None) -> None:
        self.hf = tokenizer
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        digest = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:8]
        self.name = f"bpe-{self.vocab_size}-{digest}"
        self.eos_id: int | None = tokenizer.token_to_id(EOS_TOKEN)
        #: documents (from the corpus start) its training text touched, or None if unknown
        self.train_documents = train_documents

    @classmethod
    def from_file(cls, path: str | Path, train_documents: int | None = None) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_file(str(path)), train_documents)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.hf.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def encode_documents(self, docs: Iterable[str]) -> Iterator[np.ndarray]:
        """Documents encoded in batches (parallel in Rust), each followed by ``eos_id``."""
        dtype = token_dtype(self.vocab_size)
        tail = [] if self.eos_id is None else [self.eos_id]
        buf: list[str] = []
        size = 0
        for doc in docs:
            buf.append(doc)
            size += len(doc)
            if size >= _CHUNK_BYTES:
                yield self._encode_batch(buf, tail, dtype)
                buf, size = [], 0
        if buf:
            yield self._encode_batch(buf, tail, dtype)

    def _encode_batch(self, docs: list[str], tail: list[int], dtype: np.dtype) -> np.ndarray:
        encs = self.hf.encode_batch(docs, add_special_tokens=False)
        ids: list[int] = []
        for enc in encs:
            ids.extend(enc.ids)
            ids.extend(tail)
        return np.asarray(ids, dtype=dtype)


@dataclass(frozen=True)
class TokenizerConfig:
    """How to get a tokenizer: ``kind`` plus BPE settings.

    ``train_bytes`` / ``train_fraction`` cap the BPE training text: whole documents from
    the start of the corpus (inside the teacher split, which comes first) up to
    min(train_bytes, train_fraction * corpus bytes); the data module checks that this text
    really lies inside the teacher split once tokenized.
    """

    kind: Literal["auto", "byte", "identity", "bpe"] = "auto"
    vocab_size: int = 4096
    path: str | None = None
    train_bytes: int = 64 << 20
    train_fraction: float = 0.25

    @classmethod
    def from_any(cls, spec: TokenizerConfig | Mapping[str, Any] | str | None) -> TokenizerConfig:
        """Parse "auto" | "byte" | "identity" | "bpe" | "bpe-4096" | "x.json" | mapping."""
        if spec is None:
            return cls()
        if isinstance(spec, TokenizerConfig):
            out = spec
        elif isinstance(spec, str):
            if spec.endswith(".json"):
                out = cls(kind="bpe", path=spec)
            elif spec.startswith("bpe-") and spec[4:].isdigit():
                out = cls(kind="bpe", vocab_size=int(spec[4:]))
            else:
                out = cls(kind=spec)  # type: ignore[arg-type]
        else:
            data = to_plain(spec)
            if not isinstance(data, dict):
                raise ValueError(
                    f"tokenizer must be a name or a mapping, got {type(spec).__name__}"
                )
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(data) - known)
            if unknown:
                raise ValueError(
                    f"unknown tokenizer field(s) {', '.join(unknown)}; "
                    f"valid fields: {', '.join(sorted(known))}"
                )
            out = cls(**data)
        out.validate()
        return out

    def validate(self) -> None:
        if self.kind not in TOKENIZER_KINDS:
            raise ValueError(
                f"unknown tokenizer {self.kind!r}; valid tokenizers: {', '.join(TOKENIZER_KINDS)}"
                " (or bpe-<vocab>, or a tokenizer .json path)"
            )
        if self.path is not None and not Path(self.path).is_file():
            raise ValueError(f"the tokenizer file {self.path} does not exist")
        if self.kind == "bpe" and self.path is None and self.vocab_size < 257:
            raise ValueError(f"bpe vocab_size must be at least 257, got {self.vocab_size}")
        if self.train_bytes < 1 or not 0 < self.train_fraction <= 1:
            raise ValueError(
                f"bpe train_bytes must be >= 1 and 0 < train_fraction <= 1, got "
                f"{self.train_bytes} and {self.train_fraction}"
            )


def build_tokenizer(
    spec: TokenizerConfig | Mapping[str, Any] | str | None,
    corpus: Corpus,
    *,
    info: CorpusInfo | None = None,
    cache_dir: str | Path = "runs/cache",
) -> ByteTokenizer | IdentityTokenizer | BPETokenizer:
    """The tokenizer ``spec`` names for ``corpus``; trains and caches a BPE if needed."""
    config = TokenizerConfig.from_any(spec)
    kind = resolve_kind(config, corpus)
    if kind == "identity":
        return IdentityTokenizer(corpus.vocab_size)
    if kind == "byte":
        return ByteTokenizer()
    if config.path is not None:
        return BPETokenizer.from_file(config.path)
    return _trained_bpe(config, corpus, info or corpus.info(), Path(cache_dir))


def resolve_kind(config: TokenizerConfig, corpus: Corpus) -> str:
    """The concrete tokenizer kind for ``corpus`` ("auto" resolved); mismatches fail here."""
    kind = config.kind
    if kind == "auto":
        kind = "identity" if corpus.kind == "tokens" else "byte"
    if corpus.kind == "tokens" and kind != "identity":
        raise ValueError(
            f"corpus {corpus.name!r} is already token ids; use tokenizer 'identity' (or 'auto'),"
            f" not {kind!r}"
        )
    if kind == "identity" and corpus.kind != "tokens":
        raise ValueError(f"tokenizer 'identity' needs a token corpus; {corpus.name!r} is text")
    return kind


def bpe_cache_path(config: TokenizerConfig, info: CorpusInfo, cache_dir: Path) -> Path:
    """Where the BPE for (corpus fingerprint, vocab size, training selection) is cached."""
    selection = short_hash("bpe-v1", config.train_bytes, config.train_fraction)[:8]
    name = f"bpe-{config.vocab_size}-{info.fingerprint}-{selection}.json"
    return cache_dir / "tokenizers" / name


def _trained_bpe(
    config: TokenizerConfig, corpus: Corpus, info: CorpusInfo, cache_dir: Path
) -> BPETokenizer:
    path = bpe_cache_path(config, info, cache_dir)
    build_once(path, lambda: save_bpe(train_bpe(config, corpus, info.n_bytes), config, info, path))
    meta = json.loads(path.with_suffix(".meta.json").read_text())
    return BPETokenizer.from_file(path, train_documents=int(meta["train_documents"]))


def train_bpe(
    config: TokenizerConfig, corpus: Corpus, n_bytes: int | None = None
) -> tuple[BPETokenizer, int]:
    """A byte-level BPE trained on whole documents from the corpus's start, up to
    min(train_bytes, train_fraction * corpus bytes), the last one cut; and the bytes of
    that text.

    Without ``n_bytes`` the corpus is read only until that bound is decided: to
    train_bytes / train_fraction bytes, or its end (so ``kdlab data prepare`` reads a
    prefix and then the corpus once, not the corpus twice)."""
    head: list[str] = []
    kept = seen = 0
    for doc in corpus.documents():
        size = len(doc.encode("utf-8"))
        if kept < config.train_bytes:
            head.append(doc)
            kept += size
        seen += size
        decided = n_bytes is not None or seen * config.train_fraction >= config.train_bytes
        if decided and kept >= config.train_bytes:
            break
    total = seen if n_bytes is None else n_bytes
    budget = max(1, min(config.train_bytes, int(config.train_fraction * total)))
    texts, n_docs = _text_prefix(head, budget)
    hf = _train_byte_level_bpe(texts, config.vocab_size)
    return BPETokenizer(hf, train_documents=n_docs), sum(len(t.encode("utf-8")) for t in texts)


def save_bpe(
    trained: tuple[BPETokenizer, int], config: TokenizerConfig, info: CorpusInfo, path: Path
) -> None:
    """Cache a BPE from ``train_bpe`` where ``build_tokenizer`` finds it (``bpe_cache_path``)."""
    tokenizer, train_bytes = trained
    meta = {
        "fingerprint": info.fingerprint,
        "train_documents": tokenizer.train_documents,
        "train_bytes": train_bytes,
        "vocab_size": config.vocab_size,
    }
    atomic_write_json(path.with_suffix(".meta.json"), meta)
    atomic_write_text(path, tokenizer.hf.to_str())


def _text_prefix(docs: Iterable[str], budget: int) -> tuple[list[str], int]:
    """Whole documents from the start up to ``budget`` UTF-8 bytes, the last one cut."""
    texts: list[str] = []
    used = 0
    for doc in docs:
        data = doc.encode("utf-8")
        if used + len(data) >= budget:
            texts.append(data[: budget - used].decode("utf-8", errors="ignore"))
            break
        texts.append(doc)
        used += len(data)
    return texts, len(texts)


def _train_byte_level_bpe(texts: list[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


__all__ = [
    "EOS_TOKEN",
    "BPETokenizer",
    "ByteTokenizer",
    "IdentityTokenizer",
    "Tokenizer",
    "TokenizerConfig",
    "bpe_cache_path",
    "build_tokenizer",
    "resolve_kind",
    "save_bpe",
    "token_dtype",
    "train_bpe",
]
