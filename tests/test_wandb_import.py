"""kdlab runs import --wandb: runs another codebase logged to W&B, in kdlab's database.

The runs are written with the real ``wandb`` package in offline mode (and as the CSV a
user downloads from W&B's runs table); their losses follow a known Chinchilla law, so
importing and fitting them must give that law back.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from kdlab import cli
from kdlab.laws.forms import supervised_loss
from kdlab.rundb import RunStore, sqlite_url
from kdlab.rundb.query import fit_points
from kdlab.rundb.wandb_import import run_key
from tests.conftest import REPO, assert_figure, run_cli

# Chinchilla-like truth (Hoffmann et al. 2022, eq. 2 with their fitted values, rounded)
TRUTH = {"E": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28}
SIZES = (2e6, 5e6, 1.2e7, 3e7)
# the README's mapping (its W&B section), so the example there is the one that works
MAPPING = re.search(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
# starts near and away from the truth (log E, log A, log B, alpha, beta): a small search
GRID = {"e": [0.0, 0.5], "a": [5.0, 6.0], "b": [5.0, 6.0], "alpha": [0.3], "beta": [0.3]}
FIT = ["--form", "chinchilla", "--keep", "0", "--final-keep", "0", "--huber-delta", "1e-3"]


def law(n: float, d: float) -> float:
    return TRUTH["E"] + TRUTH["A"] / n ** TRUTH["alpha"] + TRUTH["B"] / d ** TRUTH["beta"]


def grid_runs(ratios: tuple[float, ...]) -> list[tuple[float, float, float]]:
    return [(n, round(n * m), law(n, round(n * m))) for n in SIZES for m in ratios]


@pytest.fixture(scope="module")
def offline_runs(tmp_path_factory) -> Path:
    """Eight finished runs of another codebase and one that crashed, as W&B offline runs."""
    import wandb

    root = tmp_path_factory.mktemp("other_codebase")
    for n, d, loss in grid_runs((10, 40)):
        config = {"model": {"params_nonembed": n, "layers": 4}, "train": {"tokens": d}}
        with wandb.init(project="their-project", dir=root, config=config, mode="offline") as run:
            for fraction in (0.25, 0.5, 1.0):  # a falling curve ending at the law's loss
                run.log({"eval/loss": loss + 1.0 - fraction, "tokens": fraction * d})
    config = {"model": {"params_nonembed": 1e7}, "train": {"tokens": 1e8}}
    with pytest.raises(RuntimeError):
        with wandb.init(project="their-project", dir=root, config=config, mode="offline") as run:
            run.log({"eval/loss": 9.0})
            raise RuntimeError("their run crashed")
    return root / "wandb"


def kdlab(*args: str) -> int:
    return cli.main(list(args))


def test_offline_runs_fit_their_law(offline_runs, tmp_path, capsys):
    url = sqlite_url(tmp_path / "kdlab.db")
    (tmp_path / "map.yaml").write_text(MAPPING)
    # kdlab's own runs of another corpus in the same database: never fitted with them
    store = RunStore(url)
    for i, (n, d, loss) in enumerate(grid_runs((20,))):
        store.start(f"own{i}", role="supervised", corpus="c4", corpus_fingerprint="0123abcd")
        store.finish(f"own{i}", n_params=int(n), tokens=int(d), val_loss=loss + 0.3)

    imported = run_cli(
        "kdlab.cli",
        "runs",
        "--db",
        url,
        "import",
        "--wandb",
        str(offline_runs),
        "--map",
        str(tmp_path / "map.yaml"),
    )
    assert imported.returncode == 0, imported.stderr
    assert "imported 9 W&B runs" in imported.stdout and "9 new" in imported.stdout
    assert "1 recorded as failed: W&B state failed" in imported.stdout

    rows = RunStore(url).find()
    mine = [r for r in rows if r["imported_from"]]
    assert len(mine) == 9 and all(r["key"].startswith("wandb-") for r in mine)
    done = sorted((r for r in mine if r["status"] == "done"), key=lambda r: r["tokens"])
    truth = sorted(grid_runs((10, 40)), key=lambda t: t[1])
    assert [(r["n_params"], r["tokens"]) for r in done] == [(int(n), d) for n, d, _ in truth]
    assert [r["val_loss"] for r in done] == pytest.approx([loss for *_, loss in truth])
    assert {r["corpus_fingerprint"] for r in mine} == {"declared:their-web-text"}
    assert {(r["study"], r["tokenizer"], r["n_ctx"], r["role"]) for r in mine} == {
        ("their-project", "gpt2", 1024, "supervised")
    }
    [crashed] = [r for r in mine if r["status"] == "failed"]
    assert crashed["n_params"] == 10**7 and crashed["val_loss"] == 9.0
    wandb_id = crashed["config"]["imported"]["wandb_run_id"]
    assert crashed["key"] == run_key(wandb_id)
    assert crashed["imported_from"].startswith(f"W&B run {wandb_id} of {offline_runs}")

    capsys.readouterr()
    assert kdlab("runs", "--db", url, "list", "--corpus", "their-web-text") == 0
    listing = capsys.readouterr().out
    assert "9 runs" in listing and listing.count("W&B") == 9

    # all of the database: two corpora, refused; their corpus by name: their law back
    out = tmp_path / "fit.json"
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(GRID))
    fit = ["fit", "supervised", "--db", url, "--grid", str(grid), *FIT, "--out", str(out)]
    assert kdlab(*fit) == 2
    err = capsys.readouterr().err
    assert "corpus in {0123abcd (c4), declared:their-web-text (their-web-text)}" in err
    assert kdlab(*fit, "--corpus", "their-web-text") == 0
    doc = json.loads(out.read_text())
    assert doc["n_points"] == 8 and doc["data"]["corpus"] == "declared:their-web-text"
    assert sorted(doc["data"]["run_keys"]) == sorted(r["key"] for r in done)
    coef = doc["coefficients"]
    assert_recovered(coef)


def assert_recovered(coef: dict) -> None:
    """Noise-free runs give the law back: exponents to 0.005, E to 1%, and the loss of a
    run outside the grid (3x the largest model, 100 tokens a parameter) to 0.2%."""
    for name in ("alpha", "beta"):
        assert coef[name] == pytest.approx(TRUTH[name], abs=0.005), (name, coef)
    assert coef["E"] == pytest.approx(TRUTH["E"], rel=0.01), coef
    n, d = 9e7, 9e9
    predicted = float(supervised_loss(np.array([n]), np.array([d]), coef)[0])
    assert predicted == pytest.approx(law(n, d), rel=0.002)


def test_import_again_and_never_over_kdlab_rows(offline_runs, tmp_path, capsys):
    url = sqlite_url(tmp_path / "kdlab.db")
    (tmp_path / "map.yaml").write_text(MAPPING)
    args = ["runs", "--db", url, "import", "--wandb", str(offline_runs)]
    args += ["--map", str(tmp_path / "map.yaml")]
    assert kdlab(*args) == 0
    first = {r["key"]: r for r in RunStore(url).find()}
    assert kdlab(*args) == 0  # the same runs again: the same rows, none added
    assert "0 new, 9 imported before" in capsys.readouterr().out
    again = {r["key"]: r for r in RunStore(url).find()}
    assert again.keys() == first.keys()
    volatile = ("updated_at",)
    assert [{k: v for k, v in r.items() if k not in volatile} for r in again.values()] == [
        {k: v for k, v in r.items() if k not in volatile} for r in first.values()
    ]

    # a row kdlab trained under the key one of the W&B runs would get: it stays as it was,
    # and the import writes nothing at all
    url = sqlite_url(tmp_path / "other.db")
    key = next(iter(first))
    store = RunStore(url)
    store.start(key, role="teacher", corpus="c4", corpus_fingerprint="0123abcd")
    store.finish(key, n_params=123, tokens=456, val_loss=3.25)
    before = store.get(key)
    capsys.readouterr()
    assert kdlab(*[url if a == args[2] else a for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"kdlab: error: run {key} in the database was trained by kdlab, not imported: "
        "an import never writes over it"
    )
    assert store.find() == [before]


def write_export(path: Path, runs: list[dict]) -> None:
    """The runs table as W&B's UI exports it: Name, State, ..., config, summary columns."""
    columns = ["Name", "State", "Notes", "User", "Tags", "Created", "Runtime", "Sweep"]
    columns += sorted({k for run in runs for k in run} - set(columns))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        for run in runs:
            writer.writerow({"Notes": "-", "User": "someone", "Runtime": 812, **run})


