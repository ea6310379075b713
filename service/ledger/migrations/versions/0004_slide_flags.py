"""A slide's QC flags, so a client follows them through the API (`submit --fail-on-flags`)
without reading the output folder, which may be on another machine.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("slides") as slides:  # rows recorded before: no flags known
        slides.add_column(sa.Column("flags", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("slides") as slides:
        slides.drop_column("flags")
