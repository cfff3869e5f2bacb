"""The report's figures: one function per figure, each returning the PNG it saved.

Every function draws whatever part of its data exists and raises ``SkipFigure`` with
one sentence when nothing it needs does (no students yet, no fit given), so a report of
a half-finished study still builds. Laws are evaluated with kdlab.laws.forms only.

Figures are made with matplotlib's object API on the Agg canvas (no pyplot), so the
report never changes the backend of a notebook or a training process that imports it.
Sizes and fonts are chosen to stay readable on a slide.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from kdlab.laws.compute import flops_per_token
from kdlab.laws.fit import error_summary
from kdlab.laws.flags import coefficient_flags
from kdlab.laws.forms import distillation_loss, supervised_loss
from kdlab.report.data import ReportData, fit_membership
from kdlab.report.planning import SCENARIO_ORDER, SCENARIO_TITLES, PlanSet, on_search_bound
from kdlab.report.tables import capacity_gap_table

DPI = 150
WARN_COLOR = "#b00020"
LOSS_LABEL = "validation loss (nats/token)"
STYLE = {
    "font.size": 12,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "legend.fontsize": 10,
    "figure.titlesize": 15,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linestyle": "-",
}
SIZE_CMAP = colormaps["viridis"]
SHARE_COLORS = {
    "share_student": "#4c72b0",
    "share_teacher_logits": "#dd8452",
    "share_teacher_pretraining": "#c44e52",
}
SHARE_LABELS = {
    "share_student": "student training",
    "share_teacher_logits": "teacher logits",
    "share_teacher_pretraining": "teacher pretraining",
}
STATUS_STYLE = {
    "fitted": {"marker": "o", "color": "#4c72b0", "label": "fitted"},
    "held out": {"marker": "^", "color": "#dd8452", "label": "held out (extrapolation)"},
    "dropped": {"marker": "x", "color": "#7f7f7f", "label": "dropped (highest losses)"},
    "new": {"marker": "D", "color": "#55a868", "label": "recorded after the fit"},
}


class SkipFigure(Exception):
    """A figure whose inputs do not exist (yet); the message says which."""


# ------------------------------------------------------------------------ helpers


def fmt_count(x: float) -> str:
    """198000000 -> '198M', 1.82e9 -> '1.82B': how the paper names sizes and tokens."""
    x = float(x)
    if abs(x) >= 1e15:  # beyond T the suffixes stop being familiar
        return fmt_flops(x)
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def fmt_flops(x: float) -> str:
    """3e19 -> '3e19' (FLOP budgets read best as powers of ten)."""
    mant, exp = f"{float(x):.2e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def _figure(nrows: int, ncols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    with _style():
        fig = Figure(figsize=(width, height), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


class _style:
    """rcParams for the figures, restored afterwards (they are global to matplotlib)."""

    def __enter__(self) -> None:
        import matplotlib as mpl

        self._ctx = mpl.rc_context(STYLE)
        self._ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def _save(fig: Figure, out_dir: Path, name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    with _style():
        fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def _log_norm(values: Sequence[float] | np.ndarray) -> LogNorm:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    lo, hi = (float(v.min()), float(v.max())) if len(v) else (1.0, 10.0)
    if hi <= lo * 1.0001:
        lo, hi = lo / 1.5, hi * 1.5
    return LogNorm(lo, hi)


def _color(cmap_norm: tuple[Any, Normalize], value: float, top: float = 0.9) -> tuple:
    """Colour of a value; ``top`` < 1 stops before the pale end of the map (unreadable
    lines on white)."""
    cmap, norm = cmap_norm
    return cmap(top * float(np.clip(norm(value), 0.0, 1.0)))


def _levels(values: np.ndarray, most: int) -> np.ndarray:
    """The distinct values if there are few, else ``most`` spread evenly in log."""
    v = np.unique(np.asarray(values, dtype=float))
    if len(v) <= most:
        return v
    picks = np.geomspace(v.min(), v.max(), most)
    return np.unique([v[np.argmin(np.abs(np.log(v / p)))] for p in picks])


def _round_sig(x: np.ndarray, digits: int = 2) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    mag = 10.0 ** (np.floor(np.log10(np.abs(x))) - digits + 1)
    return np.round(x / mag) * mag


def _span(values: np.ndarray, pad: float = 1.4) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return np.geomspace(v.min() / pad, v.max() * pad, 200)


def _law_proxy(label: str, style: str = "-") -> Line2D:
    return Line2D([], [], color="0.3", linestyle=style, linewidth=2, label=label)


def _runs_proxy(
    label: str = "runs", marker: str = "o", size: float = 7, color: str = "0.3", **style: Any
) -> Line2D:
    """A legend entry for plotted points: a marker without a line."""
    return Line2D(
        [], [], color=color, marker=marker, linestyle="none", markersize=size, label=label, **style
    )


def _count_axis(axis: Any) -> None:
    """Log axis of parameters or tokens labelled 100M, 200M, 500M, 1B (not 2x10^8)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: fmt_count(v)))
    axis.set_minor_formatter(NullFormatter())


