"""kdlab fit | predict | plan: end to end, and bad input -> one sentence, exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdlab import cli
from kdlab.laws import cli as laws_cli
from kdlab.laws.forms import distillation_loss, supervised_loss
from kdlab.laws.published import PAPER_DISTILLATION, PAPER_SUPERVISED
from kdlab.laws.synthetic import paper_like_distillation_runs, paper_like_supervised_runs

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "kdlab.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_sentence_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kdlab: error: ") and fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def bad_csvs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    good = pd.DataFrame(
        {"N": np.repeat([1e8, 3e8, 1e9], 4), "D": np.tile([1e9, 3e9, 1e10, 3e10], 3)}
    )
    good["loss"] = 2 + 400 / good.N**0.3 + 400 / good.D**0.3
    frames = {
        "missing": good.drop(columns=["D"]),
        "nan": good.assign(loss=[np.nan] + list(good.loss[1:])),
        "negative": good.assign(N=-good.N),
        "few": good.iloc[:4],
        "one_n": good.assign(N=1e8),
        "one_d": good.assign(D=1e9),
    }
    out = {}
    for name, frame in frames.items():
        out[name] = d / f"{name}.csv"
        frame.to_csv(out[name], index=False)
    return out


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing", "Column 'D' (for D) is missing"),
        ("nan", "NaN"),
        ("negative", "non-positive"),
        ("few", "more runs than coefficients"),
        ("one_n", "same N"),
        ("one_d", "same D"),
    ],
)
def test_fit_bad_input(bad_csvs, case, fragment):
    proc = run_cli("fit", "supervised", "--csv", str(bad_csvs[case]), "--form", "chinchilla")
    assert_one_sentence_error(proc, fragment)


def test_plan_unknown_scenario():
    proc = run_cli(
        "plan",
        "--coefficients",
        "paper",
        "--student",
        "198M",
        "--compute",
        "1e21",
        "--scenario",
        "free-lunch",
    )
    assert_one_sentence_error(proc, "Unknown scenario 'free-lunch'")


def test_predict_section6_numbers_through_subprocess():
    proc = run_cli(
        "predict", "--coefficients", "paper", "--n", "198M", "--tokens-per-param", "20", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["loss"] == pytest.approx(2.789, abs=5e-4)


def test_predict_and_plan_in_process(capsys):
    assert (
        cli.main(
            [
                "predict",
                "--coefficients",
                "paper",
                "--n",
                "198e6",
                "--d",
                "3.96e9",
                "--teacher-loss",
                "2.004",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(2.544, abs=5e-4)
    assert (
        cli.main(
            [
                "predict",
                "--n",
                "198M",
                "--tokens-per-param",
                "20",
                "--teacher-params",
                "7.75B",
                "--teacher-tokens",
                "155B",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(2.544, abs=5e-4)
    for m, lt in ((20, 1.876), (320, 2.198)):
        assert (
            cli.main(
                [
                    "plan",
                    "--coefficients",
                    "paper",
                    "--student",
                    "198M",
                    "--tokens-per-param",
                    str(m),
                    "--scenario",
                    "best",
                    "--json",
                ]
            )
            == 0
        )
        out = json.loads(capsys.readouterr().out)
        assert set(out) == set(laws_cli.PLAN_JSON_KEYS)
        assert set(out["compute_shares"]) == {"student", "teacher_logits", "teacher_pretraining"}
        assert out["teacher_loss"] == pytest.approx(lt, abs=1e-3)
        assert out["verdict"] == "distil"
    assert (
        cli.main(
            [
                "plan",
                "--student",
                "198M",
                "--compute",
                "1e21",
                "--scenario",
                "pretraining+inference",
                "--students",
                "8",
                "--json",
            ]
        )
        == 0
    )
    # a teacher shared by 8 students pays for itself, barely; one student alone does not
    shared = json.loads(capsys.readouterr().out)
    assert shared["verdict"] == "distil"
    assert shared["student_loss"] == pytest.approx(2.43468, abs=2e-4)
    assert shared["student_loss"] < shared["supervised_loss"]
    argv = ["plan", "--student", "198M", "--compute", "1e21", "--scenario"]
    assert cli.main([*argv, "pretraining+inference", "--students", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "train alone"
    assert (
        cli.main(["plan", "--student", "198M", "--crossover", "--teacher-loss", "2.0", "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["crossover_compute"] > 1e19


def test_fit_predict_plan_round_trip(tmp_path, capsys):
    sup = paper_like_supervised_runs(noise=0.005, seed=0)
    sup.to_csv(tmp_path / "sup.csv", index=False)
    grid = tmp_path / "grid.json"
    grid.write_text(
        json.dumps(
            {
                "e": [0.0, 0.5],
                "a": [8.0],
                "b": [10.0],
                "alpha": [0.4],
                "beta": [0.4],
                "gamma": [0.5],
            }
        )
    )
    sup_json = tmp_path / "sup.json"
    assert (
        cli.main(
            [
                "fit",
                "supervised",
                "--csv",
                str(tmp_path / "sup.csv"),
                "--form",
                "paper",
                "--grid",
                str(grid),
                "--out",
                str(sup_json),
                "--bootstrap",
                "16",
            ]
        )
        == 0
    )
    doc = json.loads(sup_json.read_text())
    assert doc["law"] == "supervised" and doc["form"] == "paper"
    coef = doc["coefficients"]
    assert set(coef) == {"E", "A", "B", "alpha", "beta", "gamma"}
    assert doc["n_points"] == len(sup) == 55
    # the JSON's coefficients are the optimum it reports: their Huber objective (delta
    # 1e-4 on log residuals) is the recorded one, and each lies inside its interval
    residual = np.log(supervised_loss(sup.N, sup.D, coef) / sup.loss)
    huber = np.where(np.abs(residual) <= 1e-4, 0.5 * residual**2, 1e-4 * (np.abs(residual) - 5e-5))
    assert doc["objective"] == pytest.approx(float(huber.sum()), rel=1e-6)
    assert all(lo <= coef[k] <= hi for k, (lo, hi) in doc["intervals"].items())
    # and the runs came from the published law with 0.5% noise: the fit reproduces it
    assert np.max(np.abs(supervised_loss(sup.N, sup.D, coef) / sup.loss_true - 1)) < 0.01
    capsys.readouterr()

    dist = paper_like_distillation_runs(n_runs=200, noise=0.005, seed=0)
    dist = dist.rename(columns={"N_S": "student", "D_S": "tokens", "L_T": "teacher"})
    dist.to_csv(tmp_path / "dist.csv", index=False)
    dgrid = tmp_path / "dgrid.json"
    dgrid.write_text(
        json.dumps(
            {
                "a": [5.0, 10.0],
                "b": [10.0],
                "alpha": [0.5],
                "beta": [0.5],
                "gamma": [0.5, 1.0],
                "c0": [1.5],
                "c1": [0.5, 1.5],
                "f1": [0.5],
                "log_d1": [0.0, 0.5],
            }
        )
    )
    dist_json = tmp_path / "dist.json"
    assert (
        cli.main(
            [
                "fit",
                "distillation",
                "--csv",
                str(tmp_path / "dist.csv"),
                "--ns-col",
                "student",
                "--ds-col",
                "tokens",
                "--lt-col",
                "teacher",
                "--supervised",
                str(sup_json),
                "--grid",
                str(dgrid),
                "--fit-where",
                "loss >= 2.3",
                "--out",
                str(dist_json),
            ]
        )
        == 0
    )
    ddoc = json.loads(dist_json.read_text())
    assert set(ddoc["coefficients"]) == {"A", "B", "alpha", "beta", "gamma", "c0", "c1", "f1", "d1"}
    assert ddoc["supervised"]["coefficients"] == doc["coefficients"]
    assert ddoc["heldout_error"]["n_points"] == int((dist.loss < 2.3).sum())
    assert ddoc["flops"]["n_ctx"] == 4096
    capsys.readouterr()
    # the distillation JSON alone is enough for predict and plan
    assert (
        cli.main(
            [
                "predict",
                "--coefficients",
                str(dist_json),
                "--n",
                "500M",
                "--d",
                "1e10",
                "--teacher-loss",
                "2.2",
                "--json",
            ]
        )
        == 0
    )
    # the runs were made from the paper's laws (0.5% noise): the fit predicts their value
    truth = distillation_loss(500e6, 1e10, 2.2, PAPER_DISTILLATION, PAPER_SUPERVISED)
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(float(truth), rel=0.01)
    assert (
        cli.main(
            [
                "plan",
                "--coefficients",
                str(dist_json),
                "--student",
                "500M",
                "--compute",
                "1e21",
                "--scenario",
                "inference",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["scenario"] == "inference"
    # a supervised JSON cannot predict a student
    assert (
        cli.main(
            [
                "predict",
                "--coefficients",
                str(sup_json),
                "--n",
                "500M",
                "--d",
                "1e10",
                "--teacher-loss",
                "2.2",
            ]
        )
        == 2
    )
    assert "supervised fit" in capsys.readouterr().err


def test_fit_from_database(tmp_path, capsys):
    """A real SQLite run database: only finished teachers and supervised runs are fitted,
    one corpus at a time, and the fit says which runs and which F(N) it used."""
    from kdlab.rundb import RunStore

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(url)
    runs = paper_like_supervised_runs(noise=0.005, seed=0)
    shape = dict(corpus_fingerprint="c4", tokenizer="bpe32k", n_ctx=1024, vocab_size=32768)
    keys = []
    for i, run in enumerate(runs.itertuples()):
        keys.append(f"k{i:03d}")
        role = "teacher" if i % 2 else "supervised"
        store.start(keys[-1], role=role, n_params=int(run.N), tokens=int(run.D), **shape)
        store.update(keys[-1], d_model=1024, n_layer=8)  # rho = 128 for the fit's F(N)
        store.finish(keys[-1], val_loss=float(run.loss))
    # never fitted: a diverged run, an unfinished one, and a distilled student
    store.start("failed", role="supervised", n_params=10**8, tokens=10**9, **shape)
    store.fail("failed", "diverged: loss became nan at step 3")
    store.start("running", role="teacher", n_params=10**8, tokens=10**9, **shape)
    store.start("student", role="student", n_params=10**8, tokens=10**9, **shape)
    store.finish("student", val_loss=2.5, teacher_loss=2.2)

    out = tmp_path / "fit.json"
    grid = {"e": [0.0], "a": [8.0], "b": [10.0], "alpha": [0.4], "beta": [0.4], "gamma": [0.5]}
    (tmp_path / "g.json").write_text(json.dumps(grid))
    args = ["fit", "supervised", "--db", url, "--grid", str(tmp_path / "g.json"), "--out", str(out)]
    assert cli.main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["data"]["source"] == url and doc["data"]["corpus"] == "c4"
    assert doc["data"]["run_keys"] == keys and doc["n_points"] == len(runs)
    assert {k: doc["flops"][k] for k in ("n_ctx", "n_vocab", "rho")} == {
        "n_ctx": 1024,
        "n_vocab": 32768,
        "rho": 128,
    }
    fitted = supervised_loss(runs.N, runs.D, doc["coefficients"])
    assert np.max(np.abs(fitted / runs.loss_true - 1)) < 0.01
    capsys.readouterr()

    for key in keys[:5]:  # five runs of another corpus: not comparable with the rest
        store.update(key, corpus_fingerprint="wikitext")
    assert cli.main(args) == 2
    announced, err = capsys.readouterr().err.strip().splitlines()
    assert announced == f"kdlab: run database {url} (from --db)"
    assert err.startswith("kdlab: error: ") and "corpus in {c4, wikitext}" in err
    assert cli.main(args + ["--corpus", "c4"]) == 0
    assert json.loads(out.read_text())["data"]["run_keys"] == keys[5:]


def test_fit_on_a_markov_chain_checks_e_against_its_known_floor(tmp_path, capsys):
    """Runs on a second-order Markov chain: the fit reports the least loss the chain allows
    at the runs' context (computed from the recorded corpus config) beside the fitted E,
    here on losses drawn from a law whose E is that floor."""
    from kdlab.data.corpora import MarkovCorpus, build_corpus
    from kdlab.laws.published import PAPER_SUPERVISED
    from kdlab.rundb import RunStore

    corpus_config = {"name": "markov", "n_states": 8, "markov_order": 2, "n_tokens": 1000}
    chain = build_corpus(corpus_config)
    assert isinstance(chain, MarkovCorpus)
    floor = chain.window_loss(256)
    assert chain.entropy_rate < floor < chain.entropy_rate + 0.05
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = RunStore(url)
    runs = paper_like_supervised_runs(noise=0.001, seed=0)
    shift = floor - PAPER_SUPERVISED["E"]
    for i, run in enumerate(runs.itertuples()):
        store.start(
            f"k{i:03d}",
            role="supervised",
            n_params=int(run.N),
            tokens=int(run.D),
            corpus="markov",
            corpus_fingerprint="m2",
            n_ctx=256,
            vocab_size=8,
            config={"data": {"module": {"corpus": corpus_config}}},
        )
        store.update(f"k{i:03d}", d_model=1024, n_layer=8)
        store.finish(f"k{i:03d}", val_loss=float(run.loss + shift))
    grid = {"e": [0.0], "a": [8.0], "b": [10.0], "alpha": [0.4], "beta": [0.4], "gamma": [0.5]}
    (tmp_path / "g.json").write_text(json.dumps(grid))
    out = tmp_path / "fit.json"
    args = ["fit", "supervised", "--db", url, "--grid", str(tmp_path / "g.json"), "--out", str(out)]
    assert cli.main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["known_floor"] == pytest.approx(floor, rel=1e-12)
    assert doc["coefficients"]["E"] == pytest.approx(floor, rel=0.05)  # one start
    printed = " ".join(capsys.readouterr().out.split())
    assert f"against the corpus's known floor {floor:.4g}" in printed

    for i in range(len(runs)):  # another corpus: nothing known to compare with
        store.update(f"k{i:03d}", corpus="stdlib", config={"data": {"module": {}}})
    assert cli.main(args) == 0
    assert "known_floor" not in json.loads(out.read_text())
    assert "known floor" not in capsys.readouterr().out


def test_distillation_needs_supervised(tmp_path, capsys):
    runs = paper_like_distillation_runs(n_runs=50)
    runs.to_csv(tmp_path / "d.csv", index=False)
    assert cli.main(["fit", "distillation", "--csv", str(tmp_path / "d.csv")]) == 2
    assert "--supervised" in capsys.readouterr().err


def test_holdout_is_the_complement_of_fit_where(tmp_path, capsys):
    runs = paper_like_supervised_runs(noise=0.005, seed=1)
    runs.to_csv(tmp_path / "s.csv", index=False)
    (tmp_path / "g.json").write_text(
        json.dumps(
            {"e": [0.0], "a": [8.0], "b": [10.0], "alpha": [0.4], "beta": [0.4], "gamma": [0.5]}
        )
    )
    out = tmp_path / "f.json"
    assert (
        cli.main(
            [
                "fit",
                "supervised",
                "--csv",
                str(tmp_path / "s.csv"),
                "--grid",
                str(tmp_path / "g.json"),
                "--holdout",
                "loss < 2.2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    assert doc["heldout_error"]["n_points"] == int((runs.loss < 2.2).sum()) > 0
    assert doc["data"]["columns"] == {"N": "N", "D": "D", "loss": "loss"}
    assert "held-out error" in capsys.readouterr().out


def test_pretraining_plan_names_the_teacher_cache(capsys):
    """The pretraining scenario stores the teacher's logits and reuses them: the plan says
    which commands do that; the inference scenario (logits per student) does not."""
    args = ["plan", "--coefficients", "paper", "--student", "198e6", "--compute", "1e21"]
    assert cli.main([*args, "--scenario", "pretraining"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "how it runs: `kdlab teacher cache` computes the teacher's top-k logits once" in out
    assert "teacher=cache" in out
    assert cli.main([*args, "--scenario", "inference"]) == 0
    assert "kdlab teacher cache" not in capsys.readouterr().out
