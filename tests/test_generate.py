"""Text-only distillation: kdlab generate samples a corpus from the Markov oracle whose
entropy rate is the source's; a student learns it with hard labels and approaches the
floor; bad combinations and corrupted corpora are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kdlab.cli import main
from kdlab.data import build_corpus
from kdlab.errors import ConfigError
from kdlab.rundb import RunStore
from tests.conftest import FAST

N_TOKENS = 200_000
MARKOV = [
    "data=markov",
    f"data.module.corpus.n_tokens={N_TOKENS}",
    "model=nano_L1",
    "data.tokens=65536",
    "data.tokens_per_param=null",
]
ORACLE_TEXT = [
    "objective=seqkd",
    "teacher=generated",
    "teacher.oracle=true",
    "teacher.generate.length=256",
]


def _generate(root: Path, *overrides: str) -> int:
    return main(
        ["generate", "--batch", "256", f"paths.root_dir={root}", *FAST, *MARKOV, *overrides]
    )


def _corpus_files(root: Path) -> list[Path]:
    return sorted((root / "runs" / "cache" / "tokens").glob("generated-*.json"))


def _within_sample_nll(tokens: np.ndarray, length: int) -> np.ndarray:
    """-log P(x_t+1 | x_t) of every transition inside a sample (the chain has no EOS, so
    samples are back to back and the transition across a boundary is not the chain's)."""
    chain = build_corpus({"name": "markov", "n_tokens": N_TOKENS})
    samples = tokens[: tokens.size // length * length].reshape(-1, length).astype(np.int64)
    return -np.log(chain.transition)[samples[:, :-1], samples[:, 1:]]


def test_oracle_text_has_the_sources_entropy_rate_and_teaches(train, tmp_path):
    """At temperature 1 the generated text's per-token log loss under the true chain is
    the entropy rate H within 0.03 nats (about 6 standard errors at 65k tokens); at
    temperature 0.5 it is far below H, so the check can tell sampling settings apart."""
    cache = f"paths.cache_dir={tmp_path}/runs/cache"
    assert _generate(tmp_path, *ORACLE_TEXT, cache) == 0
    assert _generate(tmp_path, *ORACLE_TEXT, cache, "teacher.generate.temperature=0.5") == 0
    entropy = build_corpus({"name": "markov", "n_tokens": N_TOKENS}).entropy_rate
    by_temperature = {}
    for meta_path in _corpus_files(tmp_path):
        meta = json.loads(meta_path.read_text())
        tokens = np.fromfile(meta_path.with_suffix(".bin"), dtype=meta["dtype"])
        assert tokens.size == meta["n_tokens"] == 65536 + 1  # the student's D in windows, + 1
        by_temperature[meta["generated"]["temperature"]] = _within_sample_nll(tokens, 256)
    hot, cold = by_temperature[1.0], by_temperature[0.5]
    assert abs(hot.mean() - entropy) < 0.03, (hot.mean(), entropy)
    assert hot.std() / np.sqrt(hot.size) < 0.005
    assert cold.mean() < entropy - 0.3

    student = train(*MARKOV, *ORACLE_TEXT, cache)
    assert student["teacher_kind"] == "generated" and student["divergence"] == "sequence_kd"
    assert student["teacher_loss"] == pytest.approx(entropy)
    assert student["flops_teacher_logits"] == 0.0
    assert 0.99 < student["passes"] <= 1.0  # the generated corpus is read once
    rows = RunStore(f"sqlite:///{tmp_path}/runs/kdlab.db").find_inference(kind="generated")
    assert student["teacher_inference_key"] in {r["key"] for r in rows}
    assert {r["tokens"] for r in rows} == {65537}

    from kdlab.rundb.query import fit_points

    points = fit_points(f"sqlite:///{tmp_path}/runs/kdlab.db", "distillation")
    assert list(points["kd_objective"]) == ["sequence_kd temperature=1 top_p=1"]


@pytest.mark.slow
def test_a_student_of_generated_text_approaches_the_floor(train, tmp_path):
    """Measured: nano_L3 on 262k generated tokens reaches 2.526 nats, its supervised twin
    on the real split 2.529, the floor H 2.396 (the remainder is the finite budget)."""
    common = [
        "data=markov",
        "data.module.corpus.n_tokens=600000",
        "model=nano_L3",
        "data.tokens=262144",
        "data.tokens_per_param=null",
        f"paths.cache_dir={tmp_path}/runs/cache",
    ]
    assert (
        main(
            ["generate", "--batch", "512", f"paths.root_dir={tmp_path}", *FAST, *common]
            + [*ORACLE_TEXT[:3], "teacher.generate.length=512"]
        )
        == 0
    )
    entropy = build_corpus({"name": "markov", "n_tokens": 600_000}).entropy_rate
    student = train(*common, *ORACLE_TEXT[:3], "teacher.generate.length=512")
    twin = train(*common, "role=supervised")
    assert student["val_loss"] - entropy < 0.15
    assert abs(student["val_loss"] - twin["val_loss"]) < 0.02


def test_text_only_mistakes_are_refused_before_compute(train, tmp_path):
    cache = f"paths.cache_dir={tmp_path}/runs/cache"
    with pytest.raises(ConfigError, match="make it with `kdlab generate`"):
        train(*MARKOV, *ORACLE_TEXT, cache)
    with pytest.raises(ConfigError, match="use objective=seqkd, not a distillation objective"):
        train(*MARKOV, "objective=distill", *ORACLE_TEXT[1:], cache)
    with pytest.raises(ConfigError, match="use teacher=generated with objective=seqkd"):
        train(*MARKOV, "objective=seqkd", "teacher=oracle", cache)
    with pytest.raises(ConfigError, match="temperature must be positive"):
        train(*MARKOV, *ORACLE_TEXT, cache, "teacher.generate.temperature=0")
    assert not RunStore(f"sqlite:///{tmp_path}/runs/kdlab.db").find()

    assert _generate(tmp_path, *ORACLE_TEXT, cache) == 0
    [meta] = _corpus_files(tmp_path)
    tokens = meta.with_suffix(".bin")
    data = bytearray(tokens.read_bytes())
    data[1000] ^= 0x01
    tokens.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="fails its sha256 check"):
        train(*MARKOV, *ORACLE_TEXT, cache)
    assert not RunStore(f"sqlite:///{tmp_path}/runs/kdlab.db").find()
