"""The muP transformer, the size ladders, and parameter and FLOP counting."""

from kdlab.models.flops import flops_per_token, paper_flops_per_token
from kdlab.models.gpt import GPT
from kdlab.models.ladder import (
    LADDERS,
    ModelShape,
    get_shape,
    non_embedding_params,
    paper_rho,
    total_params,
)

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
