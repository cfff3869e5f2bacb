"""Alembic's entry point for the run database: migrations run on the connection kdlab
opened (``kdlab.rundb.schema_version``), never on a URL of their own."""

from alembic import context

from kdlab.rundb.schema import metadata

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=metadata,
    render_as_batch=True,  # SQLite alters a table by copying it; batch mode does that
)
with context.begin_transaction():
    context.run_migrations()
