"""Schedules and the inbox files they have seen.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-12

As in 0001: final names (`op.f`), types spelled out here rather than imported from the models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_CATCH_UP = ("latest", "all", "skip")
_INBOX_STATES = ("taken", "done", "failed", "held")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("cron", sa.Text(), nullable=False),
        sa.Column("tz", sa.Text(), nullable=False),
        sa.Column("catch_up", sa.String(16), nullable=False),
        sa.Column("inbox", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("out_template", sa.Text(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("settle_s", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_fired", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_schedules")),
        sa.CheckConstraint(_one_of("catch_up", _CATCH_UP), name=op.f("ck_schedules_catch_up")),
    )
    op.create_table(
        "inbox_files",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("schedule", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("batch_id", sa.String(32), nullable=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbox_files")),
        sa.ForeignKeyConstraint(
            ["schedule"],
            ["schedules.name"],
            name=op.f("fk_inbox_files_schedule_schedules"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "schedule",
            "path",
            "size",
            "mtime_ns",
            name=op.f("uq_inbox_files_schedule_path_size_mtime_ns"),
        ),
        sa.CheckConstraint(_one_of("state", _INBOX_STATES), name=op.f("ck_inbox_files_state")),
    )


def downgrade() -> None:
    op.drop_table("inbox_files")
    op.drop_table("schedules")
