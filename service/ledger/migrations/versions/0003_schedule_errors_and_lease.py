"""A schedule's last error, and the lease of the one service that works the ledger.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

As in 0001: final names (`op.f`), types spelled out here rather than imported from the models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("schedules") as schedules:  # SQLite adds columns in place
        schedules.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        schedules.add_column(sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "service_lease",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("process_started", sa.Float(), nullable=False),
        sa.Column("token", sa.String(32), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_service_lease")),
    )


def downgrade() -> None:
    op.drop_table("service_lease")
    with op.batch_alter_table("schedules") as schedules:
        schedules.drop_column("last_error_at")
        schedules.drop_column("last_error")
