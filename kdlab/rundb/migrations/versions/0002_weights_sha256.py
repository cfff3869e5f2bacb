"""The SHA-256 of a finished run's final weights file, recorded when it is saved.

A student checks its teacher's model.pt against it before loading, so weights that were
swapped, truncated or overwritten are refused instead of taught from. Runs recorded
before this revision have none; their teachers are checked by shape only.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("weights_sha256", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("weights_sha256")