def _plain_axis(axis: Any) -> None:
    """Log axis of plain numbers (tokens per parameter) labelled 20, 50, 100."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _flagged(data: ReportData, *laws: str) -> dict[str, str]:
    """Degenerate coefficients (kdlab.laws.flags) of the fits a figure draws."""
    docs = {
        "supervised": data.supervised_doc,
        "distillation": data.distillation_fit.doc if data.distillation_fit else None,
    }
    out: dict[str, str] = {}
    for law in laws:
        if docs[law]:
            out.update(coefficient_flags(docs[law]))
    return out


def _suptitle(fig: Figure, text: str, flagged: Mapping[str, str] | None = None) -> None:
    """The figure's title; above it, in red, what in the figure is degenerate."""
    if flagged:
        warning = (
            f"DEGENERATE FIT: {', '.join(flagged)} not determined by the runs "
            "(see the report's warnings); its curves are not measurements"
        )
        # wrapped to the figure's width (about 7 title characters an inch), not clipped
        text = textwrap.fill(warning, width=int(fig.get_figwidth() * 7)) + f"\n{text}"
    fig.suptitle(text, color=WARN_COLOR if flagged else "black")


def _no_fit_note(ax: Any, what: str) -> None:
    ax.text(
        0.02,
        0.02,
        f"no {what} fit given: runs only",
        transform=ax.transAxes,
        fontsize=9,
        color="0.35",
        va="bottom",
    )


# ------------------------------------------------------------------ supervised


def supervised_loss_figure(data: ReportData, out_dir: Path) -> Path:
    """Loss against N at fixed tokens per parameter and against D at fixed N, with the law."""
    sup = data.supervised
    if sup.empty:
        raise SkipFigure("No finished teacher or supervised run is recorded yet.")
    coef = data.supervised_coef
    fig, axes = _figure(1, 2, 14, 5.6)
    ax_n, ax_d = axes[0]
    m = _round_sig(sup["D"] / sup["N"])
    m_norm = (SIZE_CMAP, _log_norm(m))
    n_norm = (SIZE_CMAP, _log_norm(sup["N"]))
    with _style():
        ax_n.scatter(
            sup["N"],
            sup["loss"],
            c=[_color(m_norm, v) for v in m],
            s=45,
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
        )
        ax_d.scatter(
            sup["D"],
            sup["loss"],
            c=[_color(n_norm, v) for v in sup["N"]],
            s=45,
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
        )
        if coef is not None:
            n_grid = _span(sup["N"])
            for level in _m_levels(sup, m):
                ax_n.plot(
                    n_grid,
                    supervised_loss(n_grid, level * n_grid, coef),
                    color=_color(m_norm, level),
                    linewidth=1.8,
                )
            for level in _levels(sup["N"].to_numpy(), 8):
                d_grid = _span(sup.loc[sup["N"] == level, "D"], 2.0)
                ax_d.plot(
                    d_grid,
                    supervised_loss(level, d_grid, coef),
                    color=_color(n_norm, level),
                    linewidth=1.8,
                )
        else:
            _no_fit_note(ax_n, "supervised")
        for ax, norm, label, fmt in (
            (ax_n, m_norm, "tokens per parameter M = D / N", _plain_axis),
            (ax_d, n_norm, "non-embedding parameters N", _count_axis),
        ):
            bar = fig.colorbar(_scalar_mappable(norm), ax=ax, label=label, pad=0.01)
            fmt(bar.ax.yaxis)
            ax.set_xscale("log")
            _count_axis(ax.xaxis)
            ax.set_ylabel(LOSS_LABEL)
            handles = [_runs_proxy("runs (teachers, supervised)")]
            if coef is not None:
                handles.append(_law_proxy("fitted law L(N, D)"))
            lines, levels = _floor_lines(ax, sup, coef)
            ax.legend(handles=handles + lines, loc="upper right")
            _loss_range(ax, [*sup["loss"], *levels])
        ax_n.set_xlabel("non-embedding parameters N")
        ax_n.set_title("loss vs model size (curves at fixed M)")
        ax_d.set_xlabel("training tokens D")
        ax_d.set_title("loss vs training tokens (curves at fixed N)")
        _suptitle(
            fig,
            f"Supervised scaling: {len(sup)} runs{_form_suffix(data)}",
            _flagged(data, "supervised") if coef is not None else None,
        )
    return _save(fig, out_dir, "supervised_loss")


def _loss_range(ax: Any, losses: Sequence[float]) -> None:
    """The y range of the runs and the horizontal lines, not of the law's curves: a
    degenerate law extrapolated to a small M can reach a loss of 100 and flatten the runs."""
    lo, hi = min(losses), max(losses)
    pad = 0.08 * (hi - lo) if hi > lo else 0.05 * hi
    ax.set_ylim(lo - pad, hi + 3 * pad)  # room above for the legend


def _floor_lines(
    ax: Any, sup: pd.DataFrame, coef: Mapping[str, float] | None
) -> tuple[list[Line2D], list[float]]:
    """The corpus's known least loss (a Markov chain's) beside the fitted E, where the runs
    have one: the check of E against the truth, drawn. Their legend entries and levels."""
    floors = sup["known_floor"].dropna().unique() if "known_floor" in sup else []
    if len(floors) != 1 or sup["known_floor"].isna().any():
        return [], []
    drawn = [(float(floors[0]), "black", "--", f"least reachable loss {floors[0]:.4g} (known)")]
    if coef is not None:
        drawn.append((float(coef["E"]), "tab:red", ":", f"fitted E {coef['E']:.4g}"))
    lines = []
    for level, color, style, label in drawn:
        ax.axhline(level, color=color, linestyle=style, linewidth=1.5)
        lines.append(Line2D([], [], color=color, linestyle=style, linewidth=1.5, label=label))
    return lines, [level for level, *_ in drawn]


def _m_levels(sup: pd.DataFrame, m: np.ndarray) -> np.ndarray:
    """Tokens per parameter of the fixed-M families (an M shared by several sizes), or a
    spread of the M seen when there are none."""
    frame = pd.DataFrame({"m": m, "N": sup["N"].to_numpy(float)})
    shared = frame.groupby("m")["N"].nunique()
    shared = shared[shared >= 2].index.to_numpy(float)
    return _levels(shared, 6) if len(shared) else _levels(m, 5)


