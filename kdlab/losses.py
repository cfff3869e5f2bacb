"""Student losses for distillation scaling-law runs (the paper's student loss and ablations).

The student objective of Busbridge et al. (2025) is

    L = (1 - lambda) * L_NTP + lambda * L_KD + lambda_Z * L_Z

with L_NTP the next-token cross-entropy against the data, L_KD a divergence between the
temperature-scaled teacher and student distributions, and L_Z = logsumexp(z)^2 the z-loss.
All scaling runs use lambda = 1, tau = 1 and forward KL; the other divergences, teacher
truncation, hard targets and TAID exist for the ablations.

Conventions used throughout:

* Every loss function returns a *sum over valid tokens* (targets != -100), never a mean,
  so that the caller can divide once by the number of valid tokens in the whole
  gradient-accumulation window (a per-micro-batch mean would weight short batches up).
* Arithmetic is fp32 whatever the logits' dtype (bf16 log-softmax loses ~3 digits).
* Work is done ``chunk_tokens`` rows at a time, and each chunk is wrapped in activation
  checkpointing when a gradient is needed, so autograd keeps only the (already existing)
  input logits alive, never [N, V] fp32 temporaries. Peak extra memory is a handful of
  [chunk, V] fp32 tensors (tens of MB by default), recomputed chunk by chunk in backward.

References for the divergence conventions:

* Forward KL and L_KD: Busbridge et al., "Distillation Scaling Laws", ICML 2025
  (arXiv:2502.08606), section 5 / App. G.4 (top-k, top-p truncation).
* Generalized JSD: Agarwal et al., "On-Policy Distillation of Language Models: Learning from
  Self-Generated Mistakes" (GKD), ICLR 2024, arXiv:2306.13649, Eq. (1):
  JSD(beta)(P||Q) = beta KL(P || beta P + (1-beta) Q) + (1-beta) KL(Q || beta P + (1-beta) Q)
  with P = teacher, Q = student. Same convention as huggingface/trl PR #3043 and
  linkedin/Liger-Kernel PR #290. Note it tends to 0 (not to a KL) as beta -> 0 or 1.
* Skew KL / skew reverse KL: Ko et al., "DistiLLM: Towards Streamlined Distillation for
  Large Language Models", ICML 2024, arXiv:2402.03898; official code jongwooko/distillm
  ``distillm/losses.py`` (skewed_forward_kl, skewed_reverse_kl, default lam = 0.1):
  SKL = KL(p_T || a p_T + (1-a) p_S),  SRKL = KL(p_S || a p_S + (1-a) p_T).
* TAID: Shing et al., "TAID: Temporally Adaptive Interpolated Distillation for Efficient
  Knowledge Transfer in Language Models", ICLR 2025, arXiv:2501.16937; official code
  SakanaAI/TAID ``src/distil_losses/taid.py`` (schedule rule in :class:`TAIDSchedule`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100

DIVERGENCES = (
    "forward_kl",
    "reverse_kl",
    "jsd",
    "skew_kl",
    "skew_reverse_kl",
    "tv",
    "taid",
)

# fp32 elements per [chunk, V] temporary: 2**23 floats = 32 MiB (256 tokens at V = 32768).
DEFAULT_CHUNK_ELEMENTS = 2**23


class LossSums(NamedTuple):
    """Sums over valid tokens of one micro-batch (divide by a token count yourself)."""

    ce_sum: Tensor  # sum of -log softmax(z)[target], fp32 scalar
    z_sum: Tensor  # sum of logsumexp(z)^2, fp32 scalar
    n_tokens: Tensor  # number of valid targets, int64 scalar


class SparseTeacher(NamedTuple):
    """A teacher's k most likely next tokens per position, as a logit cache stores them.

    ``log_probs`` are log-probabilities at tau = 1 under the full vocabulary, sorted
    descending along the last axis; ``log_rest`` is the log of the mass outside the k.
    Renormalised over the k they are exactly the online teacher truncated to its top k,
    at any temperature (log p_i / tau differs from z_i / tau by a constant per row).
    """

    log_probs: Tensor  # [..., k], any float dtype (16-bit in a cache)
    indices: Tensor  # [..., k], integer token ids
    log_rest: Tensor  # [...], log(1 - sum of the k probabilities)
    target_log_prob: Tensor | None = None  # [...], log p_T(the realised next token)


# What the distillation losses accept as the teacher: dense logits or a sparse top k.
TeacherSignal = Tensor | SparseTeacher


class StudentLoss(NamedTuple):
    """Output of :func:`combined_student_loss`: the loss to backprop plus its parts (sums)."""

    loss: Tensor  # ((1-lam) ce_sum + lam kd_sum + lam_z z_sum) / normalizer
    ce_sum: Tensor  # NTP cross-entropy sum (the scaling-law metric), attached to the graph
    kd_sum: Tensor  # distillation-divergence sum (0 when lambda = 0 / no teacher)
    z_sum: Tensor  # z-loss sum
    n_tokens: Tensor  # valid tokens in this micro-batch


# --------------------------------------------------------------------------------------
# Chunking machinery
# --------------------------------------------------------------------------------------


def default_chunk_tokens(vocab_size: int) -> int:
    """Rows per chunk so that one [chunk, V] fp32 temporary is ~32 MiB."""
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, vocab_size))


def _chunked_sums(
    fn: Callable[..., tuple[Tensor, ...]],
    tensors: tuple[Tensor, ...],
    chunk_tokens: int,
    n_out: int,
) -> tuple[Tensor, ...]:
    """Sum the ``n_out`` scalars returned by ``fn`` over row-chunks of ``tensors``.

    When any input needs a gradient each chunk is checkpointed: only the input slices
    (views, no copies) are saved, and the fp32 temporaries are recomputed in backward
    one chunk at a time. Without it autograd would keep every chunk's temporaries
    alive, i.e. several fp32 copies of the full logits.
    """
    n_rows = tensors[0].shape[0]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    # Zero that stays attached to the graph, so an all-empty batch still backprops.
    totals = [_upcast(tensors[0].reshape(-1)[:0]).sum() for _ in range(n_out)]
    for start in range(0, n_rows, chunk_tokens):
        # one chunk: pass the tensors whole; a slice, even a full one, makes autograd
        # zero-fill and copy a whole [N, V] gradient in backward (slice_backward)
        parts = (
            tensors
            if n_rows <= chunk_tokens
            else tuple(t[start : start + chunk_tokens] for t in tensors)
        )
        if needs_grad and n_rows > chunk_tokens:
            # fn uses no RNG: skip the per-chunk RNG-state save (a host sync on CUDA)
            out = checkpoint(fn, *parts, use_reentrant=False, preserve_rng_state=False)
        else:
            out = fn(*parts)
        totals = [a + b for a, b in zip(totals, out, strict=True)]
    return tuple(totals)


def _upcast(x: Tensor) -> Tensor:
    """fp32 for half-precision inputs; float64 inputs are kept (exact tests)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _flatten(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """[B, T, V], [B, T] -> [N, V], [N] (views when contiguous)."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} vs targets {tuple(targets.shape)}")
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)


# --------------------------------------------------------------------------------------
# Next-token prediction and z-loss
# --------------------------------------------------------------------------------------


def next_token_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    chunk_tokens: int | None = None,
) -> LossSums:
    """Sums over valid tokens of CE(logits, targets) and of z = logsumexp(logits)^2.

    ``targets`` must already be aligned with ``logits`` (targets[b, t] is the token that
    logits[b, t] predicts). CE is -log_softmax(z)[target] and the z-loss's logsumexp is
    z[target] + CE (exact), in fp32: log_softmax is one fused kernel forward and
    backward, where torch.logsumexp is a chain of elementwise ops (~4x slower on CPU).
    """
    flat, tgt = _flatten(logits, targets)
    mask = tgt != ignore_index
    chunk = chunk_tokens or default_chunk_tokens(flat.shape[-1])

    def fn(z: Tensor, y: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        z = _upcast(z)
        idx = y.clamp_min(0).unsqueeze(-1)
        ce_rows = -torch.log_softmax(z, dim=-1).gather(-1, idx).squeeze(-1)  # [c]
        lse = z.gather(-1, idx).squeeze(-1) + ce_rows  # logsumexp(z)
        ce = torch.where(m, ce_rows, 0.0).sum()
        zl = torch.where(m, lse.square(), 0.0).sum()
        return ce, zl

    ce_sum, z_sum = _chunked_sums(fn, (flat, tgt, mask), chunk, n_out=2)
    return LossSums(ce_sum, z_sum, mask.sum())


# --------------------------------------------------------------------------------------
# Distillation divergences (all on log-probabilities, per row, fp32)
# --------------------------------------------------------------------------------------


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row: sum_a p_a (log p_a - log q_a), with 0 log 0 = 0."""
    p = log_p.exp()
    diff = torch.where(p > 0, log_p - log_q, 0.0)
    return (p * diff).sum(-1)


def _log_mix(log_p: Tensor, log_q: Tensor, w: float) -> Tensor:
    """log(w p + (1 - w) q), computed stably in log space."""
    log_w = math.log(w) if w > 0 else -math.inf
    log_1mw = math.log1p(-w) if w < 1 else -math.inf
    return torch.logaddexp(log_p + log_w, log_q + log_1mw)


def truncate_teacher(log_p: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Keep the teacher's top-k and/or nucleus (top-p) tokens and renormalise.

    Dropped tokens get log-probability -inf. Top-k is applied first, then top-p on the
    renormalised top-k distribution. Top-p keeps the smallest prefix of the sorted
    distribution whose mass reaches ``top_p`` (the top-1 token is always kept).
    """
    if top_k is not None and top_k < log_p.shape[-1]:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        idx = log_p.topk(top_k, dim=-1).indices
        keep = torch.zeros_like(log_p, dtype=torch.bool).scatter_(-1, idx, True)
        log_p = torch.where(keep, log_p, -math.inf)
        log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
    if top_p is not None and top_p < 1.0:
        if not 0.0 < top_p:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_lp, order = log_p.sort(dim=-1, descending=True)
        probs = sorted_lp.exp()
        mass_before = probs.cumsum(-1) - probs  # mass strictly above each token
        keep_sorted = mass_before < top_p
        keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
        log_p = torch.where(keep, log_p, -math.inf)
        log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
    return log_p


def divergence_rows(
    log_ps: Tensor,
    log_pt: Tensor,
    divergence: str,
    *,
    beta: float = 0.5,
    alpha: float = 0.1,
    taid_t: float | None = None,
) -> Tensor:
    """Per-row divergence between student (log_ps) and teacher (log_pt) log-probabilities.

    Both are log-softmaxes at temperature tau; the teacher may be truncated (-inf).
    """
    if divergence == "forward_kl":  # KL(p_T || p_S): the paper's L_KD minus H(p_T)
        return _kl_rows(log_pt, log_ps)
    if divergence == "reverse_kl":  # KL(p_S || p_T): mode seeking
        return _kl_rows(log_ps, log_pt)
    if divergence == "jsd":  # GKD Eq. (1), m = beta p_T + (1 - beta) p_S
        log_m = _log_mix(log_pt, log_ps, beta)
        return beta * _kl_rows(log_pt, log_m) + (1.0 - beta) * _kl_rows(log_ps, log_m)
    if divergence == "skew_kl":  # DistiLLM SKL: KL(p_T || alpha p_T + (1 - alpha) p_S)
        return _kl_rows(log_pt, _log_mix(log_pt, log_ps, alpha))
    if divergence == "skew_reverse_kl":  # DistiLLM SRKL: KL(p_S || alpha p_S + (1-alpha) p_T)
        return _kl_rows(log_ps, _log_mix(log_ps, log_pt, alpha))
    if divergence == "tv":  # total variation: 0.5 sum |p_T - p_S|
        return 0.5 * (log_pt.exp() - log_ps.exp()).abs().sum(-1)
    if divergence == "taid":
        # TAID target p_t = softmax((1 - t) sg(z_S) + t z_T); log-softmax inputs are
        # shift-equivalent to logits, and -inf (truncated teacher) stays excluded.
        if taid_t is None:
            raise ValueError("divergence='taid' needs taid_t (use TAIDSchedule.t)")
        mix = (1.0 - taid_t) * log_ps.detach() + taid_t * log_pt
        mix = torch.where(torch.isfinite(log_pt), mix, -math.inf)
        return _kl_rows(torch.log_softmax(mix, dim=-1), log_ps)
    raise ValueError(f"unknown divergence {divergence!r}; expected one of {DIVERGENCES}")


def check_distill_options(
    divergence: str,
    tau: float,
    beta: float = 0.5,
    alpha: float = 0.1,
    hard: bool = False,
    top_k: int | None = None,
    top_p: float | None = None,
) -> None:
    """Raise ValueError for settings no distillation loss exists for.

    ``distill_loss`` checks them at every call; a run checks them while it is planned, so
    that a typo costs no compute and records no run.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; expected one of {DIVERGENCES}")
    if not tau > 0 or not math.isfinite(tau):
        raise ValueError(f"tau must be a positive number, got {tau}")
    if divergence == "jsd" and not 0.0 < beta < 1.0:
        raise ValueError(f"jsd needs 0 < beta < 1 (it vanishes at the ends), got {beta}")
    if divergence in ("skew_kl", "skew_reverse_kl") and not 0.0 <= alpha < 1.0:
        raise ValueError(f"skew divergences need 0 <= alpha < 1, got {alpha}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    truncated = top_k is not None or (top_p is not None and top_p < 1.0)
    if (
        truncated
        and not hard
        and (divergence == "reverse_kl" or (divergence == "skew_reverse_kl" and alpha == 0.0))
    ):
        raise ValueError(f"{divergence} against a truncated teacher is infinite")


def distill_loss(
    student_logits: Tensor,
    teacher_logits: TeacherSignal,
    targets: Tensor,
    *,
    divergence: str = "forward_kl",
    tau: float = 1.0,
    tau_squared: bool = True,
    top_k: int | None = None,
    top_p: float | None = None,
    beta: float = 0.5,
    alpha: float = 0.1,
    hard: bool = False,
    taid_t: float | None = None,
    ignore_index: int = IGNORE_INDEX,
    chunk_tokens: int | None = None,
) -> Tensor:
    """Sum over valid tokens of the distillation loss (fp32 scalar).

    ``targets`` only provides the mask (!= ignore_index). Distributions are
    p_T = softmax(z_T / tau) (optionally top-k / top-p truncated and renormalised) and
    p_S = softmax(z_S / tau); the divergence is scaled by tau^2 when ``tau_squared`` so
    gradient magnitudes do not shrink as 1/tau^2 (Hinton et al. 2015).
    ``hard=True`` replaces the divergence by CE of the student on argmax z_T.
    ``teacher_logits`` never receives a gradient. A :class:`SparseTeacher` (a logit
    cache's top k) is the teacher truncated to those k tokens, so it gives the online
    teacher's loss at ``top_k = k``; ``top_k`` and ``top_p`` may truncate it further.
    """
    check_distill_options(divergence, tau, beta, alpha, hard, top_k, top_p)
    if divergence == "taid" and not hard and (taid_t is None or not 0.0 <= taid_t <= 1.0):
        raise ValueError(f"taid needs taid_t in [0, 1], got {taid_t}")
    s_flat, tgt = _flatten(student_logits, targets)
    teacher = _flat_teacher(teacher_logits, student_logits.shape)
    mask = tgt != ignore_index
    chunk = chunk_tokens or default_chunk_tokens(s_flat.shape[-1])
    scale = tau**2 if tau_squared else 1.0
    inv_tau = 1.0 / tau

    # a sparse teacher's forward KL needs the student only at its k tokens (no dense
    # [N, V] teacher): sum_k p_k (log p_k - log q_k), the same value and gradient
    sparse_kl = (
        len(teacher) == 2
        and divergence == "forward_kl"
        and (top_k is None or top_k >= teacher[0].shape[-1])
        and (top_p is None or top_p >= 1.0)
    )

    def fn(zs: Tensor, m: Tensor, *zt: Tensor) -> tuple[Tensor]:
        zs = _upcast(zs)
        if sparse_kl and not hard:
            log_ps = torch.log_softmax(zs * inv_tau, dim=-1).gather(-1, zt[1])
            log_pt = torch.log_softmax(_upcast(zt[0]) * inv_tau, dim=-1)
            rows = _kl_rows(log_pt, log_ps)
        elif hard:  # student CE on the teacher's top-1 token (argmax is tau-invariant)
            lse = torch.logsumexp(zs * inv_tau, dim=-1)
            z_top = zs.gather(-1, _teacher_argmax(zt).unsqueeze(-1)).squeeze(-1) * inv_tau
            rows = lse - z_top
        else:
            log_ps = torch.log_softmax(zs * inv_tau, dim=-1)
            log_pt = truncate_teacher(_teacher_log_probs(zt, zs.shape[-1], inv_tau), top_k, top_p)
            rows = divergence_rows(
                log_ps, log_pt, divergence, beta=beta, alpha=alpha, taid_t=taid_t
            )
        return (torch.where(m, rows, 0.0).sum(),)

    (total,) = _chunked_sums(fn, (s_flat, mask, *teacher), chunk, n_out=1)
    return scale * total


@torch.no_grad()
def sparse_teacher(logits: Tensor, k: int, targets: Tensor | None = None) -> SparseTeacher:
    """The top ``k`` of a teacher's logits as a logit cache stores them (fp32).

    The mass outside the k is the logsumexp of the other log-probabilities, exact where
    log(1 - sum p_k) would cancel; ``targets`` (ids, any negative one ignored) adds the
    log-probability of each realised next token, the teacher's own loss L_T.
    """
    log_p = torch.log_softmax(_upcast(logits), dim=-1)
    if not 1 <= k <= log_p.shape[-1]:
        raise ValueError(f"k must be in [1, {log_p.shape[-1]}], got {k}")
    top = log_p.topk(k, dim=-1)  # sorted, most likely first
    rest = log_p.scatter(-1, top.indices, -math.inf).logsumexp(-1)
    target = None
    if targets is not None:
        target = log_p.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return SparseTeacher(top.values, top.indices, rest, target)


def _flat_teacher(teacher: TeacherSignal, student_shape: torch.Size) -> tuple[Tensor, ...]:
    """The teacher's tensors as rows, detached: (logits,) or (log_probs, indices)."""
    if isinstance(teacher, SparseTeacher):
        if teacher.log_probs.shape[:-1] != student_shape[:-1]:
            raise ValueError(
                f"student {tuple(student_shape)} vs sparse teacher {tuple(teacher.log_probs.shape)}"
            )
        k = teacher.log_probs.shape[-1]
        return (
            teacher.log_probs.detach().reshape(-1, k),
            teacher.indices.reshape(-1, k).long(),
        )
    if teacher.shape != student_shape:
        raise ValueError(f"student {tuple(student_shape)} vs teacher {tuple(teacher.shape)}")
    return (teacher.detach().reshape(-1, teacher.shape[-1]),)


def _teacher_log_probs(zt: tuple[Tensor, ...], vocab_size: int, inv_tau: float) -> Tensor:
    """Rows of log softmax(z_T / tau) over the vocabulary; a sparse teacher's k tokens
    renormalised at tau, -inf elsewhere (the online teacher truncated to its top k)."""
    if len(zt) == 1:
        return torch.log_softmax(_upcast(zt[0]) * inv_tau, dim=-1)
    log_probs, indices = zt
    kept = torch.log_softmax(_upcast(log_probs) * inv_tau, dim=-1)
    dense = kept.new_full((kept.shape[0], vocab_size), -math.inf)
    return dense.scatter_(-1, indices, kept)


def _teacher_argmax(zt: tuple[Tensor, ...]) -> Tensor:
    """The teacher's most likely token per row (a sparse teacher's first index)."""
    return zt[0].argmax(-1) if len(zt) == 1 else zt[1][:, 0]


# --------------------------------------------------------------------------------------
# The student objective
# --------------------------------------------------------------------------------------


def combined_student_loss(
    student_logits: Tensor,
    targets: Tensor,
    teacher_logits: TeacherSignal | None = None,
    *,
    kd_weight: float = 1.0,
    z_loss_weight: float = 1e-4,
    normalizer: float | Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    chunk_tokens: int | None = None,
    **distill_kwargs: Any,
) -> StudentLoss:
    """(1 - lambda) L_NTP + lambda L_KD + lambda_Z L_Z, normalised per token.

    ``kd_weight`` is lambda (1.0 for all scaling runs), ``z_loss_weight`` is lambda_Z.
    ``normalizer`` should be the number of valid target tokens over the whole
    gradient-accumulation window (default: this micro-batch's count), so that every
    token weighs the same however the window is split. ``distill_kwargs`` go to
    :func:`distill_loss` (divergence, tau, top_k, top_p, beta, alpha, hard, taid_t, ...).
    With kd_weight = 0 (supervised baseline) the teacher is not needed.

    Lightning's automatic optimisation divides the returned loss by
    ``accumulate_grad_batches``; with a window-wide normaliser pass
    ``normalizer = window_tokens / accumulate_grad_batches`` to undo that.
    """
    if not 0.0 <= kd_weight <= 1.0:
        raise ValueError(f"kd_weight (lambda) must be in [0, 1], got {kd_weight}")
    sums = next_token_loss(
        student_logits, targets, ignore_index=ignore_index, chunk_tokens=chunk_tokens
    )
    if kd_weight > 0.0:
        if teacher_logits is None:
            raise ValueError("kd_weight > 0 needs teacher_logits")
        kd_sum = distill_loss(
            student_logits,
            teacher_logits,
            targets,
            ignore_index=ignore_index,
            chunk_tokens=chunk_tokens,
            **distill_kwargs,
        )
    else:
        kd_sum = torch.zeros((), device=student_logits.device, dtype=torch.float32)
    if normalizer is None:
        normalizer = sums.n_tokens.clamp_min(1)
    total = (1.0 - kd_weight) * sums.ce_sum + kd_weight * kd_sum + z_loss_weight * sums.z_sum
    return StudentLoss(total / normalizer, sums.ce_sum, kd_sum, sums.z_sum, sums.n_tokens)


# --------------------------------------------------------------------------------------
# TAID schedule
# --------------------------------------------------------------------------------------


class TAIDSchedule:
    """Interpolation coefficient t of TAID and its adaptive update.

    Rule (Shing et al. 2025, Alg. 1; SakanaAI/TAID ``src/distil_losses/taid.py``), applied
    once per training step n with J_n the current TAID distillation loss:

        delta_n = (J_{n-1} - J_n) / (J_{n-1} + 1e-15)       relative improvement
        m_n     = beta m_{n-1} + (1 - beta) delta_n          momentum
        t_lin   = t_start + (t_end - t_start) * progress     linear floor
        t_{n+1} = min(t_end, max(t_lin, t_n + alpha sigmoid(m_n) (1 - t_n)))

    The first call only records J_0. Defaults are the official ones (t_start 0.4,
    t_end 1.0, alpha 5e-4, beta 0.99). ``adaptive=False`` gives the pure linear schedule.
    The schedule only moves when :meth:`update` is called: call it from the training step,
    never from validation.
    """

    def __init__(
        self,
        t_start: float = 0.4,
        t_end: float = 1.0,
        alpha: float = 5e-4,
        beta: float = 0.99,
        adaptive: bool = True,
    ) -> None:
        if not (0.0 <= t_start < 1.0 and 0.0 < t_end <= 1.0 and t_start <= t_end):
            raise ValueError(f"need 0 <= t_start <= t_end <= 1, got {t_start}, {t_end}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.t_start = t_start
        self.t_end = t_end
        self.alpha = alpha
        self.beta = beta
        self.adaptive = adaptive
        self.t = float(t_start)
        self.prev_loss: float | None = None
        self.momentum = 0.0

    def update(self, loss_value: float | Tensor, progress: float) -> float:
        """Advance t after a training step; ``progress`` = step / total_steps in [0, 1]."""
        loss = float(loss_value)
        if self.prev_loss is None:
            self.prev_loss = loss
            return self.t
        relative_change = (self.prev_loss - loss) / (self.prev_loss + 1e-15)
        self.momentum = self.beta * self.momentum + (1.0 - self.beta) * relative_change
        progress = min(max(float(progress), 0.0), 1.0)
        t_linear = self.t_start + (self.t_end - self.t_start) * progress
        if self.adaptive:
            sigmoid_m = 1.0 / (1.0 + math.exp(-self.momentum))
            delta_t = self.alpha * sigmoid_m * (1.0 - self.t)
            self.t = min(self.t_end, max(t_linear, self.t + delta_t))
        else:
            self.t = t_linear
        self.prev_loss = loss
        return self.t

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state for a Lightning checkpoint (``on_save_checkpoint``)."""
        return {"t": self.t, "prev_loss": self.prev_loss, "momentum": self.momentum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore after resume (``on_load_checkpoint``); hyper-parameters come from config."""
        self.t = float(state["t"])
        prev = state["prev_loss"]
        self.prev_loss = None if prev is None else float(prev)
        self.momentum = float(state["momentum"])


# --------------------------------------------------------------------------------------
# Validation metrics
# --------------------------------------------------------------------------------------


@torch.no_grad()
def kl_teacher_student(
    student_logits: Tensor,
    teacher_logits: TeacherSignal,
    targets: Tensor,
    *,
    tau: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
    chunk_tokens: int | None = None,
) -> Tensor:
    """Sum over valid tokens of KL(p_T || p_S) at temperature tau (no tau^2, no grad).

    For a sparse teacher (tau = 1 only) it is the KL between the two distributions
    coarsened to the teacher's k tokens plus one bucket for the rest: what a top-k cache
    can tell, and a lower bound of the full KL (coarsening never increases a divergence).
    """
    if isinstance(teacher_logits, SparseTeacher):
        if tau != 1.0:
            raise ValueError("the KL against a sparse teacher is only defined at tau = 1")
        return _coarse_kl(student_logits, teacher_logits, targets != ignore_index)
    return distill_loss(
        student_logits,
        teacher_logits,
        targets,
        divergence="forward_kl",
        tau=tau,
        tau_squared=False,
        ignore_index=ignore_index,
        chunk_tokens=chunk_tokens,
    )


def _coarse_kl(student_logits: Tensor, teacher: SparseTeacher, mask: Tensor) -> Tensor:
    log_q = torch.log_softmax(_upcast(student_logits), dim=-1)
    log_q_k = log_q.gather(-1, teacher.indices.long())
    log_q_rest = torch.log1p(-log_q_k.exp().sum(-1).clamp_max(1.0 - 1e-7))
    log_p_k, log_r = _upcast(teacher.log_probs), _upcast(teacher.log_rest)
    rows = _kl_rows(log_p_k, log_q_k) + _kl_rows(log_r.unsqueeze(-1), log_q_rest.unsqueeze(-1))
    return torch.where(mask, rows, 0.0).sum()


def teacher_target_log_loss(
    teacher_logits: TeacherSignal, targets: Tensor, *, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor]:
    """(sum of -log p_T(target), number of valid targets): the teacher's own loss L_T."""
    if isinstance(teacher_logits, SparseTeacher):
        if teacher_logits.target_log_prob is None:
            raise ValueError("this sparse teacher does not hold its target log-probabilities")
        mask = targets != ignore_index
        rows = -_upcast(teacher_logits.target_log_prob)
        return torch.where(mask, rows, 0.0).sum(), mask.sum()
    sums = next_token_loss(teacher_logits, targets, ignore_index=ignore_index)
    return sums.ce_sum, sums.n_tokens


@torch.no_grad()
def top1_agreement(
    student_logits: Tensor,
    teacher_logits: TeacherSignal,
    targets: Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, Tensor]:
    """(number of valid tokens where argmax z_S == argmax z_T, number of valid tokens)."""
    mask = targets != ignore_index
    if isinstance(teacher_logits, SparseTeacher):
        teacher_top = teacher_logits.indices[..., 0].long()
    else:
        teacher_top = teacher_logits.argmax(-1)
    agree = (student_logits.argmax(-1) == teacher_top) & mask
    return agree.sum(), mask.sum()


@torch.no_grad()
def token_confidence_correct(
    logits: Tensor,
    targets: Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    chunk_tokens: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-label confidence max_a softmax(z)_a and correctness (argmax == target), valid only.

    These are the inputs of the expected calibration error: feed them to
    torchmetrics' ``BinaryCalibrationError`` (preds = confidences, targets = correctness).
    """
    flat, tgt = _flatten(logits, targets)
    chunk = chunk_tokens or default_chunk_tokens(flat.shape[-1])
    confs, hits = [], []
    for start in range(0, flat.shape[0], chunk):
        z = _upcast(flat[start : start + chunk])
        top, arg = z.max(-1)
        confs.append((top - torch.logsumexp(z, dim=-1)).exp())
        hits.append(arg == tgt[start : start + chunk])
    mask = tgt != ignore_index
    if not confs:
        return flat.new_zeros(0, dtype=torch.float32), mask[:0]
    return torch.cat(confs)[mask], torch.cat(hits)[mask]
