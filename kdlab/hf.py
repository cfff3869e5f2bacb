"""Hugging Face models in and out: ``kdlab export hf`` and ``teacher=hf``.

Out. kdlab's block is Qwen3's (``transformers`` Qwen3ForCausalLM): pre-norm RMSNorm,
separate q/k/v/o projections without biases, RMSNorm over each head's q and k (one gain
per head dimension, shared by the heads) before RoPE with the rotate-half pairing,
scores scaled by 1/sqrt(head_dim), a SwiGLU MLP (down(silu(gate) * up)), a final RMSNorm,
a tied embedding. OLMo2 normalises q and k over the whole width after the projections and
places its norms after the sublayers, and Llama has no QK-norm, so Qwen3 is the one that
computes the same function. The export splits the fused qkv and gate_up matrices and
folds the muP readout multiplier 1/m (logits = norm_f(h) E^T / m) into the final norm's
gain: that gain feeds only the readout, so g / m reproduces the logits exactly while the
embedding stays tied (no untied lm_head = E / m copy is needed). Logits agree with kdlab's
to 1e-5 in fp32 (tests/test_hf.py). The run's tokenizer is saved beside the weights
(bytes as a byte-level vocabulary whose id is the byte; a BPE as itself); a Markov run's
identity tokenizer has no text form and is not saved.

In. ``teacher=hf teacher.path=DIR`` teaches with any local causal LM ``transformers``
loads (never downloaded); the student reads its corpus with the model's tokenizer.json, so
a model whose vocabulary differs from that tokenizer's is refused. Its key is the hash of
its config and weight files (content, not path).

``transformers`` is the optional extra ``hf`` (pip install "kdlab[hf]").
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab.errors import ConfigError
from kdlab.models.gpt import GPT, NORM_EPS


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise ConfigError(
            "Hugging Face models need the transformers package: pip install 'kdlab[hf]'"
        ) from err
    return transformers


# ------------------------------------------------------------------------------ export


def to_qwen3(model: GPT) -> Any:
    """A transformers Qwen3ForCausalLM computing the same logits as ``model`` (fp32)."""
    transformers = _transformers()
    shape = model.shape
    config = transformers.Qwen3Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.d_model,
        intermediate_size=shape.d_ff,
        num_hidden_layers=shape.n_layer,
        num_attention_heads=shape.n_head,
        num_key_value_heads=shape.n_head,
        head_dim=shape.head_dim,
        hidden_act="silu",
        max_position_embeddings=shape.n_ctx,
        rms_norm_eps=NORM_EPS,
        rope_theta=shape.rope_base,
        tie_word_embeddings=True,
        attention_bias=False,
        use_sliding_window=False,
        use_cache=False,
    )
    with torch.random.fork_rng(devices=[]):  # its random init is overwritten below
        hf = transformers.Qwen3ForCausalLM(config).float()
    hf.load_state_dict(qwen3_state(model), strict=True)
    return hf.eval()


def qwen3_state(model: GPT) -> dict[str, torch.Tensor]:
    """kdlab's weights under Qwen3's names, the muP readout folded into the final norm."""
    d, d_ff = model.shape.d_model, model.shape.d_ff
    state = {
        "model.embed_tokens.weight": model.wte.weight,
        "lm_head.weight": model.wte.weight,  # tied
        "model.norm.weight": model.norm_f.weight / model.width_mult,
    }
    for i, block in enumerate(model.blocks):
        q, k, v = block.attn.qkv.weight.split(d)
        gate, up = block.mlp.gate_up.weight.split(d_ff)
        layer = f"model.layers.{i}."
        state.update(
            {
                layer + "input_layernorm.weight": block.attn_norm.weight,
                layer + "self_attn.q_proj.weight": q,
                layer + "self_attn.k_proj.weight": k,
                layer + "self_attn.v_proj.weight": v,
                layer + "self_attn.o_proj.weight": block.attn.proj.weight,
                layer + "self_attn.q_norm.weight": block.attn.q_norm.weight,
                layer + "self_attn.k_norm.weight": block.attn.k_norm.weight,
                layer + "post_attention_layernorm.weight": block.mlp_norm.weight,
                layer + "mlp.gate_proj.weight": gate,
                layer + "mlp.up_proj.weight": up,
                layer + "mlp.down_proj.weight": block.mlp.down.weight,
            }
        )
    return {name: w.detach().clone().float() for name, w in state.items()}


def byte_level_tokenizer() -> Any:
    """kdlab's byte tokenizer as a ``tokenizers`` Tokenizer: id = byte, byte 0 the EOS.

    Byte-level BPE spells byte b as the printable character of GPT-2's byte-to-unicode
    table (printable ASCII and Latin-1 stand for themselves, the other 68 bytes for
    U+0100 onwards, in byte order); with no merges each byte is one token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    printable = {*range(33, 127), *range(161, 173), *range(174, 256)}
    spelled, extra = {}, 0
    for b in range(256):
        if b in printable:
            spelled[b] = chr(b)
        else:
            spelled[b] = chr(256 + extra)
            extra += 1
    tok = Tokenizer(models.BPE(vocab={spelled[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def export_hf(model: GPT, out: Path, tokenizer: Any = None, eos_id: int | None = None) -> Path:
    """Write ``model`` (and a ``tokenizers`` tokenizer) as a transformers checkpoint."""
    transformers = _transformers()
    hf = to_qwen3(model)
    if eos_id is not None:
        hf.config.eos_token_id = eos_id
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out)
    if tokenizer is not None:
        eos = None if eos_id is None else tokenizer.id_to_token(eos_id)
        fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos)
        fast.save_pretrained(out)
    return out


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser("export", description="Export a finished run's weights.")
    sub = export.add_subparsers(dest="export_format", required=True)
    hf = sub.add_parser("hf", help="a transformers (Qwen3) checkpoint with its tokenizer")
    hf.add_argument("key", help="the run key (or a unique prefix of it)")
    hf.add_argument("--out", required=True, help="folder to write")
    hf.add_argument("--db", help="run database URL (default: KDLAB_DB_URL, else runs/kdlab.db)")
    hf.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from kdlab.rundb import RunStore, announce, database_url, shown_url
    from kdlab.teacher import WEIGHTS, load_weights

    _transformers()
    url, source = database_url(args.db)
    announce(url, source)
    matches = RunStore(url, create=False).find_key_prefix(args.key)
    if len(matches) != 1:
        found = "no run" if not matches else f"{len(matches)} runs"
        raise ConfigError(f"{found} matches key '{args.key}' in {shown_url(url)}")
    row = matches[0]
    if row["status"] != "done":
        raise ConfigError(f"run {row['key']} is {row['status']}, not done; it has no weights")
    weights = Path(row["run_dir"]) / WEIGHTS
    if not weights.is_file():
        raise ConfigError(f"run {row['key']} is done but its weights {weights} are missing")
    tokenizer, eos_id = _run_tokenizer(row)
    out = export_hf(load_weights(weights), Path(args.out), tokenizer, eos_id)
    note = "" if tokenizer is not None else f" (its {row['tokenizer']} tokenizer has no text form)"
    print(f"kdlab: exported run {row['key']} to {out} as Qwen3ForCausalLM{note}")
    return 0


def _run_tokenizer(row: dict[str, Any]) -> tuple[Any, int | None]:
    """The run's tokenizer as a ``tokenizers`` Tokenizer and its EOS id (None, None for ids)."""
    if row["tokenizer"] == "byte":
        return byte_level_tokenizer(), 0
    if not str(row["tokenizer"]).startswith("bpe-"):
        return None, None
    from kdlab.data import build_corpus, build_tokenizer, corpus_info

    module = row["config"]["data"]["module"]
    corpus = build_corpus(module["corpus"])
    cache_dir = module["cache_dir"]
    tokenizer = build_tokenizer(
        module["tokenizer"], corpus, info=corpus_info(corpus, cache_dir), cache_dir=cache_dir
    )
    if tokenizer.name != row["tokenizer"]:
        raise ConfigError(
            f"the tokenizer rebuilt for run {row['key']} is {tokenizer.name}, not its "
            f"{row['tokenizer']}; its token cache {cache_dir} changed"
        )
    return tokenizer.hf, tokenizer.eos_id


# ------------------------------------------------------------------------------ import


class HFTeacher(nn.Module):
    """A transformers causal LM as a kdlab teacher: ``forward(idx) -> logits`` [B, T, V]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=idx, use_cache=False).logits


def hf_teacher(path: Path, data: Any) -> Any:
    """The local causal LM at ``path`` as a Teacher (weights read on first use)."""
    from kdlab.data.tokenizers import BPETokenizer
    from kdlab.teacher import Teacher

    transformers = _transformers()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"teacher.path {path} is not a Hugging Face model folder (no config.json)"
        )
    if not (path / "tokenizer.json").is_file():
        raise ConfigError(f"the Hugging Face model {path} has no tokenizer.json for the student")
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(config)
    embeddings = {id(skeleton.get_input_embeddings().weight)}
    if skeleton.get_output_embeddings() is not None:
        embeddings.add(id(skeleton.get_output_embeddings().weight))
    n_params = sum(p.numel() for p in skeleton.parameters() if id(p) not in embeddings)
    width, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    d_attn = (
        heads * getattr(config, "head_dim", None) if getattr(config, "head_dim", None) else width
    )
    n_ctx = min(data.seq_len, int(getattr(config, "max_position_embeddings", data.seq_len)))
    # matmuls 2 N, the readout 2 d V, attention scores and values over (T + 1) / 2 keys
    flops = 2.0 * n_params + 2.0 * width * config.vocab_size + 2.0 * layers * d_attn * (n_ctx + 1)
    return Teacher(
        load=lambda: HFTeacher(
            transformers.AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype=torch.float32
            )
        ),
        key=f"hf:{_folder_hash(path)}",
        name=str(getattr(config, "model_type", "hf"))[:32],
        n_params=n_params,
        tokens=0,
        loss=None,
        flops_per_token=flops,
        fingerprint=data.fingerprint,  # a model from elsewhere cannot say; the user vouches
        tokenizer=BPETokenizer.from_file(path / "tokenizer.json").name,
        vocab_size=int(config.vocab_size),
        n_ctx=n_ctx,
        kind="hf",
    )


def _folder_hash(path: Path) -> str:
    """Content of the files that fix the model's function: config, weights, tokenizer."""
    from kdlab.locking import sha256_file

    digest = hashlib.sha256()
    names = sorted(
        p.name
        for p in path.iterdir()
        if p.name in ("config.json", "tokenizer.json") or p.suffix in (".safetensors", ".bin")
    )
    for name in names:
        digest.update(f"{name}:{sha256_file(path / name)}\n".encode())
    return digest.hexdigest()[:16]


__all__ = ["HFTeacher", "byte_level_tokenizer", "export_hf", "hf_teacher", "to_qwen3"]
