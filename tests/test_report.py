"""kdlab report: from a synthetic study to an HTML page whose figures a browser shows.

The study is drawn from the published laws (the paper's published fits) plus 0.4% noise at paper
sizes (the database only stores numbers), fitted with the real ``kdlab fit`` on a tiny
start grid, and reported through ``python -m kdlab.cli report`` as a user would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kdlab.cli import main as kdlab_main
from kdlab.laws.compute import flops_per_token
from kdlab.laws.forms import distillation_loss, supervised_loss
from kdlab.laws.published import PAPER_DISTILLATION, PAPER_FLOPS, PAPER_SUPERVISED
from kdlab.rundb import RunStore
from kdlab.wandb_offline import wandb_records
from tests.conftest import (
    ALL_FIGURES,
    assert_figure,
    run_cli,
    wandb_offline_run,
)

REPO = Path(__file__).resolve().parent.parent


def report_main(argv: list[str]) -> int:
    """``kdlab report ARGS`` in this process."""
    return kdlab_main(["report", *argv])


STUDENT_FIGURES = ("capacity_gap", "student_tokens")
CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
FAST_PLAN = ["--plan-budgets", "3", "--map-points", "3", "--jobs", "2"]
COMMON = {
    "study": "synthetic",
    "corpus": "c4",
    "corpus_fingerprint": "c4-0123abcd",
    "tokenizer": "bpe-32768",
    "vocab_size": 32768,
    "n_ctx": 4096,
}
TEACHERS = (546e6, 975e6, 1.82e9, 4.82e9, 7.75e9)  # fixed M = 20
BASELINES = (103e6, 198e6, 340e6)  # supervised at M = 20, 80, 320; also the students
ISOFLOP = (
    (3e19, (103e6, 143e6, 198e6, 266e6, 340e6, 546e6)),
    (1e20, (143e6, 198e6, 266e6, 340e6, 546e6, 975e6)),
)


SCALING_OBJECTIVE = {"kd_lambda": 1.0, "tau": 1.0, "divergence": "forward_kl", "top_k": None}


def _fpt(n: float) -> float:
    return float(flops_per_token(n, PAPER_FLOPS))


def _name(n: float) -> str:
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def build_study(url: str, students: bool = True, seed: int = 0) -> None:
    """Teachers, supervised baselines, two IsoFLOP profiles and (optionally) students,
    plus one failed and one running run that must stay out of every figure."""
    rng = np.random.default_rng(seed)
    store = RunStore(url)

    def noisy(loss: float) -> float:
        return float(loss * np.exp(0.004 * rng.standard_normal()))

    def add(key: str, role: str, n: float, d: float, loss: float | None, **extra) -> None:
        d = float(round(d))
        store.start(
            key,
            role=role,
            model=_name(n),
            n_params=int(n),
            tokens=int(d),
            tokens_per_param=d / n,
            flops_per_token=_fpt(n),
            flops=3 * _fpt(n) * d,
            **COMMON,
            **extra,
        )
        if loss is not None:
            store.finish(key, val_loss=loss)

    teachers = {}
    for n in TEACHERS:
        loss = noisy(supervised_loss(n, 20 * n, PAPER_SUPERVISED))
        add(f"t{n:.0f}", "teacher", n, 20 * n, loss, family="fixed-M teachers")
        teachers[f"t{n:.0f}"] = (n, 20 * n, loss)
    for n in BASELINES:
        for m in (20, 80, 320):
            add(
                f"s{n:.0f}m{m}",
                "supervised",
                n,
                m * n,
                noisy(supervised_loss(n, m * n, PAPER_SUPERVISED)),
                family="supervised ladder",
            )
    for c, sizes in ISOFLOP:
        for n in sizes:
            d = round(c / (3 * _fpt(n)))
            add(
                f"iso{c:.0e}n{n:.0f}",
                "supervised",
                n,
                d,
                noisy(supervised_loss(n, d, PAPER_SUPERVISED)),
                family="IsoFLOP",
            )
    add("t-running", "teacher", 12.6e9, 20 * 12.6e9, None)
    if not students:
        return
    for n_s in BASELINES:
        for m in (20, 320):
            for key, (n_t, d_t, l_t) in teachers.items():
                d_s = m * n_s
                true = distillation_loss(n_s, d_s, l_t, PAPER_DISTILLATION, PAPER_SUPERVISED)
                add(
                    f"kd{n_s:.0f}m{m}{key}",
                    "student",
                    n_s,
                    d_s,
                    noisy(true),
                    family="fixed-M teachers x fixed-M students",
                    teacher_key=key,
                    teacher_model=_name(n_t),
                    teacher_n_params=int(n_t),
                    teacher_tokens=int(d_t),
                    teacher_loss=l_t,
                    kd_lambda=1.0,
                    kd_tau=1.0,
                    divergence="forward_kl",
                    flops_student=3 * _fpt(n_s) * d_s,
                    flops_teacher_logits=_fpt(n_t) * d_s,
                    flops_teacher_pretraining=3 * _fpt(n_t) * d_t,
                    config={"objective": SCALING_OBJECTIVE},
                )
    # ablations of one student: other lambda and tau, far off the law (they must stay
    # out of the fits and the law's figures, and show in the objectives table)
    n_t, d_t, l_t = teachers["t975000000"]
    for kd_lambda, tau in ((0.0, 1.0), (0.5, 1.0), (1.0, 2.0)):
        add(
            f"ablation-l{kd_lambda}-t{tau}",
            "student",
            198e6,
            20 * 198e6,
            3.5 + kd_lambda,
            family="ablations",
            teacher_key="t975000000",
            teacher_model=_name(n_t),
            teacher_n_params=int(n_t),
            teacher_tokens=int(d_t),
            teacher_loss=l_t,
            kd_lambda=kd_lambda,
            kd_tau=tau,
            divergence="forward_kl",
            config={"objective": {**SCALING_OBJECTIVE, "kd_lambda": kd_lambda, "tau": tau}},
        )
    add("kd-failed", "student", 198e6, 20 * 198e6, None, teacher_key="t546000000")
    store.fail("kd-failed", "the loss became NaN at step 12")


def _fit(tmp: Path, url: str) -> tuple[Path, Path]:
    """Fit both laws with the real ``kdlab fit`` (in this process: the subprocess start
    is most of the cost) on a tiny start grid, holding out the strongest runs (the
    paper's extrapolation test), with a small bootstrap."""

    sup_grid = {"e": [0.2], "a": [8.0], "b": [9.8], "alpha": [0.4], "beta": [0.43], "gamma": [0.45]}
    dist_grid = {
        "a": [7.7],
        "b": [10.1],
        "alpha": [0.32],
        "beta": [0.64],
        "gamma": [0.76],
        "c0": [2.5],
        "c1": [500.0],
        "f1": [0.09],
        "log_d1": [0.27],
    }
    (tmp / "sgrid.json").write_text(json.dumps(sup_grid))
    (tmp / "dgrid.json").write_text(json.dumps(dist_grid))
    sup, dist = tmp / "supervised.json", tmp / "distillation.json"
    fast = ["--keep", "0", "--final-keep", "0", "--bootstrap", "16", "--json"]
    assert (
        kdlab_main(
            [
                "fit",
                "supervised",
                "--db",
                url,
                "--grid",
                str(tmp / "sgrid.json"),
                "--fit-where",
                "loss >= 2.2",
                "--out",
                str(sup),
                *fast,
            ]
        )
        == 0
    )
    assert (
        kdlab_main(
            [
                "fit",
                "distillation",
                "--db",
                url,
                "--supervised",
                str(sup),
                "--kd-objective",
                "forward_kl lambda=1 tau=1",
                "--grid",
                str(tmp / "dgrid.json"),
                "--fit-where",
                "loss >= 2.45",
                "--out",
                str(dist),
                *fast,
            ]
        )
        == 0
    )
    return sup, dist


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> Path:
    """A whole study with both fits, reported and logged to an offline W&B run."""
    tmp = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{tmp / 'runs.db'}"
    build_study(url)
    sup, dist = _fit(tmp, url)
    out = tmp / "out"
    r = run_cli(
        "kdlab.cli",
        "report",
        "--db",
        url,
        "--supervised-fit",
        str(sup),
        "--distillation-fit",
        str(dist),
        "--out",
        str(out),
        "--wandb",
        "--wandb-project",
        "kdlab-test",
        *FAST_PLAN,
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def _img_sources(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


def test_full_report_draws_every_figure(full_report: Path) -> None:
    index = json.loads((full_report / "report.json").read_text())
    assert set(index["figures"]) == set(ALL_FIGURES), index["skipped"]
    html = (full_report / "index.html").read_text()
    for name in ALL_FIGURES:
        assert_figure(full_report / f"{name}.png")
        assert f'<img src="{name}.png"' in html
    assert sorted(_img_sources(html)) == sorted(f"{n}.png" for n in ALL_FIGURES)
    assert index["plan_coefficients"].endswith("distillation.json")  # the fit plans


def test_page_has_summary_coefficients_and_plan(full_report: Path) -> None:
    html = (full_report / "index.html").read_text()
    assert "kdlab report: synthetic" in html
    for text in (
        "teacher",
        "student",
        "supervised",
        "failed",
        "running",
        "bpe-32768",
        "c4-0123abcd",
        "Compute-optimal plans",
        "kdlab dashboard --fit ",
        "teacher inference",
        "pretraining + inference",
        "paper 90% CI",
        "α′",
        "c0",
        "d1",
        "held out",
    ):
        assert text in html, text
    assert "3,355" in html and "2,243" in html  # the published values sit beside the fit's
    coef = pd.read_csv(full_report / "coefficients.csv").set_index(["law", "coefficient"])
    for law in ("supervised", "distillation"):
        doc = json.loads((full_report.parent / f"{law}.json").read_text())
        for name, value in doc["coefficients"].items():
            row = coef.loc[(law, name)]
            assert row["value"] == pytest.approx(value)
            assert row["lo"] == pytest.approx(doc["intervals"][name][0])  # bootstrapped
    assert coef.loc[("distillation", "d1"), "paper"] == 1.315
    # the ablation students: in their own table, not in the law's figures or fit
    assert "Distillation objectives compared" in html and "3 student(s) of other" in html
    objectives = pd.read_csv(full_report / "objectives.csv")
    assert len(objectives) == 1
    row = objectives.iloc[0]
    assert row["forward_kl lambda=0 tau=1"] == pytest.approx(3.5)
    assert row["forward_kl lambda=1 tau=2"] == pytest.approx(4.5)
    store = RunStore(f"sqlite:///{full_report.parent / 'runs.db'}")
    # beside them: the scaling student of the same size, tokens and teacher, and its twin
    scaling = store.get("kd198000000m20t975000000")["val_loss"]
    assert row["forward_kl lambda=1 tau=1"] == pytest.approx(scaling)
    assert row["supervised"] == pytest.approx(store.get("s198000000m20")["val_loss"])
    dist = json.loads((full_report.parent / "distillation.json").read_text())
    assert dist["data"]["kd_objective"] == "forward_kl lambda=1 tau=1"
    assert not any(k.startswith("ablation") for k in dist["data"]["run_keys"])


def test_wandb_offline_run_holds_the_figures(full_report: Path) -> None:
    """The offline run's own file, read back: a report run of the study, every figure and
    table logged under its name, and the images it points to are the report's figures."""
    runs = list((full_report / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((full_report / "wandb").iterdir())
    run, config, rows = wandb_offline_run(runs[0])
    assert (run["project"], run["run_group"], run["job_type"]) == (
        "kdlab-test",
        "synthetic",
        "report",
    )
    assert run["display_name"] == "report-synthetic"
    assert config["supervised_fit"].endswith("supervised.json")
    assert config["distillation_fit"].endswith("distillation.json")
    assert config["db"] == f"sqlite:///{full_report.parent / 'runs.db'}"
    [logged] = rows
    tables = ("coefficients_supervised", "coefficients_distillation", "plan", "runs")
    # wandb writes a logged media object as one item per field (report/<name>/<field>)
    assert {"/".join(k.split("/")[:2]) for k in logged if k.startswith("report/")} == {
        f"report/{name}" for name in (*ALL_FIGURES, *tables)
    }
    for name in ALL_FIGURES:
        prefix = f"report/{name}/"
        image = {k[len(prefix) :]: v for k, v in logged.items() if k.startswith(prefix)}
        assert image["_type"] == "image-file" and image["format"] == "png"
        logged_png = runs[0] / "files" / image["path"]
        assert (image["width"], image["height"]) == Image.open(full_report / f"{name}.png").size
        assert_figure(logged_png)
    # the run table: one row per run of the database, as W&B's table shows runs
    with sqlite3.connect(full_report.parent / "runs.db") as db:
        n_runs = db.execute("select count(*) from runs").fetchone()[0]
    assert (logged["report/runs/_type"], logged["report/runs/nrows"]) == ("table-file", n_runs)
    # artifacts: the page with its figures, and each fit JSON, recorded in report.json
    logged_artifacts = [r.artifact for r in wandb_records(runs[0]) if r.artifact.name]
    # (wandb stores each logged table as an artifact of its own, of type run_table)
    artifacts = {a.name: a for a in logged_artifacts if a.type != "run_table"}
    assert set(artifacts) == {
        "report-synthetic",
        "fit-supervised-supervised",
        "fit-distillation-distillation",
    }
    page = {e.path: e.size for e in artifacts["report-synthetic"].manifest.contents}
    assert {f"{name}.png" for name in ALL_FIGURES} | {"index.html"} <= set(page)
    assert page["index.html"] == (full_report / "index.html").stat().st_size
    fit = artifacts["fit-supervised-supervised"]
    assert [e.path for e in fit.manifest.contents] == ["supervised.json"]
    recorded = json.loads((full_report / "report.json").read_text())["wandb_artifacts"]
    assert recorded == [
        {"name": a.name, "type": a.type, "digest": a.digest, "version": None}
        for a in artifacts.values()
    ]


def test_report_without_students_skips_distillation_cleanly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    build_study(url, students=False)
    out = tmp_path / "out"
    assert (
        report_main(
            [
                "--db",
                url,
                "--out",
                str(out),
                "--plan-budgets",
                "2",
                "--map-points",
                "2",
                "--jobs",
                "1",
            ]
        )
        == 0
    )
    index = json.loads((out / "report.json").read_text())
    assert set(index["figures"]) == {
        "supervised_loss",
        "isoflop",
        "plan_shares",
        "distillation_map",
    }
    assert set(index["skipped"]) == {*STUDENT_FIGURES, "parity"}
    assert index["plan_coefficients"] == "paper"
    html = (out / "index.html").read_text()
    assert "No finished student" in html and "published coefficients" in html
    for name in index["figures"]:
        assert_figure(out / f"{name}.png")


def test_report_from_fits_only(tmp_path: Path, full_report: Path) -> None:
    """No database at all: the plans and the coefficient tables still come out."""
    fits = full_report.parent
    out = tmp_path / "out"
    assert (
        report_main(
            [
                "--db",
                "",  # no database: the report is drawn from the fits alone
                "--distillation-fit",
                str(fits / "distillation.json"),
                "--out",
                str(out),
                "--plan-budgets",
                "2",
                "--map-points",
                "0",
                "--jobs",
                "1",
            ]
        )
        == 0
    )
    index = json.loads((out / "report.json").read_text())
    assert set(index["figures"]) == {"plan_shares"}
    html = (out / "index.html").read_text()
    assert "No run database" in html and "2,243" in html
    # the plans are for a student of the fit's own scale (103M-340M), not the paper's 1.82B
    lo, hi = json.loads((fits / "distillation.json").read_text())["data_range"]["N_S"]
    assert (lo, hi) == (103e6, 340e6)
    assert index["plan_student"] == pytest.approx((lo * hi) ** 0.5)


def test_report_from_an_old_fit_says_which_student_it_plans(
    tmp_path: Path, full_report: Path, monkeypatch
):
    """A fit JSON from before data_range was kept: the paper's student, and a note. With
    no --out, the report goes to runs/report under the run root, not the working folder."""
    doc = json.loads((full_report.parent / "distillation.json").read_text())
    del doc["data_range"]
    old = tmp_path / "old_fit.json"
    old.write_text(json.dumps(doc))
    monkeypatch.setenv("KDLAB_ROOT", str(tmp_path / "root"))
    out = tmp_path / "root" / "runs" / "report"
    argv = ["--db", "", "--distillation-fit", str(old)]
    assert report_main([*argv, "--plan-budgets", "2", "--map-points", "0", "--jobs", "1"]) == 0
    assert json.loads((out / "report.json").read_text())["plan_student"] == 1.82e9
    assert "does not record the model sizes" in (out / "index.html").read_text()


def test_report_from_a_csv_fit(tmp_path: Path) -> None:
    """A fit made with ``kdlab fit --csv`` brings its runs along: no database needed."""
    from kdlab.laws.synthetic import paper_like_supervised_runs

    paper_like_supervised_runs(noise=0.005).to_csv(tmp_path / "runs.csv", index=False)
    grid = {"e": [0.2], "a": [8.0], "b": [9.8], "alpha": [0.4], "beta": [0.43], "gamma": [0.45]}
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    fit = tmp_path / "fit.json"
    assert (
        kdlab_main(
            [
                "fit",
                "supervised",
                "--csv",
                str(tmp_path / "runs.csv"),
                "--grid",
                str(tmp_path / "grid.json"),
                "--keep",
                "0",
                "--final-keep",
                "0",
                "--fit-where",
                "loss >= 2.2",
                "--out",
                str(fit),
                "--json",
            ]
        )
        == 0
    )
    out = tmp_path / "out"
    assert (
        report_main(
            ["--db", "", "--supervised-fit", str(fit), "--out", str(out), "--plan-budgets", "0"]
        )
        == 0
    )
    index = json.loads((out / "report.json").read_text())
    assert {"supervised_loss", "parity"} <= set(index["figures"])
    assert "plan_shares" in index["skipped"]
    assert_figure(out / "parity.png")


def test_bad_input_is_one_sentence(tmp_path: Path, full_report: Path, capsys) -> None:
    out = ["--out", str(tmp_path / "o"), "--db", ""]
    wrong = str(full_report.parent / "supervised.json")
    assert report_main([*out, "--distillation-fit", wrong]) == 2
    err = capsys.readouterr().err
    assert "is a supervised fit" in err and "--supervised-fit" in err
    assert report_main([*out, "--supervised-fit", str(tmp_path / "nope.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert report_main([*out, "--plan-coefficients", wrong]) == 2
    assert "planning needs distillation coefficients" in capsys.readouterr().err


# -------------------------------------------------------------------- browser


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp / 'chrome-profile'}",
    ]
    return subprocess.run(
        [str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=180
    )


@pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("KDLAB_REQUIRE_CHROMIUM"),
    reason="headless Chromium is not installed (apt-get install -y chromium)",
)
def test_browser_renders_every_figure(full_report: Path, tmp_path: Path) -> None:
    """Chromium loads each image (naturalWidth > 0) and the screenshot is not blank."""
    page = full_report / "index.html"
    probe = full_report / "probe.html"  # beside the page, so the relative links resolve
    script = (
        "<script>window.addEventListener('load', () => { const p = document.createElement"
        "('pre'); p.id = 'probe'; p.textContent = JSON.stringify([...document.images].map("
        "i => [i.getAttribute('src'), i.naturalWidth, i.complete])); "
        "document.body.appendChild(p); });</script></body>"
    )
    probe.write_text(page.read_text().replace("</body>", script))
    r = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), tmp=tmp_path)
    found = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    assert found, r.stderr[-2000:]
    images = json.loads(found.group(1).replace("&quot;", '"'))
    assert sorted(src for src, _, _ in images) == sorted(f"{n}.png" for n in ALL_FIGURES)
    assert all(width > 0 and done for _, width, done in images), images

    shot = tmp_path / "page.png"
    r = _chromium(
        f"--screenshot={shot}",
        "--window-size=1400,3000",
        "--hide-scrollbars",
        page.as_uri(),
        tmp=tmp_path,
    )
    assert shot.exists(), r.stderr[-2000:]
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert rgb.shape == (3000, 1400, 3)
    pixels = rgb.mean(axis=2)
    colour = rgb.max(axis=2) - rgb.min(axis=2) > 60  # text and tables are grey; plots not
    # The first 3000 px hold the summary and the first figures: every 500 px band below
    # the header carries ink, and from 1000 px on, the coloured marks of figures spread
    # over hundreds of rows and columns (a note's coloured frame is one thin box).
    for top in range(500, 3000, 500):
        band = pixels[top : top + 500]
        assert (band < 200).mean() > 0.01 and band.std() > 20, f"blank band at {top}px"
        if top >= 1000:
            marks = colour[top : top + 500]
            rows, cols = marks.any(axis=1).sum(), marks.any(axis=0).sum()
            assert rows > 150 and cols > 300, f"no figure at {top}px ({rows} x {cols})"
    if os.environ.get("KDLAB_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["KDLAB_KEEP_SCREENSHOT"])


def test_supervised_figure_draws_the_known_floor_beside_the_fitted_e() -> None:
    """Runs of one Markov chain carry its least reachable loss: the figure draws it and the
    fitted E as lines, inside its y range; runs of other corpora, or of two floors, draw
    neither."""
    from matplotlib.figure import Figure

    from kdlab.report.figures import _floor_lines, _loss_range

    sup = pd.DataFrame({"N": [1e4, 1e5], "D": [1e6, 1e6], "loss": [2.1, 1.9]})
    ax = Figure().subplots()
    assert _floor_lines(ax, sup.assign(known_floor=np.nan), {"E": 1.7}) == ([], [])
    assert _floor_lines(ax, sup.assign(known_floor=[1.74, 1.75]), {"E": 1.7}) == ([], [])
    assert not ax.lines
    handles, levels = _floor_lines(ax, sup.assign(known_floor=1.749), {"E": 1.70})
    assert [h.get_label() for h in handles] == [
        "least reachable loss 1.749 (known)",
        "fitted E 1.7",
    ]
    assert levels == [1.749, 1.70] == [line.get_ydata()[0] for line in ax.lines]
    ax.plot([1e4, 1e5], [175.0, 2.0])  # a degenerate law's curve at a small M
    _loss_range(ax, [*sup["loss"], *levels])
    low, high = ax.get_ylim()
    assert low < 1.70 and 2.1 < high < 3
