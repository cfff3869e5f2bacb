"""Reading fit inputs (CSV, run database, fit JSON) and refusing bad ones early.

Every check raises ``LawInputError`` with one sentence that names the problem, so the
command line can print it and exit non-zero without a traceback (kdlab.errors).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kdlab.errors import ConfigError
from kdlab.laws.published import PAPER_FLOPS, paper_fit_document

if TYPE_CHECKING:
    import pandas as pd

SUPERVISED_COLUMNS = ("N", "D", "loss")
DISTILLATION_COLUMNS = ("N_S", "D_S", "L_T", "loss")
COMPARABILITY_COLUMNS = ("corpus", "tokenizer", "n_ctx", "recipe", "kd_objective")
# the fit's option that selects one value of each
SELECT_OPTION = {
    "corpus": "--corpus",
    "tokenizer": "--tokenizer",
    "n_ctx": "--n-ctx",
    "recipe": "--recipe",
    "kd_objective": "--kd-objective",
}
SUPERVISED_KEYS = ("E", "A", "B", "alpha", "beta")
DISTILLATION_KEYS = ("A", "B", "alpha", "beta", "gamma", "c0", "c1", "f1", "d1")


class LawInputError(ConfigError):
    """Input that cannot be fitted, predicted or planned; the message is one sentence."""


def law_columns(law: str) -> tuple[str, ...]:
    if law == "supervised":
        return SUPERVISED_COLUMNS
    if law == "distillation":
        return DISTILLATION_COLUMNS
    raise LawInputError(f"Unknown law {law!r}: choose supervised or distillation.")


def read_csv_points(
    path: str | Path,
    law: str,
    columns: Mapping[str, str] | None = None,
    flops_col: str | None = None,
) -> pd.DataFrame:
    """A CSV of runs -> a frame with the canonical columns of ``law`` (plus the originals).

    ``columns`` maps canonical names (N, D, loss / N_S, D_S, L_T, loss) to the CSV's
    column names. With ``flops_col`` the tokens are D = C / (6 N) from a FLOP column,
    as in Epoch AI's Chinchilla data.
    """
    import pandas as pd  # late: predict and plan do without it

    path = Path(path)
    if not path.is_file():
        raise LawInputError(f"The CSV file {path} does not exist.")
    try:
        raw = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LawInputError(f"Cannot read {path} as CSV: {exc}.") from None
    columns = dict(columns or {})
    wanted = law_columns(law)
    n_name, d_name = wanted[0], wanted[1]
    out = pd.DataFrame(index=raw.index)
    for canon in wanted:
        if canon == d_name and flops_col is not None:
            continue
        src = columns.get(canon, canon)
        if src not in raw.columns:
            raise LawInputError(
                f"Column {src!r} (for {canon}) is missing from {path}; "
                f"its columns are {', '.join(map(repr, raw.columns))}."
            )
        out[canon] = pd.to_numeric(raw[src], errors="coerce")
    if flops_col is not None:
        if flops_col not in raw.columns:
            raise LawInputError(
                f"FLOP column {flops_col!r} is missing from {path}; "
                f"its columns are {', '.join(map(repr, raw.columns))}."
            )
        flops = pd.to_numeric(raw[flops_col], errors="coerce")
        out[d_name] = flops / (6.0 * out[n_name])
    for col in raw.columns:  # keep the rest for --fit-where and provenance
        if col not in out.columns:
            out[col] = raw[col]
    return out[list(wanted) + [c for c in out.columns if c not in wanted]]


def read_db_points(
    url: str, law: str, filters: Mapping[str, Any] | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Finished runs of the right role from the run database, all of one kind of data.

    Refuses to mix corpora, tokenizers or context lengths: losses measured on different
    validation data are not comparable, nor runs of different
    training recipes, nor students distilled with different objectives. ``filters``
    (corpus, tokenizer, n_ctx, recipe, kd_objective) select one kind when the database
    holds several.
    """
    try:
        from kdlab.rundb import shown_url  # imported late on purpose
        from kdlab.rundb.query import fit_points
    except ImportError as exc:
        raise LawInputError(
            f"The run database reader kdlab.rundb.fit_points is not available ({exc}); "
            "give the runs as --csv PATH instead."
        ) from None
    try:
        df = fit_points(url, law)
    except ConfigError:  # a missing database, a bad filter: already one sentence
        raise
    except Exception as exc:  # database errors come in many types; report, do not trace
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise LawInputError(
            f"Cannot read runs from the database {shown_url(url)}: {reason}."
        ) from None
    import pandas as pd

    df = matching_rows(pd.DataFrame(df), filters or {})
    return df, check_comparable(df, url)


def matching_rows(df: Any, equals: Mapping[str, Any]) -> Any:
    """Rows whose columns equal the given values (compared as text, so 4096 == "4096");
    a None value or a column the frame lacks selects nothing out."""
    for key, value in equals.items():
        if value is not None and key in df.columns:
            same = df[key].astype(str) == str(value)
            if key == "corpus" and "corpus_name" in df.columns:  # a name or a fingerprint
                same |= df["corpus_name"].astype(str) == str(value)
            df = df[same]
    return df


