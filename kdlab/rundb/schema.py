"""Tables of the run database: one row per run, one row per validation point.

Sizes and token counts are 64-bit: paper-scale D passes 2^31 at 143M parameters.

Distillation fields live in the same row as the rest (null for teachers) so a fit, an
export or a W&B-style table needs no joins.

A teacher run once for many students (a logit cache, a generated corpus) is a row of
``teacher_inference``: its FLOPs are counted there once, and each student that read it
names it in ``runs.teacher_inference_key`` instead of paying F(N_T) D_S itself.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # running | done | failed | interrupted
    Column("failure", Text),
    # the attempt the row's results come from: force=true trains attempt n + 1 beside the
    # finished attempt n, which it replaces only when it finishes
    Column("attempt", Integer, nullable=False, server_default="1"),
    # the process training the run and when it last said it was alive (a killed run
    # stops beating, so readers can tell it from a live one)
    Column("host", String(255)),
    Column("pid", Integer),
    Column("heartbeat_at", DateTime),
    Column("role", String(16), nullable=False),  # teacher | supervised | student
    Column("study", String(128)),
    Column("family", String(128)),
    Column("corpus", String(64)),
    Column("corpus_fingerprint", String(64)),
    Column("tokenizer", String(128)),
    Column("vocab_size", Integer),
    Column("n_ctx", Integer),
    Column("split", String(16)),
    Column("ladder", String(32)),
    Column("model", String(32)),
    Column("n_layer", Integer),
    Column("d_model", Integer),
    Column("n_head", Integer),
    Column("d_ff", Integer),
    Column("n_params", BigInteger),  # N: non-embedding, norms included
    Column("total_params", BigInteger),
    Column("tokens", BigInteger),  # D: exactly the tokens trained on
    Column("tokens_per_param", Float),  # M = D / N
    Column("flops_per_token", Float),  # exact forward count
    Column("flops", Float),  # training FLOPs of this run, 3 F(N) D
    Column("passes", Float),  # times the training split was repeated
    Column("steps", Integer),
    Column("batch_size", Integer),
    Column("lr", Float),
    Column("seed", Integer),
    Column("val_loss", Float),
    Column("val_ppl", Float),
    Column("tokens_per_sec", Float),
    Column("mfu", Float),
    Column("wall_time_s", Float),
    # distillation: the teacher and the objective
    Column("teacher_key", String(64)),
    Column(
        "teacher_kind", String(16)
    ),  # run | checkpoint | oracle | hf | mixture | cache | generated
    Column("teachers", JSON),  # a mixture's teachers in order: key, weight, model, N, D, L_T
    Column("teacher_inference_key", String(64)),  # the cache or generated corpus it read
    Column("teacher_model", String(32)),
    Column("teacher_n_params", BigInteger),
    Column("teacher_tokens", BigInteger),
    Column("teacher_loss", Float),  # L_T on the same validation tokens
    Column("kd_lambda", Float),
    Column("kd_tau", Float),
    Column("divergence", String(32)),
    Column("flops_student", Float),  # 3 F(N_S) D_S
    Column("flops_teacher_logits", Float),  # F(N_T) D_S
    Column("flops_teacher_pretraining", Float),  # 3 F(N_T) D_T
    Column("val_kl", Float),
    Column("val_top1_agreement", Float),
    Column("val_ece", Float),
    # provenance
    Column("git_rev", String(64)),
    Column("wandb_url", Text),
    # W&B artifacts the run logged (logger.wandb.artifacts): name, type, digest, version
    # (the version once W&B's server has it; none for an offline run not yet synced)
    Column("wandb_artifacts", JSON),
    Column("run_dir", Text),
    # null for a run kdlab trained; for one `kdlab runs import --wandb` brought in from
    # another codebase, its W&B source and run id (its N, D and loss as the mapping read them)
    Column("imported_from", Text),
    Column("weights_sha256", String(64)),  # of run_dir/model.pt as saved: checked on loading
    Column("config", JSON),
    Column("created_at", DateTime),
    Column("updated_at", DateTime),
)

curves = Table(
    "curves",
    metadata,
    Column("run_key", String(64), primary_key=True),
    Column("attempt", Integer, primary_key=True, server_default="1"),
    Column("step", Integer, primary_key=True),
    Column("tokens", BigInteger),
    Column("val_loss", Float),
)

teacher_inference = Table(
    "teacher_inference",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # logit_cache | generated
    Column("status", String(16), nullable=False),  # running | done | failed
    Column("teacher_key", String(64)),
    Column("teacher_kind", String(16)),
    Column("teacher_model", String(32)),
    Column("teacher_n_params", BigInteger),
    Column("teacher_tokens", BigInteger),
    Column("teacher_loss", Float),
    Column("corpus_fingerprint", String(64)),
    Column("tokenizer", String(128)),
    Column("vocab_size", Integer),
    Column("n_ctx", Integer),
    Column("settings", JSON),  # the identity: k and dtype, or temperature, top-p, length...
    Column("tokens", BigInteger),  # tokens the teacher ran forward on (or generated)
    Column("flops", Float),  # its inference FLOPs, F(N_T) per token, counted once
    Column("bytes", BigInteger),
    Column("path", Text),
    Column("wall_time_s", Float),
    Column("created_at", DateTime),
    Column("updated_at", DateTime),
)

RUN_COLUMNS = frozenset(c.name for c in runs.columns)
INFERENCE_COLUMNS = frozenset(c.name for c in teacher_inference.columns)
