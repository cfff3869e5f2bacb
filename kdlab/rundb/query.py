"""Tables of runs for fits, exports and reports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from kdlab.rundb.store import RunStore

_SUPERVISED_ROLES = ("teacher", "supervised")


def kd_objective(objective: Mapping[str, Any] | None) -> str | None:
    """A student's distillation objective in one short label, None for other runs.

    Students of different objectives (an ablation's lambda = 0 student is a supervised
    run) follow different laws, so fits and figures keep one label apart from the rest.
    """
    if not objective or "kd_lambda" not in objective:
        return None
    get = objective.get
    div = "hard" if get("hard") else get("divergence", "forward_kl")
    parts = [div, f"lambda={float(get('kd_lambda', 1.0)):g}", f"tau={float(get('tau', 1.0)):g}"]
    if not get("tau_squared", True):
        parts.append("no_tau2")
    parts += [f"{k}={get(k):g}" for k in ("top_k", "top_p") if get(k) is not None]
    if div == "jsd" and get("beta") is not None:
        parts.append(f"beta={get('beta'):g}")
    if div in ("skew_kl", "skew_reverse_kl") and get("alpha") is not None:
        parts.append(f"alpha={get('alpha'):g}")
    if div == "taid":
        parts += [f"taid_{k}={v:g}" for k, v in sorted((get("taid") or {}).items())]
    return " ".join(parts)


def runs_frame(url: str, **equals: object) -> pd.DataFrame:
    """All runs matching ``equals`` as a DataFrame, config replaced by kd_objective."""
    rows = RunStore(url, create=False).find(**equals)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["kd_objective"] = [kd_objective((c or {}).get("objective")) for c in frame["config"]]
    return frame.drop(columns=["config"])


def fit_points(url: str, law: str) -> pd.DataFrame:
    """Finished runs a law can be fitted to; diverged and running runs never enter a fit.

    supervised: teachers and supervised baselines, columns N, D, loss.
    distillation: students, columns N_S, D_S, L_T, loss, kd_objective.
    Both carry corpus, tokenizer, n_ctx and run_key so the caller can refuse to mix them,
    and vocab_size and rho (d_model / n_layer) for the fit's F(N).
    """
    frame = runs_frame(url, status="done")
    keep = ["corpus_fingerprint", "tokenizer", "n_ctx", "vocab_size", "rho", "key"]
    if frame.empty:
        return pd.DataFrame(columns=["N", "D", "loss", "corpus", "tokenizer", "n_ctx", "run_key"])
    frame = frame.assign(rho=frame["d_model"] / frame["n_layer"])  # for the fit's F(N)
    if law == "supervised":
        frame = frame[frame["role"].isin(_SUPERVISED_ROLES)]
        out = frame[["n_params", "tokens", "val_loss", *keep]].rename(
            columns={"n_params": "N", "tokens": "D", "val_loss": "loss"}
        )
    elif law == "distillation":
        frame = frame[frame["role"] == "student"]
        out = frame[["n_params", "tokens", "teacher_loss", "val_loss", "kd_objective", *keep]]
        out = out.rename(
            columns={"n_params": "N_S", "tokens": "D_S", "teacher_loss": "L_T", "val_loss": "loss"}
        )
    else:
        raise ValueError(f"unknown law '{law}': choose supervised or distillation")
    out = out.rename(columns={"corpus_fingerprint": "corpus", "key": "run_key"})
    return out.reset_index(drop=True)
