"""kdlab dashboard: the page's numbers are kdlab plan's, bad input is one sentence beside
its field, and a real browser (the system Chromium, driven by Playwright) shows the plan.

The laws are the published ones and the fits of test_report's synthetic study (drawn
from the published laws, fitted with bootstrap resamples). The server runs in this
process on a free port; the command line it is compared with runs through kdlab.cli
in this process too, exactly as the page prints it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kdlab.accelerators import ACCELERATORS
from kdlab.cli import main as kdlab_main
from kdlab.dashboard.server import Dashboard, make_server
from kdlab.laws.compute import flops_per_token
from kdlab.laws.io import load_coefficients
from kdlab.laws.plan import plan
from kdlab.rundb import RunStore
from tests.test_report import _fit, build_study

CHROMIUM = shutil.which("chromium")
N_S = 198e6


@pytest.fixture(scope="module")
def fits(tmp_path_factory) -> tuple[Path, Path]:
    """(supervised, distillation) fit JSONs of the synthetic study, with resamples."""
    tmp = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{tmp / 'runs.db'}"
    build_study(url)
    return _fit(tmp, url)


def _serve(dashboard: Dashboard):
    server = make_server(dashboard, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def base(fits):
    """The URL of a dashboard server with the study's fit preselected."""
    dashboard = Dashboard(fit=str(fits[1]), quiet=True)
    server, url = _serve(dashboard)
    yield url
    server.shutdown()
    server.server_close()
    dashboard.close()


