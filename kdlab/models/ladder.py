"""The model size ladders and their parameter counts.

A scaling-law study needs a one-parameter family of models, so every ladder fixes the
aspect ratio rho = d_model / n_layer and the head width, and grows all widths with depth
(as the paper's ladder does). Then N alone names a model, and F(N) is accurate.

- ``paper``: the paper's 12 sizes (rho = 128, head_dim 128, V 32768, context 4096),
  d_ff taken from its table (8/3 d_model rounded up to a multiple of 256).
- ``nano``: minutes on 2 CPU cores. d_model = 16 L, head_dim 16, context 128.
- ``micro``: the CPU reproduction. d_model = 32 L, head_dim 32, context 256.
- ``toy``: the synthetic capacity-gap tasks (kdlab.data.tasks). d_model = 8 L,
  head_dim 8, context 64.

The small ladders are named by layer count ("L1".."L6"), use bytes (V = 256) unless the
tokenizer says otherwise, and take d_ff = 8/3 d_model rounded up to a multiple of 16.
Each spans about 200x in N (nano 3.4k..0.66M, micro 13k..2.7M non-embedding).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from kdlab.models.flops import flops_per_token

__all__ = [
    "LADDERS",
    "ModelShape",
    "flops_per_token",
    "get_shape",
    "non_embedding_params",
    "paper_rho",
    "total_params",
]


@dataclass(frozen=True)
class ModelShape:
    """Everything that fixes the architecture and its size (and nothing about training)."""

    ladder: str
    name: str
    n_layer: int
    d_model: int
    n_head: int
    d_ff: int
    vocab_size: int
    n_ctx: int
    rope_base: float = 500_000.0

    def __post_init__(self) -> None:
        for field in ("n_layer", "d_model", "n_head", "d_ff", "vocab_size", "n_ctx"):
            value = getattr(self, field)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelShape.{field} must be a positive integer, got {value!r}.")
            object.__setattr__(self, field, int(value))  # plain int, e.g. from numpy or YAML
        if self.d_model % self.n_head:
            raise ValueError(
                f"ModelShape.d_model ({self.d_model}) must be divisible by n_head ({self.n_head})."
            )
        if self.head_dim % 2:
            raise ValueError(f"ModelShape head_dim ({self.head_dim}) must be even for RoPE.")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


# name: (n_layer, d_model, d_ff), the paper's model ladder.
_PAPER_TABLE: dict[str, tuple[int, int, int]] = {
    "103M": (8, 1024, 2816),
    "143M": (9, 1152, 3072),
    "198M": (10, 1280, 3456),
    "266M": (11, 1408, 3840),
    "340M": (12, 1536, 4096),
    "546M": (14, 1792, 4864),
    "975M": (17, 2176, 5888),
    "1.82B": (21, 2688, 7168),
    "2.72B": (24, 3072, 8192),
    "4.82B": (29, 3712, 9984),
    "7.75B": (34, 4352, 11648),
    "12.6B": (40, 5120, 13696),
}


def _paper_ladder() -> dict[str, ModelShape]:
    return {
        name: ModelShape("paper", name, n_layer, d, d // 128, d_ff, vocab_size=32768, n_ctx=4096)
        for name, (n_layer, d, d_ff) in _PAPER_TABLE.items()
    }


def _small_ladder(ladder: str, width_per_layer: int, head_dim: int, n_ctx: int):
    """L layers, d_model = width_per_layer * L, so n_head = d_model / head_dim grows with L."""
    shapes = {}
    for n_layer in range(1, 7):
        d = width_per_layer * n_layer
        shapes[f"L{n_layer}"] = ModelShape(
            ladder,
            f"L{n_layer}",
            n_layer,
            d,
            d // head_dim,
            _round_up(8 * d / 3, 16),
            vocab_size=256,
            n_ctx=n_ctx,
        )
    return shapes


LADDERS: dict[str, dict[str, ModelShape]] = {
    "paper": _paper_ladder(),
    "nano": _small_ladder("nano", width_per_layer=16, head_dim=16, n_ctx=128),
    "micro": _small_ladder("micro", width_per_layer=32, head_dim=32, n_ctx=256),
    "toy": _small_ladder("toy", width_per_layer=8, head_dim=8, n_ctx=64),
}


def get_shape(
    ladder: str, name: str, vocab_size: int | None = None, n_ctx: int | None = None
) -> ModelShape:
    """Look a size up; ``vocab_size``/``n_ctx`` override because the tokenizer decides V."""
    if ladder not in LADDERS:
        raise ValueError(
            f"Unknown model ladder {ladder!r}; valid ladders are {', '.join(LADDERS)}."
        )
    sizes = LADDERS[ladder]
    if name not in sizes:
        raise ValueError(
            f"Unknown size {name!r} in ladder {ladder!r}; valid sizes are {', '.join(sizes)}."
        )
    shape = sizes[name]
    overrides = {k: v for k, v in (("vocab_size", vocab_size), ("n_ctx", n_ctx)) if v is not None}
    return dataclasses.replace(shape, **overrides) if overrides else shape


def non_embedding_params(shape: ModelShape) -> int:
    """N of the scaling laws: every parameter except the (tied) embedding, norm gains included.

    Per layer: q, k, v, o (4 d^2 with n_head * head_dim = d), SwiGLU gate, up, down
    (3 d d_ff), two pre-norm RMSNorm gains (2 d) and the QK-norm gains (one RMSNorm over
    head_dim for q and one for k, shared by the heads: 2 head_dim). Plus the final norm (d).
    The norms are about 0.02% of N on the paper ladder, below the 3-significant-figure
    rounding of the paper's table, so the table cannot tell whether the paper counted them.
    """
    d, d_attn = shape.d_model, shape.n_head * shape.head_dim
    attention = 3 * d * d_attn + d_attn * d
    ffn = 3 * d * shape.d_ff
    norms = 2 * d + 2 * shape.head_dim
    return shape.n_layer * (attention + ffn + norms) + d


def total_params(shape: ModelShape) -> int:
    """All trainable parameters: N plus the one embedding matrix shared with the lm head."""
    return non_embedding_params(shape) + shape.vocab_size * shape.d_model


def paper_rho(shape: ModelShape) -> float:
    """Aspect ratio rho = d_model / n_layer, as used in the paper's F(N)."""
    return shape.d_model / shape.n_layer
