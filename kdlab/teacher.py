"""Find, check and load the teacher a student is distilled from.

A student names its teacher by run key, by the teacher's science settings (looked up in
the run database: it must be a finished run), by a checkpoint path, or, on the Markov
corpus, as the oracle (the true conditional distribution). Every mismatch that would make
L_S meaningless is refused here, before any compute.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from kdlab.errors import ConfigError
from kdlab.models.gpt import GPT
from kdlab.models.ladder import ModelShape, flops_per_token, non_embedding_params
from kdlab.rundb import RunStore, shown_url

MODEL_CONF = Path(__file__).resolve().parent.parent / "conf" / "model"
WEIGHTS = "model.pt"


@dataclasses.dataclass
class Teacher:
    """A teacher and the facts about it that go into the student's row.

    The weights are read only when ``model`` is first used, so relaunching a sweep of
    finished students never loads their teachers.
    """

    load: Callable[[], nn.Module]
    key: str
    name: str
    n_params: int
    tokens: int
    loss: float | None  # L_T on the shared validation tokens; None: measured by the student
    flops_per_token: float
    fingerprint: str
    tokenizer: str
    vocab_size: int
    n_ctx: int

    @functools.cached_property
    def model(self) -> nn.Module:
        """The frozen teacher network."""
        return frozen(self.load())


class MarkovOracle(nn.Module):
    """Logits equal to the log of the chain's true next-token distribution."""

    def __init__(self, transition: Any) -> None:
        super().__init__()
        probs = torch.as_tensor(transition, dtype=torch.float32)
        self.register_buffer("log_probs", probs.clamp_min(1e-30).log())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.log_probs[idx]


def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def save_weights(model: GPT, run_dir: Path, state_dict: dict[str, Any] | None = None) -> None:
    """The final weights of a finished run, apart from resumable checkpoints.

    ``state_dict`` is the model's full state when the caller had to gather it (FSDP);
    by default the model's own.
    """
    torch.save(
        {
            "shape": dataclasses.asdict(model.shape),
            "base_d_model": model.base_d_model,  # the output multiplier depends on it
            "state_dict": model.state_dict() if state_dict is None else state_dict,
        },
        run_dir / WEIGHTS,
    )


def load_weights(path: Path) -> GPT:
    """The GPT in a kdlab weights file or Lightning checkpoint, its tensors mapped from the
    file rather than copied: the ranks of a node share one copy in the page cache until
    each moves its teacher to its GPU (kdlab/modules/distill.py)."""
    blob = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    if "state_dict" in blob and "shape" in blob:
        # files written before the base width was stored used GPT's default
        width = {"base_d_model": blob["base_d_model"]} if "base_d_model" in blob else {}
        return _gpt_from_state(ModelShape(**blob["shape"]), blob["state_dict"], **width)
    # a Lightning checkpoint of a kdlab module
    if "kdlab_shape" not in blob:
        raise ConfigError(f"teacher checkpoint {path} is not a kdlab checkpoint (no model shape)")
    width = {"base_d_model": blob["kdlab_base_d_model"]} if "kdlab_base_d_model" in blob else {}
    state = submodule_state(blob["state_dict"], "model.")
    return _gpt_from_state(ModelShape(**blob["kdlab_shape"]), state, **width)


def _gpt_from_state(shape: ModelShape, state: dict[str, Any], **width: Any) -> GPT:
    """A GPT holding ``state``'s tensors themselves.

    Built on the meta device, so it draws nothing from the global RNG (the teacher is
    read after the run is seeded, and the student built next would otherwise start from
    other weights for every teacher size) and allocates no weights of its own.
    """
    with torch.device("meta"):
        model = GPT(shape, **width)
    model.load_state_dict(state, assign=True)
    model.to_empty(device=torch.device("cpu"), recurse=False)  # its RoPE tables
    model.init_module(model)
    return model


