"""New corpora: the installed packages' sources (pysrc), the synthetic capacity-gap tasks
(kernel, pointer), and the corpus sizes sweep plans use for passes over the data."""

from __future__ import annotations

import numpy as np
import pytest

from kdlab.data import build_corpus, corpus_info
from kdlab.data.cache import planned_token_count
from tests.conftest import run_cli


def test_kernel_tokens_are_noisy_readings_of_the_function_of_their_context():
    """Every token's probability under the generating table averages to the exact
    entropy rate, and the table's mean is the target function at the context's point."""
    c = build_corpus({"name": "kernel", "n_tokens": 400_000, "base": 8, "order": 2})
    ids = c.token_ids().astype(int)
    assert ids.min() >= 0 and ids.max() < 8 and c.vocab_size == 8
    ctx = ids[1:-1] * 8 + ids[:-2]  # x_{t-1} is the most significant digit
    empirical = -np.log(c.table[ctx, ids[2:]]).mean()
    assert empirical == pytest.approx(c.entropy_rate, rel=0.01)
    u = (np.arange(64) + 0.5) / 64
    mean_bin = (c.table * (np.arange(8) + 0.5) / 8).sum(axis=1)
    f = c.target(u)
    inside = (f > 0.25) & (f < 0.75)  # away from the clipped outer bins
    assert np.allclose(mean_bin[inside], f[inside], atol=0.02)
    again = build_corpus({"name": "kernel", "n_tokens": 400_000, "base": 8, "order": 2})
    assert np.array_equal(again.token_ids(), c.token_ids())
    other = build_corpus({"name": "kernel", "n_tokens": 400_000, "base": 8, "order": 2, "seed": 1})
    assert other.info().fingerprint != c.info().fingerprint


def test_pointer_tokens_copy_what_their_predecessor_points_at():
    c = build_corpus({"name": "pointer", "n_tokens": 200_000, "base": 16, "order": 8, "noise": 0.2})
    x = c.token_ids().astype(int)
    t = np.arange(10, len(x))
    copied = x[t] == x[t - 2 - x[t - 1] % 8]
    # copied on purpose (1 - noise), or by chance when the random token hits (noise / 16)
    assert copied.mean() == pytest.approx(0.8 + 0.2 / 16, abs=0.005)
    hit = 0.8 + 0.2 / 16
    assert c.entropy_rate == pytest.approx(-hit * np.log(hit) - 15 * (0.2 / 16) * np.log(0.2 / 16))


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "kernel", "base": 1}, "base >= 2"),
        ({"name": "kernel", "noise": 0.0}, "noise > 0"),
        ({"name": "kernel", "base": 64, "order": 4}, "at most 2"),
        ({"name": "pointer", "noise": 1.5}, "0 < noise <= 1"),
    ],
)
def test_task_configs_are_checked(spec, message):
    with pytest.raises(ValueError, match=message):
        build_corpus(spec)


def test_pysrc_holds_the_stdlib_and_the_named_packages_in_a_fixed_order():
    full = build_corpus("pysrc")  # the stdlib and PyTorch
    files = full.files()
    assert set(build_corpus("stdlib").files()) < set(files)
    torch_files = [p for p in files if "site-packages" in p.parts]
    assert torch_files and all(
        p.parts[p.parts.index("site-packages") + 1] == "torch" for p in torch_files
    )
    assert not any({"tests", "test", "__pycache__"} & set(p.parts) for p in files)
    assert files == build_corpus({"name": "pysrc", "packages": ["torch"]}).files()
    assert full.describe()["versions"]["torch"].startswith("2.13.0")
    assert full.byte_tokens_estimate() > 4 * build_corpus("stdlib").byte_tokens_estimate()
    capped = build_corpus({"name": "pysrc", "max_bytes": 3_000_000})
    info = capped.info()
    assert 2_500_000 < info.n_bytes <= 3_000_000
    # the size estimate from the files' sizes is the byte-token count itself
    assert capped.byte_tokens_estimate() == info.n_bytes + info.n_documents
    with pytest.raises(ValueError, match="package 'no_such_pkg' is not installed"):
        build_corpus({"name": "pysrc", "packages": ["no_such_pkg"]}).files()


def test_planned_token_counts_say_how_they_are_known(tmp_path):
    markov = planned_token_count(build_corpus({"name": "markov", "n_tokens": 5000}), "auto")
    assert (markov.n_tokens, markov.how) == (5000, "exact")
    capped = build_corpus({"name": "pysrc", "max_bytes": 1_000_000})
    before = planned_token_count(capped, "byte", tmp_path)
    assert before.how.startswith("estimate")
    info = corpus_info(capped, tmp_path)  # memoised by the first run that reads it
    after = planned_token_count(capped, "byte", tmp_path)
    assert after.how == "exact" and after.n_tokens == info.n_bytes + info.n_documents
    bpe = planned_token_count(capped, "bpe-512", tmp_path)
    assert bpe.n_tokens is None and bpe.how.startswith("unknown")


SWEEP = """\
defaults:
  - train
  - override /data: markov
  - _self_
role: supervised
data:
  module:
    corpus:
      n_tokens: 200000
    val_tokens: 8192
hydra:
  sweeper:
    params:
      model: nano_L1,nano_L2
      data.tokens_per_param: 10,40
"""


def test_sweep_plan_shows_passes_and_warns_when_data_repeats(tmp_path):
    """A 200k-token Markov corpus: its student split offers 95,872 targets a pass, so
    nano_L2 at M = 40 (1.07M tokens) goes over it 11 times, and two more jobs repeat."""
    sweep = tmp_path / "repeats.yaml"
    sweep.write_text(SWEEP)
    done = run_cli("kdlab.cli", "sweep", "plan", str(sweep), f"paths.root_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "passes" in done.stdout
    assert (
        "warning: 3 job(s) pass over their data split more than once (up to 11.2 times"
        in done.stdout
    )


@pytest.mark.parametrize("task, model", [("kernel", "toy_L2"), ("pointer", "toy_L1")])
def test_a_task_trains_and_distils_through_the_runner(train, task, model):
    """The synthetic tasks go the language models' way: a teacher and a student from it,
    recorded with the task's vocabulary and the toy ladder's context."""
    data = [
        f"data={task}",
        "data.module.corpus.n_tokens=60000",
        "data.module.val_tokens=4096",
        "data.tokens=16384",
        "data.tokens_per_param=null",
    ]
    teacher = train(f"model={model}", *data)
    assert (teacher["status"], teacher["vocab_size"], teacher["n_ctx"]) == ("done", 16, 64)
    assert teacher["val_loss"] < np.log(16)
    student = train(
        "model=toy_L1",
        "objective=distill",
        f"teacher.model={model}",
        "teacher.tokens=16384",
        "teacher.tokens_per_param=null",
        *data,
    )
    assert student["status"] == "done" and student["teacher_key"] == teacher["key"]
    assert student["teacher_loss"] == pytest.approx(teacher["val_loss"])
