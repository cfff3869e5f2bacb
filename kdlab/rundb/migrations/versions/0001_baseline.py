"""The run database as kdlab first wrote it (runs and curves), before migrations.

Databases made before kdlab used Alembic hold exactly this schema and are taken to be at
this revision.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("failure", sa.Text),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("study", sa.String(128)),
        sa.Column("family", sa.String(128)),
        sa.Column("corpus", sa.String(64)),
        sa.Column("corpus_fingerprint", sa.String(64)),
        sa.Column("tokenizer", sa.String(128)),
        sa.Column("vocab_size", sa.Integer),
        sa.Column("n_ctx", sa.Integer),
        sa.Column("split", sa.String(16)),
        sa.Column("ladder", sa.String(32)),
        sa.Column("model", sa.String(32)),
        sa.Column("n_layer", sa.Integer),
        sa.Column("d_model", sa.Integer),
        sa.Column("n_head", sa.Integer),
        sa.Column("d_ff", sa.Integer),
        sa.Column("n_params", sa.BigInteger),
        sa.Column("total_params", sa.BigInteger),
        sa.Column("tokens", sa.BigInteger),
        sa.Column("tokens_per_param", sa.Float),
        sa.Column("flops_per_token", sa.Float),
        sa.Column("flops", sa.Float),
        sa.Column("passes", sa.Float),
        sa.Column("steps", sa.Integer),
        sa.Column("batch_size", sa.Integer),
        sa.Column("lr", sa.Float),
        sa.Column("seed", sa.Integer),
        sa.Column("val_loss", sa.Float),
        sa.Column("val_ppl", sa.Float),
        sa.Column("tokens_per_sec", sa.Float),
        sa.Column("mfu", sa.Float),
        sa.Column("wall_time_s", sa.Float),
        sa.Column("teacher_key", sa.String(64)),
        sa.Column("teacher_model", sa.String(32)),
        sa.Column("teacher_n_params", sa.BigInteger),
        sa.Column("teacher_tokens", sa.BigInteger),
        sa.Column("teacher_loss", sa.Float),
        sa.Column("kd_lambda", sa.Float),
        sa.Column("kd_tau", sa.Float),
        sa.Column("divergence", sa.String(32)),
        sa.Column("flops_student", sa.Float),
        sa.Column("flops_teacher_logits", sa.Float),
        sa.Column("flops_teacher_pretraining", sa.Float),
        sa.Column("val_kl", sa.Float),
        sa.Column("val_top1_agreement", sa.Float),
        sa.Column("val_ece", sa.Float),
        sa.Column("git_rev", sa.String(64)),
        sa.Column("wandb_url", sa.Text),
        sa.Column("run_dir", sa.Text),
        sa.Column("config", sa.JSON),
        sa.Column("created_at", sa.DateTime),
        sa.Column("updated_at", sa.DateTime),
    )
    op.create_table(
        "curves",
        sa.Column("run_key", sa.String(64), primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("tokens", sa.BigInteger),
        sa.Column("val_loss", sa.Float),
    )


def downgrade() -> None:
    op.drop_table("curves")
    op.drop_table("runs")
