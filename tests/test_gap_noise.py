"""The capacity gap with its seed noise: the table and the figure's error bars."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import PNG_MAGIC


def _students() -> pd.DataFrame:
    rows = [("T1", 2.0, v) for v in (2.50, 2.60, 2.55)] + [("T2", 1.5, 2.40)]
    rows += [("T3", 1.2, v) for v in (2.45, 2.47)]
    return pd.DataFrame(
        [
            {
                "key": f"k{i}",
                "model": "L1",
                "N_S": 1e4,
                "D_S": 1.6e6,
                "teacher_key": t,
                "L_T": lt,
                "loss": loss,
                "N_T": 1e5,
                "D_T": 2e6,
                "flops": 1e12,
                "kd_objective": "forward_kl lambda=1 tau=1",
            }
            for i, (t, lt, loss) in enumerate(rows)
        ]
    )


def test_capacity_gap_table_gives_each_teachers_mean_and_seed_spread():
    from kdlab.report.tables import capacity_gap_table

    table = capacity_gap_table(_students())
    assert list(table["teacher_key"]) == ["T3", "T2", "T1"]  # by teacher loss
    assert list(table["seeds"]) == [2, 1, 3]
    assert table["loss"].tolist() == pytest.approx([2.46, 2.40, 2.55])
    assert table["loss_sd"].iloc[2] == pytest.approx(0.05)
    assert pd.isna(table["loss_sd"].iloc[1])  # one seed: no spread to show


def test_capacity_gap_figure_draws_seed_bars(tmp_path):
    from kdlab.report.data import ReportData
    from kdlab.report.figures import capacity_gap_figure

    data = ReportData(
        db=None, all_runs=pd.DataFrame(), supervised=pd.DataFrame(), students=_students()
    )
    path = capacity_gap_figure(data, tmp_path)
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000