def submodule_state(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of a module's state dict under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def teacher_config(cfg: DictConfig) -> DictConfig:
    """The config of the teacher run named by science settings: same data, its own size
    and budget, pretraining on the teacher split."""
    spec = cfg.teacher
    path = MODEL_CONF / f"{spec.model}.yaml"
    if not path.exists():
        choices = sorted(p.stem for p in MODEL_CONF.glob("*.yaml"))
        raise ConfigError(f"unknown teacher.model '{spec.model}'; choose one of {choices}")
    tcfg = cfg.copy()
    with open_dict(tcfg):
        tcfg.model = OmegaConf.load(path)
        tcfg.role = "teacher"
        tcfg.objective = OmegaConf.create(
            {"_target_": "kdlab.modules.PretrainModule", "_partial_": True}
        )
        tcfg.data.tokens = spec.tokens
        tcfg.data.tokens_per_param = spec.tokens_per_param
        tcfg.data.flops = spec.flops
        if spec.get("seed") is not None:
            tcfg.seed = spec.seed
    return tcfg


def resolve_teacher(cfg: DictConfig, store: RunStore, data: Any) -> Teacher:
    """The student's teacher, checked against the student's data; raises ConfigError."""
    spec = cfg.teacher
    if spec.get("oracle"):
        return _oracle(data)
    if spec.get("checkpoint"):
        return _checked(_from_checkpoint(Path(spec.checkpoint), data), data)
    if spec.get("key"):
        key = spec.key
    elif spec.get("model"):
        from kdlab.runner import plan_run  # the teacher's key is computed like any run's

        key = plan_run(teacher_config(cfg)).key
    else:
        raise ConfigError(
            "objective=distill needs a teacher: teacher.key, teacher.model with its budget, "
            "teacher.checkpoint, or teacher=oracle"
        )
    return _checked(_from_run(store, key, data), data)


def _from_run(store: RunStore, key: str, data: Any) -> Teacher:
    row = store.get(key)
    if row is None:
        raise ConfigError(
            f"teacher run {key} is not in the run database {shown_url(store.url)}; train it first"
        )
    if row["status"] != "done":
        raise ConfigError(f"teacher run {key} is {row['status']}, not done; it cannot teach")
    if row["split"] != "teacher":
        raise ConfigError(
            f"run {key} was trained on the {row['split']} split; a teacher must be trained "
            "on the teacher split"
        )
    held_out = (row["config"] or {}).get("data", {}).get("module", {}).get("val_tokens")
    if held_out != data.val_tokens:
        raise ConfigError(
            f"teacher run {key} held out {held_out} validation tokens, not the student's "
            f"{data.val_tokens}, so its training split overlaps the student's"
        )
    weights = Path(row["run_dir"]) / WEIGHTS
    if not weights.exists():
        raise ConfigError(f"teacher run {key} is done but its weights {weights} are missing")
    return Teacher(
        load=lambda: load_weights(weights),
        key=key,
        name=row["model"],
        n_params=row["n_params"],
        tokens=row["tokens"],
        loss=row["val_loss"],
        flops_per_token=row["flops_per_token"],
        fingerprint=row["corpus_fingerprint"],
        tokenizer=row["tokenizer"],
        vocab_size=row["vocab_size"],
        n_ctx=row["n_ctx"],
    )


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _from_checkpoint(path: Path, data: Any) -> Teacher:
    if not path.exists():
        raise ConfigError(f"teacher.checkpoint {path} does not exist")
    model = load_weights(path)
    shape = model.shape
    return Teacher(
        load=lambda: model,
        key=f"checkpoint:{_file_hash(path)}",  # content, not path: keys never hold paths
        name=shape.name,
        n_params=non_embedding_params(shape),
        tokens=0,
        loss=None,
        flops_per_token=flops_per_token(shape),
        fingerprint=data.fingerprint,  # a bare checkpoint cannot say; the user vouches
        tokenizer=data.tokenizer_name,
        vocab_size=shape.vocab_size,
        n_ctx=shape.n_ctx,
    )


def _oracle(data: Any) -> Teacher:
    corpus = data.corpus
    if not hasattr(corpus, "transition"):
        raise ConfigError("teacher=oracle needs the markov corpus (data=markov)")
    return Teacher(
        load=lambda: MarkovOracle(corpus.transition),
        key=f"oracle:{data.fingerprint}",
        name="oracle",
        n_params=0,
        tokens=0,
        loss=float(corpus.entropy_rate),
        flops_per_token=0.0,
        fingerprint=data.fingerprint,
        tokenizer=data.tokenizer_name,
        vocab_size=data.vocab_size,
        n_ctx=data.seq_len,
    )


def _checked(teacher: Teacher, data: Any) -> Teacher:
    mismatches = [
        f"{what} {theirs} vs the student's {ours}"
        for what, theirs, ours in (
            ("corpus", teacher.fingerprint, data.fingerprint),
            ("tokenizer", teacher.tokenizer, data.tokenizer_name),
            ("vocabulary", teacher.vocab_size, data.vocab_size),
            ("context", teacher.n_ctx, data.seq_len),
        )
        if theirs != ours
    ]
    if mismatches:
        raise ConfigError(
            f"teacher {teacher.key} does not match the student: {'; '.join(mismatches)}"
        )
    return teacher
