"""The decoder-only transformer of the study, in simple muP.

Architecture (the paper's): pre-norm RMSNorm blocks, multi-head causal attention
with QK-norm (RMSNorm over each head's q and k) and RoPE (base 500k), SwiGLU FFN, final
RMSNorm, input embedding tied to the output projection, no biases.

Parametrisation: "simple muP" as used by Wortsman et al. 2024, "Small-scale proxies for
large-scale Transformer training instabilities" (ICLR 2024, arXiv:2309.14322, sec. 3.2),
whose authors' nanodo code (google-deepmind/nanodo, optimizer.py) shows it concretely:
``adamw_mup`` multiplies the Adam update of every hidden "kernel" by a width multiplier
and leaves embeddings and norm scales alone, and ``independent_weight_decay`` divides the
decay by the peak lr. It is the Adam column of muP (Yang et al. 2022, "Tensor Programs V",
arXiv:2203.03466, Table 3; for a tied embedding, the mup package's MuSharedReadout).
With m = d_model / base_d_model:

1. Init: every hidden matrix W ~ N(0, 1/fan_in); the tied embedding ~ N(0, 1/base_d_model),
   a width-independent std; norm gains 1.
2. Adam learning rates: hidden matrices lr / m (Adam's update is O(lr) per entry, so a
   matrix acting on an aligned width-d input moves its output by O(lr * d): dividing by m
   keeps that step the same at every width); embedding and norm gains lr (vector-like).
3. Output logits: h @ E^T / m. The tied embedding keeps its input-layer parametrisation,
   so the readout multiplier 1/m is what muP prescribes for a shared readout; it makes
   logits unit-scale at init at the base width and keeps their updates width-independent.
4. Attention: muP asks for q.k / head_dim rather than / sqrt(head_dim) when head_dim grows
   with width. Our ladders grow the number of heads at fixed head_dim, so the two differ
   by a constant; we keep SDPA's 1/sqrt(head_dim), and QK-norm bounds the logits anyway.
5. Independent weight decay: the step applies p <- p - wd * s(t) * p, not lr * wd * s(t)
   (s = schedule multiplier; Wortsman et al. sec. 3.2, after Loshchilov & Hutter 2019).
   torch.optim.AdamW applies lr_group(t) * weight_decay_group, so each group gets
   weight_decay = wd / lr_group. Not decayed: norm gains (their scale is the signal and
   they are few); decayed: hidden matrices and the embedding.

base_d_model = 32 by default, measured: with the paper's recipe (peak lr 1e-2, wd 1e-4,
clip 1, warm-up + cosine, z-loss 1e-4), bytes of CPython's stdlib as corpus, batches of
8 x 128 tokens, base widths 16/32/64/128 gave validation losses 1.448/1.416/1.463/1.504
for micro L2 (d 64, 2M tokens, M = 20), 32/64 gave 1.237/1.282 for micro L4 (d 128, 2M
tokens) and 32/64/128/256 gave 1.615/1.626/1.741/1.813 for micro L5 (d 160, 0.4M tokens).
The same base wins at every width (muP transfer at work), and it lies inside both small
ladders. On the paper ladder it gives hidden-matrix rates of 3.1e-4 (103M) to 6.3e-5
(12.6B), unvalidated there. GPT(shape, base_d_model=shape.d_model) is the standard
parametrisation (one lr for all, no readout multiplier), for comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.models.ladder import ModelShape

NORM_EPS = 1e-6


def rope_tables(n_ctx: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * base^(-2i/head_dim), each [n_ctx, head_dim / 2]."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(n_ctx, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i + head_dim/2}) of x [B, H, T, head_dim] by their angle."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class RMSNorm(nn.RMSNorm):
    """RMSNorm computed in fp32 whatever the activations' dtype, so the mean of squares
    keeps its precision under bf16, and input and gain share a dtype, so torch's fused
    kernel runs (a bf16 input beside an fp32 gain fell back to a slower one, with a
    warning). The result comes back in the wider of input and gain: fp32 for a bf16
    activation beside an fp32 gain, as CUDA autocast returns it; bf16 in a model cast
    whole to bf16 (a teacher). In fp32 it is nn.RMSNorm exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return F.rms_norm(x.float(), self.normalized_shape, None, self.eps).to(x.dtype)
        out_dtype = torch.promote_types(x.dtype, self.weight.dtype)
        y = F.rms_norm(x.float(), self.normalized_shape, self.weight.float(), self.eps)
        return y.to(out_dtype)