def _form_suffix(data: ReportData) -> str:
    doc = data.supervised_doc
    if not doc:
        return ""
    form = doc.get("form", "paper")
    return f", {'Chinchilla form (gamma = 1)' if form == 'chinchilla' else 'paper form'} fit"


def _scalar_mappable(cmap_norm: tuple[Any, Normalize]) -> Any:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap

    cmap, norm = cmap_norm
    trimmed = ListedColormap(cmap(np.linspace(0, 0.9, 256)))
    return ScalarMappable(norm=norm, cmap=trimmed)


def isoflop_groups(sup: pd.DataFrame, min_sizes: int = 3, tol: float = 0.05) -> list[tuple]:
    """Runs of (almost) equal training FLOPs and at least ``min_sizes`` model sizes.

    IsoFLOP sweeps give each size D = C / (3 F(N)), rounded to whole tokens, so their
    recorded FLOPs agree to far better than ``tol`` (relative); other runs rarely do.
    """
    runs = sup[np.isfinite(sup["flops"]) & (sup["flops"] > 0)].sort_values("flops")
    if runs.empty:
        return []
    log_c = np.log(runs["flops"].to_numpy())
    cut = np.concatenate([[0], np.nonzero(np.diff(log_c) > np.log1p(tol))[0] + 1, [len(runs)]])
    groups = []
    for a, b in zip(cut[:-1], cut[1:], strict=True):
        g = runs.iloc[a:b]
        if g["N"].nunique() >= min_sizes:
            groups.append((float(np.exp(np.mean(np.log(g["flops"])))), g.sort_values("N")))
    return groups


def _fpt_function(sup: pd.DataFrame, flops: Mapping[str, float]) -> Callable:
    """Forward FLOPs per token as a function of N, through the runs' own exact counts.

    The law's curve along an IsoFLOP profile must pass where the runs are, so D = C /
    (3 F(N)) uses the recorded counts (log-log interpolation between sizes; outside them
    the fit's F(N) accounting, scaled to meet the nearest run).
    """
    fpt = sup["flops_per_token"].to_numpy(float)
    if not np.isfinite(fpt).any():
        fpt = sup["flops"].to_numpy(float) / (3.0 * sup["D"].to_numpy(float))
    ok = np.isfinite(fpt) & (fpt > 0)
    if ok.sum() == 0:
        return lambda n: flops_per_token(n, flops)
    table = pd.DataFrame({"n": sup["N"].to_numpy(float)[ok], "f": fpt[ok]}).groupby("n").f.mean()
    log_n, log_f = np.log(table.index.to_numpy()), np.log(table.to_numpy())

    def fn(n: Any) -> np.ndarray:
        n = np.asarray(n, dtype=float)
        ln = np.log(n)
        inside = np.interp(ln, log_n, log_f)
        lo_ratio = log_f[0] - np.log(flops_per_token(np.exp(log_n[0]), flops))
        hi_ratio = log_f[-1] - np.log(flops_per_token(np.exp(log_n[-1]), flops))
        approx = np.log(flops_per_token(n, flops))
        out = np.where(ln < log_n[0], approx + lo_ratio, inside)
        out = np.where(ln > log_n[-1], approx + hi_ratio, out)
        return np.exp(out)

    return fn


