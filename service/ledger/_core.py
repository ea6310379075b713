"""What the ledger's parts share: the engine, the clock ('now', aware UTC), and one short
transaction per method (`_session`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from slidemill.service.ledger._database import WRITE, create, migrate, parse_url, unavailable
from slidemill.service.ledger._errors import LedgerInputError


def _utcnow() -> datetime:
    return datetime.now(UTC)


class LedgerCore:
    """The engine and the clock of a ledger, and its sessions: the base of `Ledger`'s parts
    (batches, schedules, inbox, lease), which `Ledger` composes."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = _utcnow) -> None:
        """Use `Ledger.open`; this takes an engine whose schema is already at head."""
        self._engine = engine
        self._clock = clock

    @classmethod
    def open(cls, url: str, *, clock: Callable[[], datetime] | None = None) -> Self:
        """The ledger at `url` (`sqlite:///FILE` or `postgresql+psycopg://…`), its schema
        brought to the newest migration first. `clock` gives "now" (aware); tests drive it."""
        engine = create(parse_url(url))
        try:
            migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, clock or _utcnow)

    @property
    def url(self) -> str:
        """The database's URL, its password masked: for messages."""
        return self._engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Close the pooled connections; the ledger cannot be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _now(self) -> datetime:
        return _aware(self._clock(), "the ledger's clock")

    @contextmanager
    def _session(self, *, write: bool = False) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back when it raises. A
        writing one takes SQLite's write lock at its start (`BEGIN IMMEDIATE`)."""
        try:
            with Session(self._engine, expire_on_commit=False) as session, session.begin():
                if write:
                    session.connection(execution_options={WRITE: True})
                yield session
        except OperationalError as err:
            raise unavailable(self._engine.url, err) from err


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise LedgerInputError(
            f"{name} {value.isoformat()} has no time zone; give one (e.g. …T22:00:00Z)"
        )
    return value.astimezone(UTC)
