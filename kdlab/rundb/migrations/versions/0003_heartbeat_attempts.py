"""Heartbeats and attempts: who trains a run and whether it is alive, and forced re-runs
that replace a finished run only when they finish.

runs gains attempt (the attempt its results come from), host, pid and heartbeat_at;
curves gains attempt in its primary key, so a re-run's validation points never mix with
those of the run it replaces. Existing rows are attempt 1.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

RUN_COLUMNS = ("attempt", "host", "pid", "heartbeat_at")


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("host", sa.String(255)))
        batch.add_column(sa.Column("pid", sa.Integer))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime))
    _rekey_curves(["run_key", "attempt", "step"])


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM curves WHERE attempt <> 1"))
    _rekey_curves(["run_key", "step"])
    with op.batch_alter_table("runs") as batch:
        for name in reversed(RUN_COLUMNS):
            batch.drop_column(name)


def _rekey_curves(key: list[str]) -> None:
    """Give curves the primary key ``key``, adding or dropping its attempt column."""
    adding = "attempt" in key
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("curves_pkey", "curves", type_="primary")
        if adding:
            op.add_column(
                "curves", sa.Column("attempt", sa.Integer, nullable=False, server_default="1")
            )
        else:
            op.drop_column("curves", "attempt")
        op.create_primary_key("curves_pkey", "curves", key)
        return
    # SQLite cannot change a primary key in place: copy into a table made with the new one
    columns = [
        sa.Column("run_key", sa.String(64), primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("tokens", sa.BigInteger),
        sa.Column("val_loss", sa.Float),
    ]
    if adding:
        columns.insert(1, sa.Column("attempt", sa.Integer, primary_key=True, server_default="1"))
    op.create_table("curves_rekeyed", *columns)
    kept = "run_key, step, tokens, val_loss"
    op.execute(sa.text(f"INSERT INTO curves_rekeyed ({kept}) SELECT {kept} FROM curves"))
    op.drop_table("curves")
    op.rename_table("curves_rekeyed", "curves")
