"""Alembic environment: run by `citytwin.ioc.storage.migrate`, which hands over an open connection."""

from __future__ import annotations

from alembic import context

from citytwin.ioc.storage.schema import metadata

connection = context.config.attributes["connection"]
# No version_table_schema: the table goes, like the others, into the first schema of the connection's
# search_path, so a test's own schema (options=-csearch_path=…) holds its own version table.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
