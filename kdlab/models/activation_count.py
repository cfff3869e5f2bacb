"""The exact count the activation estimate is checked against: what autograd keeps.

Activation memory is what the backward pass needs: every tensor autograd saves during
the forward, alive until its backward runs. :func:`count_saved_bytes` runs kdlab's GPT and
its training loss forward at a given shape inside ``saved_tensors_hooks`` and adds up
the bytes of every distinct storage saved, then runs the backward. The tensors are fake
(meta storage, no data), so a 12.6B model at 4096 tokens costs seconds and no memory.

Three things make the fake run behave as the paper's GPU run, where it would not by itself:

* bf16 autocast. Autocast does not act on meta tensors, so :class:`_CudaAutocast` applies
  CUDA's policy to the ops the model uses: linear and attention compute in bf16 (their
  inputs are cast and the casts are what autograd saves), RMSNorm and (log-)softmax in
  fp32. A parameter's bf16 cast is counted apart (``weight_casts``): autocast caches it
  through the forward, so it is real memory, but it scales with N, not with tokens.
* Fused RMSNorm. CUDA builds compute ``rms_norm`` with ``_fused_rms_norm``, whose backward
  (torch's derivatives.yaml) keeps the input and 1/rms; CPU builds decompose it and keep
  more. :class:`_FusedRMSNorm` keeps what the CUDA kernel keeps.
* Attention. SDPA on CPU tensors picks the flash kernel, which keeps q, k, v, the output
  and the log-sum-exp, as CUDA's flash kernel does; no [T, T] matrix is kept.

``params_dtype`` is float32 for DDP (fp32 weights under autocast: the residual stream
is fp32 and weights are cast per matmul) and bfloat16 for FSDP (its mixed-precision
gathers bf16 weights: the residual stream is bf16 and nothing is cast).
``checkpointing`` wraps every block as kdlab's FSDP strategy does (kdlab/parallel.py),
so only block inputs stay saved. A student adds the frozen teacher's forward (no grad)
and the distillation loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode

from kdlab.losses import combined_student_loss
from kdlab.models.gpt import GPT
from kdlab.models.ladder import ModelShape

_BF16_OPS = {F.linear, F.scaled_dot_product_attention}
_FP32_OPS = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, Tensor.log_softmax}


@dataclasses.dataclass(frozen=True)
class SavedBytes:
    """Bytes autograd holds at the end of the forward, on one device."""

    activations: int  # storages that are neither parameters, buffers nor their casts
    weight_casts: int  # bf16 copies of fp32 parameters that autocast made and autograd kept
    tokens: int  # micro_batch * n_ctx


class _FusedRMSNorm(torch.autograd.Function):
    """RMSNorm that keeps what CUDA's ``_fused_rms_norm`` keeps: input, weight and 1/rms."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return x * rstd * weight

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        x, weight, rstd = ctx.saved_tensors
        normed = x * rstd
        grad_normed = grad * weight
        grad_x = rstd * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))
        grad_w = (grad * normed).reshape(-1, normed.shape[-1]).sum(0)
        return grad_x, grad_w, None


class _CudaAutocast(TorchFunctionMode):
    """CUDA's bf16 autocast policy for the ops of kdlab's GPT, on tensors of any device.

    The bf16 casts of parameters are recorded (by storage) in ``weight_casts``.
    """

    def __init__(self, weight_casts: dict[int, Tensor]) -> None:
        super().__init__()
        self.weight_casts = weight_casts

    def _cast(self, value: Any, dtype: torch.dtype) -> Any:
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.dtype == dtype:
            return value
        cast = value.to(dtype)
        if isinstance(value, nn.Parameter):  # held, so no later storage reuses its address
            self.weight_casts[_storage(cast)] = cast
        return cast

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in (Tensor.float, Tensor.to) and isinstance(args[0], nn.Parameter):
            cast = func(*args, **kwargs)  # the model's own cast of a weight (RMSNorm's gain)
            if cast is not args[0]:
                self.weight_casts[_storage(cast)] = cast
            return cast
        if func in (F.rms_norm, torch.rms_norm):
            x, _, weight, eps = (*args, *kwargs.values())[:4]
            return _FusedRMSNorm.apply(
                self._cast(x, torch.float32), self._cast(weight, torch.float32), eps
            )
        dtype = (
            torch.bfloat16 if func in _BF16_OPS else torch.float32 if func in _FP32_OPS else None
        )
        if dtype is not None:
            args = tuple(self._cast(a, dtype) for a in args)
            kwargs = {k: self._cast(v, dtype) for k, v in kwargs.items()}
        return func(*args, **kwargs)


class _InAutocast(nn.Module):
    """A block that enters the policy itself, so a checkpointed block recomputes under it
    in the backward (function modes are not carried into autograd's recomputation)."""

    def __init__(self, block: nn.Module, weight_casts: dict[int, Tensor]) -> None:
        super().__init__()
        self.block, self.weight_casts = block, weight_casts

    def forward(self, *args: Tensor) -> Tensor:
        with _CudaAutocast(self.weight_casts):
            return self.block(*args)


def _storage(t: Tensor) -> int:
    """Identity of a tensor's storage: views of one tensor share it."""
    return t.untyped_storage()._cdata


def _build(shape: ModelShape, dtype: torch.dtype) -> GPT:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return GPT(shape)
    finally:
        torch.set_default_dtype(previous)


def count_saved_bytes(
    shape: ModelShape,
    micro_batch: int,
    *,
    params_dtype: torch.dtype = torch.bfloat16,
    checkpointing: bool = False,
    teacher_shape: ModelShape | None = None,
) -> SavedBytes:
    """Bytes of the distinct storages autograd saves in one training forward (see above)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    saved: dict[int, Tensor] = {}  # storage -> a tensor on it (held: addresses stay unique)

    def pack(t: Tensor) -> Tensor:
        saved.setdefault(_storage(t), t)
        return t

    weight_casts: dict[int, Tensor] = {}
    with FakeTensorMode():
        model = _build(shape, params_dtype)
        teacher = _build(teacher_shape, params_dtype).eval() if teacher_shape else None
        fixed = {
            _storage(t) for m in (model, teacher) if m for t in (*m.parameters(), *m.buffers())
        }
        blocks = [_InAutocast(b, weight_casts) for b in model.blocks]
        if checkpointing:  # as kdlab.parallel.build_gpt wraps them
            blocks = [checkpoint_wrapper(b) for b in blocks]
        model.blocks = nn.ModuleList(blocks)
        idx = torch.zeros(micro_batch, shape.n_ctx, dtype=torch.long)
        targets = torch.zeros_like(idx)  # a batch's own tensor in training, as x is
        with _CudaAutocast(weight_casts):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                logits = model(idx)
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(idx)
                    out = combined_student_loss(logits, targets, teacher_logits, kd_weight=1.0)
                else:
                    out = combined_student_loss(logits, targets, kd_weight=0.0)
            nbytes = {k: t.untyped_storage().nbytes() for k, t in saved.items()}
            casts = sum(n for k, n in nbytes.items() if k in weight_casts)
            acts = sum(n for k, n in nbytes.items() if k not in fixed and k not in weight_casts)
            out.loss.backward()  # the graph is whole (and checkpointed blocks recompute)
    return SavedBytes(activations=acts, weight_casts=casts, tokens=micro_batch * shape.n_ctx)