def export_runs() -> list[dict]:
    runs = [
        {
            "Name": f"n{n:.0e}-m{d / n:.0f}",
            "State": "finished",
            "n_embd_free_params": n,
            "tokens_seen": d,
            "val_loss": loss,
            "_step": 1000,
        }
        for n, d, loss in grid_runs((5, 20, 80))
    ]
    runs.append({"Name": "crashed-one", "State": "crashed", "n_embd_free_params": 1e6})
    return runs


CSV_KEYS = ["n=n_embd_free_params", "d=tokens_seen", "loss=val_loss"]
CSV_DECLARED = ["corpus=their-web-text", "tokenizer=gpt2", "n_ctx=1024"]


def test_csv_export_fits_their_law(tmp_path, capsys):
    write_export(tmp_path / "wandb_export.csv", export_runs())
    url = sqlite_url(tmp_path / "kdlab.db")
    args = ["runs", "--db", url, "import", "--wandb", str(tmp_path / "wandb_export.csv")]
    for pair in CSV_KEYS:
        args += ["--map-key", pair]
    for pair in CSV_DECLARED:
        args += ["--declare", pair]
    assert kdlab(*args) == 0
    assert "imported 13 W&B runs" in capsys.readouterr().out
    points = fit_points(url, "supervised")
    assert len(points) == 12 and set(points["corpus_name"]) == {"their-web-text"}
    expected = {(int(n), d): loss for n, d, loss in grid_runs((5, 20, 80))}
    got = {(int(r.N), int(r.D)): r.loss for r in points.itertuples()}
    assert got == pytest.approx(expected)
    crashed = RunStore(url).get(run_key("crashed-one"))
    assert crashed["status"] == "failed" and crashed["val_loss"] is None

    out, grid = tmp_path / "fit.json", tmp_path / "grid.json"
    grid.write_text(json.dumps(GRID))
    fit = ["fit", "supervised", "--db", url, "--corpus", "their-web-text", "--grid", str(grid)]
    assert kdlab(*fit, *FIT, "--out", str(out)) == 0
    assert_recovered(json.loads(out.read_text())["coefficients"])
    # the report draws them beside the fit, as one corpus, tokenizer and context
    report = ["report", "--db", url, "--corpus", "their-web-text", "--supervised-fit", str(out)]
    report += ["--out", str(tmp_path / "report"), "--plan-budgets", "0", "--map-points", "0"]
    assert kdlab(*report) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "their-web-text, tokenizer = gpt2, n_ctx = 1024" in page
    assert "12 runs fitted; form chinchilla" in page
    assert_figure(tmp_path / "report" / "supervised_loss.png")


