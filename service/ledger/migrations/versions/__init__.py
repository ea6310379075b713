"""One script per schema change, in order (Alembic revisions)."""
