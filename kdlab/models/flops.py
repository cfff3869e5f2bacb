"""FLOPs per token: the paper's F(N) approximation (its FLOP estimate).

The exact architecture count lives beside it so the two can be compared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only for the annotation; ladder.py imports this module
    from kdlab.models.ladder import ModelShape


def paper_flops_per_token(
    n_params,
    n_ctx: float = 4096,
    n_vocab: float = 32768,
    rho: float = 128.0,
    omega: float = 12.0,
):
    """Forward FLOPs per token F(N) of the paper; vectorised over ``n_params``.

    The 2N shortcut ignores attention over the context and the vocabulary projection,
    which matter at small N, so the paper corrects it with two shape-dependent terms.
    """
    n = np.asarray(n_params, dtype=float)
    sigma1 = (rho * omega**2) ** (-1.0 / 3.0)
    sigma2 = (rho / omega) ** (1.0 / 3.0)
    attention = sigma1 * n_ctx * n ** (-1.0 / 3.0)
    vocabulary = sigma2 * n_vocab * n ** (-2.0 / 3.0)
    return 2.0 * n * (1.0 + attention + vocabulary)


def flops_per_token(shape: ModelShape) -> float:
    """Exact forward FLOPs per token of a ``ModelShape`` (a multiply-add counts as 2).

    Counted: every matmul (q, k, v, o; SwiGLU gate, up, down; the tied lm head, 2*d*V)
    and attention scores and weighted values. Attention is causal: position t of an
    ``n_ctx`` window attends to t keys, so on average (n_ctx + 1) / 2 keys per query,
    giving 2 * 2 * (n_head * head_dim) * (n_ctx + 1) / 2 per layer. Not counted: norms,
    RoPE, softmax and the SwiGLU product (elementwise, not matmuls, left out by the usual
    convention: a few percent of the total at the smallest nano size, far under 1% at
    paper sizes), and the embedding lookup (no arithmetic). This is the count the paper's F(N)
    approximates: with d_ff = 8/3 d and head_dim * n_head = d, F(N) reduces to
    2 * (12 L d^2 + L d n_ctx + d V), the same three terms.
    """
    d, L = shape.d_model, shape.n_layer
    d_attn = shape.n_head * shape.head_dim
    matmul_params_per_layer = 3 * d * d_attn + d_attn * d + 3 * d * shape.d_ff
    attention_per_layer = 2 * 2 * d_attn * (shape.n_ctx + 1) / 2
    lm_head = d * shape.vocab_size
    return float(2 * L * matmul_params_per_layer + L * attention_per_layer + 2 * lm_head)
