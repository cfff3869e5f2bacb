"""Huber objectives of the laws, batched over parameter vectors, with exact gradients.

The objective of one parameter vector is sum_i w_i * Huber_delta(log Lhat_i - log L_i)
(the paper's fitting objective). A batch of S vectors is a (S, n) table of residuals. The
gradients are written out by hand (chain rule through the log-sum-exps) rather than left to
autograd: the same numbers, but about half the passes over the table, which is what a
216,000-start grid costs. ``tests/test_laws_objective.py`` checks them against
autograd on the forms of ``forms.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from kdlab.laws.forms import LawSpec, distillation_log_loss, supervised_log_loss

Tensor = torch.Tensor


def _t(x) -> Tensor:
    return torch.tensor(np.array(x, dtype=float), dtype=torch.float64)


class HuberObjective:
    """Base: data, Huber delta and optional per-row weights (bootstrap resamples).

    ``__call__(X, rows, need_grad)`` returns (f, g): f is (S,), g is (S, P) or None.
    ``rows`` selects the weight rows belonging to X's rows (None: row i of X uses
    weight row i, or the plain sum when there are no weights).
    """

    spec: LawSpec

    def __init__(self, y: np.ndarray, delta: float, weights: np.ndarray | None = None):
        self.y = _t(np.log(y))
        self.delta = float(delta)
        self.weights = None if weights is None else _t(weights)
        self.n = int(self.y.shape[0])

    def to(self, dtype: torch.dtype) -> HuberObjective:
        """A copy computing in ``dtype``: float32 screens a large grid ~5x faster."""
        out = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(out, name, value.to(dtype))
        return out

    def _weights(self, rows: Tensor | None, s: int) -> Tensor | None:
        if self.weights is None:
            return None
        if self.weights.ndim == 1:
            return self.weights
        return self.weights[:s] if rows is None else self.weights[rows]

    def _huber(self, log_pred: Tensor, w: Tensor | None, need_grad: bool):
        """Objective per row and dObjective/dlog_pred (weighted)."""
        r = log_pred.sub_(self.y)  # log_pred is a temporary: reuse its memory
        c = r.clamp(-self.delta, self.delta)
        h = torch.sub(r, c, alpha=0.5).mul_(c)  # c * (r - c / 2): both Huber branches
        if w is not None:
            h.mul_(w)
            if need_grad:
                c.mul_(w)
        return h.sum(1), (c if need_grad else None)

    def log_predict(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def autograd_value(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """The same objective through forms.py and autograd (reference for the tests)."""
        r = self.log_predict(x) - self.y
        ar = r.abs()
        h = torch.where(ar <= self.delta, 0.5 * r * r, self.delta * (ar - 0.5 * self.delta))
        w = self._weights(rows, x.shape[0])
        if w is not None:
            h = h * w
        return h.sum(1)


class SupervisedObjective(HuberObjective):
    """log L = LSE(e, gamma * LSE(a - alpha log N, b - beta log D)); gamma fixed or free."""

    def __init__(self, spec: LawSpec, n, d, loss, delta: float, weights=None):
        super().__init__(np.asarray(loss, dtype=float), delta, weights)
        self.spec = spec
        self.log_n = _t(np.log(n))
        self.log_d = _t(np.log(d))
        self.free_gamma = "gamma" in spec.params

    def log_predict(self, x: Tensor) -> Tensor:
        cols = [x[:, i : i + 1] for i in range(x.shape[1])]
        gamma = cols[5] if self.free_gamma else 1.0
        return supervised_log_loss(self.log_n, self.log_d, *cols[:5], gamma)

    def __call__(self, x: Tensor, rows: Tensor | None = None, need_grad: bool = True):
        e, a, b, alpha, beta = (x[:, i : i + 1] for i in range(5))
        gamma = x[:, 5:6] if self.free_gamma else None
        t1 = torch.addcmul(a, alpha, self.log_n, value=-1.0)
        t2 = torch.addcmul(b, beta, self.log_d, value=-1.0)
        inner = torch.logaddexp(t1, t2)
        u = inner * gamma if gamma is not None else inner
        p = torch.logaddexp(u, e.expand_as(u))
        if not need_grad:
            f, _ = self._huber(p, self._weights(rows, x.shape[0]), False)
            return f, None
        sig_e = torch.exp(e - p)  # dp/de; dp/du = 1 - sig_e
        f, q = self._huber(p, self._weights(rows, x.shape[0]), True)
        g = torch.empty_like(x)
        qe = q * sig_e
        g[:, 0] = qe.sum(1)
        qu = q.sub_(qe)  # q * dp/du
        if gamma is not None:
            g[:, 5] = (qu * inner).sum(1)
            qu.mul_(gamma)
        pi1 = t1.sub_(inner).exp_()  # d inner / d t1
        q1 = pi1.mul_(qu)
        q2 = qu.sub_(q1)
        g[:, 1] = q1.sum(1)
        g[:, 3] = -(q1 @ self.log_n)
        g[:, 2] = q2.sum(1)
        g[:, 4] = -(q2 @ self.log_d)
        return f, g


class DistillationObjective(HuberObjective):
    """log L_S of the paper's distillation law with Ltilde_S fixed per run from a supervised fit."""

    def __init__(self, spec: LawSpec, n_s, d_s, l_t, ls_sup, loss, delta: float, weights=None):
        super().__init__(np.asarray(loss, dtype=float), delta, weights)
        self.spec = spec
        self.log_ns = _t(np.log(n_s))
        self.log_ds = _t(np.log(d_s))
        self.log_lt = _t(np.log(l_t))
        self.log_sup = _t(np.log(ls_sup))
        self.gap0 = self.log_lt - self.log_sup  # log(L_T / Ltilde_S)

    def log_predict(self, x: Tensor) -> Tensor:
        cols = [x[:, i : i + 1] for i in range(9)]
        return distillation_log_loss(self.log_ns, self.log_ds, self.log_lt, self.log_sup, *cols)

    def __call__(self, x: Tensor, rows: Tensor | None = None, need_grad: bool = True):
        a, b, alpha, beta, gamma, c0, c1, f1, ld1 = (x[:, i : i + 1] for i in range(9))
        z = (self.gap0 - ld1).div_(f1)  # (log L_T - log Ltilde_S - log d1) / f1
        sp = torch.nn.functional.softplus(z, beta=1.0, threshold=50.0)
        c1f1 = c1 * f1
        v = torch.addcmul(sp * (-c1f1), c0, self.log_lt, value=-1.0)  # teacher factor
        t1 = torch.addcmul(a, alpha, self.log_ns, value=-1.0)
        t2 = torch.addcmul(b, beta, self.log_ds, value=-1.0)
        inner = torch.logaddexp(t1, t2)
        v.addcmul_(gamma.expand_as(inner), inner)
        p = torch.logaddexp(v, self.log_lt.expand_as(v))
        if not need_grad:
            f, _ = self._huber(p, self._weights(rows, x.shape[0]), False)
            return f, None
        sig_v = torch.exp(v - p)  # dp/dv
        f, q = self._huber(p, self._weights(rows, x.shape[0]), True)
        qv = q.mul_(sig_v)
        g = torch.empty_like(x)
        g[:, 5] = -(qv @ self.log_lt)
        sig_z = torch.exp(z - sp)  # sigmoid(z) = d softplus / dz
        qs = qv * sp
        g[:, 6] = -f1[:, 0] * qs.sum(1)
        # d(f1 * softplus(z)) / d f1 = softplus(z) - sigmoid(z) * z
        qz = qv * sig_z
        g[:, 8] = c1[:, 0] * qz.sum(1)
        g[:, 7] = -c1[:, 0] * (qs.sum(1) - (qz * z).sum(1))
        g[:, 4] = (qv * inner).sum(1)
        qv.mul_(gamma)
        pi1 = t1.sub_(inner).exp_()
        q1 = pi1.mul_(qv)
        q2 = qv.sub_(q1)
        g[:, 0] = q1.sum(1)
        g[:, 2] = -(q1 @ self.log_ns)
        g[:, 1] = q2.sum(1)
        g[:, 3] = -(q2 @ self.log_ds)
        return f, g
