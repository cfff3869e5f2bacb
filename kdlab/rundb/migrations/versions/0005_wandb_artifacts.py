"""The W&B artifacts a run logged (``logger.wandb.artifacts``): each one's name, type,
digest and version (known once W&B's server has it: none for an offline run).

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("wandb_artifacts", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("wandb_artifacts")
