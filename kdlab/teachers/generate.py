"""Text-only (black-box) distillation: a corpus sampled once from a teacher.

When only a teacher's generated text is available (an API), a student can still learn
from it: train with hard labels on what the teacher wrote (sequence-level KD, Kim and
Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016). ``kdlab generate`` samples
that corpus: each sample continues ``prompt_tokens`` tokens of a window drawn from the
student split for ``length`` tokens at ``temperature`` and nucleus ``top_p``; samples are
separated by the tokenizer's EOS (when it has one) and only the teacher's tokens are kept.
The student trains on it in place of its split and is validated on the corpus' own
held-out tokens like every run, so its loss compares with every other run's.

The corpus lives in the token cache (``<cache_dir>/tokens/generated-<key>.bin`` with its
``.json``), keyed by the teacher and every sampling setting, and is checked against the
sha256 in its metadata before it is read. The sampler recomputes the teacher's window
for each new token (no KV cache: simple, and the teachers here are small); its FLOPs are
recorded as a KV-cached decoder's, F(N_T) per prompt and generated token.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdlab.data.tokenizers import token_dtype
from kdlab.errors import ConfigError
from kdlab.identity import run_key
from kdlab.locking import atomic_write_json, sha256_file, temp_path_for
from kdlab.losses import truncate_teacher
from kdlab.teacher import Teacher

FORMAT = "kdlab-tokens-v1"


@dataclasses.dataclass(frozen=True)
class GenerationIdentity:
    """Everything a generated corpus depends on; its key is their hash."""

    teacher: str
    corpus: str  # the fingerprint of the corpus whose student split gives the prompts
    tokenizer: str
    vocab_size: int
    val_tokens: int
    tokens: int
    length: int
    prompt_tokens: int
    temperature: float
    top_p: float
    seed: int

    @property
    def key(self) -> str:
        return run_key(dataclasses.asdict(self))


def generation_identity(
    teacher_key: str, settings: Mapping[str, Any], data: Any
) -> GenerationIdentity:
    """The generated corpus a student of ``data`` reads; ConfigError for bad settings."""
    tokens = settings.get("tokens")
    if tokens is None:  # the student's budget in whole windows, read once
        tokens = math.ceil(data.train_tokens / data.seq_len) * data.seq_len + 1
    for name, value in (
        ("tokens", tokens),
        ("length", settings.get("length")),
        ("prompt_tokens", settings.get("prompt_tokens")),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"teacher.generate.{name} must be a positive whole number, not {value}"
            )
    if settings["prompt_tokens"] >= data.seq_len:
        raise ConfigError(
            f"teacher.generate.prompt_tokens {settings['prompt_tokens']} must be shorter than "
            f"the context {data.seq_len}"
        )
    temperature, top_p = settings.get("temperature"), settings.get("top_p")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ConfigError(f"teacher.generate.temperature must be positive, not {temperature}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ConfigError(f"teacher.generate.top_p must be in (0, 1], not {top_p}")
    return GenerationIdentity(
        teacher=teacher_key,
        corpus=data.fingerprint,
        tokenizer=data.tokenizer_name,
        vocab_size=data.vocab_size,
        val_tokens=data.val_tokens,
        tokens=int(tokens),
        length=int(settings["length"]),
        prompt_tokens=int(settings["prompt_tokens"]),
        temperature=float(temperature),
        top_p=float(top_p),
        seed=int(settings.get("seed", 0)),
    )


def corpus_path(cache_dir: str | Path, identity: GenerationIdentity) -> Path:
    return Path(cache_dir) / "tokens" / f"generated-{identity.key}.bin"


def generated_teacher(settings: Mapping[str, Any], teacher: Teacher, data: Any) -> Teacher:
    """The teacher known by its generated corpus, which must exist (kdlab generate)."""
    identity = generation_identity(teacher.key, settings, data)
    path = corpus_path(data.cache_dir, identity)
    if not path.with_suffix(".json").is_file():
        raise ConfigError(
            f"there is no generated corpus of teacher {teacher.key} with these settings in "
            f"{path.parent}; make it with `kdlab generate` and this run's overrides"
        )
    return dataclasses.replace(
        teacher,
        load=None,
        kind="generated",
        shape=None,
        inference_key=identity.key,
        read=lambda: open_generated(path),
    )


def open_generated(path: Path) -> np.ndarray:
    """The generated tokens, after checking their size and sha256 against the metadata."""
    meta = json.loads(path.with_suffix(".json").read_text())
    dtype = np.dtype(meta["dtype"])
    if not path.is_file() or path.stat().st_size != meta["n_tokens"] * dtype.itemsize:
        raise ConfigError(f"the generated corpus {path} is missing or truncated; generate it again")
    if sha256_file(path) != meta["sha256"]:
        raise ConfigError(
            f"the generated corpus {path} fails its sha256 check (corrupted); generate it again"
        )
    return np.memmap(path, dtype=dtype, mode="r", shape=(meta["n_tokens"],))


@torch.no_grad()
def sample(
    teacher: nn.Module,
    prompts: torch.Tensor,
    length: int,
    context: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``length`` tokens continuing each prompt [n, P], drawn from softmax(z / temperature)
    truncated to its nucleus ``top_p``; the teacher sees at most its last ``context``
    tokens (its ``markov_order`` if it declares one)."""
    context = getattr(teacher, "markov_order", context)
    seq = prompts
    for _ in range(length):
        logits = teacher(seq[:, -context:])[:, -1].float()
        log_p = truncate_teacher(torch.log_softmax(logits / temperature, dim=-1), top_p=top_p)
        token = torch.multinomial(log_p.exp(), 1, generator=generator)
        seq = torch.cat([seq, token], dim=1)
    return seq[:, prompts.shape[1] :]


