"""LightningDataModule: corpus -> tokens (cached) -> split -> exact-budget packed windows.

Training batch s is a pure function of (seed, s) (see ``windows.py``) and the loader
starts at the trainer's restored step, so resuming never repeats or skips data. The
unmasked targets over the whole run number exactly ``train_tokens``. Validation is the
corpus' fixed holdout cut into the same non-overlapping windows for every run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from kdlab.data.cache import (
    DEFAULT_CACHE_DIR,
    TokenCache,
    corpus_info,
    open_token_cache,
    unigram_entropy,
)
from kdlab.data.corpora import Corpus, CorpusConfig, CorpusInfo, build_corpus
from kdlab.data.splits import TRAIN_SPLITS, SplitLayout, split_layout
from kdlab.data.tokenizers import Tokenizer, TokenizerConfig, build_tokenizer, resolve_kind
from kdlab.data.windows import IGNORE_INDEX, WindowSchedule, eval_windows


class TokenDataModule(pl.LightningDataModule):
    """Packed next-token windows of one split of a corpus, for a budget of train_tokens.

    ``batch_size`` is the global batch (split evenly over DDP ranks); ``num_steps`` counts
    batches (optimizer steps times ``accumulate_grad_batches``). ``val_tokens`` sets the
    holdout and thereby the split layout, so it must be the same for every run of a
    study; ``val_eval_tokens`` optionally evaluates on only a prefix of its windows.
    """

    def __init__(
        self,
        corpus: CorpusConfig | Mapping[str, Any] | str = "stdlib",
        tokenizer: TokenizerConfig | Mapping[str, Any] | str | None = "auto",
        *,
        split: Literal["teacher", "student"] = "teacher",
        seq_len: int,
        batch_size: int,
        train_tokens: int,
        val_tokens: int = 65536,
        val_eval_tokens: int | None = None,
        val_batch_size: int | None = None,
        seed: int = 0,
        cache_dir: str | Path = DEFAULT_CACHE_DIR,
    ) -> None:
        super().__init__()
        if split not in TRAIN_SPLITS:
            raise ValueError(f"split must be 'teacher' or 'student', got {split!r}")
        for name, value in (
            ("seq_len", seq_len),
            ("batch_size", batch_size),
            ("train_tokens", train_tokens),
            ("val_tokens", val_tokens),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if val_tokens < seq_len + 1:
            raise ValueError(
                f"val_tokens ({val_tokens}) must hold at least one window of seq_len + 1 = "
                f"{seq_len + 1} tokens"
            )
        for name, value in (
            ("val_eval_tokens", val_eval_tokens),
            ("val_batch_size", val_batch_size),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or null, got {value!r}")
        self.corpus: Corpus = build_corpus(corpus)
        self.tokenizer_config = TokenizerConfig.from_any(tokenizer)
        resolve_kind(self.tokenizer_config, self.corpus)  # corpus/tokenizer mismatch fails now
        self.split = split
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.train_tokens = train_tokens
        self.val_tokens = val_tokens
        self.val_eval_tokens = val_eval_tokens
        self.val_batch_size = val_batch_size
        self.seed = int(seed)
        self.cache_dir = Path(cache_dir)
        self._memos: dict[str, tuple[tuple[Any, ...], Any]] = {}
        #: a teacher-logit cache whose sparse teacher joins every batch as a third item
        #: (kdlab.teachers.cache.TeacherCache: ``train(windows)``, ``validation(indices)``)
        self.teacher_cache: Any = None
        #: tokens a teacher generated, trained on in place of the split (kdlab generate)
        self.train_source: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the opened memmap (spawned workers/ranks reopen the cache file)."""
        state = dict(self.__dict__)
        state.pop("cache", None)
        state["_memos"] = {}
        return state

    # ------------------------------------------------------------------ lazy pieces

    @cached_property
    def info(self) -> CorpusInfo:
        """Corpus fingerprint and size (memoised under the cache dir)."""
        return corpus_info(self.corpus, self.cache_dir)

    @cached_property
    def tokenizer(self) -> Tokenizer:
        return build_tokenizer(
            self.tokenizer_config, self.corpus, info=self.info, cache_dir=self.cache_dir
        )

    @cached_property
    def cache(self) -> TokenCache:
        return open_token_cache(self.corpus, self.tokenizer, self.cache_dir, self.info)

    def _memo(self, name: str, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        """Cache ``make()`` until ``key`` changes (runs may set train_tokens after init)."""
        hit = self._memos.get(name)
        if hit is None or hit[0] != key:
            hit = self._memos[name] = (key, make())
        return hit[1]

    @property
    def layout(self) -> SplitLayout:
        """Teacher / student / validation ranges of the corpus' tokens."""
        return self._memo("layout", (self.val_tokens,), self._make_layout)

    def _make_layout(self) -> SplitLayout:
        layout = split_layout(self.cache.n_tokens, self.val_tokens)
        prefix = self.cache.train_prefix_tokens
        if prefix is not None and prefix > layout.teacher.stop:
            raise ValueError(
                f"tokenizer {self.tokenizer.name} was trained on the first {prefix} tokens but "
                f"the teacher split ends at token {layout.teacher.stop}; lower the tokenizer's "
                "train_fraction/train_bytes or val_tokens"
            )
        return layout

    @property
    def schedule(self) -> WindowSchedule:
        """Which windows each training step reads."""
        key = (
            self.val_tokens,
            self.split,
            self.seq_len,
            self.batch_size,
            self.train_tokens,
            self.seed,
            None if self.train_source is None else id(self.train_source),
        )
        return self._memo(
            "schedule",
            key,
            lambda: WindowSchedule(
                len(self.split_array(self.split)),
                self.seq_len,
                self.batch_size,
                self.train_tokens,
                self.seed,
            ),
        )

    @property
    def _val_starts(self) -> np.ndarray:
        key = (self.val_tokens, self.seq_len, self.val_eval_tokens)
        return self._memo(
            "val", key, lambda: eval_windows(self.val_tokens, self.seq_len, self.val_eval_tokens)
        )

    def split_array(self, split: str) -> np.ndarray:
        """The tokens of ``split``; the training split's come from ``train_source`` when a
        generated corpus replaces it (validation stays the corpus' own holdout)."""
        if split == self.split and self.train_source is not None:
            return self.train_source
        r = self.layout[split]
        return self.cache.tokens[r.start : r.stop]

    # ------------------------------------------------------------------ facts

    @property
    def fingerprint(self) -> str:
        """Content fingerprint of the corpus."""
        return self.info.fingerprint

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def split_tokens(self) -> int:
        """Training targets one pass over the split offers (its whole windows)."""
        return self.schedule.tokens_per_pass

    @property
    def unigram_loss(self) -> float:
        """Entropy of the training split's token frequencies: the loss of a model that
        ignores context, which any run that learned anything beats."""
        r = self.layout[self.split]
        return unigram_entropy(self.cache, r.start, r.stop, self.vocab_size)

    @property
    def passes(self) -> float:
        """How many times the run goes over its split (train_tokens / split_tokens)."""
        return self.train_tokens / self.split_tokens

    @property
    def num_steps(self) -> int:
        """Batches in the run: ceil(train_tokens / (batch_size * seq_len))."""
        return math.ceil(self.train_tokens / (self.batch_size * self.seq_len))

    @property
    def val_eval_token_count(self) -> int:
        """Targets evaluated per validation pass."""
        return int(self._val_starts.size) * self.seq_len

    def describe(self) -> dict[str, Any]:
        """The data facts a run records (all JSON-able)."""
        return {
            "corpus": self.corpus.name,
            "corpus_config": self.corpus.describe(),
            "fingerprint": self.fingerprint,
            "tokenizer": self.tokenizer_name,
            "vocab_size": self.vocab_size,
            "corpus_tokens": self.cache.n_tokens,
            "split": self.split,
            "split_tokens": self.split_tokens,
            "train_tokens": self.train_tokens,
            "passes": self.passes,
            "num_steps": self.num_steps,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "val_tokens": self.val_tokens,
            "val_eval_tokens": self.val_eval_token_count,
        }

    # ------------------------------------------------------------------ Lightning hooks

    def prepare_data(self) -> None:
        """Build the caches (fingerprint, tokenizer, tokens) once, before any rank reads."""
        _ = self.cache

    def setup(self, stage: str | None = None) -> None:
        """Open the token memmap and check the corpus is big enough for this run."""
        _ = self.schedule, self._val_starts

    def batch(self, step: int, rows: slice = slice(None)) -> tuple[Any, ...]:
        """Training batch of global step ``step`` (pure function of seed and step):
        (x, y), and the cached teacher of its windows when a teacher cache is attached."""
        x, y = self.schedule.batch(self.split_array(self.split), step, rows)
        if self.teacher_cache is None:
            return x, y
        return x, y, self.teacher_cache.train(self.schedule.windows(step, rows))

    def train_batches(
        self, start_step: int = 0, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[Any, ...]]:
        """Batches ``start_step .. num_steps - 1`` (this rank's rows of each)."""
        rows = self._rows(rank, world_size)
        for step in range(start_step, self.num_steps):
            yield self.batch(step, rows)

    def _rows(self, rank: int, world_size: int) -> slice:
        if self.batch_size % world_size:
            raise ValueError(
                f"batch_size {self.batch_size} does not split over {world_size} devices"
            )
        per = self.batch_size // world_size
        return slice(rank * per, (rank + 1) * per)

    def resume_step(self) -> int:
        """First batch to yield: the attached trainer's progress, else 0."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(trainer.global_step) * int(getattr(trainer, "accumulate_grad_batches", 1))

    def train_dataloader(self) -> DataLoader:
        """Yields exactly num_steps - start batches, start read when iteration begins.

        Its length is the whole run (num_steps): Lightning counts a resumed epoch's
        batches from the restored position, so the epoch ends exactly at num_steps.
        """
        self.setup("fit")
        return _ResumableLoader(_TrainBatches(self), batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        """This rank's share of the fixed validation windows, in order.

        Every window is scored exactly once across the ranks, so the validation loss is
        the same tokens' mean at any world size. Lightning's DistributedSampler would pad an
        uneven share by repeating the first windows (at context 4096 the default 16
        windows on 128 GPUs score each about 8 times, unevenly); here a short share is
        padded with windows whose targets are all masked, which carry zero weight, because
        FSDP needs every rank to run the same number of forward passes. The trainer
        configs set ``use_distributed_sampler: false`` so that Lightning leaves this alone.
        """
        self.setup("validate")
        rank, world = (0, 1) if self.trainer is None else _rank_world(self.trainer)
        size = self.val_batch_size or max(1, self.batch_size // world)
        n_windows = int(self._val_starts.size)
        share = -(-n_windows // world)  # windows per rank, rounded up
        first = min(rank * share, n_windows)
        indices = np.arange(first, min(first + share, n_windows))
        padded = np.concatenate([indices, np.full(share - indices.size, -1)])
        dataset = _Windows(
            self.split_array("validation"),
            self._val_starts,
            self.seq_len,
            self.teacher_cache,
            padded.astype(np.int64),
        )
        return DataLoader(dataset, batch_size=size, shuffle=False, num_workers=0)


class _TrainBatches(IterableDataset):
    """Whole batches from the data module, from its resume step to the end of the run."""

    def __init__(self, dm: TokenDataModule) -> None:
        self.dm = dm

    def _place(self) -> tuple[int, int]:
        trainer = self.dm.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rank, world = self._place()
        return self.dm.train_batches(self.dm.resume_step(), rank, world)

    def __len__(self) -> int:
        return self.dm.num_steps


class _ResumableLoader(DataLoader):
    """A loader Lightning may resume mid-epoch: its position is the trainer's global step.

    The (empty) state_dict marks it as resumable for Lightning; the resume point itself is
    read from ``trainer.global_step`` when iteration starts.
    """

    def state_dict(self) -> dict[str, Any]:
        return {"resume_from": "trainer.global_step"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return None


def _rank_world(trainer: Any) -> tuple[int, int]:
    return int(trainer.global_rank), int(trainer.world_size)


class _Windows(Dataset):
    """Map-style (x, y) windows at fixed offsets of a token array, with window i's cached
    teacher when a teacher cache is given. ``indices`` lists the windows served, in order;
    an index of -1 is padding: window 0's inputs with every target masked."""

    def __init__(
        self,
        tokens: np.ndarray,
        starts: np.ndarray,
        seq_len: int,
        teacher_cache: Any = None,
        indices: np.ndarray | None = None,
    ) -> None:
        self.tokens, self.starts, self.seq_len = tokens, starts, seq_len
        self.teacher_cache = teacher_cache
        self.indices = np.arange(starts.size) if indices is None else indices

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, position: int) -> tuple[Any, ...]:
        i = int(self.indices[position])
        s = int(self.starts[max(i, 0)])
        win = torch.from_numpy(np.asarray(self.tokens[s : s + self.seq_len + 1], dtype=np.int64))
        x, y = win[:-1], win[1:]
        if i < 0:
            y = torch.full_like(y, IGNORE_INDEX)
        if self.teacher_cache is None:
            return x, y
        one = self.teacher_cache.validation(np.array([max(i, 0)]))
        return x, y, type(one)(*(t[0] for t in one))


__all__ = ["TokenDataModule"]
