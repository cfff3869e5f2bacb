"""Tables of runs for fits, exports and reports."""

from __future__ import annotations

import pandas as pd

from kdlab.rundb.store import RunStore

_SUPERVISED_ROLES = ("teacher", "supervised")


def runs_frame(url: str, **equals: object) -> pd.DataFrame:
    """All runs matching ``equals`` as a DataFrame (config column left out)."""
    rows = RunStore(url).find(**equals)
    frame = pd.DataFrame(rows)
    return frame.drop(columns=["config"], errors="ignore")


def fit_points(url: str, law: str) -> pd.DataFrame:
    """Finished runs a law can be fitted to; diverged and running runs never enter a fit.

    supervised: teachers and supervised baselines, columns N, D, loss.
    distillation: students, columns N_S, D_S, L_T, loss.
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
        out = frame[["n_params", "tokens", "teacher_loss", "val_loss", *keep]].rename(
            columns={"n_params": "N_S", "tokens": "D_S", "teacher_loss": "L_T", "val_loss": "loss"}
        )
    else:
        raise ValueError(f"unknown law '{law}': choose supervised or distillation")
    out = out.rename(columns={"corpus_fingerprint": "corpus", "key": "run_key"})
    return out.reset_index(drop=True)