def check_comparable(df: pd.DataFrame, source: str) -> dict[str, Any]:
    """The single (corpus, tokenizer, n_ctx, recipe, kd_objective) of the runs, or a
    LawInputError."""
    info: dict[str, Any] = {}
    mixed = []
    for col in COMPARABILITY_COLUMNS:
        if col not in df.columns:
            continue
        values = sorted(df[col].dropna().astype(str).unique())
        if len(values) > 1 and col == "corpus" and "corpus_name" in df.columns:
            named = df.dropna(subset=["corpus_name"])
            names = dict(zip(named[col].astype(str), named["corpus_name"].astype(str), strict=True))
            values = [f"{v} ({names[v]})" if v in names else v for v in values]  # by name too
        if len(values) > 1:
            mixed.append(f"{col} in {{{', '.join(values)}}}")
        elif values:
            v = df[col].dropna().iloc[0]
            info[col] = v.item() if hasattr(v, "item") else v
    if mixed:
        options = " and ".join(SELECT_OPTION[m.split(" ")[0]] for m in mixed)
        raise LawInputError(
            f"The runs in {source} mix {' and '.join(mixed)}, whose losses are not "
            f"comparable; select one with {options}."
        )
    return info


def validate_points(df: pd.DataFrame, law: str, n_coefficients: int, what: str = "runs") -> None:
    """Refuse data a fit cannot use: missing, NaN or non-positive values, too few runs,
    or no spread in size or data (the law could not tell them apart)."""
    import pandas as pd

    cols = law_columns(law)
    for col in cols:
        if col not in df.columns:
            raise LawInputError(f"The {what} have no column {col!r}.")
    for col in cols:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values) | (values <= 0)
        if bad.any():
            first = df.index[np.argmax(bad)]
            raise LawInputError(
                f"Column {col} has {int(bad.sum())} missing, NaN or non-positive value(s) "
                f"(first at row {first}); every {', '.join(cols)} must be a positive number."
            )
    if len(df) <= n_coefficients:
        raise LawInputError(
            f"Only {len(df)} {what} for {n_coefficients} coefficients; a fit needs more runs "
            "than coefficients."
        )
    for col, meaning in ((cols[0], "size"), (cols[1], "tokens")):
        if df[col].nunique() < 2:
            raise LawInputError(
                f"All {what} have the same {col} ({df[col].iloc[0]:.4g}), so the fit cannot "
                f"separate the effect of {meaning}; add runs at other values of {col}."
            )


def load_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise LawInputError(f"The file {path} does not exist.")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LawInputError(f"{path} is not valid JSON: {exc}.") from None
    if not isinstance(doc, dict):
        raise LawInputError(f"{path} does not hold a fit (a JSON object was expected).")
    return doc


def _coefficients(doc: Mapping[str, Any], keys: tuple[str, ...], where: str) -> dict[str, float]:
    coef = doc.get("coefficients")
    if not isinstance(coef, Mapping):
        raise LawInputError(f"{where} has no 'coefficients' object.")
    missing = [k for k in keys if k not in coef]
    if missing:
        raise LawInputError(f"{where} lacks the coefficient(s) {', '.join(missing)}.")
    out = {k: float(v) for k, v in coef.items() if isinstance(v, (int, float))}
    bad = [k for k in keys if not np.isfinite(out.get(k, np.nan))]
    if bad:
        raise LawInputError(f"{where} has non-numeric coefficient(s) {', '.join(bad)}.")
    out.setdefault("gamma", 1.0)
    return out


def load_supervised(spec: str) -> tuple[dict[str, float], dict[str, Any]]:
    """``paper`` or a supervised fit JSON -> (coefficients, the document)."""
    if spec == "paper":
        doc = paper_fit_document()["supervised"]
    else:
        doc = load_json(spec)
        if doc.get("law") == "distillation" and isinstance(doc.get("supervised"), Mapping):
            doc = doc["supervised"]
        elif doc.get("law") not in (None, "supervised"):
            raise LawInputError(f"{spec} is a {doc.get('law')} fit, not a supervised one.")
    return _coefficients(doc, SUPERVISED_KEYS, "The supervised fit"), dict(doc)


PLAN_BOUNDS = (1e6, 1e17)  # the paper's bounds on N_T, D_T and D_S


def plan_bounds_for(*sizes_and_tokens: Any) -> list[float]:
    """Planner bounds for a fit: the paper's, reaching down to a tenth of its smallest N or D.

    A nano study's models and budgets sit far below 1e6, where the paper's lower bound
    would leave the planner no teacher at all.
    """
    smallest = min(float(np.min(np.asarray(v, dtype=float))) for v in sizes_and_tokens)
    lo = min(PLAN_BOUNDS[0], 10 ** np.floor(np.log10(smallest) - 1))
    return [float(lo), PLAN_BOUNDS[1]]


def load_coefficients(spec: str) -> dict[str, Any]:
    """``paper`` or a fit JSON -> {"supervised", "distillation" (or None), "flops", "doc"}.

    A distillation fit carries the supervised coefficients it used, so both laws come
    from one file.
    """
    doc = paper_fit_document() if spec == "paper" else load_json(spec)
    where = "The published fit" if spec == "paper" else str(spec)
    law = doc.get("law", "supervised")
    flops = dict(PAPER_FLOPS)
    flops.update({k: float(v) for k, v in (doc.get("flops") or {}).items() if k in PAPER_FLOPS})
    # the planner searches N_T, D_T, D_S within the scale the fit was made at
    bounds = tuple(float(b) for b in doc.get("plan_bounds") or PLAN_BOUNDS)
    if law == "supervised":
        return {
            "supervised": _coefficients(doc, SUPERVISED_KEYS, where),
            "distillation": None,
            "flops": flops,
            "bounds": bounds,
            "doc": doc,
        }
    if law == "distillation":
        sup = doc.get("supervised")
        if not isinstance(sup, Mapping):
            raise LawInputError(f"{where} is a distillation fit without its supervised fit.")
        return {
            "supervised": _coefficients(sup, SUPERVISED_KEYS, f"The supervised part of {where}"),
            "distillation": _coefficients(doc, DISTILLATION_KEYS, where),
            "flops": flops,
            "bounds": bounds,
            "doc": doc,
        }
    raise LawInputError(f"{where} has an unknown law {law!r}.")
