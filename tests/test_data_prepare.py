"""``kdlab data prepare``: one pass, several processes, resumable; runs that need it refuse.

Corpora are jsonl and parquet files the tests write (read through ``datasets``, as any
user's files are); every command is the real one, in process or on the command line.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kdlab.data.tokenize as tokenize_module
from kdlab.cli import main as kdlab_main
from kdlab.data import (
    build_corpus,
    build_tokenizer,
    corpus_info,
    open_token_cache,
    split_layout,
)
from kdlab.data.cli import hydra_value
from kdlab.data.corpora import FilesCorpus
from kdlab.errors import ConfigError
from kdlab.sweeps import _token_count
from tests.conftest import run_cli
from tests.test_bad_input import assert_nothing_recorded

WORDS = "the of and to in is that model teacher student token budget loss law data".split()
JOB = ["model=nano_L1", "data.tokens=8192", "data.tokens_per_param=null"]


def _documents(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(50, 400)))) for _ in range(n)]


def _jsonl(folder: Path, docs: list[str]) -> Path:
    path = folder / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def _parquet(folder: Path, docs: list[str]) -> Path:
    path = folder / "corpus.parquet"
    pq.write_table(pa.table({"text": docs, "id": list(range(len(docs)))}), path)
    return path


def _prepare(cache: Path, *overrides: str, num_proc: int = 1) -> int:
    argv = ["data", "prepare", "--num-proc", str(num_proc), *overrides]
    return kdlab_main([*argv, f"paths.cache_dir={cache}"])


def _cache_files(cache: Path) -> dict[str, bytes]:
    """Every file a prepare leaves (locks aside), by path under the cache folder."""
    return {
        p.relative_to(cache).as_posix(): p.read_bytes()
        for p in sorted(cache.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


# the BPE is trained on 100 kB: a prefix, decided once 400 kB have been read
SMALL_BPE = {"kind": "bpe", "vocab_size": 300, "train_bytes": 100_000}


@pytest.mark.parametrize(
    ("write", "tokenizer"),
    [(_jsonl, "byte"), (_parquet, SMALL_BPE)],
    ids=["jsonl-byte", "parquet-bpe"],
)
def test_one_and_three_processes_write_the_same_cache(tmp_path, capsys, write, tokenizer):
    """~2.5 MB of text: a few worker batches of 1 MB each, so three processes all work."""
    docs = _documents(2500, seed=0)
    path = write(tmp_path, docs)
    setting = tokenizer if isinstance(tokenizer, str) else hydra_value(tokenizer)
    data = ["data=files", f"data.module.corpus.paths=[{path}]", f"data.module.tokenizer={setting}"]
    assert _prepare(tmp_path / "one", *data, num_proc=1) == 0
    assert _prepare(tmp_path / "three", *data, num_proc=3) == 0
    one, three = _cache_files(tmp_path / "one"), _cache_files(tmp_path / "three")
    assert one == three
    # the same files as the runs' own single-process path (the corpus's facts first, then
    # the tokenizer, trained on them, then the tokens)
    reference = tmp_path / "reference"
    corpus = build_corpus({"name": "files", "paths": [str(path)]})
    info = corpus_info(corpus, reference)
    reads = build_tokenizer(tokenizer, corpus, info=info, cache_dir=reference)
    open_token_cache(corpus, reads, reference)
    assert _cache_files(reference) == one
    [bin_name] = [name for name in one if name.endswith(".bin")]
    meta = json.loads(one[bin_name.replace(".bin", ".json")])
    # the recorded fingerprint is the corpus's own (a separate full pass over it)
    assert meta["fingerprint"] == build_corpus({"name": "files", "paths": [str(path)]}).fingerprint
    assert meta["n_documents"] == len(docs)
    tokens = np.frombuffer(one[bin_name], dtype=meta["dtype"])
    assert tokens.size == meta["n_tokens"]
    assert sorted(n for n in one if n.startswith("tokens/")) == [bin_name, bin_name[:-4] + ".json"]
    if tokenizer == "byte":  # each document's bytes, then byte 0
        expected = b"".join(d.encode() + b"\0" for d in docs)
        assert tokens.astype(np.uint8).tobytes() == expected
    else:  # each document's BPE ids then the EOS, the first ones the training text's
        from kdlab.data.tokenizers import BPETokenizer

        [bpe] = [n for n in one if n.startswith("tokenizers/") and not n.endswith("meta.json")]
        bpe_tok = BPETokenizer.from_file(tmp_path / "one" / bpe)
        first = np.concatenate([bpe_tok.encode(docs[0]), [bpe_tok.eos_id]])
        assert np.array_equal(tokens[: first.size], first)
        assert 0 < meta["train_prefix_tokens"] < meta["n_tokens"]
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].endswith(f"{meta['n_tokens']:,} tokens in {tmp_path / 'three' / bin_name}")


def test_an_interrupted_prepare_resumes_and_ends_identical(tmp_path, monkeypatch):
    docs = _documents(2500, seed=1)
    path = _jsonl(tmp_path, docs)
    data = ["data=files", f"data.module.corpus.paths=[{path}]"]
    assert _prepare(tmp_path / "whole", *data) == 0

    # a pass killed after 1500 documents, sent in batches of ~16 kB of text and having
    # committed every ~100 kB of tokens
    monkeypatch.setattr(tokenize_module, "BATCH_BYTES", 16_000)
    monkeypatch.setattr(tokenize_module, "COMMIT_BYTES", 100_000)
    read = FilesCorpus.documents

    def killed(self):
        for i, doc in enumerate(read(self)):
            if i == 1500:
                raise KeyboardInterrupt
            yield doc

    monkeypatch.setattr(FilesCorpus, "documents", killed)
    with pytest.raises(KeyboardInterrupt):
        _prepare(tmp_path / "resumed", *data, num_proc=2)
    [progress] = (tmp_path / "resumed" / "tokens").glob(".files-*.partial.progress.json")
    committed = json.loads(progress.read_text())
    assert 0 < committed["documents"] < 1500 and committed["tokens"] > 0
    assert not list((tmp_path / "resumed" / "tokens").glob("*.bin"))

    # the next prepare reads the committed documents again, checks them, tokenizes the rest
    monkeypatch.undo()
    tokenized: list[int] = []
    encode = tokenize_module._encode_batch
    monkeypatch.setattr(
        tokenize_module,
        "_encode_batch",
        lambda batch: tokenized.append(len(batch)) or encode(batch),
    )
    assert _prepare(tmp_path / "resumed", *data, num_proc=1) == 0
    assert sum(tokenized) == len(docs) - committed["documents"]
    assert _cache_files(tmp_path / "resumed") == _cache_files(tmp_path / "whole")


def test_a_partial_file_of_other_documents_is_started_over(tmp_path, monkeypatch):
    """A partial pass whose committed documents no longer hash as recorded (the files
    changed in between, and so did their source key: here, the record is copied over)."""
    docs = _documents(600, seed=2)
    path = _jsonl(tmp_path, docs)
    data = ["data=files", f"data.module.corpus.paths=[{path}]"]
    assert _prepare(tmp_path / "whole", *data) == 0
    corpus = build_corpus({"name": "files", "paths": [str(path)]})
    partial = tmp_path / "c" / "tokens" / f".files-{corpus.source_key()}-byte.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\x07\x00" * 5000)
    stale = {"tokenizer": "byte", "documents": 10, "bytes": 999, "tokens": 5000, "digest": "0" * 64}
    Path(f"{partial}.progress.json").write_text(json.dumps(stale))
    assert _prepare(tmp_path / "c", *data, num_proc=2) == 0
    assert _cache_files(tmp_path / "c") == _cache_files(tmp_path / "whole")


def test_a_run_without_its_prepared_corpus_refuses_with_the_command(tmp_path, train):
    """The sentence's command, run as printed, builds exactly the cache the run reads."""
    docs = _documents(300, seed=3)
    folder = tmp_path / "my data ${x}"  # a folder name Hydra must take as written
    folder.mkdir()
    path = _jsonl(folder, docs)
    quoted = str(path).replace("$", "\\$")  # Hydra's escape: the folder as written
    cache = tmp_path / "cache"
    job = [
        *JOB,
        "data=files",
        f"data.module.corpus.paths=['{quoted}']",
        "+data.module.corpus.max_documents=250",
        f"paths.cache_dir={cache}",
    ]
    with pytest.raises(ConfigError) as refused:
        train(*job)
    text = str(refused.value)
    assert text.startswith(
        f"the files corpus has no token cache for tokenizer byte in {cache}: build it before "
        "the runs with `kdlab data prepare data=files "
    )
    assert_nothing_recorded(tmp_path, database=True)
    command = shlex.split(text.split("`")[1])
    assert command[:3] == ["kdlab", "data", "prepare"]
    assert kdlab_main(command[1:]) == 0
    row = train(*job)
    assert row["status"] == "done" and row["corpus"] == "files"
    meta = json.loads(next((cache / "tokens").glob("*-byte.json")).read_text())
    assert meta["n_documents"] == 250 and row["corpus_fingerprint"] == meta["fingerprint"]

    # prepared for another tokenizer only: the sentence names both
    with pytest.raises(
        ConfigError, match=r"tokenizer bpe-300 in .*\(it has one for tokenizer byte only\)"
    ):
        train(*job, "data.module.tokenizer=bpe-300")


