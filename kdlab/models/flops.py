"""FLOPs per token: the paper's F(N) approximation (PAPER.md section 4).

The exact architecture count lives beside it so the two can be compared.
"""

from __future__ import annotations

import numpy as np


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
    return 2.0 * n * (1.0 + sigma1 * n_ctx * n ** (-1.0 / 3.0) + sigma2 * n_vocab * n ** (-2.0 / 3.0))
