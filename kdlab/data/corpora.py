"""Corpora: where the training text (or tokens) of a study comes from.

Every source shares one interface so that runs only ever name a corpus config:

- ``stdlib``: the running Python's standard-library sources, always available offline;
- ``pysrc``: the standard library plus chosen installed packages' Python sources (PyTorch
  by default), offline and five times larger (a CPU study that must not repeat its data);
- ``markov``: tokens from a random Markov chain whose entropy rate (the irreducible loss)
  is known exactly, and whose transition matrix can act as an oracle teacher;
- ``hf``: any Hugging Face dataset (C4 on clusters), optionally streamed and capped;
- ``files``: local text / jsonl / parquet files;
- ``kernel``, ``pointer``: synthetic token tasks for the capacity gap (``kdlab.data.tasks``).

Every corpus has a ``fingerprint``: the first 16 hex digits of a sha256 over its content
(documents with length prefixes, or the token array), so runs record *what* they trained
on, not where it came from. Computing it reads the whole corpus once; ``kdlab.data.cache``
memoises it per cache directory under ``source_key`` (a cheap hash of the config).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import glob
import hashlib
import json
import os
import sys
import sysconfig
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

CORPUS_NAMES = ("stdlib", "markov", "hf", "files", "pysrc", "kernel", "pointer")
_HF_OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")  # the hub libraries' offline switches
FINGERPRINT_HEX = 16
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
_FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".json": "json",
    ".jsonl": "json",
    ".json.gz": "json",
    ".jsonl.gz": "json",
    ".jsonl.zst": "json",
    ".parquet": "parquet",
}


@dataclass(frozen=True)
class CorpusConfig:
    """Everything that selects a corpus; fields a corpus does not use are ignored.

    Field names follow ``conf/data/*.yaml``. ``from_any`` accepts this class, a dict (or a
    Hydra DictConfig) or a bare name, and rejects unknown fields by name.
    """

    name: str = "stdlib"
    # stdlib, pysrc
    include_tests: bool = False
    packages: tuple[str, ...] = ("torch",)  # pysrc: site-packages directories read
    # markov
    n_states: int = 64
    markov_order: int = 1  # how many previous tokens the next one depends on
    n_tokens: int = 4_000_000  # and kernel, pointer
    alpha: float = 0.1
    smoothing: float = 1e-3
    seed: int = 0  # and kernel, pointer
    # kernel, pointer (kdlab.data.tasks)
    base: int = 16
    order: int = 3
    waves: int = 8
    smoothness: float = 1.0
    noise: float = 0.05
    # hf
    path: str | None = None
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    streaming: bool = True
    # files
    paths: tuple[str, ...] = ()
    format: str | None = None
    sample_by: Literal["line", "paragraph", "document"] = "document"
    # hf and files
    text_field: str = "text"
    max_documents: int | None = None
    max_bytes: int | None = None

    @classmethod
    def from_any(cls, spec: CorpusConfig | Mapping[str, Any] | str) -> CorpusConfig:
        """Normalise a config given as this class, a mapping, or a corpus name."""
        if isinstance(spec, CorpusConfig):
            return spec
        if isinstance(spec, str):
            return cls(name=spec)
        data = to_plain(spec)
        if not isinstance(data, dict):
            raise ValueError(f"corpus must be a name or a mapping, got {type(spec).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown corpus field(s) {', '.join(unknown)}; "
                f"valid fields: {', '.join(sorted(known))}"
            )
        for key in ("paths", "packages"):
            if key in data:
                value = data[key]
                data[key] = (value,) if isinstance(value, str) else tuple(str(v) for v in value)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-able) of all fields."""
        out = dataclasses.asdict(self)
        out["paths"] = list(self.paths)
        out["packages"] = list(self.packages)
        return out


def to_plain(obj: Any) -> Any:
    """Turn Hydra/OmegaConf containers into plain dicts/lists (no-op for plain ones)."""
    if hasattr(obj, "_metadata") and hasattr(obj, "_get_node"):  # OmegaConf container
        from omegaconf import OmegaConf

        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def short_hash(*parts: Any) -> str:
    """Short sha256 hex of a JSON rendering of ``parts`` (for keys of configs)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:FINGERPRINT_HEX]


@dataclass(frozen=True)
class CorpusInfo:
    """Facts about a corpus' content, computed in one pass and memoised."""

    fingerprint: str
    n_documents: int
    n_bytes: int  # UTF-8 bytes of all documents (text) or 0 (token corpora)
    n_tokens: int | None = None  # token corpora only


class Corpus(ABC):
    """A source of documents (``kind == "text"``) or of token ids (``kind == "tokens"``)."""

    kind: ClassVar[Literal["text", "tokens"]] = "text"
    #: whether ``info`` is worth memoising on disk (False when a pass is as cheap as a key)
    memoize_info: ClassVar[bool] = True
    #: the config fields this corpus reads (what ``describe`` records)
    fields: ClassVar[tuple[str, ...]] = ()
    #: whether a run may tokenize the corpus itself when its token cache is missing (each
    #: corpus says why); where not, runs refuse and ``kdlab data prepare`` builds it first
    tokenized_by_runs: ClassVar[bool] = True

    def __init__(self, config: CorpusConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    def describe(self) -> dict[str, Any]:
        """The corpus name and the config fields it reads (JSON-able)."""
        full = self.config.to_dict()
        return {"name": self.name, **{k: full[k] for k in self.fields}}

    @abstractmethod
    def source_key(self) -> str:
        """Cheap hash of what determines the content (used to memoise ``info``)."""

    def documents(self) -> Iterator[str]:
        """The documents, in the corpus' fixed order (text corpora)."""
        raise TypeError(f"corpus {self.name!r} yields token ids, not documents")

    def token_ids(self) -> np.ndarray:
        """The token id stream (token corpora)."""
        raise TypeError(f"corpus {self.name!r} yields documents, not token ids")

    def info(self) -> CorpusInfo:
        """Fingerprint and size from one full pass over the content."""
        if self.kind == "tokens":
            ids = self.token_ids()
            return CorpusInfo(token_fingerprint(ids, self.vocab_size), 1, 0, int(ids.size))
        hasher = DocumentHasher()
        for doc in self.documents():
            hasher.update(doc)
        return CorpusInfo(hasher.hexdigest(), hasher.n_documents, hasher.n_bytes)

    @cached_property
    def fingerprint(self) -> str:
        """Content fingerprint (a full pass; use ``cache.corpus_info`` to memoise it)."""
        return self.info().fingerprint

    @property
    def vocab_size(self) -> int:
        raise TypeError(f"corpus {self.name!r} has no vocabulary of its own; use a tokenizer")


class DocumentHasher:
    """Incremental content fingerprint of a document sequence.

    Each document is hashed with an 8-byte length prefix so boundaries are part of the
    content (two documents "ab","c" differ from "a","bc").
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256(b"kdlab-text-v1\0")
        self.n_documents = 0
        self.n_bytes = 0

    def update(self, doc: str) -> bytes:
        """Add one document; returns its UTF-8 bytes (callers often need them)."""
        data = doc.encode("utf-8")
        self._h.update(len(data).to_bytes(8, "little"))
        self._h.update(data)
        self.n_documents += 1
        self.n_bytes += len(data)
        return data

    def hexdigest(self) -> str:
        return self._h.hexdigest()[:FINGERPRINT_HEX]

    def digest(self) -> str:
        """The whole sha256 so far: what a resumed pass checks its documents against."""
        return self._h.hexdigest()


def token_fingerprint(ids: np.ndarray, vocab_size: int) -> str:
    """Content fingerprint of a token stream (dtype-independent)."""
    h = hashlib.sha256(b"kdlab-tokens-v1\0")
    h.update(int(vocab_size).to_bytes(8, "little"))
    h.update(np.ascontiguousarray(ids, dtype="<u4").tobytes())
    return h.hexdigest()[:FINGERPRINT_HEX]


# --------------------------------------------------------------------------- stdlib


def python_files(root: Path, skip: frozenset[str]) -> list[str]:
    """Relative paths (with ``/``) of the ``.py`` files under ``root``, not entering
    directories named in ``skip``; in walk order (callers sort)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        rel_dir = os.path.relpath(dirpath, root)
        for fname in filenames:
            if fname.endswith(".py"):
                rel = os.path.normpath(os.path.join(rel_dir, fname))
                found.append(rel.replace(os.sep, "/"))
    return found


def _shuffled(names: list[str]) -> list[str]:
    """Sorted by sha256 of the name: the same order on every machine, yet a shuffle."""
    return sorted(names, key=lambda rel: (hashlib.sha256(rel.encode()).hexdigest(), rel))


def _read_documents(paths: Iterable[Path], max_bytes: int | None) -> Iterator[str]:
    """Each file's UTF-8 text in order (undecodable files skipped), stopping before the
    file that would take the total past ``max_bytes``."""
    total = 0
    for path in paths:
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if max_bytes is not None:
            if total + len(data) > max_bytes:
                return
            total += len(data)
        yield text


class StdlibCorpus(Corpus):
    """The ``.py`` sources of the running Python's standard library.

    Excluded: site-packages/dist-packages, ``__pycache__``, and (unless ``include_tests``)
    test directories (``test``, ``tests``, ``idle_test``), which are mostly fixtures and
    hold the few files that are not valid UTF-8 (those are always skipped). One document
    per file. The order is sorted by sha256 of the relative path: deterministic on every
    machine, yet a shuffle, so the teacher / student / validation slices are exchangeable
    samples of the library rather than alphabetical ranges (asyncio vs. xml).
    """

    memoize_info: ClassVar[bool] = False  # ~12 MB: reading it costs as much as listing it
    fields: ClassVar[tuple[str, ...]] = ("include_tests",)
    # tokenized by the runs: the installed Python's own files, byte-tokenized in seconds,
    # the same on every machine with this Python (the demo and the tests rely on it)

    @property
    def root(self) -> Path:
        return Path(sysconfig.get_paths()["stdlib"])

    def _skip(self) -> frozenset[str]:
        return _SKIP_DIRS if self.config.include_tests else _SKIP_DIRS | _TEST_DIRS

    def files(self) -> list[Path]:
        """The files of the corpus, in corpus order."""
        root = self.root
        return [root / rel for rel in _shuffled(python_files(root, self._skip()))]

    def documents(self) -> Iterator[str]:
        return _read_documents(self.files(), None)

    def byte_tokens_estimate(self) -> int:
        """Byte tokens (bytes plus one separator per file) from the files' sizes, without
        reading them: exact unless a file is not valid UTF-8 (then it is skipped)."""
        return sum(p.stat().st_size + 1 for p in self.files())

    def source_key(self) -> str:
        listing = [(str(p.relative_to(self.root)), p.stat().st_size) for p in self.files()]
        return short_hash("stdlib", sys.version, str(self.root), listing)


class PysrcCorpus(Corpus):
    """The standard library's ``.py`` sources plus those of chosen installed packages.

    By default the package is PyTorch, whose version the project pins (torch==2.13.0):
    58 MB of Python with the stdlib, five times the stdlib alone, enough that a CPU
    study's largest runs see every token at most once. Only the packages named in
    ``packages`` are read (``["*"]``: every package in site-packages), so installing
    something else does not change the corpus: a study spanning days on a shared machine
    keeps its run keys. The order is a shuffle by sha256 of ``stdlib/<path>`` or
    ``site-packages/<package>/<path>``; test directories are excluded unless
    ``include_tests``; ``max_bytes`` keeps the first files up to that size. The
    packages' versions are recorded with the corpus, and a study quotes its fingerprint.
    """

    fields: ClassVar[tuple[str, ...]] = ("packages", "include_tests", "max_bytes")
    # tokenized by the runs: installed files, 58 MB byte-tokenized in about 10 s, the
    # same wherever the packages' versions are (the CPU study's first run builds it)

    def __init__(self, config: CorpusConfig) -> None:
        super().__init__(config)
        if not config.packages:
            raise ValueError("pysrc corpus needs 'packages' (e.g. [torch], or ['*'] for all)")

    @property
    def site(self) -> Path:
        return Path(sysconfig.get_paths()["purelib"])

    def package_dirs(self) -> list[Path]:
        """The site-packages directories read, in name order; a missing one is an error."""
        if list(self.config.packages) == ["*"]:
            return sorted(p for p in self.site.iterdir() if p.is_dir() and p.name not in _SKIP_DIRS)
        out = []
        for name in sorted(set(self.config.packages)):
            path = self.site / name
            if not path.is_dir():
                raise ValueError(f"pysrc corpus: package {name!r} is not installed in {self.site}")
            out.append(path)
        return out

    def versions(self) -> dict[str, str]:
        """Installed version of each package read (what decides the content)."""
        from importlib import metadata

        out = {}
        for path in self.package_dirs():
            try:
                out[path.name] = metadata.version(path.name)
            except metadata.PackageNotFoundError:
                out[path.name] = "unknown"
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "python": sys.version.split()[0], "versions": self.versions()}

    def files(self) -> list[Path]:
        """The files of the corpus, in corpus order (before the ``max_bytes`` cap)."""
        skip = _SKIP_DIRS if self.config.include_tests else _SKIP_DIRS | _TEST_DIRS
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        labelled = {f"stdlib/{rel}": stdlib / rel for rel in python_files(stdlib, skip)}
        for package in self.package_dirs():
            for rel in python_files(package, skip):
                labelled[f"site-packages/{package.name}/{rel}"] = package / rel
        return [labelled[name] for name in _shuffled(list(labelled))]

    def documents(self) -> Iterator[str]:
        return _read_documents(self.files(), self.config.max_bytes)

    def byte_tokens_estimate(self) -> int:
        """Byte tokens from the files' sizes (see StdlibCorpus), ``max_bytes`` applied."""
        total = tokens = 0
        cap = self.config.max_bytes
        for path in self.files():
            size = path.stat().st_size
            if cap is not None and total + size > cap:
                break
            total += size
            tokens += size + 1
        return tokens

    def source_key(self) -> str:
        listing = [(str(p), p.stat().st_size) for p in self.files()]
        return short_hash("pysrc", sys.version, listing, self.describe())


# --------------------------------------------------------------------------- markov


def shift_chain_stationary(p: np.ndarray, v: int, newest_high: bool = False) -> np.ndarray:
    """Stationary distribution over the contexts of an order-k chain on v symbols, whose
    row c of ``p`` [v^k, v] is the next token's distribution after context c, a base-v
    number with the newest token in its lowest digit (``newest_high``: its highest).

    Power iteration on the shift chain: context (oldest a, rest r) moves to (r, next j)
    with probability p[c, j]. Rows with every entry positive make k steps a contraction.
    """
    n = p.shape[0]
    pi = np.full(n, 1.0 / n)
    for _ in range(100_000):
        if newest_high:  # the oldest token is the lowest digit: sum it out, prepend j
            new = (pi[:, None] * p).reshape(-1, v, v).sum(axis=1).T.reshape(-1)
        else:  # the oldest token is the highest digit: sum it out, append j
            new = np.einsum("ar,arj->rj", pi.reshape(v, -1), p.reshape(v, -1, v)).reshape(-1)
        if np.abs(new - pi).sum() < 1e-13:
            return np.clip(new, 0.0, None) / np.clip(new, 0.0, None).sum()
        pi = new
    raise RuntimeError(f"the stationary distribution of a chain of {n} contexts did not converge")


class MarkovCorpus(Corpus):
    """Tokens from a random Markov chain of order ``k = markov_order`` over ``n_states``
    symbols: the next token depends on the last k.

    Row c of the transition matrix (one per context c, the last k tokens read as a base-V
    number, V = n_states) is a Dirichlet(alpha) draw mixed with ``smoothing`` of the
    uniform distribution, so the chain is irreducible and aperiodic and every
    log-probability is finite. The chain starts from its stationary distribution pi over
    contexts, so every position has the same optimal cross-entropy: the entropy rate
    ``H = sum_c pi_c H(P_c)`` nats/token, well below ``log(n_states)`` for small alpha.
    Tokens are the symbols themselves (identity tokenizer, vocabulary ``n_states``).

    Order 1 is learnt from bigram counts at once. At order k > 1 the lower-order statistics
    of random rows say almost nothing, so a model has to memorise V^k rows: its loss falls
    with its size and with its tokens, the shape a scaling law fits, towards a floor that
    is known exactly (``window_loss``).
    """

    kind: ClassVar[Literal["text", "tokens"]] = "tokens"
    fields: ClassVar[tuple[str, ...]] = (
        "n_states",
        "markov_order",
        "n_tokens",
        "alpha",
        "smoothing",
        "seed",
    )
    # tokenized by the runs: drawn from its seed in seconds, nothing to tokenize

    def __init__(self, config: CorpusConfig) -> None:
        super().__init__(config)
        c = config
        if c.n_states < 2:
            raise ValueError(f"markov corpus needs n_states >= 2, got {c.n_states}")
        if not isinstance(c.markov_order, int) or c.markov_order < 1:
            raise ValueError(
                f"markov corpus needs an integer markov_order >= 1, got {c.markov_order}"
            )
        if c.n_states ** (c.markov_order + 1) > 1 << 24:  # the transition table's entries
            raise ValueError(
                f"markov corpus needs n_states**(markov_order + 1) <= 2**24 (a table of at "
                f"most 128 MiB), got order {c.markov_order} over {c.n_states} states"
            )
        if c.n_tokens < 2:
            raise ValueError(f"markov corpus needs n_tokens >= 2, got {c.n_tokens}")
        if not c.alpha > 0:
            raise ValueError(f"markov corpus needs alpha > 0, got {c.alpha}")
        if not 0 < c.smoothing <= 1:
            raise ValueError(f"markov corpus needs 0 < smoothing <= 1, got {c.smoothing}")

    @property
    def vocab_size(self) -> int:
        return self.config.n_states

    @property
    def n_contexts(self) -> int:
        return self.config.n_states**self.config.markov_order

    @cached_property
    def transition(self) -> np.ndarray:
        """True next-token distribution P[c, j] = p(x_{t+1} = j | context c), float64
        [V^k, V]; at order 1 the context is the current token."""
        v = self.config.n_states
        rng = np.random.default_rng([self.config.seed, 1])
        rows = rng.dirichlet(np.full(v, float(self.config.alpha)), size=self.n_contexts)
        eps = float(self.config.smoothing)
        return (1.0 - eps) * rows + eps / v

    @cached_property
    def stationary(self) -> np.ndarray:
        """Stationary distribution pi over contexts (newest token in the lowest digit)."""
        return shift_chain_stationary(self.transition, self.config.n_states)

    @cached_property
    def entropy_rate(self) -> float:
        """Exact entropy rate in nats/token: the loss of the oracle (transition) model."""
        p = self.transition
        row_entropy = -(p * np.log(p)).sum(axis=1)
        return float(self.stationary @ row_entropy)

    def conditional_entropy(self, seen: int) -> float:
        """H(next token | the last ``seen`` tokens) under the stationary chain, nats."""
        v, c = self.config.n_states, self.n_contexts
        if seen >= self.config.markov_order:
            return self.entropy_rate
        joint = self.stationary[:, None] * self.transition  # p(context, next)
        joint = joint.reshape(c // v**seen, v**seen, v).sum(axis=0)  # p(last `seen`, next)
        cond = joint / joint.sum(axis=1, keepdims=True)
        return float(-(joint * np.log(cond)).sum())

    def window_loss(self, n_ctx: int) -> float:
        """The least mean loss a model of context ``n_ctx`` can reach: its first k - 1
        predictions see fewer than k tokens (the entropy rate itself at order 1)."""
        k = self.config.markov_order
        short = [self.conditional_entropy(seen) for seen in range(1, min(k, n_ctx + 1))]
        return (sum(short) + (n_ctx - len(short)) * self.entropy_rate) / n_ctx

    def oracle_log_probs(self, tokens: np.ndarray) -> np.ndarray:
        """log P[x_t, :] for every token: the oracle teacher's next-token log-probs
        (first-order chains: at order k the first k - 1 tokens of a window have no
        context row)."""
        if self.config.markov_order != 1:
            raise ValueError("the markov oracle reads first-order chains (markov_order=1)")
        return np.log(self.transition)[np.asarray(tokens)]

    @cached_property
    def _tokens(self) -> np.ndarray:
        c = self.config
        v, n = c.n_states, c.n_tokens
        cum = np.cumsum(self.transition, axis=1)
        cum[:, -1] = 1.0
        cum_rows = [row.tolist() for row in cum]
        rng = np.random.default_rng([c.seed, 2])
        context = int(np.searchsorted(np.cumsum(self.stationary), rng.random(), side="right"))
        context = min(context, self.n_contexts - 1)
        first = [context // v**i % v for i in reversed(range(c.markov_order))][:n]
        out = np.empty(n, dtype=np.uint16 if v <= 1 << 16 else np.uint32)
        out[: len(first)] = first
        chunk, start, n_contexts = 1 << 16, len(first), self.n_contexts
        while start < n:
            uniforms = rng.random(min(chunk, n - start)).tolist()
            block = [0] * len(uniforms)
            for i, u in enumerate(uniforms):
                token = bisect.bisect_right(cum_rows[context], u)
                block[i] = token
                context = (context * v + token) % n_contexts
            out[start : start + len(block)] = block
            start += len(block)
        out.setflags(write=False)
        return out

    def token_ids(self) -> np.ndarray:
        """The n_tokens states of one stationary run of the chain (generated once)."""
        return self._tokens

    def source_key(self) -> str:
        order = () if self.config.markov_order == 1 else (self.config.markov_order,)
        return short_hash(
            "markov-v1",
            np.__version__,
            self.config.n_states,
            self.config.n_tokens,
            self.config.alpha,
            self.config.smoothing,
            self.config.seed,
            *order,
        )


# --------------------------------------------------------------------------- HF datasets


class _CappedTextCorpus(Corpus):
    """Shared iteration of a ``datasets`` dataset's text field under document/byte caps.

    Read from outside kdlab (the hub, a user's files, of any size), so tokenized before
    the runs by ``kdlab data prepare``, in parallel and once: a run that did it itself
    would hold its GPUs for the whole pass while the rest of its sweep waits on its lock.
    """

    tokenized_by_runs: ClassVar[bool] = False

    def _dataset(self) -> Any:
        raise NotImplementedError

    def documents(self) -> Iterator[str]:
        field_name = self.config.text_field
        max_docs, max_bytes = self.config.max_documents, self.config.max_bytes
        n_docs = n_bytes = 0
        for example in self._dataset():
            if max_docs is not None and n_docs >= max_docs:
                return
            if field_name not in example:
                raise ValueError(
                    f"corpus {self.name!r} has no text field {field_name!r}; "
                    f"fields: {', '.join(map(str, example))}"
                )
            text = example[field_name]
            if text is None:
                continue
            n_bytes += len(text.encode("utf-8"))
            if max_bytes is not None and n_bytes > max_bytes and n_docs > 0:
                return
            n_docs += 1
            yield text


class HFCorpus(_CappedTextCorpus):
    """Any Hugging Face dataset via ``datasets.load_dataset`` (a hub name or a local path).

    Pin ``revision`` for hub datasets: the memoised fingerprint is keyed by the config,
    and a token cache rebuild re-checks the content against it.
    """

    fields: ClassVar[tuple[str, ...]] = (
        "path",
        "config",
        "split",
        "revision",
        "streaming",
        "text_field",
        "max_documents",
        "max_bytes",
    )

    def __init__(self, config: CorpusConfig) -> None:
        super().__init__(config)
        if not config.path:
            raise ValueError("hf corpus needs 'path' (a dataset name or local path)")

    def _dataset(self) -> Any:
        import datasets

        c = self.config
        try:
            return datasets.load_dataset(
                c.path, c.config, split=c.split, streaming=c.streaming, revision=c.revision
            )
        except ConnectionError as err:  # what datasets raises offline or without network
            raise ValueError(self._unreachable()) from err

    def _unreachable(self) -> str:
        flags = [
            v for v in _HF_OFFLINE if os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
        ]
        why = f"{' and '.join(flags)} set" if flags else "no network"
        name = self.config.path + (f" ({self.config.config})" if self.config.config else "")
        return (
            f"the Hugging Face dataset {name} cannot be downloaded here ({why}): prepare its "
            "token cache where the hub can be reached (`kdlab data prepare` with the same "
            "data overrides) and use that paths.cache_dir"
        )

    def source_key(self) -> str:
        c = self.config
        return short_hash(
            "hf", c.path, c.config, c.split, c.revision, c.text_field, c.max_documents, c.max_bytes
        )


class FilesCorpus(_CappedTextCorpus):
    """Local text / jsonl / parquet files via the ``datasets`` packaged builders.

    A path that names a file is that file, whatever characters its name holds
    (``data[1].txt``); one that names no file but holds ``*``, ``?`` or ``[`` is a glob,
    expanded and sorted so the order is fixed. Text files are one document per file by
    default (``sample_by``). Streaming mode, so no Arrow copy is written to the HF cache.
    """

    fields: ClassVar[tuple[str, ...]] = (
        "paths",
        "format",
        "sample_by",
        "text_field",
        "max_documents",
        "max_bytes",
    )

    def __init__(self, config: CorpusConfig) -> None:
        super().__init__(config)
        if not config.paths:
            raise ValueError("files corpus needs 'paths' (one or more files or globs)")

    def resolved_paths(self) -> list[str]:
        out: list[str] = []
        for pattern in self.config.paths:
            path = os.path.expanduser(pattern)
            if os.path.exists(path):
                matches = [path]
            elif any(c in path for c in "*?["):
                matches = sorted(glob.glob(path))
            else:
                matches = []
            if not matches:
                raise ValueError(f"files corpus path {pattern!r} matches no file")
            for match in matches:
                if os.path.isfile(match) and os.path.getsize(match) == 0:
                    raise ValueError(f"files corpus file {match!r} is empty")
            out.extend(os.path.abspath(m) for m in matches)
        return out

    def builder(self) -> str:
        """``text``, ``json`` or ``parquet``: the configured format or the files' suffix."""
        if self.config.format:
            if self.config.format not in ("text", "json", "parquet"):
                raise ValueError(
                    f"files corpus format {self.config.format!r} is not one of text, json, parquet"
                )
            return self.config.format
        kinds = set()
        for path in self.resolved_paths():
            kind = next((v for s, v in _FORMATS.items() if path.endswith(s)), None)
            if kind is None:
                raise ValueError(
                    f"cannot infer the format of {path!r}; set format to text, json or parquet"
                )
            kinds.add(kind)
        if len(kinds) > 1:
            raise ValueError(f"files corpus mixes formats {sorted(kinds)}; use one format")
        return kinds.pop()

    def _dataset(self) -> Any:
        import datasets

        builder = self.builder()
        kwargs: dict[str, Any] = {}
        if builder == "text":
            kwargs["sample_by"] = self.config.sample_by
        # datasets globs data_files again: escaped, each file is read as the file it is
        files = [glob.escape(p) for p in self.resolved_paths()]
        return datasets.load_dataset(
            builder, data_files=files, split="train", streaming=True, **kwargs
        )

    def source_key(self) -> str:
        c = self.config
        stats = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in self.resolved_paths()]
        return short_hash(
            "files", stats, self.builder(), c.sample_by, c.text_field, c.max_documents, c.max_bytes
        )


_CORPORA: dict[str, type[Corpus]] = {
    "stdlib": StdlibCorpus,
    "markov": MarkovCorpus,
    "hf": HFCorpus,
    "files": FilesCorpus,
    "pysrc": PysrcCorpus,
}


def known_floor(corpus: Mapping[str, Any] | None, n_ctx: int | None) -> float | None:
    """The least mean loss any model of context ``n_ctx`` can reach on a corpus where that
    is known exactly (a Markov chain's, ``MarkovCorpus.window_loss``), else None: what a
    fitted E can be checked against. ``corpus`` is a run's recorded corpus config."""
    if not corpus or corpus.get("name") != "markov" or not (n_ctx and n_ctx > 0):  # NaN too
        return None
    try:
        return _markov_floor(json.dumps(to_plain(corpus), sort_keys=True), int(n_ctx))
    except ValueError:  # a config this version cannot build: no floor, not a broken table
        return None


@functools.lru_cache(maxsize=64)
def _markov_floor(corpus_json: str, n_ctx: int) -> float:
    return MarkovCorpus(CorpusConfig.from_any(json.loads(corpus_json))).window_loss(n_ctx)


def build_corpus(spec: CorpusConfig | Mapping[str, Any] | str) -> Corpus:
    """The corpus a config names (reads nothing yet). Unknown name -> ValueError."""
    from kdlab.data import tasks  # the synthetic tasks subclass Corpus: imported late

    config = CorpusConfig.from_any(spec)
    cls = _CORPORA.get(config.name) or tasks.TASKS.get(config.name)
    if cls is None:
        raise ValueError(
            f"unknown corpus {config.name!r}; valid corpora: {', '.join(CORPUS_NAMES)}"
        )
    return cls(config)


__all__ = [
    "CORPUS_NAMES",
    "Corpus",
    "CorpusConfig",
    "CorpusInfo",
    "DocumentHasher",
    "FilesCorpus",
    "HFCorpus",
    "known_floor",
    "shift_chain_stationary",
    "MarkovCorpus",
    "PysrcCorpus",
    "StdlibCorpus",
    "build_corpus",
    "short_hash",
    "to_plain",
    "token_fingerprint",
]