def post(base: str, fields: Any, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    """POST /api/plan as the page does: (HTTP status, JSON body)."""
    data = raw if raw is not None else json.dumps(fields).encode()
    request = urllib.request.Request(
        f"{base}/api/plan", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def run_command(line: str, capsys) -> dict[str, Any]:
    """The command line the page shows, run as kdlab runs it; its JSON output."""
    args = shlex.split(line)
    assert args[0] == "kdlab" and args[-1] == "--json", line
    capsys.readouterr()
    assert kdlab_main(args[1:]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def gpu_hour_flops(gpu: str, mfu: float) -> float:
    return ACCELERATORS[gpu].bf16_peak_flops * mfu * 3600


# ------------------------------------------------------------------ API = kdlab plan

CASES = {
    "paper, FLOPs, teacher trained for one student": (
        {"laws": "paper", "budget": "1e21", "teacher": "train", "logits": "1", "student": "198M"},
        1e21,
    ),
    "paper, GPU-hours, existing teacher of the best size": (
        {
            "laws": "paper",
            "budget_unit": "gpu_hours",
            "budget": "5000",
            "gpu": "a100-80gb",
            "mfu": "35",
            "teacher": "exists",
            "teacher_kind": "optimal",
            "logits": "1",
            "student": "1.82B",
        },
        5000 * gpu_hour_flops("a100-80gb", 0.35),
    ),
    "study fit, money, teacher shared by 8 students, logits stored": (
        {
            "laws": "file",
            "budget_unit": "money",
            "budget": "20k",
            "price": "4",
            "gpu": "h100-80gb",
            "mfu": "50",
            "teacher": "train",
            "logits": "0",
            "students": "8",
            "student": "340M",
        },
        20e3 / 4 * gpu_hour_flops("h100-80gb", 0.5),
    ),
    "paper, a target loss picks the student": (
        {
            "laws": "paper",
            "budget": "3e21",
            "teacher": "train",
            "students": "4",
            "student_by": "target",
            "target": "2.45",
        },
        3e21,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_page_numbers_are_kdlab_plans(base: str, fits, capsys, case: str) -> None:
    fields, flops = CASES[case]
    status, ans = post(base, {**fields, "fit": str(fits[1])})
    assert status == 200, ans
    assert ans["budget"]["flops"] == pytest.approx(flops, rel=1e-12)
    chosen = ans["rows"][0]
    assert chosen["selected"] and chosen["compute"] == pytest.approx(flops, rel=1e-12)
    # the command the page prints reproduces the plan it shows, to the last digit
    assert f"--compute {ans['budget']['flops']!r}" in ans["command"]
    printed = run_command(ans["command"], capsys)
    assert printed == ans["plan_json"]
    assert set(printed) == {
        "scenario",
        "student_loss",
        "supervised_loss",
        "teacher_loss",
        "teacher_params",
        "teacher_tokens",
        "student_tokens",
        "compute_shares",
        "verdict",
        "warnings",  # a plan on the search bound says so (kdlab/laws/flags.py)
    }
    coefs = load_coefficients("paper" if fields["laws"] == "paper" else str(fits[1]))
    k = int(fields.get("students", 1))
    for row in ans["rows"][1:]:  # every other scenario, as kdlab plan plans it
        if "error" in row:
            continue
        same = plan(coefs, row["student_params"], row["compute"], row["scenario"], k)
        assert row["student_loss"] == same["student_loss"] and row["verdict"] == same["verdict"]
    scenarios = {r["scenario"] for r in ans["rows"]}
    assert scenarios == {"best", "inference", "pretraining", "pretraining+inference"}
    # costs in the three units agree with each other and with the budget
    cost, per_hour = chosen["cost"], ans["per_gpu_hour"]
    assert cost["flops"] == pytest.approx(flops * chosen["compute_used"])
    assert cost["gpu_hours"] == pytest.approx(cost["flops"] / per_hour)
    price = float(fields.get("price", 2.5))
    assert cost["money"] == pytest.approx(cost["gpu_hours"] * price)
    assert chosen["cost_all_students"]["flops"] == pytest.approx(cost["flops"] * k)
    if fields.get("student_by") == "target":  # the smallest student reaching the target
        assert min(chosen["student_loss"], chosen["supervised_loss"]) <= 2.45
        smaller = plan(coefs, chosen["student_params"] * 0.99, flops, chosen["scenario"], k)
        assert min(smaller["student_loss"], smaller["supervised_loss"]) > 2.45


def test_existing_teacher_is_kdlab_predict(base: str, capsys) -> None:
    """A given teacher is not planned: the page's student loss is kdlab predict's for
    the tokens its logits leave."""
    fields = {
        "laws": "paper",
        "budget": "2e21",
        "teacher": "exists",
        "teacher_kind": "size",
        "teacher_params": "1.82B",
        "teacher_tokens": "36.4B",
        "logits": "1",
        "student": "198M",
    }
    status, ans = post(base, fields)
    assert status == 200, ans
    chosen = ans["rows"][0]
    assert ans["command"].startswith("kdlab predict --coefficients paper")
    assert run_command(ans["command"], capsys)["loss"] == pytest.approx(chosen["student_loss"])
    coefs = load_coefficients("paper")
    f_s, f_t = (float(flops_per_token(n, coefs["flops"])) for n in (N_S, 1.82e9))
    assert chosen["student_tokens"] == pytest.approx(2e21 / (3 * f_s + f_t), rel=1e-12)
    assert chosen["teacher_params"] == 1.82e9 and chosen["compute_shares"]["teacher_logits"] > 0
    assert ans["plan_json"]["teacher_tokens"] == 36.4e9


def test_curve_and_crossover_are_the_planners(base: str) -> None:
    status, ans = post(base, {"laws": "paper", "budget": "1e21", "student": "198M"})
    assert status == 200, ans
    curve = ans["curve"]
    coefs = load_coefficients("paper")
    assert len(curve["compute"]) == 41
    i = 17
    at = plan(coefs, N_S, curve["compute"][i], "pretraining+inference")
    assert curve["distil"][i] == pytest.approx(at["student_loss"], rel=1e-12)
    assert curve["alone"][i] == pytest.approx(at["supervised_loss"], rel=1e-12)
    from kdlab.laws.tradeoffs import crossover

    expected = crossover(coefs, N_S, "pretraining+inference")["crossovers"]
    assert [c["compute"] for c in curve["crossovers"]] == pytest.approx(
        [c["compute"] for c in expected], rel=1e-9
    )
    assert len(expected) == 2


def test_robustness_from_the_fits_resamples(base: str, fits) -> None:
    status, ans = post(base, {"laws": "file", "budget": "1e21", "student": "340M"})
    assert status == 200, ans
    robust = ans["robustness"]
    n_sup = len(_resamples(fits[0]))
    n_dist = len(_resamples(fits[1]))
    assert robust["resamples"] == min(n_sup, n_dist) > 8
    assert "paired by index" in robust["note"]
    assert 0 <= robust["same_verdict"] <= robust["resamples"]
    lo, hi = robust["student_loss_interval"]
    assert lo <= hi and lo < ans["rows"][0]["student_loss"] * 1.05
    status, ans = post(base, {"laws": "paper", "budget": "1e21"})
    assert "no bootstrap resamples" in ans["robustness"]["unavailable"]


def _resamples(path: Path) -> list:
    from kdlab.laws.samples import decode_samples

    return decode_samples(json.loads(path.read_text()))


# ------------------------------------------------------------------ bad input


def _no_teacher_budget() -> str:
    """A budget that trains the 198M student alone on 1.02e6 tokens: no teacher fits."""
    coefs = load_coefficients("paper")
    return repr(3 * float(flops_per_token(N_S, coefs["flops"])) * 1.02e6)


BAD = [
    ({"budget": "-5"}, "budget", "must be a positive number"),
    ({"budget": "lots"}, "budget", "must be a number"),
    ({"budget": "1e10"}, "budget", "below the planner's lower bound"),
    ({"budget": _no_teacher_budget()}, "budget", "No teacher within the bounds fits"),
    ({"budget_unit": "money", "price": "0"}, "price", "positive"),
    ({"mfu": "150"}, "mfu", "at most 100"),
    ({"gpu": "tpu9"}, "gpu", "Unknown GPU"),
    ({"students": "0"}, "students", "at least 1"),
    ({"student": "huge"}, "student", "must be a number"),
    ({"student_by": "target", "target": "1.0"}, "target", "No student reaches a loss of 1"),
    (
        {"teacher": "exists", "teacher_kind": "loss", "teacher_loss": "2.1", "logits": "1"},
        "teacher_loss",
        "needs its size",
    ),
    ({"laws": "file", "fit": ""}, "fit", "Enter the path"),
    ({"laws": "file", "fit": "/nonexistent/fit.json"}, "fit", "does not exist"),
    ({"laws": "db", "db": ""}, "db", "Enter the run database URL"),
    ({"laws": "db", "db": "sqlite:////nonexistent/runs.db"}, "db", "does not exist"),
    ({"laws": "db", "db": "sqlite:///x.db", "fit_options": "--out /tmp/x"}, "fit_options", "--out"),
    ({"laws": "moon"}, "laws", "must be one of"),
]


@pytest.mark.parametrize("fields, field, words", BAD)
def test_bad_input_is_one_sentence_beside_its_field(base: str, fields, field, words) -> None:
    status, body = post(base, {"laws": "paper", **fields})
    assert status == 400, body
    assert body["error"]["field"] == field
    message = body["error"]["message"]
    assert words in message and message.endswith(".") and "\n" not in message


def test_bad_fit_files_and_requests(base: str, fits, tmp_path: Path) -> None:
    status, body = post(base, {"laws": "file", "fit": str(fits[0])})  # supervised only
    assert status == 400 and body["error"]["field"] == "fit"
    assert "without the distillation law" in body["error"]["message"]
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    status, body = post(base, {"laws": "file", "fit": str(broken)})
    assert status == 400 and "is not valid JSON" in body["error"]["message"]
    status, body = post(base, None, raw=b"\xff not json")
    assert status == 400 and body["error"]["message"] == "The fields must be a JSON object."
    status, body = post(base, {"laws": "paper", "budget": "1e21"})  # still serving
    assert status == 200 and body["plan_json"]["verdict"] == "train alone"


# ------------------------------------------------------------------ the run database


def test_fit_of_an_empty_database_fails_in_one_sentence(tmp_path: Path) -> None:
    """The fit runs kdlab fit in a child process: the page waits (202), then hears the
    fit's own sentence beside the database field."""
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    RunStore(url)  # the tables, no runs
    dashboard = Dashboard(db=url, quiet=True)
    server, address = _serve(dashboard)
    try:
        fields = {"laws": "db", "db": url, "bootstrap": "0"}
        status, body = post(address, fields)
        assert status == 202 and "Fitting the supervised law" in body["pending"]
        deadline = time.monotonic() + 600
        while status == 202 and time.monotonic() < deadline:
            time.sleep(0.5)
            status, body = post(address, fields)
        assert status == 400 and body["error"]["field"] == "db", body
        assert "runs" in body["error"]["message"]
    finally:
        server.shutdown()
        server.server_close()
        dashboard.close()


@pytest.mark.slow
def test_fit_of_the_run_database(tmp_path: Path) -> None:
    """The study fitted by the dashboard itself (kdlab fit's default grids): laws that
    plan, with resamples for the verdict's robustness."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    build_study(url)
    dashboard = Dashboard(db=url, quiet=True)
    server, address = _serve(dashboard)
    try:
        objective = "--kd-objective 'forward_kl lambda=1 tau=1'"
        fields = {"db": url, "bootstrap": "8", "fit_options": objective, "student": "340M"}
        status, body = post(address, fields)  # the preselected laws: a fit of the runs
        deadline = time.monotonic() + 1800
        while status == 202 and time.monotonic() < deadline:
            time.sleep(2)
            status, body = post(address, fields)
        assert status == 200, body
        assert body["laws"]["label"].startswith("fit of the runs in sqlite:///")
        assert body["robustness"]["resamples"] == 8
        spec = body["laws"]["spec"]
        assert Path(spec).is_file()
        expected = plan(load_coefficients(spec), 340e6, 1e21, "pretraining+inference")
        assert body["rows"][0]["student_loss"] == expected["student_loss"]
    finally:
        server.shutdown()
        server.server_close()
        dashboard.close()


def test_mfu_defaults_to_what_the_gpu_runs_measured(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(url)
    runs = {"gpu-a": ("gpu", 0.30), "gpu-b": ("gpu", 0.40), "cpu": ("cpu", 0.02)}
    for key, (accelerator, mfu) in runs.items():
        store.start(key, role="teacher", config={"trainer": {"accelerator": accelerator}})
        store.finish(key, val_loss=3.0, mfu=mfu)
    store.start("gpu-running", role="teacher", config={"trainer": {"accelerator": "gpu"}})
    dashboard = Dashboard(db=url, quiet=True)
    try:
        assert dashboard.options()["measured_mfu"] == {"mfu": pytest.approx(0.35), "runs": 2}
        fields = {"laws": "paper", "db": url, "budget_unit": "gpu_hours", "budget": "1000"}
        status, ans = dashboard.plan(fields)
        assert status == 200 and ans["mfu"] == pytest.approx(0.35)
        assert ans["budget"]["flops"] == pytest.approx(1000 * gpu_hour_flops("h100-80gb", 0.35))
        status, ans = dashboard.plan({**fields, "mfu": "20"})  # typed in: it wins
        assert ans["mfu"] == pytest.approx(0.20)
    finally:
        dashboard.close()


# ------------------------------------------------------------------ the command


def test_command_serves_on_a_free_port(tmp_path: Path) -> None:
    """``kdlab dashboard --port 0`` prints its URL and serves the page and the API."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdlab.cli", "dashboard", "--port", "0", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("kdlab dashboard: http://127.0.0.1:"), proc.stderr.read()
        url = line.split()[2].rstrip("/")
        with urllib.request.urlopen(f"{url}/", timeout=60) as r:
            assert b"kdlab dashboard" in r.read()
        with urllib.request.urlopen(f"{url}/static/dashboard.js", timeout=60) as r:
            assert b"/api/plan" in r.read()
        status, body = post(url, {"budget": "1e21"})
        assert status == 200 and body["plan_json"]["scenario"] == "pretraining+inference"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_dashboard_imports_neither_torch_nor_lightning() -> None:
    """The server, a plan and its curves in a fresh interpreter: no torch, no Lightning."""
    script = (
        "import json, sys, threading\n"
        "from kdlab.dashboard.server import Dashboard, make_server\n"
        "from kdlab.dashboard import cli\n"
        "d = Dashboard(quiet=True)\n"
        "status, body = d.plan({'budget': '1e21'})\n"
        "assert status == 200, body\n"
        "print(json.dumps([m for m in ('torch', 'lightning', 'hydra', 'matplotlib') "
        "if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


# ------------------------------------------------------------------ a real browser


def _coloured(rgb: np.ndarray) -> np.ndarray:
    """Pixels of a plot's colours (text, tables and frames are grey)."""
    return rgb.max(axis=2) - rgb.min(axis=2) > 60


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("KDLAB_REQUIRE_CHROMIUM"),
    reason="headless Chromium is not installed (apt-get install -y chromium)",
)
def test_browser_changes_inputs_and_reads_kdlab_plans(base: str, fits, capsys, tmp_path):
    """Chromium opens the page, the inputs change, the shown plan follows kdlab plan,
    bad input leaves a sentence and no result, the link reopens the plan, and the
    screenshot holds drawn plots."""
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM, "KDLAB_REQUIRE_CHROMIUM is set but chromium is not on PATH"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(f"{base}/")
        ready = "document.body.dataset.state === 'ready'"

        def shown_plan() -> dict[str, Any]:
            page.wait_for_function(ready, timeout=120_000)
            return json.loads(page.locator("#plan-json").inner_text())

        def change(name: str, value: str) -> dict[str, Any]:
            before = page.locator("#plan-json").inner_text()
            page.fill(f"input[name={name}]", value)
            page.wait_for_function(
                f"{ready} && document.querySelector('#plan-json').innerText !== {before!r}",
                timeout=120_000,
            )
            return shown_plan()

        # opened with the study's fit preselected (kdlab dashboard --fit)
        first = shown_plan()
        command = page.locator("#command").inner_text()
        assert f"--coefficients {fits[1]}" in command
        assert run_command(command, capsys) == first
        verdict = page.locator("#verdict").inner_text()
        assert verdict == {"distil": "Distil", "train alone": "Train alone"}[first["verdict"]]

        # a larger budget, then a teacher shared by 16 students
        shown = change("budget", "3e21")
        command = page.locator("#command").inner_text()
        assert "--compute 3e+21" in command and run_command(command, capsys) == shown
        shown = change("students", "16")
        command = page.locator("#command").inner_text()
        assert "--students 16" in command and run_command(command, capsys) == shown
        row = page.locator("#plans tbody tr.selected td")
        assert row.nth(1).inner_text() == shown["verdict"]
        assert row.nth(5).inner_text() == f"{shown['student_loss']:.4f}"

        # the published laws, a GPU-hour budget
        page.check("input[name=laws][value=paper]")
        page.select_option("select[name=budget_unit]", "gpu_hours")
        shown = change("budget", "20000")
        command = page.locator("#command").inner_text()
        assert "--coefficients paper" in command and run_command(command, capsys) == shown
        flops = 20000 * gpu_hour_flops("h100-80gb", 0.40)
        assert f"--compute {flops!r}" in command

        # bad input: one sentence beside the field, no stale result; then fixed again
        page.fill("input[name=budget]", "-3")
        page.wait_for_function("document.body.dataset.state === 'error'", timeout=120_000)
        expect(page.locator(".err[data-for=budget]")).to_have_text(
            "The budget in GPU-hours must be a positive number, not -3."
        )
        assert page.locator("#result").is_hidden()
        page.fill("input[name=budget]", "20000")
        assert shown_plan() == shown
        assert page.locator(".err[data-for=budget]").inner_text() == ""

        # the plan downloads as the JSON it shows: kdlab plan --json's keys and values
        with page.expect_download() as download:
            page.click("#download")
        assert json.loads(Path(download.value.path()).read_text()) == shown

        # the link reopens the same plan with the same inputs
        link = page.locator("#link").input_value()
        other = browser.new_page(viewport={"width": 1400, "height": 1100})
        other.goto(link)
        other.wait_for_function(ready, timeout=120_000)
        assert json.loads(other.locator("#plan-json").inner_text()) == shown
        assert other.locator("input[name=students]").input_value() == "16"
        assert other.locator("select[name=budget_unit]").input_value() == "gpu_hours"

        # the study's fit again (it has resamples): both plots drawn
        page.check("input[name=laws][value=file]")
        page.fill("input[name=fit]", str(fits[1]))
        shown = change("budget", "30000")
        assert page.locator("#curve path.distil").count() == 1
        assert page.locator("#robust rect.interval").count() == 2
        share = float(page.locator("#robust-caption").get_attribute("data-share"))
        assert 0 <= share <= 1
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        boxes = {name: page.locator(f"#{name}").bounding_box() for name in ("curve", "robust")}
        browser.close()
    if os.environ.get("KDLAB_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["KDLAB_KEEP_SCREENSHOT"])
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    # curves across most of the plot, over many rows; two interval bars and their dots
    least_rows = {"curve": 0.2 * boxes["curve"]["height"], "robust": 24}
    for name, box in boxes.items():
        x, y, w, h = (int(box[k]) for k in ("x", "y", "width", "height"))
        marks = _coloured(rgb[y : y + h, x : x + w])
        rows, cols = marks.any(axis=1).sum(), marks.any(axis=0).sum()
        assert cols > 0.5 * w and rows > least_rows[name], f"{name}: {rows} x {cols} marks"