def test_students_carry_their_teacher(tmp_path, capsys):
    runs = [
        {"Name": "t", "ID": "a1", "State": "finished", "kind": "teacher", "N": 3e7, "D": 6e8},
        {"Name": "s", "ID": "b2", "State": "finished", "kind": "student", "N": 5e6, "D": 1e8},
    ]
    runs[0]["loss"] = 3.1
    runs[1].update(loss=3.6, teacher_params=3e7, teacher_tokens=6e8, teacher_val_loss=3.1)
    # a run whose loss is not below ln V (ln 50257 = 10.82) learned nothing: failed
    runs.append({"Name": "u", "ID": "c3", "State": "finished", "kind": "teacher", "loss": 11.0})
    runs[-1].update(N=1e6, D=1e6)
    write_export(tmp_path / "export.csv", runs)
    (tmp_path / "map.yaml").write_text(
        "keys: {n: N, d: D, loss: loss, role: kind, teacher_n: teacher_params,\n"
        "       teacher_d: teacher_tokens, teacher_loss: teacher_val_loss}\n"
        "declare: {corpus: their-web-text, tokenizer: gpt2, n_ctx: 512, study: kd,\n"
        "          vocab_size: 50257}\n"
    )
    url = sqlite_url(tmp_path / "kdlab.db")
    args = ["runs", "--db", url, "import", "--wandb", str(tmp_path / "export.csv")]
    assert kdlab(*args, "--map", str(tmp_path / "map.yaml")) == 0
    teacher, student = RunStore(url).get(run_key("a1")), RunStore(url).get(run_key("b2"))
    assert (teacher["role"], teacher["n_params"], teacher["val_loss"]) == (
        "teacher",
        3 * 10**7,
        3.1,
    )
    assert student["role"] == "student" and student["study"] == "kd"
    assert (student["teacher_n_params"], student["teacher_tokens"]) == (3 * 10**7, 6 * 10**8)
    assert student["teacher_loss"] == 3.1 and student["teacher_kind"] == "imported"
    unlearned = RunStore(url).get(run_key("c3"))
    assert unlearned["status"] == "failed" and unlearned["failure"] == (
        "did not learn: loss 11.0000 is not below ln V (V = 50257)"
    )
    assert len(fit_points(url, "supervised")) == 1  # the teacher, not the failed run
    [point] = fit_points(url, "distillation").itertuples()
    assert (point.N_S, point.D_S, point.L_T, point.loss) == (5e6, 1e8, 3.1, 3.6)


