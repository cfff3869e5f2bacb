"""Synthetic token tasks on which the capacity gap can be seen cheaply.

Busbridge et al. (2025) show the U-shaped capacity gap (a student distilled from a far
stronger teacher ends worse than from a moderately strong one) not only for language
models: their appendix demonstrates it on kernel regression and on a pointer-mapping
problem, with teachers of growing capacity. These are token-stream versions of both, so
the same GPT, DistillModule, runner, run database, sweeps and report run them, and
capacity is the GPT's size, as for the language models.

- ``kernel``: every token is a noisy, quantised reading of a smooth function at the
  point its context encodes. The previous ``order`` tokens, most recent first, are the
  base-``base`` digits of u in [0, 1); the next token is the bin of f(u) + noise * N(0, 1)
  among ``base`` equal bins of [0, 1] (the outer bins take the tails). f is a sum of
  ``waves`` sinusoids whose amplitudes fall as j^-smoothness, a function of a kernel's
  reproducing space: the smooth part is cheap to learn, the fine detail costs capacity.
- ``pointer``: every token is the pointer's target: the token (1 + p mod ``order``)
  places before the previous one, p being the previous token, except that with
  probability ``noise`` it is uniformly random instead.

Both are stationary Markov chains (of order ``order`` and ``order + 1``), so their entropy
rate, the loss a perfect model reaches and the floor E of the supervised law, is known
exactly (``entropy_rate``). Tokens are the states themselves (identity tokenizer,
vocabulary ``base``).
"""

from __future__ import annotations

import bisect
from functools import cached_property
from typing import ClassVar, Literal

import numpy as np

from kdlab.data.corpora import Corpus, CorpusConfig, shift_chain_stationary, short_hash


class _TaskCorpus(Corpus):
    """Shared parts: a token stream of ``n_tokens`` over ``base`` symbols from ``seed``."""

    kind: ClassVar[Literal["text", "tokens"]] = "tokens"
    # tokenized by the runs: drawn from the seed in seconds, nothing to tokenize

    def __init__(self, config: CorpusConfig) -> None:
        super().__init__(config)
        c = config
        for name in ("base", "order", "n_tokens"):
            if getattr(c, name) < 2:
                raise ValueError(f"{c.name} corpus needs {name} >= 2, got {getattr(c, name)}")
        if c.base > 1 << 16:
            raise ValueError(f"{c.name} corpus needs base <= 65536, got {c.base}")

    @property
    def vocab_size(self) -> int:
        return self.config.base

    @property
    def entropy_rate(self) -> float:
        raise NotImplementedError

    def token_ids(self) -> np.ndarray:
        return self._tokens

    @cached_property
    def _tokens(self) -> np.ndarray:
        out = np.asarray(self._sample(np.random.default_rng([self.config.seed, 2])), np.uint16)
        out.setflags(write=False)
        return out

    def _sample(self, rng: np.random.Generator) -> list[int]:
        raise NotImplementedError

    def source_key(self) -> str:
        return short_hash(f"{self.name}-v1", np.__version__, self.describe())


