"""The ledger's Alembic environment and migration scripts, applied by `Ledger.open`."""