def _error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "case, expected",
    [
        (
            "missing source",
            "there is no W&B offline run folder or CSV export at {tmp}/nowhere (nor is it an "
            "entity/project)",
        ),
        (
            "absent key",
            "no run has the config or summary key 'token_seen' the mapping gives for d; "
            "the nearest are tokens_seen",
        ),
        (
            "no loss",
            "run n2e+06-m5 ({tmp}/export.csv line 2) finished without a loss under 'val_loss'",
        ),
        (
            "no corpus",
            "the mapping does not declare corpus: imported losses are compared only with runs "
            "of the same corpus, tokenizer and context",
        ),
        (
            "history from csv",
            "no run has the history key 'val_loss' the mapping gives for loss_history; this "
            "source has no history (a CSV export): map loss to a summary column",
        ),
        (
            "unknown field",
            "the mapping gives params, not a field of keys (its fields: n, d, loss, "
            "loss_history, role, teacher_n, teacher_d, teacher_loss)",
        ),
        (
            "no size",
            "run n2e+06-m5 ({tmp}/export.csv line 2) has 0.0 under 'n_embd_free_params', not a "
            "positive number",
        ),
        (
            "not a number",
            "run crashed-one ({tmp}/export.csv line 14) has 'many' under "
            "'n_embd_free_params', not a number",
        ),
    ],
)
def test_bad_input_is_one_sentence_and_no_row(case, expected, tmp_path, capsys):
    runs = export_runs()
    keys, declared, source = list(CSV_KEYS), list(CSV_DECLARED), tmp_path / "export.csv"
    if case == "missing source":
        source = tmp_path / "nowhere"
    elif case == "absent key":
        keys[1] = "d=token_seen"
    elif case == "no loss":
        del runs[0]["val_loss"]
    elif case == "no corpus":
        declared = declared[1:]
    elif case == "history from csv":
        keys[2] = "loss_history=val_loss"
    elif case == "unknown field":
        keys.append("params=n_embd_free_params")
    elif case == "no size":
        runs[0]["n_embd_free_params"] = 0
    elif case == "not a number":
        runs[-1]["n_embd_free_params"] = "many"
    write_export(tmp_path / "export.csv", runs)
    db = tmp_path / "kdlab.db"
    args = ["runs", "--db", sqlite_url(db), "import", "--wandb", str(source)]
    args += [a for pair in keys for a in ("--map-key", pair)]
    args += [a for pair in declared for a in ("--declare", pair)]
    assert kdlab(*args) == 2
    assert _error(capsys) == "kdlab: error: " + expected.format(tmp=tmp_path)
    assert not db.exists()  # checked before the database is opened


def test_a_project_needs_w_and_b_server(tmp_path):
    """entity/project is read through wandb.Api(): offline, or without a login, one
    sentence naming the project."""
    args = ["kdlab.cli", "runs", "--db", sqlite_url(tmp_path / "kdlab.db"), "import"]
    args += ["--wandb", "their-team/their-project"]
    args += [a for pair in CSV_KEYS for a in ("--map-key", pair)]
    args += [a for pair in CSV_DECLARED for a in ("--declare", pair)]
    offline = run_cli(*args, cwd=tmp_path)
    assert offline.returncode == 2
    assert offline.stderr.strip().splitlines()[-1] == (
        "kdlab: error: cannot read W&B project their-team/their-project: WANDB_MODE is "
        "offline, so W&B's server is not asked; import an offline run folder or a CSV "
        "export of its runs instead"
    )
    env = {"WANDB_MODE": None, "WANDB_API_KEY": None, "HOME": str(tmp_path)}
    env["WANDB_CONFIG_DIR"] = str(tmp_path / "wandb_config")
    no_login = run_cli(*args, cwd=tmp_path, env=env, timeout=120)
    assert no_login.returncode == 2
    last = no_login.stderr.strip().splitlines()[-1]
    assert last.startswith("kdlab: error: cannot read W&B project their-team/their-project: ")
    assert "API key" in last
    assert not (tmp_path / "kdlab.db").exists()


def test_offline_reader_reads_what_wandb_wrote(offline_runs):
    from kdlab.wandb_offline import read_offline_run

    folders = sorted({p.resolve().parent for p in offline_runs.glob("*/*.wandb")})  # latest-run too
    runs = [read_offline_run(folder) for folder in folders]
    assert sorted(r.exit_code for r in runs) == [0] * 8 + [1]
    finished = [r for r in runs if r.exit_code == 0]
    for run in finished:
        n, d = run.config["model"]["params_nonembed"], run.config["train"]["tokens"]
        assert [row["eval/loss"] for row in run.rows] == pytest.approx(
            [law(n, d) + 0.75, law(n, d) + 0.5, law(n, d)]
        )
        assert run.summary["eval/loss"] == pytest.approx(law(n, d))
        assert run.run["project"] == "their-project"
    assert math.isclose(min(r.summary["eval/loss"] for r in finished), law(3e7, 1.2e9))