def _parabola_minimum(n: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
    """(N*, L*) of a parabola in log N through an IsoFLOP profile (Chinchilla approach 2);
    the lowest run when the parabola opens downwards or its vertex lies far outside."""
    x = np.log(n)
    a, b, c = np.polyfit(x, loss, 2)
    if a > 0:
        xv = -b / (2 * a)
        if x.min() - 0.5 <= xv <= x.max() + 0.5:
            return float(np.exp(xv)), float(c - b * b / (4 * a))
    i = int(np.argmin(loss))
    return float(n[i]), float(loss[i])


def _law_argmin(
    coef: Mapping[str, float], fpt: Callable, compute: float, n_range: tuple[float, float]
) -> float:
    """The N minimising the supervised law at compute C (grid, then a bounded search)."""
    from scipy.optimize import minimize_scalar

    def loss(log_n: float) -> float:
        n = np.exp(log_n)
        return float(supervised_loss(n, compute / (3.0 * fpt(n)), coef))

    grid = np.linspace(np.log(n_range[0]), np.log(n_range[1]), 200)
    i = int(np.argmin([loss(x) for x in grid]))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    return float(np.exp(minimize_scalar(loss, bounds=(lo, hi), method="bounded").x))


def isoflop_minima(sup: pd.DataFrame) -> list[dict[str, Any]]:
    """Per IsoFLOP profile: its budget, runs, minimum and whether the runs bracket it.

    A minimum is bracketed when the profile's lowest loss lies between a smaller and a
    larger model. Otherwise the optimum may lie beyond the sizes run, and the minimum is
    a bound, not a measurement (nor is an N* exponent fitted to such minima).
    """
    out = []
    for c, g in isoflop_groups(sup) if not sup.empty else []:
        n, loss = g["N"].to_numpy(float), g["loss"].to_numpy(float)
        n_star, l_star = _parabola_minimum(n, loss)
        i = int(np.argmin(loss))
        out.append(
            {"compute": c, "runs": g, "N": n_star, "loss": l_star, "bracketed": 0 < i < len(n) - 1}
        )
    return out


def isoflop_warnings(sup: pd.DataFrame) -> list[str]:
    """A sentence for the report when IsoFLOP minima are not bracketed by runs."""
    minima = isoflop_minima(sup)
    loose = [m for m in minima if not m["bracketed"]]
    if not loose:
        return []
    where = ", ".join(f"{fmt_flops(m['compute'])} FLOPs" for m in loose)
    return [
        f"{len(loose)} of {len(minima)} IsoFLOP minima ({where}) are not bracketed by runs: "
        "the lowest loss is the smallest or largest model run, so the optimum may lie "
        "beyond it. Those minima are bounds, and no N* exponent is fitted to them."
    ]


def isoflop_figure(data: ReportData, out_dir: Path) -> Path:
    """IsoFLOP profiles (loss vs N at fixed compute) with their minima, and N* against C."""
    sup = data.supervised
    minima = isoflop_minima(sup)
    if not minima:
        raise SkipFigure(
            "No IsoFLOP profile yet: it needs at least 3 finished supervised runs of "
            "different sizes with the same training FLOPs."
        )
    coef = data.supervised_coef
    fpt = _fpt_function(sup, data.flops)
    fig, axes = _figure(1, 2, 14, 5.6)
    ax, ax_opt = axes[0]
    c_norm = (colormaps["plasma"], _log_norm([m["compute"] for m in minima]))
    law_opt = []
    with _style():
        for m in minima:
            c, g = m["compute"], m["runs"]
            color = _color(c_norm, c, top=0.8)
            ax.plot(
                g["N"],
                g["loss"],
                "o",
                color=color,
                markeredgecolor="black",
                markeredgewidth=0.5,
                markersize=7,
                label=f"C = {fmt_flops(c)} FLOPs",
            )
            ax.plot(
                m["N"],
                m["loss"],
                "D",
                color=color,
                markerfacecolor=color if m["bracketed"] else "white",
                markeredgecolor="black" if m["bracketed"] else WARN_COLOR,
                markeredgewidth=1 if m["bracketed"] else 2,
                markersize=10,
                zorder=4,
            )
            if coef is not None:
                n_grid = _span(g["N"], 1.3)
                law = supervised_loss(n_grid, c / (3.0 * fpt(n_grid)), coef)
                ax.plot(n_grid, law, color=color, linewidth=1.8)
                i = int(np.argmin(law))
                ax.plot(
                    n_grid[i],
                    law[i],
                    "*",
                    color=color,
                    markeredgecolor="black",
                    markersize=15,
                    zorder=5,
                )
                law_opt.append((c, float(n_grid[i])))
        ax.set_xscale("log")
        _count_axis(ax.xaxis)
        ax.set_xlabel("non-embedding parameters N")
        ax.set_ylabel(LOSS_LABEL)
        ax.set_title("IsoFLOP profiles")
        handles = ax.get_legend_handles_labels()[0]
        handles += [
            _runs_proxy("minimum (parabola in log N)", "D", 9, "0.5", markeredgecolor="black")
        ]
        if not all(m["bracketed"] for m in minima):
            handles.append(
                _runs_proxy(
                    "minimum NOT bracketed by runs (a bound)",
                    "D",
                    9,
                    "white",
                    markeredgecolor=WARN_COLOR,
                    markeredgewidth=2,
                )
            )
        if coef is not None:
            handles += [
                _law_proxy("fitted law at the same C"),
                _runs_proxy("law's minimum", "*", 13, "0.5", markeredgecolor="black"),
            ]
        else:
            _no_fit_note(ax, "supervised")
        ax.legend(handles=handles, loc="upper right", fontsize=9)
        _isoflop_optimum_axis(ax_opt, minima, law_opt, coef, fpt, sup)
        loose = sum(not m["bracketed"] for m in minima)
        title = (
            f"IsoFLOP profiles: {len(minima)} budget(s), {sum(len(m['runs']) for m in minima)} runs"
        )
        if loose:
            title = (
                f"{loose} IsoFLOP minim{'um' if loose == 1 else 'a'} NOT bracketed by runs\n{title}"
            )
        flagged = _flagged(data, "supervised") if coef is not None else {}
        if flagged:
            _suptitle(fig, title, flagged)
        else:
            fig.suptitle(title, color=WARN_COLOR if loose else "black")
    return _save(fig, out_dir, "isoflop")


def _isoflop_optimum_axis(
    ax: Any,
    minima: list[dict[str, Any]],
    law_opt: list[tuple[float, float]],
    coef: Mapping[str, float] | None,
    fpt: Callable,
    sup: pd.DataFrame,
) -> None:
    """N* against C: the runs' minima (bracketed ones filled), a power law through the
    bracketed ones only, and the fitted law's argmin."""
    for bracketed in (True, False):
        pts = [(m["compute"], m["N"]) for m in minima if m["bracketed"] == bracketed]
        if pts:
            ax.plot(
                *np.array(pts).T,
                "D",
                color="#4c72b0" if bracketed else "white",
                markeredgecolor="black" if bracketed else WARN_COLOR,
                markeredgewidth=1 if bracketed else 2,
                markersize=9,
                label="runs: IsoFLOP minima"
                + ("" if bracketed else " NOT bracketed (bounds, not fitted)"),
            )
    good = np.array([(m["compute"], m["N"]) for m in minima if m["bracketed"]])
    if len(good) >= 2 and len(np.unique(good[:, 0])) >= 2:
        slope, icpt = np.polyfit(np.log(good[:, 0]), np.log(good[:, 1]), 1)
        c_line = np.geomspace(good[:, 0].min() / 2, good[:, 0].max() * 2, 50)
        ax.plot(
            c_line,
            np.exp(icpt) * c_line**slope,
            ":",
            color="#4c72b0",
            label=rf"power-law fit: $N^* \propto C^{{{slope:.2f}}}$",
        )
    elif len(minima) >= 2:
        ax.text(
            0.98,
            0.02,
            "no N* exponent: fewer than two minima bracketed by runs",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=10,
            color=WARN_COLOR,
        )
    cs = np.array([m["compute"] for m in minima])
    if coef is not None:
        c_line = np.geomspace(cs.min() / 3, cs.max() * 3, 40)
        n_range = (sup["N"].min() / 30, sup["N"].max() * 30)
        n_opt = [_law_argmin(coef, fpt, c, n_range) for c in c_line]
        ax.plot(c_line, n_opt, color="black", linewidth=1.8, label="fitted law: argmin N")
        ax.plot(*np.array(law_opt).T, "*", color="black", markersize=12)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _count_axis(ax.yaxis)
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("loss-optimal parameters N*")
    ax.set_title("compute-optimal model size")
    ax.legend(loc="upper left")


# ---------------------------------------------------------------- distillation


def _distillation_coefs(data: ReportData) -> tuple[dict, dict] | None:
    fit = data.distillation_fit
    if fit is None:
        return None
    return fit.coefs["distillation"], fit.coefs["supervised"]


def _student_groups(st: pd.DataFrame, most: int) -> tuple[list[tuple], int]:
    """(N_S, D_S) configurations with the most runs (several teachers first)."""
    stats = st.groupby(["N_S", "D_S"]).agg(n=("loss", "size"), teachers=("L_T", "nunique"))
    stats = stats.sort_values(["teachers", "n"], ascending=False)
    keep = stats.index[:most]
    groups = [
        (n_s, d_s, st[(st.N_S == n_s) & (st.D_S == d_s)].sort_values("L_T"))
        for n_s, d_s in sorted(keep)
    ]
    return groups, len(stats) - len(keep)


def capacity_gap_figure(data: ReportData, out_dir: Path, most: int = 8) -> Path:
    """Student loss against teacher loss per student configuration: the capacity gap."""
    st = data.students
    if st.empty:
        raise SkipFigure("No finished student (distillation) run is recorded yet.")
    coefs = _distillation_coefs(data)
    groups, hidden = _student_groups(st, most)
    fig, axes = _figure(1, 1, 12, 6.4)
    ax = axes[0, 0]
    n_norm = (SIZE_CMAP, _log_norm(st["N_S"]))
    m_values = sorted({float(v) for v in _round_sig(st["D_S"] / st["N_S"])})
    markers = dict(zip(m_values, "osD^vP*X<>" * 4, strict=False))
    lo, hi = float(st["L_T"].min()), float(st["L_T"].max())
    lt_grid = np.linspace(lo - 0.2 * max(hi - lo, 0.1), hi + 0.15 * max(hi - lo, 0.1), 400)
    all_y = [st["loss"].to_numpy(float)]
    noise_bars = False
    with _style():
        for n_s, d_s, g in groups:
            color = _color(n_norm, n_s)
            m = float(_round_sig(np.array([d_s / n_s]))[0])
            label = f"N_S = {fmt_count(n_s)}, D_S = {fmt_count(d_s)} (M = {m:g})"
            ax.plot(
                g["L_T"],
                g["loss"],
                markers.get(m, "o"),
                color=color,
                markersize=8,
                markeredgecolor="black",
                markeredgewidth=0.5,
                label=label,
                zorder=3,
            )
            seeds = capacity_gap_table(g)
            repeated = seeds[seeds["seeds"] >= 2]
            if len(repeated):
                ax.errorbar(
                    repeated["L_T"],
                    repeated["loss"],
                    yerr=repeated["loss_sd"],
                    fmt="_",
                    color=color,
                    ecolor="black",
                    elinewidth=1.2,
                    capsize=5,
                    markersize=16,
                    zorder=4,
                )
                noise_bars = True
            if coefs is not None:
                dist, sup = coefs
                curve = distillation_loss(n_s, d_s, lt_grid, dist, sup)
                ax.plot(lt_grid, curve, color=color, linewidth=1.8)
                i = int(np.argmin(curve))
                if 0 < i < len(curve) - 1:
                    ax.plot(
                        lt_grid[i],
                        curve[i],
                        "v",
                        color=color,
                        markersize=11,
                        markeredgecolor="black",
                        zorder=4,
                    )
                alone = float(supervised_loss(n_s, d_s, sup))
                ax.axhline(alone, color=color, linestyle=":", linewidth=1.2)
                all_y.append(curve)
        ax.plot(lt_grid, lt_grid, "--", color="0.5", linewidth=1, label="L_S = L_T")
        handles, _ = ax.get_legend_handles_labels()
        if noise_bars:
            handles.append(
                Line2D(
                    [],
                    [],
                    color="black",
                    marker="_",
                    markersize=14,
                    linestyle="-",
                    label="mean ± 1 s.d. over seeds (same teacher)",
                )
            )
        if coefs is not None:
            handles += [
                _law_proxy("fitted distillation law"),
                _runs_proxy("best teacher loss (law)", "v", 10, "0.5", markeredgecolor="black"),
                _law_proxy("student alone, Ltilde_S (law)", ":"),
            ]
        else:
            _no_fit_note(ax, "distillation")
        y = np.concatenate(all_y)
        y_lo, y_hi = float(np.nanmin(st["loss"])), float(np.nanmax(st["loss"]))
        pad = 0.25 * max(y_hi - y_lo, 0.02 * y_hi)
        ax.set_ylim(min(y_lo, float(np.nanmin(y))) - 0.3 * pad, y_hi + pad)
        ax.set_xlim(lt_grid[0], lt_grid[-1])
        ax.set_xlabel("teacher loss L_T (nats/token)")
        ax.set_ylabel("student loss L_S (nats/token)")
        more = f"; {hidden} more configuration(s) not shown" if hidden else ""
        title = f"Capacity gap: student vs teacher loss ({len(st)} students{more})"
        flagged = _flagged(data, "supervised", "distillation") if coefs is not None else None
        if flagged:
            _suptitle(fig, title, flagged)
        else:
            ax.set_title(title)
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    return _save(fig, out_dir, "capacity_gap")


def student_tokens_figure(data: ReportData, out_dir: Path, most: int = 4) -> Path:
    """Student loss against student tokens per size, beside its supervised baseline."""
    st = data.students
    if st.empty:
        raise SkipFigure("No finished student (distillation) run is recorded yet.")
    coefs = _distillation_coefs(data)
    sup_coef = coefs[1] if coefs is not None else data.supervised_coef
    counts = st.groupby("N_S").size().sort_values(ascending=False)
    sizes = sorted(counts.index[:most])
    fig, axes = _figure(1, len(sizes), max(9.0, 4.6 * len(sizes) + 1.5), 5.4)
    lt_norm = (colormaps["magma"], Normalize(st["L_T"].min() - 1e-3, st["L_T"].max() + 1e-3))
    base = data.supervised
    with _style():
        for ax, n_s in zip(axes[0], sizes, strict=True):
            sub = st[st["N_S"] == n_s]
            alone = base[base["N"] == n_s] if not base.empty else base
            d_all = np.concatenate([sub["D_S"], alone["D"]]) if len(alone) else sub["D_S"]
            d_grid = _span(np.asarray(d_all, dtype=float), 1.5)
            # one series per teacher: its key, or its loss where no key was recorded (CSV)
            teacher = sub["L_T"].map(lambda v: f"{v:.6g}")
            if "teacher_key" in sub.columns:
                teacher = sub["teacher_key"].astype("string").fillna(teacher)
            for _, g in sub.groupby(teacher):
                l_t = float(g["L_T"].mean())
                color = _color(lt_norm, l_t)
                ax.plot(
                    g["D_S"],
                    g["loss"],
                    "o",
                    color=color,
                    markersize=8,
                    markeredgecolor="black",
                    markeredgewidth=0.5,
                    zorder=3,
                )
                if coefs is not None:
                    ax.plot(
                        d_grid,
                        distillation_loss(n_s, d_grid, l_t, *coefs),
                        color=color,
                        linewidth=1.6,
                    )
            if len(alone):
                ax.plot(
                    alone["D"],
                    alone["loss"],
                    "s",
                    markerfacecolor="white",
                    markeredgecolor="black",
                    markersize=8,
                    zorder=3,
                )
            if sup_coef is not None:
                ax.plot(
                    d_grid,
                    supervised_loss(n_s, d_grid, sup_coef),
                    "--",
                    color="black",
                    linewidth=1.6,
                )
            if not len(alone) and sup_coef is None:
                ax.text(
                    0.02,
                    0.02,
                    "no supervised baseline at this size",
                    fontsize=9,
                    color="0.35",
                    transform=ax.transAxes,
                )
            ax.set_xscale("log")
            _count_axis(ax.xaxis)
            ax.set_xlabel("student training tokens D_S")
            ax.set_title(f"student N_S = {fmt_count(n_s)}")
        axes[0, 0].set_ylabel(LOSS_LABEL)
        fig.colorbar(_scalar_mappable(lt_norm), ax=axes[0, -1], label="teacher loss L_T", pad=0.01)
        handles = [
            _runs_proxy(
                "distilled students (colour: teacher)", "o", 8, "0.4", markeredgecolor="black"
            ),
            _runs_proxy(
                "supervised baseline runs", "s", 8, markerfacecolor="white", markeredgecolor="black"
            ),
        ]
        if coefs is not None:
            handles.append(_law_proxy("distillation law at the teacher's L_T"))
        if sup_coef is not None:
            handles.append(_law_proxy("supervised law (student alone)", "--"))
        axes[0, 0].legend(handles=handles, loc="upper right", fontsize=9)
        _suptitle(
            fig,
            "Distilled students against training alone, over student tokens",
            _flagged(data, "supervised", "distillation") if coefs is not None else None,
        )
    return _save(fig, out_dir, "student_tokens")


# ---------------------------------------------------------------------- parity


def parity_frames(data: ReportData) -> dict[str, pd.DataFrame]:
    """Per law, the runs its fit saw with predictions and fitted/held-out status."""
    out = {}
    for law in ("supervised", "distillation"):
        frame = fit_membership(data, law)
        if frame is not None and not frame.empty:
            out[law] = frame
    return out


def parity_errors(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Relative errors by status (kdlab.laws.fit.error_summary)."""
    return {
        status: error_summary(g["pred"].to_numpy(float), g["loss"].to_numpy(float))
        for status, g in frame.groupby("status")
    }


def parity_figure(
    data: ReportData, out_dir: Path, frames: Mapping[str, pd.DataFrame] | None = None
) -> Path:
    """Predicted against observed loss for each fit; held-out runs marked, errors quoted."""
    frames = parity_frames(data) if frames is None else frames
    if not frames:
        raise SkipFigure(
            "No parity plot: it needs a fit JSON and the runs it was fitted to "
            "(in the database or the fit's CSV)."
        )
    fig, axes = _figure(1, len(frames), 6.4 * len(frames), 6.2)
    with _style():
        for ax, (law, frame) in zip(axes[0], frames.items(), strict=True):
            lo = float(min(frame["loss"].min(), frame["pred"].min()))
            hi = float(max(frame["loss"].max(), frame["pred"].max()))
            pad = 0.04 * (hi - lo + 1e-9)
            line = np.array([lo - pad, hi + pad])
            ax.fill_between(line, line * 0.99, line * 1.01, color="0.85", label="±1%")
            ax.plot(line, line, color="0.3", linewidth=1, label="predicted = observed")
            for status, style in STATUS_STYLE.items():
                g = frame[frame["status"] == status]
                if len(g):
                    ax.plot(
                        g["loss"],
                        g["pred"],
                        style["marker"],
                        color=style["color"],
                        markersize=7,
                        markeredgecolor="black",
                        markeredgewidth=0.4,
                        linestyle="none",
                        label=f"{style['label']} ({len(g)})",
                    )
            lines = []
            for status, err in parity_errors(frame).items():
                if err.get("n_points"):
                    lines.append(
                        f"{status}: mean |err| {err['mean_abs_rel_error']:.2%}, "
                        f"max {err['max_abs_rel_error']:.2%}"
                    )
            ax.text(
                0.98,
                0.02,
                "\n".join(lines),
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=9,
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
            )
            ax.set_xlim(*line)
            ax.set_ylim(*line)
            ax.set_aspect("equal")
            ax.set_xlabel("observed loss (nats/token)")
            ax.set_ylabel("predicted loss (nats/token)")
            ax.set_title(f"{law} law: {len(frame)} runs")
            ax.legend(loc="upper left", fontsize=9)
        _suptitle(
            fig, "Fit quality: predicted vs observed validation loss", _flagged(data, *frames)
        )
    return _save(fig, out_dir, "parity")


# ------------------------------------------------------------------- planning


def _ok_plans(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame
    return frame[frame["error"].isna()] if "error" in frame.columns else frame


def _bound_title(text: str, n_bound: int, n_all: int) -> tuple[str, str]:
    if not n_bound:
        return text, "black"
    return (
        f"{n_bound} of {n_all} plans sit on the planner's search bound (×): not optima\n{text}",
        WARN_COLOR,
    )


def plan_shares_figure(plans: PlanSet, out_dir: Path) -> Path:
    """Per scenario, how the compute-optimal plan splits the budget, and who wins."""
    tab = _ok_plans(plans.table)
    if tab.empty:
        raise SkipFigure("The planner found no feasible plan for these budgets.")
    scenarios = [s for s in SCENARIO_ORDER if s in set(tab["scenario"])]
    ncols = 2 if len(scenarios) > 1 else 1
    nrows = int(np.ceil(len(scenarios) / ncols))
    fig, axes = _figure(nrows, ncols, 7.2 * ncols, 4.6 * nrows + 0.6)
    with _style():
        for ax, scenario in zip(axes.ravel(), scenarios, strict=False):
            g = tab[tab["scenario"] == scenario].sort_values("compute")
            c = g["compute"].to_numpy(float)
            shares = [g[k].to_numpy(float) for k in SHARE_COLORS]
            ax.stackplot(c, *shares, colors=list(SHARE_COLORS.values()), alpha=0.9)
            edges = np.sqrt(c[1:] * c[:-1])
            edges = np.concatenate([[c[0]], edges, [c[-1]]])
            for i, verdict in enumerate(g["verdict"]):
                ax.axvspan(
                    edges[i],
                    edges[i + 1],
                    ymin=1 / 1.1,
                    ymax=1.0,
                    color="#55a868" if verdict == "distil" else "0.75",
                    linewidth=0,
                )
            ax.set_ylim(0, 1.1)
            ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
            ax.set_xscale("log")
            ax.set_xlim(c[0], c[-1])
            ax.set_xlabel("compute budget C (FLOPs)")
            ax.set_ylabel("share of the budget")
            ax.set_title(SCENARIO_TITLES.get(scenario, scenario))
            twin = ax.twinx()
            twin.plot(c, g["teacher_params"], "k--", linewidth=1.6)
            bound = on_search_bound(g).to_numpy()
            if bound.any():
                twin.plot(
                    c[bound],
                    g["teacher_params"].to_numpy(float)[bound],
                    "x",
                    color=WARN_COLOR,
                    markersize=11,
                    markeredgewidth=2.5,
                )
            twin.axhline(plans.student, color="black", linestyle=":", linewidth=1)
            twin.set_yscale("log")
            _count_axis(twin.yaxis)
            twin.set_ylabel("optimal teacher size N_T")
            twin.grid(False)
        for ax in axes.ravel()[len(scenarios) :]:
            ax.set_visible(False)
        handles = [Patch(color=col, label=SHARE_LABELS[k]) for k, col in SHARE_COLORS.items()]
        handles += [
            Patch(color="#55a868", label="top strip: distillation wins"),
            Patch(color="0.75", label="top strip: training alone wins"),
            Line2D([], [], color="black", linestyle="--", label="optimal teacher size N_T"),
            Line2D([], [], color="black", linestyle=":", label="student size N_S"),
        ]
        n_bound = int(on_search_bound(tab).sum())
        if n_bound:
            handles.append(
                _runs_proxy(
                    "on the search bound: not an optimum", "x", 10, WARN_COLOR, markeredgewidth=2.5
                )
            )
        fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=10)
        title, color = _bound_title(
            f"Compute-optimal distillation of a {fmt_count(plans.student)}-parameter "
            f"student ({plans.label})",
            n_bound,
            len(tab),
        )
        fig.suptitle(title, color=color)
    return _save(fig, out_dir, "plan_shares")


NICE_STEPS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)


def _gap_levels(values: np.ndarray) -> np.ndarray:
    """Symmetric contour levels in % (0.25, 0.5, 1, 2, 5, ...): a 1% gap stays visible
    beside the 30% gaps of students trained on almost nothing."""
    top = float(np.nanpercentile(np.abs(values), 98)) if np.isfinite(values).any() else 1.0
    steps = [v for v in NICE_STEPS if v < top] or [NICE_STEPS[0]]
    steps = steps[-6:] + [steps[-1] * 2.5] if steps[-1] < top else steps[-7:]
    return np.array([-v for v in reversed(steps)] + [0.0] + list(steps))


def advantage_map_figure(plans: PlanSet, out_dir: Path) -> Path:
    """Where distillation beats training alone, over student size and compute, per scenario.

    Each student size has its own budgets (the student alone at 1 to 10^4 tokens per
    parameter), so the map is a band in (N_S, C); outside it the plans are not made.
    """
    from matplotlib.colors import BoundaryNorm

    grid = plans.map
    if grid.empty or _ok_plans(grid).empty:
        raise SkipFigure("No map of distillation's advantage: no feasible plan on the grid.")
    grid = grid.assign(gap=100.0 * (grid["student_loss"] / grid["supervised_loss"] - 1.0))
    scenarios = [s for s in SCENARIO_ORDER if s in set(_ok_plans(grid)["scenario"])]
    ncols = 2 if len(scenarios) > 1 else 1
    nrows = int(np.ceil(len(scenarios) / ncols))
    fig, axes = _figure(nrows, ncols, 6.6 * ncols + 1.4, 5.0 * nrows)
    levels = _gap_levels(grid["gap"].to_numpy(float))
    cmap = colormaps["RdBu_r"]
    norm = BoundaryNorm(levels, cmap.N, extend="both")
    with _style():
        mappable = None
        for ax, scenario in zip(axes.ravel(), scenarios, strict=False):
            g = grid[grid["scenario"] == scenario].sort_values(["student_params", "compute"])
            n_cols = g["student_params"].nunique()
            shape = (n_cols, len(g) // n_cols)
            nn = g["student_params"].to_numpy(float).reshape(shape).T
            cc = g["compute"].to_numpy(float).reshape(shape).T
            zz = np.ma.masked_invalid(g["gap"].to_numpy(float).reshape(shape).T)
            mappable = ax.contourf(nn, cc, zz, levels=levels, cmap=cmap, norm=norm, extend="both")
            if zz.count() and zz.min() < 0 < zz.max():
                ax.contour(nn, cc, zz, levels=[0.0], colors="black", linewidths=2)
            n_line = np.geomspace(nn.min(), nn.max(), 50)
            ax.plot(
                n_line,
                3 * flops_per_token(n_line, plans.flops) * 20 * n_line,
                "--",
                color="0.2",
                linewidth=1.2,
                label="student alone at M = 20",
            )
            bound = on_search_bound(g).to_numpy()
            if bound.any():
                ax.plot(
                    g["student_params"].to_numpy(float)[bound],
                    g["compute"].to_numpy(float)[bound],
                    "x",
                    color="black",
                    markersize=6,
                    linestyle="none",
                    label="plan on the search bound",
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            _count_axis(ax.xaxis)
            ax.set_xlim(nn.min(), nn.max())
            ax.set_ylim(cc.min(), cc.max())
            ax.set_xlabel("student size N_S (parameters)")
            ax.set_ylabel("compute budget C (FLOPs)")
            ax.set_title(SCENARIO_TITLES.get(scenario, scenario))
            ax.legend(
                handles=[
                    *ax.get_legend_handles_labels()[0],
                    Line2D([], [], color="black", linewidth=2, label="break-even"),
                ],
                loc="upper left",
                fontsize=9,
            )
            ax.grid(True, alpha=0.25)
        for ax in axes.ravel()[len(scenarios) :]:
            ax.set_visible(False)
        bar = fig.colorbar(
            mappable,
            ax=axes.ravel().tolist(),
            pad=0.01,
            ticks=levels,
            label="distilled − alone (% of the loss alone); blue: distil",
        )
        bar.ax.set_yticklabels([f"{v:g}%" for v in levels])
        ok = _ok_plans(grid)
        title, color = _bound_title(
            f"Where compute-optimal distillation beats training alone ({plans.label})",
            int(on_search_bound(ok).sum()),
            len(ok),
        )
        fig.suptitle(title, color=color)
    return _save(fig, out_dir, "distillation_map")


@dataclass(frozen=True)
class FigureSpec:
    """A figure of the report: file name, section, title, and what draws it."""

    name: str
    section: str
    title: str
    needs: str  # "data" (ReportData) or "plans" (PlanSet)
    draw: Callable[..., Path]


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec(
        "supervised_loss",
        "Supervised scaling",
        "Loss against N and D",
        "data",
        supervised_loss_figure,
    ),
    FigureSpec("isoflop", "Supervised scaling", "IsoFLOP profiles", "data", isoflop_figure),
    FigureSpec("capacity_gap", "Distillation", "Capacity gap", "data", capacity_gap_figure),
    FigureSpec(
        "student_tokens",
        "Distillation",
        "Students against training alone",
        "data",
        student_tokens_figure,
    ),
    FigureSpec("parity", "Fit quality", "Predicted vs observed loss", "data", parity_figure),
    FigureSpec(
        "plan_shares",
        "Compute-optimal distillation",
        "Compute-optimal plan",
        "plans",
        plan_shares_figure,
    ),
    FigureSpec(
        "distillation_map",
        "Compute-optimal distillation",
        "Where distillation wins",
        "plans",
        advantage_map_figure,
    ),
)
