"""Batches and their slides.

Revision ID: 0001
Revises:
Create Date: 2025-11-28

Every name is final (`op.f`), whatever naming convention the models' metadata has. The types
are spelled out here, not imported from the models, so that this migration keeps
creating the same tables whatever the models become. Datetimes are `timestamptz` on PostgreSQL
and naive UTC on SQLite (the models' `UTCDateTime` reads both back as aware UTC).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_BATCH_STATUSES = ("queued", "running", "done", "stopped", "cancelled")
_SLIDE_STATES = ("pending", "done", "failed", "skipped")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("out", sa.Text(), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("n_slides", sa.Integer(), nullable=False),
        sa.Column("n_done", sa.Integer(), nullable=False),
        sa.Column("n_failed", sa.Integer(), nullable=False),
        sa.Column("n_skipped", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        sa.CheckConstraint(_one_of("status", _BATCH_STATUSES), name=op.f("ck_batches_status")),
    )
    # claim_next: the queued batch of the highest priority, then the oldest
    op.create_index(
        op.f("ix_batches_status_priority_created_at"),
        "batches",
        ["status", "priority", "created_at"],
    )
    op.create_index(op.f("ix_batches_updated_at"), "batches", ["updated_at"])  # polling
    op.create_index(op.f("ix_batches_created_at"), "batches", ["created_at"])  # newest first
    op.create_table(
        "slides",
        sa.Column("batch_id", sa.String(32), nullable=False),
        sa.Column("slide_id", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("class_names", sa.JSON(), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("n_tiles", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("batch_id", "slide_id", name=op.f("pk_slides")),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_slides_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("batch_id", "position", name=op.f("uq_slides_batch_id_position")),
        sa.CheckConstraint(_one_of("state", _SLIDE_STATES), name=op.f("ck_slides_state")),
    )


def downgrade() -> None:
    op.drop_table("slides")
    op.drop_index(op.f("ix_batches_created_at"), table_name="batches")
    op.drop_index(op.f("ix_batches_updated_at"), table_name="batches")
    op.drop_index(op.f("ix_batches_status_priority_created_at"), table_name="batches")
    op.drop_table("batches")
