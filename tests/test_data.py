"""kdlab.data: corpora, tokenizers, token cache, splits, budgets, the data module.

Everything here is offline: the hub is never contacted (hf/files corpora read tmp files).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import pickle
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kdlab.data import (
    IGNORE_INDEX,
    ByteTokenizer,
    CorpusConfig,
    MarkovCorpus,
    TokenizerConfig,
    build_corpus,
    build_tokenizer,
    corpus_info,
    open_token_cache,
    resolve_tokens,
    split_layout,
)
from kdlab.data.corpora import DocumentHasher

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when "
    "model teacher student token budget loss scaling law distillation compute data"
).split()


def _docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        " ".join(rng.choice(WORDS, size=int(rng.integers(20, 120)))).capitalize() + "."
        for _ in range(n)
    ]


def _write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def _dm(tmp_path: Path, **kw):
    from kdlab.data import TokenDataModule

    args = dict(
        corpus={"name": "markov", "n_states": 16, "n_tokens": 20_000, "alpha": 0.2},
        split="teacher",
        seq_len=16,
        batch_size=4,
        train_tokens=1000,
        val_tokens=512,
        seed=0,
        cache_dir=tmp_path / "cache",
    )
    args.update(kw)
    return TokenDataModule(args.pop("corpus"), args.pop("tokenizer", "auto"), **args)


# ----------------------------------------------------------------------------- corpora


def test_stdlib_corpus_deterministic_and_fingerprinted():
    a, b = build_corpus("stdlib"), build_corpus({"name": "stdlib"})
    files = a.files()
    assert files == b.files() and len(files) > 100
    assert not any(set(p.parts) & {"site-packages", "test", "tests"} for p in files)
    info = a.info()
    assert info == b.info() and a.fingerprint == info.fingerprint
    assert len(info.fingerprint) == 16 and int(info.fingerprint, 16) >= 0
    assert info.n_bytes > 1_000_000 and info.n_documents <= len(files)
    # boundaries are content: "ab","c" != "a","bc"
    h1, h2 = DocumentHasher(), DocumentHasher()
    for d in ("ab", "c"):
        h1.update(d)
    for d in ("a", "bc"):
        h2.update(d)
    assert h1.hexdigest() != h2.hexdigest()


def test_unknown_corpus_and_field_are_named():
    with pytest.raises(ValueError, match=r"unknown corpus 'c5'.*stdlib, markov, hf, files"):
        build_corpus({"name": "c5"})
    with pytest.raises(ValueError, match="unknown corpus field.*n_statez"):
        build_corpus({"name": "markov", "n_statez": 3})
    with pytest.raises(ValueError, match="unknown tokenizer 'bytes'"):
        TokenizerConfig.from_any("bytes")


def test_markov_entropy_rate_matches_empirical():
    c = build_corpus({"name": "markov", "n_states": 32, "alpha": 0.1, "n_tokens": 300_000})
    assert isinstance(c, MarkovCorpus)
    p, pi = c.transition, c.stationary
    assert np.allclose(p.sum(1), 1) and np.allclose(pi @ p, pi) and (p > 0).all()
    h = c.entropy_rate
    assert h < 0.8 * math.log(32)
    x = c.token_ids().astype(np.int64)
    assert x.max() < 32 and x.size == 300_000
    # oracle cross-entropy on the generated stream (CLT: ~1/sqrt(n) error)
    oracle = -np.log(p[x[:-1], x[1:]]).mean()
    assert oracle == pytest.approx(h, abs=0.03)
    # plug-in estimate from empirical bigram counts (no access to p)
    counts = np.zeros((32, 32))
    np.add.at(counts, (x[:-1], x[1:]), 1)
    cond = counts / counts.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        plug = -np.nansum(counts / counts.sum() * np.where(cond > 0, np.log(cond), 0))
    assert plug == pytest.approx(h, abs=0.03)
    # deterministic, and a shorter chain is a prefix of a longer one
    short = build_corpus({"name": "markov", "n_states": 32, "alpha": 0.1, "n_tokens": 5000})
    assert np.array_equal(short.token_ids(), x[:5000])
    assert short.fingerprint != c.fingerprint


def test_second_order_markov_chain_and_its_floor():
    """Order 2: the stationary distribution over contexts is a fixed point, the stream's
    oracle loss and its unigram entropy match the exact values, and a window's floor
    counts its first prediction, which sees one token."""
    v = 8
    c = build_corpus(
        {"name": "markov", "n_states": v, "markov_order": 2, "alpha": 0.1, "n_tokens": 400_000}
    )
    assert isinstance(c, MarkovCorpus)
    p, pi = c.transition, c.stationary
    assert p.shape == (v * v, v) and np.allclose(p.sum(1), 1)
    # context (a, r) moves to (r, j): pi must be unchanged by one step
    moved = np.zeros(v * v)
    np.add.at(moved, (np.arange(v * v)[:, None] % v) * v + np.arange(v), pi[:, None] * p)
    assert np.allclose(moved, pi, atol=1e-13)
    x = c.token_ids().astype(np.int64)
    context = x[:-2] * v + x[1:-1]
    oracle = -np.log(p[context, x[2:]]).mean()
    assert oracle == pytest.approx(c.entropy_rate, abs=0.02)
    unigram = np.bincount(x, minlength=v) / x.size
    assert -(unigram * np.log(unigram)).sum() == pytest.approx(c.conditional_entropy(0), abs=0.01)
    h1 = c.conditional_entropy(1)
    pairs = np.zeros((v, v))  # H(x_{t+1} | x_t) measured on the stream
    np.add.at(pairs, (x[:-1], x[1:]), 1)
    joint, cond = pairs / pairs.sum(), pairs / pairs.sum(1, keepdims=True)
    assert -(joint * np.log(cond)).sum() == pytest.approx(h1, abs=0.005)
    assert c.entropy_rate < h1 - 0.3 < c.conditional_entropy(0)  # one token is not enough
    assert c.window_loss(1) == pytest.approx(h1)
    assert c.window_loss(4) == pytest.approx((h1 + 3 * c.entropy_rate) / 4)
    first_order = build_corpus({"name": "markov", "n_states": v, "n_tokens": 1000})
    assert first_order.window_loss(256) == pytest.approx(first_order.entropy_rate)
    with pytest.raises(ValueError, match="markov_order >= 1"):
        build_corpus({"name": "markov", "markov_order": 0})
    with pytest.raises(ValueError, match="first-order"):
        c.oracle_log_probs(x[:10])


def test_local_jsonl_parquet_text_and_hf_path(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = _docs(30)
    jl = _write_jsonl(tmp_path / "a.jsonl", docs)
    pq.write_table(pa.table({"text": docs}), tmp_path / "a.parquet")
    fj = build_corpus({"name": "files", "paths": [str(jl)]})
    fp = build_corpus({"name": "files", "paths": str(tmp_path / "*.parquet")})
    assert list(fj.documents()) == docs == list(fp.documents())
    assert fj.fingerprint == fp.fingerprint  # content, not format or path
    capped = build_corpus({"name": "files", "paths": [str(jl)], "max_documents": 7})
    assert list(capped.documents()) == docs[:7]
    (tmp_path / "t").mkdir()
    for i, d in enumerate(docs[:3]):
        (tmp_path / "t" / f"{i}.txt").write_text(d + "\nsecond line\n")
    ft = build_corpus({"name": "files", "paths": [str(tmp_path / "t" / "*.txt")]})
    assert list(ft.documents()) == [d + "\nsecond line\n" for d in docs[:3]]
    # hf corpus: datasets.load_dataset on a local folder (no hub)
    (tmp_path / "ds").mkdir()
    _write_jsonl(tmp_path / "ds" / "train.jsonl", docs)
    hf = build_corpus({"name": "hf", "path": str(tmp_path / "ds"), "max_bytes": 2000})
    got = list(hf.documents())
    assert got == docs[: len(got)] and 0 < sum(len(d) for d in got) <= 2000
    with pytest.raises(ValueError, match="matches no file"):
        list(build_corpus({"name": "files", "paths": [str(tmp_path / "nope.jsonl")]}).documents())


# ----------------------------------------------------------------------------- splits, budget


def test_split_layout_disjoint_and_too_small():
    lay = split_layout(1001, 100)
    t, s, v = lay.teacher, lay.student, lay.validation
    assert (t.start, t.stop, s.start, s.stop, v.start, v.stop) == (0, 450, 450, 901, 901, 1001)
    assert split_layout(5000, 100).validation != lay.validation
    with pytest.raises(ValueError, match="101 tokens.*100 validation"):
        split_layout(101, 100)


def test_resolve_tokens_three_ways_and_bad_input():
    assert resolve_tokens(tokens=12345, n_params=10, flops_per_token=1.0) == 12345
    assert resolve_tokens(tokens=1e6, n_params=10, flops_per_token=1.0) == 1_000_000
    d = resolve_tokens(tokens_per_param=20, n_params=1_000_000, flops_per_token=1.0)
    assert d == 20_000_000
    assert resolve_tokens(flops=6e15, n_params=1_000_000, flops_per_token=2e6) == 1_000_000_000
    with pytest.raises(ValueError, match="exactly one of tokens, tokens_per_param, flops.*none"):
        resolve_tokens(n_params=10, flops_per_token=1.0)
    with pytest.raises(ValueError, match="got tokens and flops"):
        resolve_tokens(tokens=10, flops=1e9, n_params=10, flops_per_token=1.0)
    for bad in (0, -5, float("nan"), float("inf"), True, "100"):
        with pytest.raises(ValueError, match="tokens_per_param"):
            resolve_tokens(tokens_per_param=bad, n_params=10, flops_per_token=1.0)
    with pytest.raises(ValueError, match="whole number"):
        resolve_tokens(tokens=10.5, n_params=10, flops_per_token=1.0)
    with pytest.raises(ValueError, match="flops_per_token"):
        resolve_tokens(flops=1e9, n_params=10, flops_per_token=0)
    with pytest.raises(ValueError, match="less than one"):
        resolve_tokens(flops=1.0, n_params=10, flops_per_token=1e6)


# ----------------------------------------------------------------------------- data module


@pytest.mark.parametrize("train_tokens", [1000, 777, 64, 25_000])
def test_exact_budget_with_masked_tail(tmp_path, train_tokens):
    dm = _dm(tmp_path, train_tokens=1)
    assert dm.vocab_size == 16  # the runner reads this before it knows the budget
    dm.train_tokens = train_tokens
    dm.prepare_data()
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == dm.num_steps == math.ceil(train_tokens / (4 * 16))
    counted = sum(int((y != IGNORE_INDEX).sum()) for _, y in batches)
    assert counted == train_tokens
    split = dm.cache.tokens[dm.layout.teacher.start : dm.layout.teacher.stop].astype(np.int64)
    for x, y in batches:
        assert x.dtype == y.dtype == torch.long and x.shape == y.shape == (4, 16)
        keep = y != IGNORE_INDEX
        assert torch.equal(x[:, 1:][keep[:, :-1]], y[:, :-1][keep[:, :-1]])  # y is x shifted
        assert (keep[:, :-1] | ~keep[:, 1:]).all()  # masking is a tail of the run
        assert x.max() < dm.vocab_size
    for step in (0, len(batches) - 1):
        x, y = batches[step]
        for row, w in enumerate(dm.schedule.windows(step)):
            window = split[w * 16 : w * 16 + 17]
            assert np.array_equal(window[:-1], x[row].numpy())
    assert dm.passes == pytest.approx(train_tokens / dm.split_tokens)
    if train_tokens > dm.split_tokens:  # repeats: every window appears, in a new order
        n = dm.schedule.n_windows
        seen = np.concatenate([dm.schedule.windows(step) for step in range(len(batches))])
        assert sorted(seen[:n]) == list(range(n))  # the first pass: each window once
        assert sorted(seen[n : 2 * n]) == list(range(n))  # the second pass too
        assert not np.array_equal(seen[:n], seen[n : 2 * n])  # shuffled anew


def test_resume_and_ranks_reproduce_batches(tmp_path):
    dm = _dm(tmp_path, train_tokens=50 * 64 + 5, seed=3)
    dm.prepare_data()
    full = list(dm.train_dataloader())
    assert len(full) == dm.num_steps == 51
    for step in (1, 17, 50):
        dm.trainer = SimpleNamespace(
            global_step=step, accumulate_grad_batches=1, global_rank=0, world_size=1
        )
        resumed = list(dm.train_dataloader())
        assert len(resumed) == dm.num_steps - step
        assert all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            for a, b in zip(resumed, full[step:], strict=True)
        )
    dm.trainer = None
    clone = pickle.loads(pickle.dumps(dm))  # spawned ranks reopen the memmap
    assert "cache" not in vars(clone) and torch.equal(clone.batch(7)[1], full[7][1])
    # DDP: rank r gets rows [r*B/2, (r+1)*B/2) of the same global batch
    r0 = list(dm.train_batches(0, rank=0, world_size=2))
    r1 = list(dm.train_batches(0, rank=1, world_size=2))
    for (a, b), (c, d), (x, y) in zip(r0, r1, full, strict=True):
        assert torch.equal(torch.cat([a, c]), x) and torch.equal(torch.cat([b, d]), y)
    other = _dm(tmp_path, train_tokens=50 * 64 + 5, seed=4)
    assert not torch.equal(next(iter(other.train_dataloader()))[0], full[0][0])


def test_validation_fixed_and_splits_disjoint(tmp_path):
    a = _dm(tmp_path, split="teacher", batch_size=4, train_tokens=500, seed=0)
    b = _dm(tmp_path, split="student", batch_size=8, train_tokens=9000, seed=7)
    va, vb = list(a.val_dataloader()), list(b.val_dataloader())
    assert torch.equal(torch.cat([x for x, _ in va]), torch.cat([x for x, _ in vb]))
    assert torch.equal(torch.cat([y for _, y in va]), torch.cat([y for _, y in vb]))
    assert a.val_eval_token_count == 31 * 16  # (512 - 1) // 16 non-overlapping windows
    lay = a.layout
    assert lay.teacher.stop <= lay.student.start and lay.student.stop <= lay.validation.start
    # every token a training batch reads lies inside its own split
    tok = a.cache.tokens
    for dm, rng in ((a, lay.teacher), (b, lay.student)):
        for w in dm.schedule.windows(0):
            assert rng.start <= rng.start + w * 16 and rng.start + w * 16 + 17 <= rng.stop
    assert a.fingerprint == b.fingerprint and a.tokenizer_name == "identity-16"
    assert len(tok) == 20_000
    with pytest.raises(ValueError, match="20000 tokens: too few for 19999 validation"):
        _dm(tmp_path, val_tokens=19_999).setup()
    with pytest.raises(ValueError, match="split must be 'teacher' or 'student'"):
        _dm(tmp_path, split="validation")


@pytest.mark.parametrize("world", [2, 3, 4])
def test_validation_windows_are_each_scored_once_at_any_world_size(tmp_path, world):
    """31 windows over 2, 3 or 4 ranks: each window once, short shares padded with masked
    targets (Lightning's sampler used to repeat the first windows), equal batch counts for
    FSDP, and the token-weighted loss equal to one process's."""
    from kdlab.losses import IGNORE_INDEX, next_token_loss

    dm = _dm(tmp_path, batch_size=4)
    single = list(dm.val_dataloader())
    x1, y1 = torch.cat([x for x, _ in single]), torch.cat([y for _, y in single])
    assert x1.shape[0] == 31
    table = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))

    def loss_sums(batches):
        sums = [next_token_loss(table[x], y) for x, y in batches]
        return sum(float(s.ce_sum) for s in sums), sum(int(s.n_tokens) for s in sums)

    shares, ce, tokens = [], 0.0, 0
    for rank in range(world):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)
        batches = list(dm.val_dataloader())
        shares.append(batches)
        rank_ce, rank_tokens = loss_sums(batches)
        ce, tokens = ce + rank_ce, tokens + rank_tokens
    dm.trainer = None
    assert len({len(b) for b in shares}) == 1  # every rank runs the same forward passes
    rows = [(x, y) for batches in shares for xb, yb in batches for x, y in zip(xb, yb, strict=True)]
    real = [(x, y) for x, y in rows if (y != IGNORE_INDEX).any()]
    padding = [y for _, y in rows if (y == IGNORE_INDEX).all()]
    assert len(real) == 31 and len(padding) == len(rows) - 31 == -31 % world
    assert torch.equal(torch.stack([x for x, _ in real]), x1)
    assert torch.equal(torch.stack([y for _, y in real]), y1)
    one_ce, one_tokens = loss_sums(single)
    assert tokens == one_tokens == 31 * 16
    assert ce / tokens == pytest.approx(one_ce / one_tokens, rel=1e-6)