def write_generated(
    teacher: nn.Module,
    data: Any,
    identity: GenerationIdentity,
    path: Path,
    facts: dict[str, Any],
    batch: int = 64,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Sample the corpus and write it (temporary file, then rename); returns its metadata."""
    eos = data.tokenizer.eos_id
    per_sample = identity.length + (eos is not None)
    n_samples = math.ceil(identity.tokens / per_sample)
    rng = np.random.default_rng([identity.seed, 3])
    split = data.split_array(data.split)
    T, P = data.seq_len, identity.prompt_tokens
    starts = rng.integers(0, (len(split) - 1) // T, size=n_samples) * T
    generator = torch.Generator(device=device).manual_seed(identity.seed)
    dtype = token_dtype(identity.vocab_size).newbyteorder("<")
    tmp = temp_path_for(path)
    written = 0
    try:
        with open(tmp, "wb") as out:
            for first in range(0, n_samples, batch):
                rows = starts[first : first + batch]
                prompts = np.asarray(split[rows[:, None] + np.arange(P)], dtype=np.int64)
                made = sample(
                    teacher,
                    torch.from_numpy(prompts).to(device),
                    identity.length,
                    T,
                    identity.temperature,
                    identity.top_p,
                    generator,
                ).cpu()
                if eos is not None:
                    made = torch.cat([made, torch.full((made.shape[0], 1), eos)], dim=1)
                flat = made.reshape(-1).numpy()[: identity.tokens - written]
                np.ascontiguousarray(flat, dtype=dtype).tofile(out)
                written += flat.size
                if progress:
                    progress(written, identity.tokens)
        meta = {
            "format": FORMAT,
            "fingerprint": f"generated-{identity.key}",
            "tokenizer": identity.tokenizer,
            "vocab_size": identity.vocab_size,
            "eos_id": eos,
            "dtype": dtype.str,
            "n_tokens": written,
            "n_documents": n_samples,
            "sha256": sha256_file(tmp),
            "generated": dataclasses.asdict(identity),
            "teacher": facts,
            "flops": facts["flops_per_token"] * (written + n_samples * P),
        }
        tmp.replace(path)
        atomic_write_json(path.with_suffix(".json"), meta)
    finally:
        tmp.unlink(missing_ok=True)
    return meta
