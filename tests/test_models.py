"""Model ladder, parameter and FLOP counts, and the muP transformer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from kdlab.models.flops import flops_per_token as flops_in_flops_module
from kdlab.models.flops import paper_flops_per_token
from kdlab.models.gpt import GPT, RMSNorm
from kdlab.models.ladder import (
    LADDERS,
    ModelShape,
    flops_per_token,
    get_shape,
    non_embedding_params,
    paper_rho,
    total_params,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread is as fast, and far faster on a busy machine
    (two OpenMP threads on two shared cores measured 10x slower than one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _table_value(name: str) -> float:
    return float(name[:-1]) * {"M": 1e6, "B": 1e9}[name[-1]]


def test_paper_ladder_matches_table():
    """N of every paper size is within 0.5% of the name the paper gives it (3 sig. figs)."""
    assert len(LADDERS["paper"]) == 12
    for name, shape in LADDERS["paper"].items():
        assert shape.head_dim == 128 and shape.vocab_size == 32768 and shape.n_ctx == 4096
        assert paper_rho(shape) == 128.0
        n = non_embedding_params(shape)
        assert abs(n / _table_value(name) - 1) < 0.005, (name, n)
        assert total_params(shape) == n + 32768 * shape.d_model


@pytest.mark.parametrize("ladder", ["nano", "micro"])
def test_small_ladders_fixed_aspect_and_span(ladder):
    shapes = list(LADDERS[ladder].values())
    assert [s.name for s in shapes] == [f"L{i}" for i in range(1, 7)]
    rho = {s.d_model / s.n_layer for s in shapes}
    assert len(rho) == 1 and len({s.head_dim for s in shapes}) == 1
    for s in shapes:
        assert s.d_ff % 16 == 0 and 8 / 3 * s.d_model <= s.d_ff < 8 / 3 * s.d_model + 16
    n = [non_embedding_params(s) for s in shapes]
    assert n == sorted(n) and n[-1] / n[0] >= 30


def test_model_parameters_match_count():
    for shape in (get_shape("nano", "L3"), get_shape("micro", "L2", vocab_size=300)):
        model = GPT(shape)
        all_params = sum(p.numel() for p in model.parameters())
        assert all_params == total_params(shape)
        assert all_params - model.wte.weight.numel() == non_embedding_params(shape)


def test_get_shape_overrides_and_errors():
    shape = get_shape("micro", "L3", vocab_size=1000, n_ctx=64)
    assert (shape.vocab_size, shape.n_ctx, shape.d_model) == (1000, 64, 96)
    assert get_shape("paper", "198M") is LADDERS["paper"]["198M"]
    with pytest.raises(ValueError, match=r"'L9'.*L1, L2"):
        get_shape("nano", "L9")
    with pytest.raises(ValueError, match=r"'huge'.*paper, nano, micro"):
        get_shape("huge", "L1")
    with pytest.raises(ValueError, match="n_head"):
        ModelShape("x", "x", 1, 30, 4, 80, 256, 16)


def test_flops_defined_once():
    assert flops_per_token is flops_in_flops_module


def _attention_flops_per_token(shape: ModelShape) -> float:
    return shape.n_layer * 2 * shape.d_model * (shape.n_ctx + 1)


def test_exact_flops_against_flop_counter():
    """Matmuls agree exactly with torch's counter; attention agrees after the causal factor.

    FlopCounterMode does not see torch 2.13's fused CPU attention kernel at all, and the
    kernels it does know (flash, efficient) it counts as full non-causal T x T attention.
    So we run SDPA's math backend, whose QK^T and AV are two bmm calls over the full
    T x T score matrix (the causal mask is applied after), and scale that by the causal
    fraction (T + 1) / (2 T): query t of a window sees t of the T keys.
    """
    shape = get_shape("nano", "L2", n_ctx=32)
    model = GPT(shape)
    B, T = 3, shape.n_ctx
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, shape.vocab_size, (B, T)))
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert set(counts) == {"aten.mm", "aten.bmm"}
    attention = _attention_flops_per_token(shape) * B * T
    assert counts["aten.mm"] == flops_per_token(shape) * B * T - attention
    assert counts["aten.bmm"] * (T + 1) / (2 * T) == attention


def test_exact_flops_close_to_paper_formula():
    """On the paper ladder the exact count is within 1% of F(N) (the paper's FLOP estimate).

    F(N) is exact for d_ff = 8/3 d_model and no norms; the table rounds d_ff up to a
    multiple of 256 (up to 3% more FFN), which F(N) reads as a slightly wider model. The
    worst case is 103M at -0.4%, so 1% is the tolerance with margin.
    """
    for shape in LADDERS["paper"].values():
        exact = flops_per_token(shape)
        approx = paper_flops_per_token(non_embedding_params(shape), rho=paper_rho(shape))
        assert abs(exact / approx - 1) < 0.01, shape.name
        assert exact > 2 * non_embedding_params(shape) * 1.05  # the 2N shortcut is too low


def test_rms_norm_is_torch_s_in_fp32_and_computes_in_fp32_under_bf16(recwarn):
    torch.manual_seed(0)
    ours, theirs = RMSNorm(48, eps=1e-6), torch.nn.RMSNorm(48, eps=1e-6)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        theirs.weight.copy_(ours.weight)
    x = 3 * torch.randn(4, 7, 48)
    assert torch.equal(ours(x), theirs(x))
    exact = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * ours.weight
    # a bf16 activation (autocast's) beside the fp32 gain: computed and returned in fp32,
    # as CUDA autocast returns a norm
    xb = x.bfloat16()
    assert ours(xb).dtype == torch.float32
    assert torch.equal(ours(xb), F.rms_norm(xb.float(), (48,), ours.weight, 1e-6))
    # a model cast whole to bf16 (a teacher): bf16 out, the fp32 answer rounded once
    half = RMSNorm(48, eps=1e-6)
    half.load_state_dict(ours.state_dict())
    half.bfloat16()
    out = half(xb)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, F.rms_norm(xb.float(), (48,), half.weight.float(), 1e-6).bfloat16())
    assert (out.float() - exact).abs().max() <= 0.02 * exact.abs().max()
    # no fallback from the fused kernel, whose warning the bf16 runs printed
    assert not [w for w in recwarn if "Mismatch dtype" in str(w.message)]


def test_forward_shape_and_causality():
    shape = get_shape("nano", "L2", n_ctx=16)
    model = GPT(shape).eval()
    idx = torch.randint(0, shape.vocab_size, (2, 16))
    logits = model(idx)
    assert logits.shape == (2, 16, shape.vocab_size) and logits.dtype == torch.float32
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % shape.vocab_size
    new = model(changed)
    torch.testing.assert_close(new[:, :10], logits[:, :10], rtol=0, atol=1e-5)
    assert (new[:, 10:] - logits[:, 10:]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_optimizer_groups_mup_lr_and_independent_decay():
    """Hidden lr = lr / m, and AdamW's lr * weight_decay is the requested wd in every group."""
    model = GPT(get_shape("micro", "L4"), base_d_model=32)  # m = 128 / 32 = 4
    groups = {g["name"]: g for g in model.optimizer_groups(lr=1e-2, weight_decay=1e-4)}
    assert groups["hidden"]["lr"] == pytest.approx(2.5e-3)
    assert groups["embedding"]["lr"] == groups["norms"]["lr"] == 1e-2
    assert groups["hidden"]["lr"] * groups["hidden"]["weight_decay"] == pytest.approx(1e-4)
    assert groups["embedding"]["lr"] * groups["embedding"]["weight_decay"] == pytest.approx(1e-4)
    assert groups["norms"]["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in groups["norms"]["params"])
    # One AdamW step with zero gradients applies exactly the decay: p <- (1 - wd) p.
    opt = torch.optim.AdamW(model.optimizer_groups(lr=1e-2, weight_decay=1e-2))
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, p0 in zip(model.parameters(), before, strict=True):
        factor = 1.0 if p.ndim == 1 else 1 - 1e-2
        torch.testing.assert_close(p.detach(), p0 * factor)


def _residual_update_rms(d_model: int, base_d_model: int, steps: int = 5) -> float:
    """RMS change of the residual stream (input of the final norm) after a few Adam steps."""
    torch.manual_seed(0)
    d_ff = math.ceil(8 * d_model / 3 / 16) * 16
    shape = ModelShape("test", f"d{d_model}", 2, d_model, d_model // 32, d_ff, 256, 32)
    model = GPT(shape, base_d_model=base_d_model)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (8, shape.n_ctx + 1), generator=gen)
    tokens[:, 1::2] = (7 * tokens[:, 0::2][:, : tokens[:, 1::2].shape[1]] + 3) % 256
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    seen = {}
    model.norm_f.register_forward_hook(lambda mod, args, out: seen.update(h=args[0].detach()))
    with torch.no_grad():
        model(inputs)
    h0 = seen["h"]
    opt = torch.optim.AdamW(model.optimizer_groups(lr=1e-2, weight_decay=0.0), betas=(0.9, 0.95))
    for _ in range(steps):
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        model(inputs)
    return (seen["h"] - h0).pow(2).mean().sqrt().item()


def test_mup_keeps_update_scale_flat_across_width():
    """A coordinate check (as in Yang et al. 2022): same lr, widths 64..256, depth 2.

    In muP the residual-stream change after a few steps is width-independent (fitted
    log-log slope about -0.06 here); in the standard parametrisation, base width = own
    width, one lr for all, it grows roughly as sqrt(width) (slope about +0.5), which is
    why the best lr moves with width there and not here.
    """
    widths = [64, 128, 256]
    mup = [_residual_update_rms(d, base_d_model=64) for d in widths]
    sp = [_residual_update_rms(d, base_d_model=d) for d in widths]
    slope_mup = np.polyfit(np.log(widths), np.log(mup), 1)[0]
    slope_sp = np.polyfit(np.log(widths), np.log(sp), 1)[0]
    assert abs(slope_mup) < 0.2, (mup, slope_mup)
    assert slope_sp > 0.3, (sp, slope_sp)


def test_features_are_the_forward_pass_opened_up():
    """features() gives the forward's logits, one residual state per block, and attention
    maps that reproduce SDPA's output (a one-head model, so the head average is the map)."""
    torch.manual_seed(0)
    shape = ModelShape("t", "t", n_layer=3, d_model=16, n_head=1, d_ff=32, vocab_size=23, n_ctx=12)
    model = GPT(shape, base_d_model=8)
    idx = torch.randint(0, 23, (2, 12))
    out = model.features(idx, attention_layers=(2,))
    torch.testing.assert_close(out.logits, model(idx), rtol=0, atol=0)
    assert len(out.hidden) == 4 and list(out.attention) == [2]
    torch.testing.assert_close(out.hidden[0], model.wte(idx))
    torch.testing.assert_close(out.logits, model.readout(out.hidden[-1]))
    probs = out.attention[2]
    assert probs.shape == (2, 12, 12)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 12))
    assert probs.triu(1).abs().max() == 0  # causal
    block = model.blocks[1]
    x = block.attn_norm(out.hidden[1])
    cos, sin = model.rope_cos[:12], model.rope_sin[:12]
    _, _, v = block.attn._qkv(x, cos, sin)
    by_map = block.attn.proj(probs @ v.squeeze(1))
    torch.testing.assert_close(by_map, block.attn(x, cos, sin), rtol=1e-5, atol=1e-6)
