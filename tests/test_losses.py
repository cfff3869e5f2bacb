"""Tests for kdlab.losses: closed forms on hand-made distributions, gradients, chunking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdlab.losses import (
    DIVERGENCES,
    TAIDSchedule,
    combined_student_loss,
    distill_loss,
    kl_teacher_student,
    next_token_loss,
    sparse_teacher,
    teacher_target_log_loss,
    token_confidence_correct,
    top1_agreement,
    truncate_teacher,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (large on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# Hand-made distributions, V = 4 (logits are log-probabilities, so softmax gives them back).
P_T = np.array([0.5, 0.25, 0.15, 0.10])
P_S = np.array([0.1, 0.2, 0.3, 0.4])


def _logits(p: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.log(p), dtype=torch.float64).view(1, 1, -1)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p, q = np.asarray(p, float), np.asarray(q, float)
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / q[nz])))


def _single(divergence: str, p_t=P_T, p_s=P_S, **kw) -> float:
    targets = torch.zeros(1, 1, dtype=torch.long)
    return distill_loss(_logits(p_s), _logits(p_t), targets, divergence=divergence, **kw).item()


def _random_batch(b=2, t=5, v=11, dtype=torch.float32, n_masked=3):
    torch.manual_seed(0)
    s = torch.randn(b, t, v, dtype=dtype) * 2
    te = torch.randn(b, t, v, dtype=dtype) * 2
    y = torch.randint(0, v, (b, t))
    y.view(-1)[torch.randperm(b * t)[:n_masked]] = -100
    return s, te, y


# ---------------------------------------------------------------- closed forms (numpy)


def test_forward_and_reverse_kl_closed_form():
    assert _single("forward_kl") == pytest.approx(_kl(P_T, P_S), rel=1e-10)
    assert _single("reverse_kl") == pytest.approx(_kl(P_S, P_T), rel=1e-10)
    # true KL: zero when the student equals the teacher
    assert _single("forward_kl", p_s=P_T) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_closed_form(beta):
    m = beta * P_T + (1 - beta) * P_S
    expected = beta * _kl(P_T, m) + (1 - beta) * _kl(P_S, m)
    assert _single("jsd", beta=beta) == pytest.approx(expected, rel=1e-10)


def test_jsd_half_is_symmetric_js():
    m = 0.5 * (P_T + P_S)
    expected = 0.5 * _kl(P_T, m) + 0.5 * _kl(P_S, m)
    assert _single("jsd", beta=0.5) == pytest.approx(expected, rel=1e-10)
    assert _single("jsd", beta=0.5, p_t=P_S, p_s=P_T) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5])
def test_skew_kl_closed_forms(alpha):
    skl = _kl(P_T, alpha * P_T + (1 - alpha) * P_S)
    srkl = _kl(P_S, alpha * P_S + (1 - alpha) * P_T)
    assert _single("skew_kl", alpha=alpha) == pytest.approx(skl, rel=1e-10)
    assert _single("skew_reverse_kl", alpha=alpha) == pytest.approx(srkl, rel=1e-10)


def test_tv_closed_form():
    assert _single("tv") == pytest.approx(0.5 * np.abs(P_T - P_S).sum(), rel=1e-10)


@pytest.mark.parametrize("t", [0.0, 0.4, 1.0])
def test_taid_closed_form(t):
    # p_t = softmax((1 - t) log p_S + t log p_T) (normalised geometric mixture)
    g = P_S ** (1 - t) * P_T**t
    p_mid = g / g.sum()
    assert _single("taid", taid_t=t) == pytest.approx(_kl(p_mid, P_S), rel=1e-9, abs=1e-12)


def test_tau_scaling_closed_form():
    tau = 2.0
    pt = P_T ** (1 / tau) / (P_T ** (1 / tau)).sum()
    ps = P_S ** (1 / tau) / (P_S ** (1 / tau)).sum()
    assert _single("forward_kl", tau=tau) == pytest.approx(tau**2 * _kl(pt, ps), rel=1e-10)
    assert _single("forward_kl", tau=tau, tau_squared=False) == pytest.approx(
        _kl(pt, ps), rel=1e-10
    )


# ---------------------------------------------------------------- truncation


def test_top_k_keeps_mass_and_renormalises():
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.10]], dtype=torch.float64))
    out = truncate_teacher(lp, top_k=2).exp()[0].numpy()
    np.testing.assert_allclose(out, [0.5 / 0.75, 0.25 / 0.75, 0.0, 0.0], rtol=1e-12)


def test_top_p_keeps_smallest_nucleus():
    lp = torch.log(torch.tensor([[0.15, 0.5, 0.10, 0.25]], dtype=torch.float64))
    # 0.5 < 0.7 so 0.25 also needed (0.75 >= 0.7); 0.15 not
    out = truncate_teacher(lp, top_p=0.7).exp()[0].numpy()
    np.testing.assert_allclose(out, [0.0, 0.5 / 0.75, 0.0, 0.25 / 0.75], rtol=1e-12)
    # p below the top-1 mass keeps only top-1
    out = truncate_teacher(lp, top_p=0.3).exp()[0].numpy()
    np.testing.assert_allclose(out, [0.0, 1.0, 0.0, 0.0], rtol=1e-12)
    # exact boundary: 0.5 + 0.25 = 0.75 reaches p = 0.75 -> stop
    out = truncate_teacher(lp, top_p=0.75).exp()[0].numpy()
    np.testing.assert_allclose(out, [0.0, 0.5 / 0.75, 0.0, 0.25 / 0.75], rtol=1e-9)


def test_top_k_then_top_p():
    lp = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=torch.float64))
    # top-3 -> (4/9, 3/9, 2/9); top-p 0.6 then needs 4/9 + 3/9
    out = truncate_teacher(lp, top_k=3, top_p=0.6).exp()[0].numpy()
    np.testing.assert_allclose(out, [4 / 7, 3 / 7, 0.0, 0.0], rtol=1e-12)


def test_truncated_forward_kl_closed_form():
    pt_trunc = np.array([0.5, 0.25, 0.0, 0.0]) / 0.75
    assert _single("forward_kl", top_k=2) == pytest.approx(_kl(pt_trunc, P_S), rel=1e-10)
    assert _single("forward_kl", top_p=0.7) == pytest.approx(_kl(pt_trunc, P_S), rel=1e-10)
    g = np.where(pt_trunc > 0, P_S**0.5 * pt_trunc**0.5, 0.0)
    assert _single("taid", top_k=2, taid_t=0.5) == pytest.approx(_kl(g / g.sum(), P_S), rel=1e-9)
    with pytest.raises(ValueError):
        _single("reverse_kl", top_k=2)


# ---------------------------------------------------------------- gradients


def test_lambda1_tau1_gradient_is_forward_kl_of_paper_formula():
    """Paper L_KD = -sum p_T log p_S: same gradient as our KL and as the combined loss."""
    s, te, y = _random_batch(dtype=torch.float64)
    mask = y != -100
    s1 = s.clone().requires_grad_(True)
    out = combined_student_loss(s1, y, te, kd_weight=1.0, z_loss_weight=0.0)
    out.loss.backward()

    s2 = s.clone().requires_grad_(True)
    naive = -(F.softmax(te, -1) * F.log_softmax(s2, -1)).sum(-1)  # paper's formula
    (naive[mask].sum() / mask.sum()).backward()
    torch.testing.assert_close(s1.grad, s2.grad)
    # value differs from the paper's cross-entropy form by exactly the teacher entropy
    ent = -(F.softmax(te, -1) * F.log_softmax(te, -1)).sum(-1)[mask].sum()
    torch.testing.assert_close(out.kd_sum, naive[mask].sum().detach() - ent)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_every_divergence_matches_naive_autograd(divergence):
    s, te, y = _random_batch(dtype=torch.float64)
    mask = y != -100
    kw = dict(beta=0.3, alpha=0.2, taid_t=0.6)
    s1 = s.clone().requires_grad_(True)
    te1 = te.clone().requires_grad_(True)  # the teacher must get no gradient from the loss
    distill_loss(s1, te1, y, divergence=divergence, tau=1.5, **kw).backward()

    s2 = s.clone().requires_grad_(True)
    pt = F.softmax(te / 1.5, -1)
    ps = F.softmax(s2 / 1.5, -1)

    def kl(p, q):
        return (p * (p.log() - q.log())).sum(-1)

    if divergence == "forward_kl":
        rows = kl(pt, ps)
    elif divergence == "reverse_kl":
        rows = kl(ps, pt)
    elif divergence == "jsd":
        m = 0.3 * pt + 0.7 * ps
        rows = 0.3 * kl(pt, m) + 0.7 * kl(ps, m)
    elif divergence == "skew_kl":
        rows = kl(pt, 0.2 * pt + 0.8 * ps)
    elif divergence == "skew_reverse_kl":
        rows = kl(ps, 0.2 * ps + 0.8 * pt)
    elif divergence == "tv":
        rows = 0.5 * (pt - ps).abs().sum(-1)
    else:  # taid: target from detached student logits
        pmid = F.softmax((0.4 * s2.detach() + 0.6 * te) / 1.5, -1)
        rows = kl(pmid, ps)
    (1.5**2 * rows[mask].sum()).backward()
    torch.testing.assert_close(s1.grad, s2.grad)
    assert te1.grad is None


def test_chunked_equals_unchunked_values_and_grads():
    s, te, y = _random_batch(b=3, t=7, v=13)
    for divergence in DIVERGENCES:
        kw = dict(divergence=divergence, top_k=9, taid_t=0.5, beta=0.4, alpha=0.1)
        if divergence == "reverse_kl":
            kw["top_k"] = None
        grads, values = [], []
        for chunk in (4, 1000):
            x = s.clone().requires_grad_(True)
            v = distill_loss(x, te, y, chunk_tokens=chunk, **kw)
            v.backward()
            values.append(v.detach())
            grads.append(x.grad)
        for v, g in zip(values[1:], grads[1:], strict=True):
            torch.testing.assert_close(v, values[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(g, grads[0], rtol=1e-5, atol=1e-7)

    sums = []
    for chunk in (4, 1000):
        x = s.clone().requires_grad_(True)
        out = next_token_loss(x, y, chunk_tokens=chunk)
        (out.ce_sum + 0.3 * out.z_sum).backward()
        sums.append((out.ce_sum.detach(), out.z_sum.detach(), x.grad))
    for other in sums[1:]:
        for a, b in zip(other, sums[0], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_logits_computed_in_fp32():
    s, te, y = _random_batch(v=50)
    ref = distill_loss(s.double(), te.double(), y)
    got = distill_loss(s.bfloat16(), te.bfloat16(), y)
    assert got.dtype == torch.float32
    # only the bf16 rounding of the inputs remains, not bf16 arithmetic
    ref_rounded = distill_loss(s.bfloat16().double(), te.bfloat16().double(), y)
    torch.testing.assert_close(got.double(), ref_rounded, rtol=1e-5, atol=1e-5)
    assert abs(got.item() - ref.item()) < 0.05 * ref.item()
    out = next_token_loss(s.bfloat16(), y)
    assert out.ce_sum.dtype == torch.float32


# ---------------------------------------------------------------- hard targets, masking


def test_hard_targets_equal_ce_on_teacher_argmax():
    s, te, y = _random_batch()
    mask = y != -100
    hard_y = torch.where(mask, te.argmax(-1), -100)
    s1 = s.clone().requires_grad_(True)
    distill_loss(s1, te, y, hard=True).backward()
    s2 = s.clone().requires_grad_(True)
    ce = F.cross_entropy(s2.reshape(-1, s.shape[-1]), hard_y.reshape(-1), reduction="sum")
    ce.backward()
    torch.testing.assert_close(s1.grad, s2.grad)
    torch.testing.assert_close(distill_loss(s, te, y, hard=True), ce.detach())


def test_mask_respected():
    s, te, y = _random_batch(n_masked=0)
    y_masked = y.clone()
    y_masked[0, :] = -100
    # changing logits at masked positions changes nothing
    s2, te2 = s.clone(), te.clone()
    s2[0] += 100 * torch.randn_like(s2[0])
    te2[0] = torch.randn_like(te2[0])
    for div in DIVERGENCES:
        a = distill_loss(s, te, y_masked, divergence=div, taid_t=0.5)
        b = distill_loss(s2, te2, y_masked, divergence=div, taid_t=0.5)
        torch.testing.assert_close(a, b)
        only = distill_loss(s[1:], te[1:], y[1:], divergence=div, taid_t=0.5)
        torch.testing.assert_close(a, only)
    x = s.clone().requires_grad_(True)
    distill_loss(x, te, y_masked).backward()
    assert torch.all(x.grad[0] == 0)
    out = next_token_loss(s, y_masked)
    assert out.n_tokens.item() == y.shape[1]


def test_all_masked_gives_zero_with_graph():
    s, te, y = _random_batch()
    y[:] = -100
    x = s.clone().requires_grad_(True)
    out = combined_student_loss(x, y, te)
    assert out.loss.item() == 0.0 and out.n_tokens.item() == 0
    out.loss.backward()
    assert torch.all(x.grad == 0)


# ---------------------------------------------------------------- next-token loss, combination


def test_next_token_loss_sums_and_z_loss():
    s, _, y = _random_batch(dtype=torch.float64)
    mask = y != -100
    out = next_token_loss(s, y)
    ce = F.cross_entropy(s.reshape(-1, s.shape[-1]), y.reshape(-1), reduction="sum")
    z = torch.logsumexp(s, -1)[mask].square().sum()
    torch.testing.assert_close(out.ce_sum, ce)
    torch.testing.assert_close(out.z_sum, z)
    assert out.n_tokens.item() == int(mask.sum())
    # hand example: logits (0, log 3) -> lse = log 4, CE on class 0 = log 4
    h = torch.tensor([[[0.0, math.log(3.0)]]])
    o = next_token_loss(h, torch.tensor([[0]]))
    assert o.ce_sum.item() == pytest.approx(math.log(4.0), rel=1e-6)
    assert o.z_sum.item() == pytest.approx(math.log(4.0) ** 2, rel=1e-6)


def test_combined_loss_weights_and_normaliser():
    s, te, y = _random_batch()
    lam, lz = 0.7, 1e-4
    out = combined_student_loss(
        s, y, te, kd_weight=lam, z_loss_weight=lz, normalizer=40.0, divergence="reverse_kl"
    )
    sums = next_token_loss(s, y)
    kd = distill_loss(s, te, y, divergence="reverse_kl")
    expected = ((1 - lam) * sums.ce_sum + lam * kd + lz * sums.z_sum) / 40.0
    torch.testing.assert_close(out.loss, expected)
    # lambda = 0: supervised, no teacher needed
    sup = combined_student_loss(s, y, None, kd_weight=0.0, z_loss_weight=0.0)
    torch.testing.assert_close(sup.loss, sums.ce_sum / sums.n_tokens)
    with pytest.raises(ValueError):
        combined_student_loss(s, y, None, kd_weight=0.5)


def test_accumulation_window_normalisation():
    """Two micro-batches normalised by the window count == one batch of both."""
    s, te, y = _random_batch(b=4)
    full = combined_student_loss(s, y, te).loss
    n = (y != -100).sum()
    parts = sum(
        combined_student_loss(s[i : i + 2], y[i : i + 2], te[i : i + 2], normalizer=n).loss
        for i in (0, 2)
    )
    torch.testing.assert_close(parts, full)


# ---------------------------------------------------------------- TAID schedule


def test_taid_schedule_rule():
    sch = TAIDSchedule(t_start=0.4, t_end=1.0, alpha=0.1, beta=0.9)
    assert sch.update(2.0, progress=0.0) == 0.4  # first call only records the loss
    t = sch.update(1.0, progress=0.0)
    m = 0.1 * (2.0 - 1.0) / 2.0
    expected = 0.4 + 0.1 * (1 / (1 + math.exp(-m))) * (1 - 0.4)
    assert t == pytest.approx(expected, rel=1e-12)
    assert sch.momentum == pytest.approx(m)
    # the linear floor wins when it is ahead
    t2 = sch.update(1.0, progress=0.9)
    assert t2 == pytest.approx(0.4 + 0.6 * 0.9)
    # capped at t_end
    assert sch.update(0.5, progress=1.0) == pytest.approx(1.0)
    lin = TAIDSchedule(adaptive=False)
    lin.update(1.0, 0.0)
    assert lin.update(1.0, 0.5) == pytest.approx(0.7)


def test_taid_state_roundtrip():
    sch = TAIDSchedule()
    s, te, y = _random_batch()
    for step in range(3):
        loss = distill_loss(s, te, y, divergence="taid", taid_t=sch.t)
        sch.update(loss.detach() / (y != -100).sum(), progress=step / 10)
    before = sch.state_dict()
    # the loss only reads t (a float); the training step alone moves it (see
    # test_distill.py::test_taid_moves_in_training_not_in_validation for the module)
    resumed = TAIDSchedule()
    resumed.load_state_dict(before)
    assert resumed.state_dict() == before
    assert resumed.update(1.0, 0.5) == sch.update(1.0, 0.5)


# ---------------------------------------------------------------- metrics


def test_metrics():
    s, te, y = _random_batch(b=3, t=20, v=7)
    mask = y != -100
    kl = kl_teacher_student(s, te, y)
    ref = (F.softmax(te, -1) * (F.log_softmax(te, -1) - F.log_softmax(s, -1))).sum(-1)
    torch.testing.assert_close(kl, ref[mask].sum())

    agree, n = top1_agreement(s, te, y)
    assert n.item() == mask.sum().item()
    assert agree.item() == ((s.argmax(-1) == te.argmax(-1)) & mask).sum().item()

    conf, correct = token_confidence_correct(s, y, chunk_tokens=7)
    torch.testing.assert_close(conf, F.softmax(s, -1).max(-1).values[mask])
    assert torch.equal(correct, (s.argmax(-1) == y)[mask])

    # ECE (torchmetrics, as DistillModule computes it) by hand: two bins, tokens
    # (0.2, wrong), (0.3, right), (0.9, right)
    from torchmetrics.classification import BinaryCalibrationError

    c = torch.tensor([0.2, 0.3, 0.9])
    ok = torch.tensor([0, 1, 1])
    ece = BinaryCalibrationError(n_bins=2, norm="l1")(c, ok)
    assert ece.item() == pytest.approx((2 / 3) * abs(0.25 - 0.5) + (1 / 3) * abs(0.9 - 1.0))


# ---------------------------------------------------------------- sparse (cached) teachers


def test_sparse_teacher_is_the_online_teacher_truncated_to_its_top_k():
    """A cache's top k gives, for every divergence and temperature, the online loss at
    top_k = k (values and student gradients), here in float64 so only the maths shows."""
    s, te, y = _random_batch(b=3, t=7, v=13, dtype=torch.float64)
    sparse = sparse_teacher(te, 5, y)
    for divergence in DIVERGENCES:
        if divergence == "reverse_kl":
            continue  # infinite against any truncated teacher
        for tau, top_p in ((1.0, None), (1.7, None), (1.0, 0.8)):
            kw = dict(divergence=divergence, tau=tau, top_p=top_p, taid_t=0.5, beta=0.4)
            a = s.clone().requires_grad_(True)
            b = s.clone().requires_grad_(True)
            online = distill_loss(a, te, y, top_k=5, **kw)
            cached = distill_loss(b, sparse, y, chunk_tokens=4, **kw)
            online.backward()
            cached.backward()
            torch.testing.assert_close(cached, online, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-12)
    # a tighter top_k still truncates the cached teacher, hard targets take its top 1
    torch.testing.assert_close(distill_loss(s, sparse, y, top_k=2), distill_loss(s, te, y, top_k=2))
    torch.testing.assert_close(
        distill_loss(s, sparse, y, hard=True), distill_loss(s, te, y, hard=True)
    )


def test_sparse_teacher_validation_metrics():
    s, te, y = _random_batch(b=2, t=4, v=9, dtype=torch.float64)
    sparse = sparse_teacher(te, 3, y)
    # the rest mass and the k probabilities add up to one
    total = sparse.log_probs.exp().sum(-1) + sparse.log_rest.exp()
    torch.testing.assert_close(total, torch.ones_like(total))
    ce, n = teacher_target_log_loss(sparse, y)
    ref = next_token_loss(te, y)
    torch.testing.assert_close(ce, ref.ce_sum)
    assert n == ref.n_tokens
    assert top1_agreement(s, sparse, y) == top1_agreement(s, te, y)
    # the coarse KL by hand: k buckets and one for the rest, a lower bound of the full KL
    p = F.softmax(te, -1)
    q = F.softmax(s, -1)
    idx = sparse.indices
    p_k, q_k = p.gather(-1, idx), q.gather(-1, idx)
    p_r, q_r = 1 - p_k.sum(-1), 1 - q_k.sum(-1)
    rows = (p_k * (p_k / q_k).log()).sum(-1) + p_r * (p_r / q_r).log()
    mask = y != -100
    coarse = kl_teacher_student(s, sparse, y)
    torch.testing.assert_close(coarse, rows[mask].sum(), rtol=1e-6, atol=1e-9)
    assert coarse < kl_teacher_student(s, te, y)
