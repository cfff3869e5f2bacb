"""Degenerate results are said first: kdlab fit, plan, predict and the report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kdlab.laws.flags import coefficient_flags, fit_warnings, plan_flags
from kdlab.laws.io import load_coefficients, load_json
from kdlab.laws.plan import plan
from tests.conftest import REPO, run_cli

MICRO = REPO / "results" / "micro"


def test_the_micro_fits_are_flagged_coefficient_by_coefficient():
    """RESULTS.md's degenerate micro fits: E of 1.8e-26, A' of 2.5e16, alpha near its
    bound with an interval reaching it; the paper's own coefficients are not flagged."""
    sup = coefficient_flags(load_json(MICRO / "supervised_fit.json"))
    assert "effectively 0" in sup["E"] and "orders of magnitude" in sup["E"]
    assert "reaches the bound of 4" in sup["alpha"]
    assert "orders of magnitude" in sup["A"]
    assert "beta" not in sup and "gamma" not in sup  # intervals 0.32-1.27, 0.18-0.70
    dist = coefficient_flags(load_json(MICRO / "distillation_fit.json"))
    assert "ran off to 2.5e+16" in dist["A'"]
    assert "reaches the bound of 4" in dist["alpha'"]
    assert "c0" not in dist and "d1" not in dist
    (sentence,) = fit_warnings(load_json(MICRO / "distillation_fit.json"))
    assert sentence.startswith("The distillation fit is degenerate: A' ran off")
    paper = load_coefficients("paper")["doc"]
    assert coefficient_flags(paper) == {} and fit_warnings(paper) == []


def test_an_exponent_on_its_bound_and_a_negative_break():
    doc = {"law": "distillation", "coefficients": {"alpha": 4.0, "beta": 0.5, "f1": -0.2}}
    assert coefficient_flags(doc) == {
        "alpha'": "on its bound of 4",
        "f1": "negative, outside the law's meaning",
    }
    chinchilla = {"law": "supervised", "form": "chinchilla", "coefficients": {"gamma": 1.0}}
    assert coefficient_flags(chinchilla) == {}


def test_a_plan_on_the_search_bound_says_so():
    """The micro fit has no capacity gap, so the best teacher is the strongest the
    planner may search: 1e17 parameters and tokens. The paper's law has an interior
    best teacher (the capacity gap), and no warning."""
    micro = load_coefficients(str(MICRO / "distillation_fit.json"))
    result = plan(micro, 13472, 1e12, "best")
    assert result["teacher_params"] == pytest.approx(1e17)
    (warning,) = result["warnings"]
    assert "teacher size N_T = 1e+17 is on the planner's upper search bound" in warning
    paper = plan(load_coefficients("paper"), 198e6, 1e21, "best")
    assert paper["warnings"] == []
    assert plan_flags({"teacher_params": 5e6, "student_tokens": 1e6}, (1e6, 1e17)) == [
        "student tokens D_S = 1e+06 is on the planner's lower search bound"
    ]


def test_kdlab_fit_and_plan_print_the_warning_before_the_numbers(tmp_path):
    out = tmp_path / "sup.json"
    fit = run_cli(
        "kdlab.cli",
        "fit",
        "supervised",
        "--csv",
        str(MICRO / "supervised_runs.csv"),
        "--out",
        str(out),
    )
    assert fit.returncode == 0, fit.stderr[-2000:]
    first = fit.stdout.lstrip().splitlines()[0]
    assert first.startswith("warning: The supervised fit is degenerate: E effectively 0")
    assert fit.stdout.index("warning:") < fit.stdout.index("coefficient")
    doc = json.loads(out.read_text())
    assert "effectively 0" in doc["flags"]["E"] and doc["warnings"] == fit_warnings(doc)

    planned = run_cli(
        "kdlab.cli",
        "plan",
        "--coefficients",
        str(MICRO / "distillation_fit.json"),
        "--student",
        "13472",
        "--compute",
        "1e12",
        "--json",
    )
    assert planned.returncode == 0, planned.stderr[-2000:]
    warnings = json.loads(planned.stdout)["warnings"]
    assert [w.split(":")[0] for w in warnings] == [
        "The supervised fit is degenerate",
        "The distillation fit is degenerate",
        "This plan is not an optimum",
    ]


def test_the_report_says_it_first(tmp_path):
    """From the micro fits alone: a red box of degenerate results before any figure, the
    coefficient table's notes, and the plans on the search bound."""
    from kdlab.report.build import PlanOptions, build_report

    report = build_report(
        tmp_path,
        db=None,
        supervised_fit=str(MICRO / "supervised_fit.json"),
        distillation_fit=str(MICRO / "distillation_fit.json"),
        plan=PlanOptions(budgets=3, map_points=0, scenarios=("best",), jobs=1),
    )
    assert report.warnings[0].startswith("The supervised fit is degenerate")
    assert any("search bound" in w for w in report.warnings)
    page = (tmp_path / "index.html").read_text()
    assert page.index('class="warnings"') < page.index("<figure")
    coef = pd.read_csv(tmp_path / "coefficients.csv")
    note = coef.set_index(["law", "coefficient"])["note"]
    assert note[("supervised", "E")].startswith("DEGENERATE: effectively 0")
    assert note[("distillation", "A")].startswith("DEGENERATE: ran off")
    assert pd.isna(note[("distillation", "c0")]) or note[("distillation", "c0")] == ""
    assert json.loads((tmp_path / "report.json").read_text())["warnings"] == report.warnings


def test_isoflop_minima_at_the_edge_of_their_profile_are_not_bracketed():
    from kdlab.report.figures import isoflop_minima, isoflop_warnings

    n = np.array([1e4, 3e4, 1e5, 3e5])
    rows = [(x, 1e12, 3.0 - 0.1 * i) for i, x in enumerate(n)]  # falls all the way: edge
    rows += [(x, 3e12, 2.0 + 0.1 * (i - 1.5) ** 2) for i, x in enumerate(n)]  # a valley
    sup = pd.DataFrame(rows, columns=["N", "flops", "loss"])
    minima = isoflop_minima(sup)
    assert [m["bracketed"] for m in minima] == [False, True]
    (warning,) = isoflop_warnings(sup)
    assert warning.startswith("1 of 2 IsoFLOP minima (1e12 FLOPs) are not bracketed by runs")