class KernelCorpus(_TaskCorpus):
    """Noisy readings of a smooth function of the context (module docstring)."""

    fields: ClassVar[tuple[str, ...]] = (
        "base",
        "order",
        "waves",
        "smoothness",
        "noise",
        "n_tokens",
        "seed",
    )

    def __init__(self, config: CorpusConfig) -> None:
        super().__init__(config)
        if config.base**config.order > 1 << 20:
            raise ValueError(
                f"kernel corpus has base ** order = {config.base**config.order} contexts; "
                "keep it at most 2^20"
            )
        if config.waves < 1 or not config.noise > 0:
            raise ValueError(
                f"kernel corpus needs waves >= 1 and noise > 0, got {config.waves} and "
                f"{config.noise}"
            )

    def target(self, u: np.ndarray) -> np.ndarray:
        """f(u) in [0.1, 0.9]: 0.5 + 0.4 g(u) / max|g|, g = sum_j j^-s sin(2 pi j u + phi_j)."""
        c = self.config
        rng = np.random.default_rng([c.seed, 1])
        phase = rng.uniform(0.0, 2.0 * np.pi, size=c.waves)
        j = np.arange(1, c.waves + 1, dtype=float)
        amp = j ** (-float(c.smoothness))

        def g(x: np.ndarray) -> np.ndarray:
            return (amp * np.sin(2.0 * np.pi * np.multiply.outer(x, j) + phase)).sum(-1)

        scale = np.abs(g(np.linspace(0.0, 1.0, 8193))).max()
        return 0.5 + 0.4 * g(np.asarray(u, dtype=float)) / scale

    @cached_property
    def table(self) -> np.ndarray:
        """P[c, y]: next-token distribution of context c = sum_i x_{t-i} base^(order-i)."""
        from scipy.special import ndtr

        c = self.config
        n_ctx = c.base**c.order
        f = self.target((np.arange(n_ctx) + 0.5) / n_ctx)
        edges = np.arange(1, c.base) / c.base
        cdf = ndtr((edges[None, :] - f[:, None]) / c.noise)
        cdf = np.concatenate([np.zeros((n_ctx, 1)), cdf, np.ones((n_ctx, 1))], axis=1)
        return np.clip(np.diff(cdf, axis=1), 1e-300, None)

    @cached_property
    def stationary(self) -> np.ndarray:
        """Stationary distribution of the contexts (newest token in the highest digit)."""
        return shift_chain_stationary(self.table, self.config.base, newest_high=True)

    @property
    def entropy_rate(self) -> float:
        """Exact entropy rate in nats/token."""
        p = self.table
        return float(self.stationary @ -(p * np.log(p)).sum(axis=1))

    def _sample(self, rng: np.random.Generator) -> list[int]:
        c = self.config
        cum = np.cumsum(self.table, axis=1)
        cum[:, -1] = 1.0
        rows = [r.tolist() for r in cum]
        state = int(rng.choice(len(rows), p=self.stationary))
        top = c.base ** (c.order - 1)
        out = [0] * c.n_tokens
        uniforms = rng.random(c.n_tokens).tolist()
        for t, u in enumerate(uniforms):
            y = bisect.bisect_right(rows[state], u)
            out[t] = y
            state = y * top + state // c.base
        return out


class PointerCorpus(_TaskCorpus):
    """Each token copies the one its predecessor points at (module docstring)."""

    fields: ClassVar[tuple[str, ...]] = ("base", "order", "noise", "n_tokens", "seed")

    def __init__(self, config: CorpusConfig) -> None:
        super().__init__(config)
        if not 0 < config.noise <= 1:
            raise ValueError(f"pointer corpus needs 0 < noise <= 1, got {config.noise}")

    @property
    def entropy_rate(self) -> float:
        """Exact: the copied token has probability 1 - noise + noise / base, every other
        token noise / base, whatever the context."""
        b, eps = self.config.base, self.config.noise
        hit = 1.0 - eps + eps / b
        rest = eps / b
        return float(-hit * np.log(hit) - (b - 1) * rest * np.log(rest))

    def _sample(self, rng: np.random.Generator) -> list[int]:
        c = self.config
        n, m = c.n_tokens, c.order
        random = rng.integers(0, c.base, size=n).tolist()
        copy = (rng.random(n) >= c.noise).tolist()
        out = random[: m + 1] + [0] * max(0, n - m - 1)
        for t in range(m + 1, n):
            prev = out[t - 1]
            out[t] = out[t - 2 - prev % m] if copy[t] else random[t]
        return out[:n]


TASKS: dict[str, type[Corpus]] = {"kernel": KernelCorpus, "pointer": PointerCorpus}

__all__ = ["TASKS", "KernelCorpus", "PointerCorpus"]
