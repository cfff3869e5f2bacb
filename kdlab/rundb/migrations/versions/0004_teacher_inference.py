"""Teachers beyond one online run: what kind of teacher a student had, a mixture's
members, and the teacher_inference table of logit caches and generated corpora (their
FLOPs counted once, however many students read them).

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("teacher_kind", sa.String(16)))
        batch.add_column(sa.Column("teachers", sa.JSON))
        batch.add_column(sa.Column("teacher_inference_key", sa.String(64)))
    op.create_table(
        "teacher_inference",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("teacher_key", sa.String(64)),
        sa.Column("teacher_kind", sa.String(16)),
        sa.Column("teacher_model", sa.String(32)),
        sa.Column("teacher_n_params", sa.BigInteger),
        sa.Column("teacher_tokens", sa.BigInteger),
        sa.Column("teacher_loss", sa.Float),
        sa.Column("corpus_fingerprint", sa.String(64)),
        sa.Column("tokenizer", sa.String(128)),
        sa.Column("vocab_size", sa.Integer),
        sa.Column("n_ctx", sa.Integer),
        sa.Column("settings", sa.JSON),
        sa.Column("tokens", sa.BigInteger),
        sa.Column("flops", sa.Float),
        sa.Column("bytes", sa.BigInteger),
        sa.Column("path", sa.Text),
        sa.Column("wall_time_s", sa.Float),
        sa.Column("created_at", sa.DateTime),
        sa.Column("updated_at", sa.DateTime),
    )


def downgrade() -> None:
    op.drop_table("teacher_inference")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("teacher_inference_key")
        batch.drop_column("teachers")
        batch.drop_column("teacher_kind")
