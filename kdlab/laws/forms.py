"""The paper's scaling-law forms (its supervised law, Eq. 1, and its distillation law),
evaluated in log space.

Fitting works on log L because the losses of a sweep span a factor of a few while the
errors that matter are relative; the log-sum-exp form also keeps every term positive
and finite for any real parameter vector, so an optimiser can wander freely.

Every function here works on NumPy arrays (prediction, planning) and on torch tensors
(batched fitting with autograd), and broadcasts: parameters of shape (S, 1) against
data of shape (n,) give a (S, n) table of S parameter vectors times n runs.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SUPERVISED_FORMS = ("chinchilla", "paper")


def _is_torch(*xs: object) -> bool:
    # torch is not imported here: predict and plan need only NumPy, and start faster
    torch = sys.modules.get("torch")
    return torch is not None and any(isinstance(x, torch.Tensor) for x in xs)


def logaddexp(x, y):
    """log(exp(x) + exp(y)) for arrays, tensors and scalars alike."""
    if _is_torch(x, y):
        torch = sys.modules["torch"]
        x = x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64)
        y = y if isinstance(y, torch.Tensor) else torch.as_tensor(y, dtype=torch.float64)
        return torch.logaddexp(x, y)
    return np.logaddexp(x, y)


def softplus(x):
    """log(1 + exp(x)) without overflow (the LSE(0, x) of the distillation law)."""
    if _is_torch(x):
        torch = sys.modules["torch"]
        # threshold 50: beyond it log1p(exp(-x)) < 2e-22, below float64 resolution.
        return torch.nn.functional.softplus(x, beta=1.0, threshold=50.0)
    return np.logaddexp(0.0, x)


def supervised_log_loss(log_n, log_d, e, a, b, alpha, beta, gamma=1.0):
    """log L(N, D) = LSE(e, gamma * LSE(a - alpha log N, b - beta log D)).

    e, a, b are log E, log A, log B: the parametrisation of the Chinchilla fits, which
    keeps E, A, B positive without bounds.
    """
    inner = logaddexp(a - alpha * log_n, b - beta * log_d)
    return logaddexp(e, gamma * inner)


def distillation_log_loss(
    log_ns, log_ds, log_lt, log_ls_sup, a, b, alpha, beta, gamma, c0, c1, f1, log_d1
):
    """log L_S(N_S, D_S, L_T) of the paper's distillation law in its log-space form.

    ``log_ls_sup`` is log Ltilde_S, the supervised law at (N_S, D_S): the student alone.
    a, b are log A', log B'; log_d1 is log d1. f1 = 0 is undefined (division by f1).
    """
    gap = softplus((log_lt - log_ls_sup - log_d1) / f1)
    teacher = -c0 * log_lt - c1 * f1 * gap
    student = gamma * logaddexp(a - alpha * log_ns, b - beta * log_ds)
    return logaddexp(log_lt, teacher + student)


MAX_EXPONENT = 4.0


@dataclass(frozen=True)
class LawSpec:
    """A law with its raw (optimised) parameters and how they map to coefficients.

    ``params`` are the optimiser's coordinates; ``log_params`` are those that hold the
    log of a published coefficient (e -> E, a -> A, ...).
    """

    law: str
    form: str
    params: tuple[str, ...]
    log_params: Mapping[str, str]
    fixed: Mapping[str, float]

    @property
    def coefficient_names(self) -> tuple[str, ...]:
        names = [self.log_params.get(p, p) for p in self.params]
        return tuple(names) + tuple(k for k in self.fixed if k not in names)

    def to_coefficients(self, raw: Sequence[float]) -> dict[str, float]:
        """Raw parameter vector -> published coefficient names (E, A, B, ...)."""
        out: dict[str, float] = {}
        for name, value in zip(self.params, raw, strict=True):
            if name in self.log_params:
                out[self.log_params[name]] = float(np.exp(value))
            else:
                out[name] = float(value)
        out.update({k: float(v) for k, v in self.fixed.items()})
        return out

    def bounds(self) -> list[tuple[float | None, float | None]]:
        """Box for the optimiser: the exponents alpha, beta and gamma in [0, MAX_EXPONENT].

        With too few distinct sizes or budgets an exponent is not pinned down and drifts
        to hundreds, its prefactor to exp(thousands): no float holds A, and no law that
        steep is a scaling law. A negative gamma would make loss grow with N and D (the
        micro distillation fit found gamma' = -38 with a wider search). Everything else
        is left free.
        """
        exponents = ("alpha", "beta", "gamma")
        return [(0.0, MAX_EXPONENT) if p in exponents else (None, None) for p in self.params]

    def from_coefficients(self, coef: Mapping[str, float]) -> np.ndarray:
        """Published coefficients -> raw parameter vector (inverse of to_coefficients)."""
        raw = []
        for name in self.params:
            if name in self.log_params:
                raw.append(np.log(float(coef[self.log_params[name]])))
            else:
                raw.append(float(coef[name]))
        return np.asarray(raw, dtype=float)


SUPERVISED_LOG = {"e": "E", "a": "A", "b": "B"}
CHINCHILLA_SPEC = LawSpec(
    "supervised", "chinchilla", ("e", "a", "b", "alpha", "beta"), SUPERVISED_LOG, {"gamma": 1.0}
)
PAPER_SPEC = LawSpec(
    "supervised", "paper", ("e", "a", "b", "alpha", "beta", "gamma"), SUPERVISED_LOG, {}
)
DISTILLATION_SPEC = LawSpec(
    "distillation",
    "distillation",
    ("a", "b", "alpha", "beta", "gamma", "c0", "c1", "f1", "log_d1"),
    {"a": "A", "b": "B", "log_d1": "d1"},
    {},
)


def supervised_spec(form: str) -> LawSpec:
    """The LawSpec of a supervised form name (``chinchilla``: gamma = 1; ``paper``)."""
    if form == "chinchilla":
        return CHINCHILLA_SPEC
    if form == "paper":
        return PAPER_SPEC
    raise ValueError(f"Unknown supervised form {form!r}: choose chinchilla or paper.")


def supervised_loss(n, d, coef: Mapping[str, float]) -> np.ndarray:
    """L(N, D) from published-style coefficients (E, A, B, alpha, beta[, gamma]). A fit
    whose E went to 0 has log E = -inf, which the log-sum-exp takes as no floor term."""
    with np.errstate(divide="ignore"):
        log_e = np.log(coef["E"])
    log_l = supervised_log_loss(
        np.log(np.asarray(n, dtype=float)),
        np.log(np.asarray(d, dtype=float)),
        log_e,
        np.log(coef["A"]),
        np.log(coef["B"]),
        coef["alpha"],
        coef["beta"],
        coef.get("gamma", 1.0),
    )
    return np.exp(log_l)


def distillation_loss(
    n_s, d_s, l_t, coef: Mapping[str, float], supervised: Mapping[str, float]
) -> np.ndarray:
    """L_S(N_S, D_S, L_T): the student's loss, with Ltilde_S from ``supervised``."""
    n_s = np.asarray(n_s, dtype=float)
    d_s = np.asarray(d_s, dtype=float)
    ls_sup = supervised_loss(n_s, d_s, supervised)
    log_l = distillation_log_loss(
        np.log(n_s),
        np.log(d_s),
        np.log(np.asarray(l_t, dtype=float)),
        np.log(ls_sup),
        np.log(coef["A"]),
        np.log(coef["B"]),
        coef["alpha"],
        coef["beta"],
        coef["gamma"],
        coef["c0"],
        coef["c1"],
        coef["f1"],
        np.log(coef["d1"]),
    )
    return np.exp(log_l)


def supervised_tokens_for_loss(n, loss, coef: Mapping[str, float]) -> np.ndarray:
    """D such that L(N, D) = loss (NaN where N alone cannot reach it).

    Inverts the supervised law in D; the planner uses it to name a teacher for a
    teacher loss.
    """
    n = np.asarray(n, dtype=float)
    loss = np.asarray(loss, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        rest = (loss - coef["E"]) ** (1.0 / coef.get("gamma", 1.0)) - coef["A"] / n ** coef["alpha"]
        d = (coef["B"] / rest) ** (1.0 / coef["beta"])
    return np.where((loss > coef["E"]) & (rest > 0), d, np.nan)
