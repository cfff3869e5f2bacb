"""Which token windows make up training step s: a pure function of (seed, s).

A split of S tokens holds W = (S - 1) // T windows of T + 1 tokens at offsets 0, T, 2T,
... (x = window[:-1], y = window[1:]), so one pass over the windows predicts every
target token of the split once. Sample g of the run (g = s * B + row) is window
``perm_p[g mod W]`` with ``p = g // W`` the pass and ``perm_p`` a permutation seeded by
(seed, p). A run resumed at step s therefore sees exactly what an uninterrupted run would.

The budget is exact: targets of sample g at positions t with g * T + t >= train_tokens are
masked with ``IGNORE_INDEX``, so the unmasked targets over all steps number train_tokens.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

IGNORE_INDEX = -100


class WindowSchedule:
    """The training windows of a run over one split (no data, just indices)."""

    def __init__(
        self, split_tokens: int, seq_len: int, batch_size: int, train_tokens: int, seed: int
    ) -> None:
        if seq_len < 1 or batch_size < 1 or train_tokens < 1:
            raise ValueError(
                f"seq_len, batch_size and train_tokens must be positive, got {seq_len}, "
                f"{batch_size} and {train_tokens}"
            )
        self.n_windows = (split_tokens - 1) // seq_len
        if self.n_windows < 1:
            raise ValueError(
                f"a split of {split_tokens} tokens holds no window of seq_len + 1 = "
                f"{seq_len + 1} tokens"
            )
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.train_tokens = train_tokens
        self.seed = seed
        self._perm = lru_cache(maxsize=2)(self._permutation)

    @property
    def num_steps(self) -> int:
        return math.ceil(self.train_tokens / (self.batch_size * self.seq_len))

    @property
    def tokens_per_pass(self) -> int:
        """Targets in one pass over all windows (W * T)."""
        return self.n_windows * self.seq_len

    def _permutation(self, pass_index: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, pass_index]).permutation(self.n_windows)
        return perm.astype(np.int32) if self.n_windows < 2**31 else perm

    def windows(self, step: int, rows: slice = slice(None)) -> np.ndarray:
        """Window indices [rows] of step ``step`` (int64)."""
        g = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)[rows]
        passes, pos = np.divmod(g, self.n_windows)
        out = np.empty_like(g)
        for p in np.unique(passes):
            sel = passes == p
            out[sel] = self._perm(int(p))[pos[sel]]
        return out

    def valid_targets(self, step: int, rows: slice = slice(None)) -> np.ndarray:
        """Unmasked targets of each row of step ``step`` (0..T)."""
        g = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)[rows]
        return np.clip(self.train_tokens - g * self.seq_len, 0, self.seq_len)

    def batch(
        self, tokens: np.ndarray, step: int, rows: slice = slice(None)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) LongTensors [rows, T] of step ``step`` from the split's ``tokens``."""
        t = self.seq_len
        starts = self.windows(step, rows) * t
        idx = starts[:, None] + np.arange(t + 1, dtype=np.int64)
        win = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))
        x, y = win[:, :-1], win[:, 1:].clone()
        valid = self.valid_targets(step, rows)
        if valid.min() < t:
            y[torch.arange(t)[None, :] >= torch.from_numpy(valid)[:, None]] = IGNORE_INDEX
        return x, y


def eval_windows(n_tokens: int, seq_len: int, max_tokens: int | None = None) -> np.ndarray:
    """Start offsets of the non-overlapping validation windows (fixed for every run)."""
    n = (n_tokens - 1) // seq_len
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // seq_len))
    if n < 1:
        raise ValueError(
            f"a validation set of {n_tokens} tokens holds no window of seq_len + 1 = "
            f"{seq_len + 1} tokens"
        )
    return np.arange(n, dtype=np.int64) * seq_len


__all__ = ["IGNORE_INDEX", "WindowSchedule", "eval_windows"]
