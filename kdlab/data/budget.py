"""Token budget D of a run, from whichever of the three forms a sweep gives it in.

Fixed-token runs give D; fixed-ratio runs give M = D / N; IsoFLOP runs give the compute
C and get D = C / (3 F(N)) (forward + backward = 3 x forward FLOPs per token).
"""

from __future__ import annotations

import math
from numbers import Real

_FIELDS = ("tokens", "tokens_per_param", "flops")


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def resolve_tokens(
    *,
    tokens: float | None = None,
    tokens_per_param: float | None = None,
    flops: float | None = None,
    n_params: int,
    flops_per_token: float,
) -> int:
    """D in tokens from exactly one of ``tokens``, ``tokens_per_param`` (M) or ``flops`` (C).

    D = tokens | M * n_params | C / (3 * flops_per_token), rounded to the nearest integer.
    ``flops_per_token`` is the forward F(N); it is only read for an IsoFLOP budget.
    """
    values = (tokens, tokens_per_param, flops)
    given = {k: v for k, v in zip(_FIELDS, values, strict=True) if v is not None}
    if len(given) != 1:
        got = " and ".join(given) if given else "none"
        raise ValueError(
            f"give exactly one of tokens, tokens_per_param, flops for the token budget (got {got})"
        )
    ((field, raw),) = given.items()
    value = _positive(field, raw)
    n = _positive("n_params", n_params)
    if field == "tokens":
        if value != math.floor(value):
            raise ValueError(f"tokens must be a whole number, got {raw!r}")
        d = value
    elif field == "tokens_per_param":
        d = value * n
    else:
        d = value / (3.0 * _positive("flops_per_token", flops_per_token))
    out = int(round(d))
    if out < 1:
        raise ValueError(f"{field}={raw!r} gives a budget of {d:.3g} tokens, less than one")
    return out


__all__ = ["resolve_tokens"]
