"""Nothing read as data runs code: fit JSONs, row filters and weights files are data.

Each attack is the one a shared artefact makes possible: a pickle that, when run, writes a
marker file. The marker never appears, and the command refuses in one sentence (exit 2).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from kdlab.cli import main as kdlab_main
from kdlab.laws.published import paper_fit_document
from tests.test_report import build_study


class _WritesMarker:
    """Unpickling this calls Path.touch(marker): code run by reading a data file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_marker_pickle(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_WritesMarker(marker)))
    return path


def test_the_marker_pickle_runs_code_when_unpickled(tmp_path: Path) -> None:
    """The attack's payload is real: plain pickle.load writes the marker."""
    marker = tmp_path / "marker"
    pickle.loads(write_marker_pickle(tmp_path / "p.pkl", marker).read_bytes())
    assert marker.exists()


def test_report_does_not_run_a_fit_jsons_filter(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    build_study(url, students=False)
    marker = tmp_path / "marker"
    payload = write_marker_pickle(tmp_path / "payload.pkl", marker)
    fit = tmp_path / "shared_fit.json"
    doc = paper_fit_document()["supervised"]
    fit.write_text(json.dumps({**doc, "fit_where": f"@pd.read_pickle('{payload}')"}))
    code = kdlab_main(
        ["report", "--db", url, "--supervised-fit", str(fit), "--out", str(tmp_path / "r")]
        + ["--plan-budgets", "0", "--map-points", "0"]
    )
    err = capsys.readouterr().err
    assert not marker.exists()
    assert code == 2
    assert "fit_where" in err and str(fit) in err
    assert len(err.strip().splitlines()[-1].split(". ")) == 1  # one sentence
    assert not (tmp_path / "r" / "index.html").exists()


@pytest.mark.parametrize("option", ["--fit-where", "--holdout"])
def test_fit_does_not_run_a_filter(tmp_path: Path, capsys, option: str) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    build_study(url, students=False)
    marker = tmp_path / "marker"
    payload = write_marker_pickle(tmp_path / "payload.pkl", marker)
    code = kdlab_main(
        ["fit", "supervised", "--db", url, option, f"@pd.read_pickle('{payload}')"]
        + ["--out", str(tmp_path / "f.json")]
    )
    err = capsys.readouterr().err
    assert not marker.exists()
    assert code == 2 and option in err
    assert not (tmp_path / "f.json").exists()
