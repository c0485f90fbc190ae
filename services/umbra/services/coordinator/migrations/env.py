"""Alembic's entry point for the coordinator's schema. `umbra.runtime.sql.Database.migrate` runs it with an open
connection (in `config.attributes["connection"]`); the revisions are plain SQL in versions/."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
