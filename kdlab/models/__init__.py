"""The muP transformer, the size ladders, and parameter and FLOP counting.

``GPT`` is imported on first use, so that code which only counts parameters or FLOPs
(``kdlab plan``, ``kdlab sweep plan``) does not pay for importing torch.
"""

from typing import TYPE_CHECKING, Any

from kdlab.models.flops import flops_per_token, paper_flops_per_token
from kdlab.models.ladder import (
    LADDERS,
    ModelShape,
    get_shape,
    non_embedding_params,
    paper_rho,
    total_params,
)

if TYPE_CHECKING:
    from kdlab.models.gpt import GPT


def __getattr__(name: str) -> Any:
    if name == "GPT":
        from kdlab.models.gpt import GPT

        return GPT
    raise AttributeError(f"module 'kdlab.models' has no attribute {name!r}")


__all__ = [
    "GPT",
    "LADDERS",
    "ModelShape",
    "flops_per_token",
    "get_shape",
    "non_embedding_params",
    "paper_flops_per_token",
    "paper_rho",
    "total_params",
]
