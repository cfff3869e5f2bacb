"""Law forms, the paper's published numbers, objective gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlab.laws.forms import (
    CHINCHILLA_SPEC,
    DISTILLATION_SPEC,
    PAPER_SPEC,
    distillation_loss,
    supervised_loss,
    supervised_tokens_for_loss,
)
from kdlab.laws.objective import DistillationObjective, SupervisedObjective
from kdlab.laws.published import PAPER_DISTILLATION, PAPER_SUPERVISED

N_S = 198e6


def test_supervised_paper_numbers():
    assert supervised_loss(N_S, 20 * N_S, PAPER_SUPERVISED) == pytest.approx(2.789, abs=5e-4)
    # the 7.75B teacher at M = 20
    assert supervised_loss(7.75e9, 20 * 7.75e9, PAPER_SUPERVISED) == pytest.approx(2.004, abs=5e-4)


def test_distillation_paper_number():
    l_s = distillation_loss(N_S, 20 * N_S, 2.004, PAPER_DISTILLATION, PAPER_SUPERVISED)
    assert l_s == pytest.approx(2.544, abs=5e-4)


def test_log_space_matches_direct_formula():
    n, d = np.array([1e8, 3e9]), np.array([2e9, 1e11])
    c = PAPER_SUPERVISED
    direct = c["E"] + (c["A"] / n ** c["alpha"] + c["B"] / d ** c["beta"]) ** c["gamma"]
    np.testing.assert_allclose(supervised_loss(n, d, c), direct, rtol=1e-12)
    lt = np.array([1.9, 2.6])
    p, s = PAPER_DISTILLATION, supervised_loss(n, d, c)
    direct_s = (
        lt
        + lt ** (-p["c0"])
        * (1 + (lt / (s * p["d1"])) ** (1 / p["f1"])) ** (-p["c1"] * p["f1"])
        * (p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]) ** p["gamma"]
    )
    np.testing.assert_allclose(distillation_loss(n, d, lt, p, c), direct_s, rtol=1e-12)


def test_limits_of_distillation_law():
    """L_S -> L_T for a huge student and for a very weak teacher (the distillation law's limits)."""
    big = distillation_loss(1e15, 1e17, 2.0, PAPER_DISTILLATION, PAPER_SUPERVISED)
    assert big == pytest.approx(2.0, rel=1e-3)
    weak = distillation_loss(N_S, 20 * N_S, 50.0, PAPER_DISTILLATION, PAPER_SUPERVISED)
    assert weak == pytest.approx(50.0, rel=1e-6)


def test_spec_round_trip():
    for spec, coef in ((PAPER_SPEC, PAPER_SUPERVISED), (DISTILLATION_SPEC, PAPER_DISTILLATION)):
        back = spec.to_coefficients(spec.from_coefficients(coef))
        for k, v in coef.items():
            assert back[k] == pytest.approx(v, rel=1e-12)
    assert CHINCHILLA_SPEC.to_coefficients([0.0, 1.0, 2.0, 0.3, 0.4])["gamma"] == 1.0


def test_tokens_for_loss_inverts_law():
    d = supervised_tokens_for_loss(1e9, 2.3, PAPER_SUPERVISED)
    assert supervised_loss(1e9, d, PAPER_SUPERVISED) == pytest.approx(2.3, rel=1e-10)
    assert np.isnan(supervised_tokens_for_loss(1e6, 2.0, PAPER_SUPERVISED))


def _data(rng, n=40):
    ns = np.exp(rng.uniform(18, 23, n))
    ds = np.exp(rng.uniform(20, 26, n))
    lt = np.exp(rng.uniform(np.log(1.8), np.log(3.5), n))
    sup = supervised_loss(ns, ds, PAPER_SUPERVISED)
    ls = distillation_loss(ns, ds, lt, PAPER_DISTILLATION, PAPER_SUPERVISED)
    return ns, ds, lt, sup, ls * np.exp(rng.normal(0, 0.01, n))


@pytest.mark.parametrize("weighted", [False, True])
def test_analytic_gradients_match_autograd(weighted):
    rng = np.random.default_rng(1)
    ns, ds, lt, sup, ls = _data(rng)
    w = rng.integers(0, 3, (6, len(ns))).astype(float) if weighted else None
    cases = [
        (SupervisedObjective(CHINCHILLA_SPEC, ns, ds, sup, 1e-3, w), [0.2, 7, 9, 0.4, 0.4]),
        (SupervisedObjective(PAPER_SPEC, ns, ds, sup, 1e-4, w), [0.2, 8, 9, 0.4, 0.4, 0.5]),
        (
            DistillationObjective(DISTILLATION_SPEC, ns, ds, lt, sup, ls, 1e-4, w),
            DISTILLATION_SPEC.from_coefficients(PAPER_DISTILLATION),
        ),
    ]
    for obj, center in cases:
        x = torch.tensor(np.asarray(center) + rng.normal(0, 0.3, (6, len(center))))
        f, g = obj(x.clone())
        xg = x.clone().requires_grad_(True)
        fa = obj.autograd_value(xg)
        (ga,) = torch.autograd.grad(fa.sum(), xg)
        torch.testing.assert_close(f, fa.detach(), rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(g, ga, rtol=1e-7, atol=1e-12)