class Attention(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.n_head, self.head_dim = shape.n_head, shape.head_dim
        self.qkv = nn.Linear(shape.d_model, 3 * shape.d_model, bias=False)
        self.proj = nn.Linear(shape.d_model, shape.d_model, bias=False)
        self.q_norm = RMSNorm(self.head_dim, eps=NORM_EPS)  # QK-norm, shared by heads
        self.k_norm = RMSNorm(self.head_dim, eps=NORM_EPS)

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        q = apply_rope(self.q_norm(q), cos, sin)  # [B, H, T, head_dim]
        k = apply_rope(self.k_norm(k), cos, sin)
        return q, k, v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self._qkv(x, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(head_dim)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))

    def probabilities(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The causal attention map averaged over heads, [B, T, T] (rows sum to one).

        SDPA never forms it, so it is recomputed here for the layers that ask."""
        q, k, _ = self._qkv(x, cos, sin)
        scores = q @ k.transpose(-2, -1) * self.head_dim**-0.5
        T = x.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return scores.masked_fill(~causal, -math.inf).softmax(-1).mean(1)


class SwiGLU(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.gate_up = nn.Linear(shape.d_model, 2 * shape.d_ff, bias=False)
        self.down = nn.Linear(shape.d_ff, shape.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(shape.d_model, eps=NORM_EPS)
        self.attn = Attention(shape)
        self.mlp_norm = RMSNorm(shape.d_model, eps=NORM_EPS)
        self.mlp = SwiGLU(shape)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The block's output; with ``attention``, also its head-averaged attention map,
        computed here so a sharded block (FSDP2) has its weights gathered for it."""
        normed = self.attn_norm(x)
        out = x + self.attn(normed, cos, sin)
        out = out + self.mlp(self.mlp_norm(out))
        return (out, self.attn.probabilities(normed, cos, sin)) if attention else out


class Features(NamedTuple):
    """What :meth:`GPT.features` returns."""

    logits: torch.Tensor  # [B, T, V]
    hidden: list[torch.Tensor]  # L + 1 residual-stream states [B, T, d_model]
    attention: dict[int, torch.Tensor]  # block (1-based) -> head-averaged map [B, T, T]


class GPT(nn.Module):
    """Decoder-only LM: ``forward(idx [B, T]) -> logits [B, T, V]`` (fp32 on CPU)."""

    def __init__(self, shape: ModelShape, base_d_model: int = 32) -> None:
        super().__init__()
        if base_d_model <= 0:
            raise ValueError(f"base_d_model must be positive, got {base_d_model}.")
        self.shape = shape
        self.base_d_model = base_d_model
        self.width_mult = shape.d_model / base_d_model  # m in the module docstring
        self.wte = nn.Embedding(shape.vocab_size, shape.d_model)
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.n_layer))
        self.norm_f = RMSNorm(shape.d_model, eps=NORM_EPS)
        cos, sin = rope_tables(shape.n_ctx, shape.head_dim, shape.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """muP init (rule 1): hidden N(0, 1/fan_in), embedding N(0, 1/base_d_model), gains 1."""
        for module in self.init_order():
            self.init_module(module, generator)

    def init_order(self) -> list[nn.Module]:
        """The modules in the order their weights are drawn: the embedding last, as it
        always was (the same draws as before)."""
        return [m for m in self.modules() if m is not self.wte] + [self.wte]

    @torch.no_grad()
    def init_module(self, module: nn.Module, generator: torch.Generator | None = None) -> None:
        """Rule 1 for ``module``'s own tensors, not its children's: a GPT built on the meta
        device is drawn module by module, each module's weights whole before they are
        sharded (kdlab/parallel.py). For the GPT itself, its RoPE tables, which are empty
        after that materialisation."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.in_features**-0.5, generator=generator)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)
        elif module is self.wte:
            nn.init.normal_(module.weight, std=self.base_d_model**-0.5, generator=generator)
        elif module is self:
            cos, sin = rope_tables(self.shape.n_ctx, self.shape.head_dim, self.shape.rope_base)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    def _rope(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = idx.shape[1]
        if T > self.shape.n_ctx:
            raise ValueError(f"Sequence length {T} exceeds the model context {self.shape.n_ctx}.")
        return self.rope_cos[:T], self.rope_sin[:T]

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the residual stream: final norm, then h @ E^T / m (muP rule 3)."""
        return F.linear(self.norm_f(x), self.wte.weight) / self.width_mult

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        cos, sin = self._rope(idx)
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.readout(x)

    def features(self, idx: torch.Tensor, attention_layers: Collection[int] = ()) -> Features:
        """The forward pass with what feature distillation matches (TinyBERT-style).

        A separate method, so the plain forward builds no lists: ``hidden[0]`` is the
        embedding output and ``hidden[i]`` block i's output (the residual stream before
        the final norm); ``attention[i]`` block i's head-averaged attention map, for the
        blocks in ``attention_layers`` (1-based) only.
        """
        cos, sin = self._rope(idx)
        x = self.wte(idx)
        hidden, attention = [x], {}
        for i, block in enumerate(self.blocks, start=1):
            if i in attention_layers:
                x, attention[i] = block(x, cos, sin, attention=True)
            else:
                x = block(x, cos, sin)
            hidden.append(x)
        return Features(self.readout(x), hidden, attention)

    def optimizer_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """AdamW param groups for muP learning rates (rule 2) and independent decay (rule 5).

        ``lr`` is the peak lr at the base width and ``weight_decay`` the fraction of each
        weight removed per step at the peak of the schedule. The decay stays lr-independent
        only if the scheduler scales every group's lr by the same factor, as LambdaLR does.
        """
        if lr <= 0 or not math.isfinite(lr):
            raise ValueError(f"Learning rate must be a positive number, got {lr}.")
        if weight_decay < 0:
            raise ValueError(f"Weight decay must be non-negative, got {weight_decay}.")
        # by module, not by p.ndim: the rule follows what a weight does, not its shape
        hidden = [m.weight for m in self.blocks.modules() if isinstance(m, nn.Linear)]
        norms = [m.weight for m in self.modules() if isinstance(m, nn.RMSNorm)]
        groups = [
            ("hidden", hidden, lr / self.width_mult, True),
            ("embedding", [self.wte.weight], lr, True),
            ("norms", norms, lr, False),
        ]
        assert sum(p.numel() for _, ps, _, _ in groups for p in ps) == sum(
            p.numel() for p in self.parameters()
        ), "every parameter must be in exactly one optimizer group"
        return [
            {
                "name": name,
                "params": params,
                "lr": group_lr,
                "weight_decay": weight_decay / group_lr if decay else 0.0,
            }
            for name, params, group_lr, decay in groups
        ]
