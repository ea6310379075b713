"""Alembic's environment: migrates over the connection that `_database.migrate` hands over in
`config.attributes["connection"]`, inside that connection's transaction."""

from __future__ import annotations

from alembic import context

from slidemill.service.ledger._models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "the ledger's migrations run through slidemill.service.ledger.Ledger.open, which "
        "passes the connection; the alembic command line has no configuration for them"
    )
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
)
with context.begin_transaction():
    context.run_migrations()
