"""Every bootstrap resample's coefficients, kept in the fit JSON, and read back.

Intervals on the coefficients say how sure a fit is, but not how sure anything made from
it is (a plan's verdict, a predicted loss): for that, the quantity is computed once per
resample. So a fit keeps the resamples themselves, as one base64 string of little-endian
float64 (one row per resample, the columns named beside it): 4096 resamples of nine
coefficients take 390 kB, where a JSON list written with the fit's indentation would
put each number on a line of its own. Fits written before resamples were kept still
load; they only have no resamples to offer.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kdlab.laws.io import LawInputError

FORMAT = "base64 float64 little-endian, one row per resample"


def encode_samples(names: Sequence[str], rows: np.ndarray) -> dict[str, Any]:
    """Resampled coefficients (one row per resample, columns ``names``) -> JSON object."""
    table = np.ascontiguousarray(np.asarray(rows, dtype="<f8").reshape(-1, len(names)))
    return {
        "coefficients": list(names),
        "format": FORMAT,
        "data": base64.b64encode(table.tobytes()).decode("ascii"),
    }


def decode_samples(fit: Mapping[str, Any], where: str = "the fit") -> list[dict[str, float]]:
    """The resamples of one law's fit document as coefficient dicts; [] without any.

    Coefficients a resample does not vary (a fixed gamma) keep the fit's value.
    """
    stored = (fit.get("bootstrap") or {}).get("samples")
    if not stored:
        return []
    try:
        names = [str(n) for n in stored["coefficients"]]
        if stored.get("format") != FORMAT or not names:
            raise ValueError
        table = np.frombuffer(base64.b64decode(stored["data"], validate=True), dtype="<f8")
        table = table.reshape(-1, len(names))
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise LawInputError(
            f"The bootstrap resamples stored in {where} are malformed (expected "
            f"'coefficients' and 'data' as {FORMAT})."
        ) from None
    point = {k: float(v) for k, v in (fit.get("coefficients") or {}).items()}
    return [{**point, **dict(zip(names, map(float, row), strict=True))} for row in table]


def resampled_coefficients(
    coefs: Mapping[str, Any], limit: int | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Coefficient sets of the bootstrap resamples of a loaded fit (load_coefficients),
    and one sentence saying what they are; no sets when the fit stored none.

    A distillation fit's resamples were refitted with the supervised point estimate,
    and its supervised fit has resamples of its own (of other runs): resample i takes
    the i-th of each, as far as both go. A law without resamples keeps its point
    estimate, and the sentence says so.
    """
    doc = coefs.get("doc") or {}
    dist_doc = doc if coefs.get("distillation") is not None else None
    sup_doc = doc.get("supervised", {}) if dist_doc is not None else doc
    sup = decode_samples(sup_doc, "the supervised fit")
    dist = decode_samples(dist_doc, "the distillation fit") if dist_doc is not None else []
    if not sup and not dist:
        return [], "The fit stores no bootstrap resamples (refit with --bootstrap B to have them)."
    n = min(len(sup), len(dist)) if sup and dist else max(len(sup), len(dist))
    n = min(n, limit) if limit else n
    sets = [
        {
            **coefs,
            "supervised": sup[i] if sup else coefs["supervised"],
            "distillation": dist[i] if dist else coefs["distillation"],
            "doc": None,
        }
        for i in range(n)
    ]
    if sup and (dist or dist_doc is None):
        what = f"{n} bootstrap resamples"
        if dist:
            what += " (supervised and distillation resamples paired by index)"
    elif sup:
        what = f"{n} resamples of the supervised law; the distillation law has none"
    else:
        what = f"{n} resamples of the distillation law; the supervised law has none"
    return sets, f"{what}."
