"""Where an imported run came from (``kdlab runs import --wandb``): null for a run kdlab
trained, else the W&B source (an offline run file, a CSV export, or entity/project) and
run id, so listings mark it and an import never takes a kdlab-trained row for its own.

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("imported_from", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("imported_from")