def test_a_cache_built_for_another_tokenizer_is_refused_naming_both(tmp_path, train):
    docs = _documents(300, seed=4)
    path = _jsonl(tmp_path, docs)
    cache = tmp_path / "cache"
    data = ["data=files", f"data.module.corpus.paths=[{path}]", f"paths.cache_dir={cache}"]
    assert kdlab_main(["data", "prepare", *data]) == 0
    [meta_path] = (cache / "tokens").glob("*-byte.json")
    meta = json.loads(meta_path.read_text())
    meta.update(tokenizer="bpe-300-0123abcd", vocab_size=300)  # another tokenizer's, copied
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError) as refused:
        train(*JOB, *data)
    assert str(refused.value) == (
        f"the token cache {meta_path.with_suffix('.bin')} was built for corpus "
        f"{meta['fingerprint']} and tokenizer bpe-300-0123abcd, not for this run's corpus "
        f"{meta['fingerprint']} and tokenizer byte: delete it and run `kdlab data prepare` again"
    )
    assert_nothing_recorded(tmp_path, database=True)


def test_kdlab_train_refuses_on_the_command_line_before_any_row(tmp_path):
    """Inside the Hydra app (the data choice from Hydra's record): exit 2, one line."""
    path = _jsonl(tmp_path, _documents(100, seed=5))
    out = run_cli(
        "kdlab.train",
        *JOB,
        "data=files",
        f"data.module.corpus.paths=[{path}]",
        "data.module.tokenizer=bpe-300",
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.endswith(
        f"`kdlab data prepare data=files 'data.module.corpus.paths=[{path}]' "
        f"++data.module.tokenizer=bpe-300 paths.cache_dir={tmp_path / 'cache'}`"
    )
    assert line.startswith("kdlab-train: error: the files corpus has no token cache")
    assert_nothing_recorded(tmp_path, database=True, logs=True)


def test_sweep_plan_counts_passes_over_a_prepared_bpe_corpus(tmp_path, capsys):
    """A BPE's token count is unknown until the corpus is tokenized; once prepared, the
    plan's passes are exact and a job that would repeat its data is warned about."""
    path = _jsonl(tmp_path, _documents(400, seed=6))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "defaults:\n  - train\n  - _self_\ndata:\n  tokens_per_param: null\n"
        "hydra:\n  sweeper:\n    params:\n      data.tokens: 10000,2000000\n"
    )
    data = ["data=files", f"data.module.corpus.paths=[{path}]", "data.module.tokenizer=bpe-300"]
    plan = ["sweep", "plan", str(sweep), "model=nano_L1", *data, f"paths.root_dir={tmp_path}"]
    assert kdlab_main([*plan, f"paths.cache_dir={tmp_path / 'cache'}"]) == 0
    printed = capsys.readouterr()
    assert "teacher │ nano_L1" in printed.out  # the plan's table, its passes unknown ("-")
    assert "warning" not in printed.out + printed.err  # nothing known to warn about
    assert _prepare(tmp_path / "cache", *data) == 0
    [meta] = (tmp_path / "cache" / "tokens").glob("*.json")
    n_tokens = json.loads(meta.read_text())["n_tokens"]
    capsys.readouterr()
    _token_count.cache_clear()  # a plan's memo of corpus sizes: a new plan, in this process
    assert kdlab_main([*plan, f"paths.cache_dir={tmp_path / 'cache'}"]) == 0
    printed = capsys.readouterr()
    out = " ".join((printed.out + printed.err).split())
    teacher = split_layout(n_tokens, 65536).teacher  # data=files keeps stdlib's val_tokens
    passes = 2_000_000 / ((len(teacher) - 1) // 128 * 128)  # whole windows of nano's 128
    assert out.endswith(
        "warning: 1 job(s) pass over their data split more than once "
        f"(up to {passes:.3g} times: the data repeats)"
    )
