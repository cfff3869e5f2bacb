"""Hugging Face in and out: kdlab export hf writes a Qwen3 checkpoint whose logits equal
kdlab's to 1e-5 in fp32; teacher=hf distils from a local transformers model built here
from a config (no download), with its own tokenizer."""

from __future__ import annotations

import json
import math
import sysconfig
from pathlib import Path

import pytest
import torch

from kdlab.cli import main as kdlab_main
from kdlab.errors import ConfigError
from kdlab.models.gpt import GPT
from kdlab.models.ladder import ModelShape, get_shape
from tests.conftest import FAST, run_cli

transformers = pytest.importorskip("transformers")


def _random_gpt(shape: ModelShape) -> GPT:
    """A kdlab GPT with every weight, norm gains included, away from its init."""
    torch.manual_seed(0)
    model = GPT(shape)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _same_logits(model: GPT, folder: Path) -> None:
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    idx = torch.randint(0, model.shape.vocab_size, (2, model.shape.n_ctx))
    with torch.no_grad():
        ours, theirs = model(idx), hf(input_ids=idx).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def test_export_round_trip_logits_to_1e_5(tmp_path):
    from kdlab.hf import byte_level_tokenizer, export_hf

    # m = d_model / base_d_model = 1.5: the readout multiplier is really folded in
    model = _random_gpt(get_shape("nano", "L3"))
    assert model.width_mult == 1.5
    export_hf(model, tmp_path / "hf", byte_level_tokenizer(), eos_id=0)
    _same_logits(model, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["model_type"] == "qwen3"
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "def f(x):\n    return 'é'\n"
    assert tokenizer(text)["input_ids"] == list(text.encode())
    assert tokenizer.decode(list(text.encode())) == text
    assert tokenizer.eos_token_id == 0


def test_export_command_writes_a_finished_runs_checkpoint(train, tmp_path):
    from kdlab.teacher import load_weights

    row = train("model=nano_L1", "data.tokens=32768", "data.tokens_per_param=null")
    db = f"sqlite:///{tmp_path}/runs/kdlab.db"
    out = run_cli(
        "kdlab.cli", "export", "hf", row["key"][:8], "--out", str(tmp_path / "hf"), "--db", db
    )
    assert out.returncode == 0, out.stderr
    assert f"exported run {row['key']}" in out.stdout
    _same_logits(load_weights(Path(row["run_dir"]) / "model.pt"), tmp_path / "hf")
    bad = run_cli("kdlab.cli", "export", "hf", "ffff", "--out", str(tmp_path / "x"), "--db", db)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == f"kdlab: error: no run matches key 'ffff' in {db}"
    assert not (tmp_path / "x").exists()


def _text_corpus(folder: Path) -> Path:
    """About 400 kB of the standard library's text as one jsonl corpus."""
    root = Path(sysconfig.get_paths()["stdlib"])
    lines, size = [], 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        lines.append(json.dumps({"text": text}))
        size += len(text)
        if size > 400_000:
            break
    out = folder / "corpus.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def _tiny_hf_model(folder: Path, corpus: Path, extra_vocab: int = 0) -> int:
    """A random Llama from a config and a BPE trained here, saved as a model folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    docs = [json.loads(line)["text"] for line in corpus.read_text().splitlines()[:3]]
    tok.train_from_iterator(docs, trainer=trainer)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    config = transformers.LlamaConfig(
        vocab_size=vocab + extra_vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    return vocab


def _hf_student(corpus: Path, model: Path) -> list[str]:
    """A student of the model on a files corpus, its token cache (under the model's
    tokenizer) prepared first as a user does: a run of a files corpus reads it there."""
    student = [
        "data=files",
        f"data.module.corpus.paths=[{corpus}]",
        "objective=distill",
        "teacher=hf",
        f"teacher.path={model}",
        "model=nano_L1",
        "data.tokens=8192",
        "data.tokens_per_param=null",
    ]
    assert kdlab_main(["data", "prepare", "--num-proc", "1", *FAST, *student]) == 0
    return student


def test_a_local_transformers_model_teaches_with_its_own_tokenizer(train, tmp_path):
    corpus = _text_corpus(tmp_path)
    vocab = _tiny_hf_model(tmp_path / "llama", corpus)
    student = train(*_hf_student(corpus, tmp_path / "llama"))
    # a random teacher: its student is done only where it got below the uniform loss ln V
    # (kdlab/runner.py); either way its row names the teacher
    learned = student["val_loss"] < math.log(vocab)
    assert student["status"] == ("done" if learned else "failed"), student["failure"]
    assert student["teacher_kind"] == "hf"
    assert student["teacher_key"].startswith("hf:") and student["teacher_model"] == "llama"
    assert student["vocab_size"] == vocab and student["tokenizer"].startswith(f"bpe-{vocab}-")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "llama")
    embedding = hf.config.vocab_size * 32
    assert student["teacher_n_params"] == sum(p.numel() for p in hf.parameters()) - 2 * embedding
    # a random teacher: its loss, measured on the student's validation tokens, is about log V
    assert abs(student["teacher_loss"] - torch.log(torch.tensor(float(vocab))).item()) < 0.5
    assert student["flops_teacher_logits"] == pytest.approx(
        student["tokens"] * (2 * student["teacher_n_params"] + 2 * 32 * vocab + 2 * 2 * 32 * 129)
    )


def test_a_model_whose_vocabulary_is_not_its_tokenizers_is_refused(train, tmp_path):
    corpus = _text_corpus(tmp_path)
    vocab = _tiny_hf_model(tmp_path / "llama", corpus, extra_vocab=8)
    student = _hf_student(corpus, tmp_path / "llama")
    with pytest.raises(ConfigError, match=f"vocabulary {vocab + 8} vs the student's {vocab}"):
        train(*student)
    out = run_cli("kdlab.train", f"paths.root_dir={tmp_path}", *FAST, *student)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("kdlab-train: error: teacher hf:") and "vocabulary" in last
    from kdlab.rundb import RunStore

    assert not RunStore(f"sqlite:///{tmp_path}/runs/kdlab.db").find()
