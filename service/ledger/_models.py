"""The tables, as SQLAlchemy 2 declarative classes. The migrations in `migrations/versions`
create them (and must agree: `alembic.autogenerate.compare_metadata` against a migrated database
finds nothing). Nothing outside this package sees these classes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from slidemill.service.ledger._records import BatchStatus, SlideState
from slidemill.service.schedules import CatchUp, InboxState

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Constraint names the same on every database, so a later migration can name what it alters."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database: `timestamptz` on PostgreSQL, naive UTC
    text on SQLite (which has no time zones), aware UTC on the way back from both."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: the ledger keeps aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _one_of(
    column: str, values: type[BatchStatus] | type[SlideState] | type[CatchUp] | type[InboxState]
) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012  (SQLAlchemy reads it from the class)
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        dict[str, float]: JSON(),
        list[str]: JSON(),
        list[float]: JSON(),
    }


class BatchRow(Base):
    __tablename__ = "batches"
    __table_args__ = (
        CheckConstraint(_one_of("status", BatchStatus), name="status"),
        Index(None, "status", "priority", "created_at"),
        Index(None, "updated_at"),
        Index(None, "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    origin: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int]
    out: Mapped[str] = mapped_column(Text)
    request: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool]
    n_slides: Mapped[int]
    n_done: Mapped[int]
    n_failed: Mapped[int]
    n_skipped: Mapped[int]


class SlideRow(Base):
    __tablename__ = "slides"
    __table_args__ = (
        CheckConstraint(_one_of("state", SlideState), name="state"),
        UniqueConstraint("batch_id", "position"),
    )

    batch_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    slide_id: Mapped[str] = mapped_column(Text, primary_key=True)
    position: Mapped[int]
    """Submission order within the batch."""
    path: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(Text)
    class_names: Mapped[list[str]]
    probabilities: Mapped[list[float]]
    n_tiles: Mapped[int]
    error: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict[str, float]]
    output: Mapped[str | None] = mapped_column(Text)
    flags: Mapped[list[str]] = mapped_column(server_default="[]")
    """QC flag codes of its result (migration 0004)."""
    updated_at: Mapped[datetime]


class ScheduleRow(Base):
    __tablename__ = "schedules"
    __table_args__ = (CheckConstraint(_one_of("catch_up", CatchUp), name="catch_up"),)

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    cron: Mapped[str] = mapped_column(Text)
    tz: Mapped[str] = mapped_column(Text)
    catch_up: Mapped[str] = mapped_column(String(16))
    inbox: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    out_template: Mapped[str] = mapped_column(Text)
    options: Mapped[dict[str, Any]]
    paused: Mapped[bool]
    max_attempts: Mapped[int]
    settle_s: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    last_fired: Mapped[datetime | None]
    """The latest window fired; never moves back."""
    last_error: Mapped[str | None] = mapped_column(Text)
    """Why its last run failed, one line; None once a run works."""
    last_error_at: Mapped[datetime | None]


class InboxFileRow(Base):
    __tablename__ = "inbox_files"
    __table_args__ = (
        CheckConstraint(_one_of("state", InboxState), name="state"),
        UniqueConstraint("schedule", "path", "size", "mtime_ns"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    schedule: Mapped[str] = mapped_column(
        String(64), ForeignKey("schedules.name", ondelete="CASCADE")
    )
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int]
    last_error: Mapped[str | None] = mapped_column(Text)
    batch_id: Mapped[str | None] = mapped_column(String(32))
    first_seen: Mapped[datetime]
    updated_at: Mapped[datetime]


class LeaseRow(Base):
    """The one service that works this ledger: at most one row, named `service`."""

    __tablename__ = "service_lease"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int]
    process_started: Mapped[float] = mapped_column(Float)
    """The holder's start time (epoch seconds): tells it from a later process given its PID."""
    token: Mapped[str] = mapped_column(String(32))
    """Unique to this taking: renewal, release and takeover name the lease they read."""
    acquired_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