def test_byte_stdlib_datamodule(tmp_path):
    dm = _dm(tmp_path, corpus="stdlib", tokenizer="byte", seq_len=64, val_tokens=4096)
    dm.prepare_data()
    info = corpus_info(dm.corpus)
    assert dm.fingerprint == info.fingerprint and dm.vocab_size == 256
    assert dm.cache.n_tokens == info.n_bytes + info.n_documents  # bytes + one separator each
    x, _ = dm.batch(0)
    [first] = dm.schedule.windows(0, slice(0, 1))  # the batch holds the cache's bytes
    split = dm.cache.tokens[dm.layout.teacher.start : dm.layout.teacher.stop]
    assert np.array_equal(x[0].numpy(), split[first * 64 : first * 64 + 64])
    assert ByteTokenizer().decode(x[0].tolist())
    with pytest.raises(ValueError, match="identity"):
        _dm(tmp_path, tokenizer="byte")  # markov is already tokens: fails before any work


def test_lightning_resume_sees_uninterrupted_batches(tmp_path):
    import lightning.pytorch as pl

    class Recorder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(16, 16)
            self.seen: list[torch.Tensor] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            self.seen.append(torch.cat([x, y], 1))
            return torch.nn.functional.cross_entropy(
                self.emb(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX
            )

        def validation_step(self, batch, batch_idx):
            return None

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit(ckpt: str | None = None) -> tuple[pl.Trainer, Recorder]:
        dm = _dm(tmp_path, train_tokens=10 * 64 - 3)
        every4 = pl.callbacks.ModelCheckpoint(
            dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1
        )
        trainer = pl.Trainer(
            max_steps=dm.num_steps,
            max_epochs=1,
            logger=False,
            callbacks=[every4],
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            accelerator="cpu",
            default_root_dir=tmp_path,
        )
        model = Recorder()
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
        return trainer, model

    _, whole = fit()  # checkpoints at steps 4 and 8, as an interrupted run would leave
    assert len(whole.seen) == 10
    # resumed from step 4 into an empty checkpoint folder, as a run cut after that step
    # would be (Lightning warns about a folder of checkpoints it would write over)
    interrupted = (tmp_path / "ckpt" / "epoch=0-step=4.ckpt").rename(tmp_path / "step4.ckpt")
    shutil.rmtree(tmp_path / "ckpt")
    resumed, rest = fit(str(interrupted))
    assert resumed.global_step == 10 and len(rest.seen) == 6
    assert all(torch.equal(a, b) for a, b in zip(rest.seen, whole.seen[4:], strict=True))


def _race_build(cache_dir: str, barrier, out_q) -> None:
    class SlowByte(ByteTokenizer):
        def encode_documents(self, docs):
            with open(os.path.join(cache_dir, "builds.log"), "a") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(0.5)
            yield from super().encode_documents(docs)

    corpus = build_corpus({"name": "files", "paths": [os.path.join(cache_dir, "c.jsonl")]})
    barrier.wait()
    tc = open_token_cache(corpus, SlowByte(), cache_dir)
    out_q.put(np.asarray(tc.tokens).tobytes())


def test_concurrent_cache_build_two_processes(tmp_path):
    docs = _docs(50)
    _write_jsonl(tmp_path / "c.jsonl", docs)
    ctx = mp.get_context("fork")
    barrier, q = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_build, args=(str(tmp_path), barrier, q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len((tmp_path / "builds.log").read_text().split()) == 1  # built once, other waited
    expected = ByteTokenizer._join([d.encode() for d in docs]).tobytes()
    assert results[0] == results[1] == expected
    files = sorted(p.name for p in (tmp_path / "tokens").iterdir())
    assert [f for f in files if f.endswith(".bin")] and not [f for f in files if "tmp" in f]


def test_cache_files_get_the_mode_the_umask_gives(tmp_path):
    """A token cache shared by a group: every file gets the mode any new file gets (rw-rw-r--
    under umask 002), not the owner-only 0600 of a temporary file."""
    old = os.umask(0o002)
    try:
        _dm(tmp_path).prepare_data()
    finally:
        os.umask(old)
    cache = tmp_path / "cache"
    files = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())
    made = [f.split("/")[0] + "/*" + Path(f).suffix for f in files if not f.endswith(".lock")]
    assert made == ["corpora/*.json", "tokens/*.bin", "tokens/*.json"]  # memo, tokens, meta
    modes = {f: oct((cache / f).stat().st_mode & 0o777) for f in files}
    assert set(modes.values()) == {"0o664"}, modes
    assert {oct(p.stat().st_mode & 0o777) for p in cache.rglob("*") if p.is_dir()} == {"0o775"}


def test_bpe_trained_on_teacher_split_and_cached(tmp_path, monkeypatch):
    from kdlab.data import tokenizers as toks

    docs = _docs(400, seed=1)
    _write_jsonl(tmp_path / "c.jsonl", docs)
    corpus_cfg = {"name": "files", "paths": [str(tmp_path / "c.jsonl")]}
    spec = {"kind": "bpe", "vocab_size": 320}
    dm = _dm(tmp_path, corpus=corpus_cfg, tokenizer=spec, val_tokens=2000)
    dm.prepare_data()
    dm.setup()
    tok = dm.tokenizer
    assert dm.tokenizer_name.startswith("bpe-320-") and dm.vocab_size == 320
    assert tok.decode(tok.encode(docs[0]).tolist()) == docs[0]
    cached = list((tmp_path / "cache" / "tokenizers").glob("bpe-320-*.json"))
    assert len([p for p in cached if not p.name.endswith(".meta.json")]) == 1
    # trained on a document prefix that lies inside the teacher split
    assert 0 < tok.train_documents < len(docs)
    assert 0 < dm.cache.train_prefix_tokens <= dm.layout.teacher.stop
    # cached: a second build loads the file instead of training
    monkeypatch.setattr(toks, "_train_byte_level_bpe", lambda *a: pytest.fail("retrained"))
    again = build_tokenizer(spec, build_corpus(corpus_cfg), cache_dir=tmp_path / "cache")
    assert again.name == tok.name
    # a tokenizer trained on everything would have seen student text: refused
    greedy = dict(spec, train_fraction=1.0)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="teacher split ends"):
        _dm(tmp_path, corpus=corpus_cfg, tokenizer=greedy, val_tokens=2000).setup()


def test_corpus_config_from_mapping_roundtrip():
    cfg = CorpusConfig.from_any({"name": "files", "paths": ["a.jsonl", "b.jsonl"]})
    assert cfg.paths == ("a.jsonl", "b.jsonl")
    assert CorpusConfig.from_any(cfg.to_dict()) == cfg
