"""Find, check and load the teacher a student is distilled from.

A student names its teacher by run key, by the teacher's science settings (looked up in
the run database: it must be a finished run), by a checkpoint path, or, on the Markov
corpus, as the oracle (the true conditional distribution). Every mismatch that would make
L_S meaningless is refused here, before any compute.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from kdlab.errors import ConfigError
from kdlab.locking import atomic_file, sha256_file
from kdlab.models.gpt import GPT
from kdlab.models.ladder import ModelShape, flops_per_token, non_embedding_params
from kdlab.rundb import RunStore, shown_url

WEIGHTS = "model.pt"
# the row's columns that fix a model's architecture, checked against a teacher's weights
SHAPE_COLUMNS = ("n_layer", "d_model", "n_head", "d_ff", "vocab_size", "n_ctx")


@dataclasses.dataclass
class Teacher:
    """A teacher and the facts about it that go into the student's row.

    The weights are read only when ``model`` is first used, so relaunching a sweep of
    finished students never loads their teachers. A teacher read from a logit cache or
    known by its generated text has no network to run (``load`` is None): ``read`` opens
    the cache or corpus instead (kdlab.teachers).
    """

    load: Callable[[], nn.Module] | None
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
    kind: str = "run"  # run | checkpoint | oracle | hf | mixture | cache | generated
    shape: ModelShape | None = None  # a kdlab network's shape (feature matching needs it)
    members: tuple[dict[str, Any], ...] = ()  # a mixture's teachers: key, weight and facts
    inference_key: str | None = None  # the logit cache or generated corpus read instead
    read: Callable[[], Any] | None = None  # opens (and verifies) that cache or corpus

    @functools.cached_property
    def model(self) -> nn.Module:
        """The frozen teacher network."""
        if self.load is None:
            raise RuntimeError(f"teacher {self.key} is read from {self.kind}, not run")
        return frozen(self.load())

    @property
    def science(self) -> Any:
        """What names this teacher in a student's run key: its key; a mixture's every
        member and weight; the cache or generated corpus (whose key names the teacher)."""
        if self.inference_key is not None:
            return {self.kind: self.inference_key}
        if self.members:
            return {"mixture": [[m["weight"], m["key"]] for m in self.members]}
        return self.key

    @property
    def pretraining_flops(self) -> float:
        """3 F(N_T) D_T, summed over a mixture's teachers."""
        if self.members:
            return sum(3.0 * m["flops_per_token"] * m["tokens"] for m in self.members)
        return 3.0 * self.flops_per_token * self.tokens


class MarkovOracle(nn.Module):
    """Logits equal to the log of the chain's true next-token distribution."""

    markov_order = 1  # it conditions on the last token only (a sampler feeds it just that)

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


def save_weights(model: GPT, run_dir: Path, state_dict: dict[str, Any] | None = None) -> str:
    """The final weights of a finished run, apart from resumable checkpoints; returns the
    file's SHA-256, which the run's row records so that a student can check its teacher.

    ``state_dict`` is the model's full state when the caller had to gather it (FSDP);
    by default the model's own. Written atomically: a student never reads half a file.
    """
    with atomic_file(run_dir / WEIGHTS) as handle:
        torch.save(
            {
                "shape": dataclasses.asdict(model.shape),
                "base_d_model": model.base_d_model,  # the output multiplier depends on it
                "state_dict": model.state_dict() if state_dict is None else state_dict,
            },
            handle,
        )
    return sha256_file(run_dir / WEIGHTS)


def load_tensors(path: Path, what: str, mmap: bool = False) -> dict[str, Any]:
    """A weights file or checkpoint read as data: ``torch.load`` with ``weights_only=True``
    reads tensors and plain values and refuses anything that would run code; every
    failure is one ConfigError sentence naming ``what`` and the file.

    ``mmap``: map the tensors instead of reading them (a cheap check of a large file).
    """
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise ConfigError(
            f"{what} {path} holds more than tensors and plain values, and kdlab never runs "
            "code from a weights file, so it is refused"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{what} {path} cannot be read as PyTorch weights ({reason}): not a kdlab weights "
            "file or checkpoint, or cut short (a full disk, an interrupted copy)"
        ) from None
    if not isinstance(blob, dict):
        raise ConfigError(f"{what} {path} holds a {type(blob).__name__}, not kdlab weights")
    return blob


