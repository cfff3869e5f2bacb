"""Tables of runs for fits, exports and reports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from kdlab.rundb.store import RunStore, live_status

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


def recipe(config: Mapping[str, Any] | None) -> str | None:
    """A run's training recipe in one short label: optimiser, schedule, batch and clipping.

    Runs of one size and budget trained with another learning rate, warm-up or batch end
    at other losses, so a law fitted across recipes is fitted to noise of the choice
    (two rows at another learning rate moved A from 0.66 to 35,477); fits and figures
    keep one recipe, as they keep one distillation objective.
    """
    if not config or not config.get("optim"):
        return None
    optim = config["optim"]
    module = (config.get("data") or {}).get("module") or {}
    trainer = config.get("trainer") or {}
    if optim.get("warmup_steps") is not None:
        warmup = f"warmup={optim['warmup_steps']}steps"
    else:
        warmup = f"warmup={_g(optim.get('warmup_fraction'))}"
    batch = f"batch={module.get('batch_size', '?')}"
    if trainer.get("accumulate_grad_batches", 1) not in (1, None):
        batch += f"x{trainer['accumulate_grad_batches']}"
    return " ".join(
        [
            f"lr={_g(optim.get('lr'))}",
            f"wd={_g(optim.get('weight_decay'))}",
            warmup,
            f"min_lr={_g(optim.get('min_lr_ratio'))}",
            f"z_loss={_g(optim.get('z_loss'))}",
            batch,
            f"clip={_g(trainer.get('gradient_clip_val'))}",
        ]
    )


def _g(value: Any) -> str:
    return "none" if value is None else f"{float(value):g}"


def runs_frame(url: str, **equals: object) -> pd.DataFrame:
    """All runs matching ``equals`` as a DataFrame, config replaced by its kd_objective
    and recipe labels; a running run whose process is gone shows as interrupted
    (``status`` filters on that shown status)."""
    status = equals.pop("status", None)
    rows = RunStore(url, create=False).find(**equals)
    for row in rows:
        row["status"] = live_status(row)
    rows = [row for row in rows if status is None or row["status"] == status]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    configs = [c or {} for c in frame["config"]]
    frame["kd_objective"] = [kd_objective(c.get("objective")) for c in configs]
    frame["recipe"] = [recipe(c) for c in configs]
    return frame.drop(columns=["config"])


def fit_points(url: str, law: str) -> pd.DataFrame:
    """Finished runs a law can be fitted to; diverged and running runs never enter a fit.

    supervised: teachers and supervised baselines, columns N, D, loss.
    distillation: students, columns N_S, D_S, L_T, loss, kd_objective.
    Both carry corpus, tokenizer, n_ctx, recipe and run_key so the caller can refuse to
    mix them,
    and vocab_size and rho (d_model / n_layer) for the fit's F(N).
    """
    frame = runs_frame(url, status="done")
    keep = ["corpus_fingerprint", "tokenizer", "n_ctx", "recipe", "vocab_size", "rho", "key"]
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
