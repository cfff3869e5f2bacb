"""Memory per GPU of a training job, term by term, before launch (no torch needed).

Training is Lightning's bf16-mixed with AdamW: fp32 master weights, gradients and Adam
moments, matmuls and attention in bf16 under autocast. With P = total_params (N plus
the tied embedding), bytes per GPU:

============================  =====================  ===================================
                              DDP                    FSDP, one unit per block, w GPUs
============================  =====================  ===================================
fp32 weights                  4 P                    4 P / w
fp32 gradients                4 P (*)                4 P / w
AdamW m and v, fp32           8 P                    8 P / w
bf16 weights in use           2 P_mm (autocast's     4 (P_root + 2 P_block): the root
                              casts of the P_mm      unit (embedding, final norm; kept
                              matmul weights, kept   gathered from forward to backward)
                              by the graph)          and two blocks (computing and
                                                     prefetched), bf16 weights and grads
============================  =====================  ===================================

(*) with ``gradient_as_bucket_view``: DDP's all-reduce buckets are the gradients. FSDP
gathers in bf16 (its mixed precision), so its forward casts nothing.

Activations (what autograd saves, per token; B = micro-batch, T = context, so B T tokens
per GPU), with d = d_model, f = d_ff, H = heads, V = vocabulary. Per block:

=====================================================================  ================
fp32 input and 1/rms of the two pre-norms (fused RMSNorm; fp32 under     2 (4 d + 4)
autocast)
bf16 inputs of qkv, proj, gate_up (cast) and down                        6 d + 2 f
QK-norm: fp32 q and k and 1/rms per head                                 8 d + 8 H
flash attention: bf16 q, k, the qkv output (v is a view of it, 6 d),     12 d + 4 H
its output, fp32 log-sum-exp per head
SwiGLU: gate_up output (silu's and the product's input), silu(gate)      6 f
=====================================================================  ================

so 34 d + 8 f + 12 H + 8 per block (RoPE keeps only its tables). With activation
checkpointing each block keeps its input alone: r d, r = 4 under DDP (fp32 weights make
an fp32 residual stream) and 2 under FSDP (bf16). Outside the blocks: the logits, kept
by the chunked loss (2 V), the final norm (4 d + 4) and the lm head's bf16 input (2 d),
token ids, targets and mask (17); a student adds its teacher's logits and mask (2 V + 1).
This is exact, not fitted: tests/test_memory_plan.py counts autograd's saved tensors at
every paper size (kdlab/models/activation_count.py) and finds these bytes. It assumes the
loss checkpoints its chunks, as it does once a micro-batch holds more than one chunk
(2^23 / V tokens: 256 at V = 32768); a byte-level model's loss keeps more.

Short-lived peaks, estimated (not in the count): backward through the readout holds the
logits' gradient before and after the 1/m scaling (4 V per token); checkpointing
recomputes one block at a time (one block's activations); a student's teacher runs one
layer at a time without grad (at most one of its blocks' activations). AdamW's step comes
after the activations are freed and needs a 4-byte copy of the local parameters (its
foreach square root of v). The teacher is bf16 and whole on every GPU (2 P_T; see
kdlab/modules/distill.py for why it is not sharded).
"""

from __future__ import annotations

import dataclasses

from kdlab.models.ladder import ModelShape, non_embedding_params, total_params

BF16, FP32 = 2, 4
STRATEGIES = ("ddp", "fsdp")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one job is spread over GPUs."""

    strategy: str  # "ddp" or "fsdp" (one FSDP unit per transformer block)
    checkpointing: bool  # activation checkpointing per block (FSDP only)
    nodes: int
    gpus_per_node: int
    micro_batch: int  # sequences per GPU per forward
    accumulate: int  # forwards per optimizer step

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, not {self.strategy!r}")
        if self.checkpointing and self.strategy != "fsdp":
            raise ValueError("activation checkpointing comes with the FSDP strategy only")

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step."""
        return self.micro_batch * self.gpus * self.accumulate

    def describe(self) -> str:
        name = self.strategy + ("+ckpt" if self.checkpointing else "")
        return f"{name} {self.nodes}x{self.gpus_per_node} mb{self.micro_batch} x{self.accumulate}"


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU; ``total`` is the peak."""

    weights: float  # fp32 master weights (this GPU's shard under FSDP)
    gradients: float
    optimizer: float
    teacher: float
    in_use: float  # autocast's bf16 weight casts (DDP) or FSDP's gathered units
    activations: float
    transient: float  # the largest short-lived peak during forward and backward
    step: float  # AdamW's temporary at the optimizer step

    @property
    def persistent(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.teacher

    @property
    def total(self) -> float:
        return self.persistent + max(self.in_use + self.activations + self.transient, self.step)


def block_params(shape: ModelShape) -> int:
    """Parameters of one transformer block (an FSDP unit)."""
    return (non_embedding_params(shape) - shape.d_model) // shape.n_layer


def matmul_params(shape: ModelShape) -> int:
    """Weights of matmuls (every linear layer and the tied lm head): what autocast casts."""
    d, d_attn = shape.d_model, shape.n_head * shape.head_dim
    per_block = 3 * d * d_attn + d_attn * d + 3 * d * shape.d_ff
    return shape.n_layer * per_block + shape.vocab_size * d


def block_activation_bytes(shape: ModelShape) -> int:
    """Bytes autograd saves per token in one block without checkpointing (table above)."""
    d, f, heads = shape.d_model, shape.d_ff, shape.n_head
    return 34 * d + 8 * f + 12 * heads + 8


def activation_bytes(
    shape: ModelShape,
    tokens: int,
    *,
    checkpointing: bool,
    residual_bytes: int,
    distill: bool,
) -> float:
    """Bytes autograd saves in one forward of ``tokens`` tokens (table above)."""
    d, vocab = shape.d_model, shape.vocab_size
    per_block = residual_bytes * d if checkpointing else block_activation_bytes(shape)
    outside = 2 * vocab + 6 * d + 4 + 17 + ((2 * vocab + 1) if distill else 0)
    return float(tokens * (shape.n_layer * per_block + outside))


def memory_per_gpu(
    shape: ModelShape, layout: Layout, teacher: ModelShape | None = None
) -> MemoryEstimate:
    """Peak bytes on one GPU for training ``shape`` spread as ``layout`` (table above)."""
    params = total_params(shape)
    fsdp = layout.strategy == "fsdp"
    shards = layout.gpus if fsdp else 1
    tokens = layout.micro_batch * shape.n_ctx
    if fsdp:
        root = shape.vocab_size * shape.d_model + shape.d_model
        in_use = 2 * BF16 * (root + 2 * block_params(shape))
    elif layout.checkpointing:
        in_use = BF16 * shape.vocab_size * shape.d_model  # the lm head's cast, outside blocks
    else:
        in_use = BF16 * matmul_params(shape)
    transients = [tokens * 2 * BF16 * shape.vocab_size]  # the readout's backward
    if layout.checkpointing:
        transients.append(tokens * block_activation_bytes(shape))
    if teacher is not None:
        transients.append(tokens * block_activation_bytes(teacher))
    return MemoryEstimate(
        weights=FP32 * params / shards,
        gradients=FP32 * params / shards,
        optimizer=2 * FP32 * params / shards,
        teacher=BF16 * total_params(teacher) if teacher is not None else 0.0,
        in_use=float(in_use),
        activations=activation_bytes(
            shape,
            tokens,
            checkpointing=layout.checkpointing,
            residual_bytes=BF16 if fsdp else FP32,
            distill=teacher is not None,
        ),
        transient=float(max(transients)),
        step=FP32 * params / shards,
    )