def load_weights(path: Path) -> GPT:
    """The GPT in a kdlab weights file or Lightning checkpoint, read as data; its tensors
    are mapped from the file rather than copied, so the ranks of a node share one copy in
    the page cache until each moves its teacher to its GPU (kdlab/modules/distill.py)."""
    blob = load_tensors(path, "teacher weights", mmap=True)
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


def resolve_teacher(
    spec: DictConfig, store: RunStore, data: Any, key: str | None, check: bool = True
) -> Teacher:
    """The student's teacher, checked against the student's data; raises ConfigError.

    ``key`` is the teacher run's key when ``spec`` names one (by key, or by the science
    settings the caller turned into a key); oracle and checkpoint teachers need none.
    ``check=False`` leaves the comparison with the student to the caller (a mixture
    first compares its teachers with one another).
    """
    if spec.get("oracle"):
        return _oracle(data)
    if spec.get("checkpoint"):
        teacher = _from_checkpoint(Path(spec.checkpoint), data)
    elif key is None:
        raise ConfigError(
            "objective=distill needs a teacher: teacher.key, teacher.model with its budget, "
            "teacher.checkpoint, teacher=oracle, teacher=hf or teacher=mixture"
        )
    else:
        teacher = _from_run(store, key, data)
    return check_teacher(teacher, data) if check else teacher


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
        load=lambda: _run_weights(weights, row),
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
        shape=_row_shape(row),
    )


def _run_weights(path: Path, row: dict[str, Any]) -> GPT:
    """A teacher run's final weights, checked against its row before they teach: the
    file's SHA-256 against the one recorded when it was saved (so swapped, truncated or
    overwritten weights are refused before they are even read), then the shape.

    Runs recorded before kdlab kept the hash are checked by shape only.
    """
    key, recorded = row["key"], row.get("weights_sha256")
    if recorded:
        actual = sha256_file(path)
        if actual != recorded:
            raise ConfigError(
                f"teacher run {key}'s weights {path} are not the file the run saved (SHA-256 "
                f"{actual[:12]}..., recorded {recorded[:12]}...); restore them, or retrain "
                "the teacher with force=true"
            )
    model = load_weights(path)
    wrong = [
        f"{column} {getattr(model.shape, column)} (the run's: {row[column]})"
        for column in SHAPE_COLUMNS
        if getattr(model.shape, column) != row[column]
    ]
    if wrong:
        raise ConfigError(
            f"teacher run {key}'s weights {path} are not of the run's shape: {', '.join(wrong)}"
        )
    return model


def _row_shape(row: dict[str, Any]) -> ModelShape:
    fields = ("ladder", "model", "n_layer", "d_model", "n_head", "d_ff", "vocab_size", "n_ctx")
    return ModelShape(*(row[f] for f in fields))


def _from_checkpoint(path: Path, data: Any) -> Teacher:
    if not path.exists():
        raise ConfigError(f"teacher.checkpoint {path} does not exist")
    model = load_weights(path)
    shape = model.shape
    return Teacher(
        load=lambda: model,
        key=f"checkpoint:{sha256_file(path)[:16]}",  # content, not path: keys never hold paths
        name=shape.name,
        n_params=non_embedding_params(shape),
        tokens=0,
        loss=None,
        flops_per_token=flops_per_token(shape),
        fingerprint=data.fingerprint,  # a bare checkpoint cannot say; the user vouches
        tokenizer=data.tokenizer_name,
        vocab_size=shape.vocab_size,
        n_ctx=shape.n_ctx,
        kind="checkpoint",
        shape=shape,
    )


def _oracle(data: Any) -> Teacher:
    corpus = data.corpus
    if not hasattr(corpus, "transition"):
        raise ConfigError("teacher=oracle needs the markov corpus (data=markov)")
    if corpus.config.markov_order != 1:  # its rows are contexts of k tokens, not one
        raise ConfigError(
            "teacher=oracle reads first-order chains; this markov corpus has markov_order "
            f"{corpus.config.markov_order} (set data.module.corpus.markov_order=1)"
        )
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
        kind="oracle",
    )


def check_teacher(teacher: Teacher, data: Any) -> Teacher:
    """``teacher`` if it reads the student's corpus, tokenizer, vocabulary and context."""
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
