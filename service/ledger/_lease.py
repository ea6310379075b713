"""The ledger's one-service lease: which service process holds the ledger, renewed by its
heartbeat, and taken over from a holder judged dead."""

from __future__ import annotations

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError

from slidemill.service.ledger._core import LedgerCore
from slidemill.service.ledger._models import LeaseRow
from slidemill.service.ledger._records import LeaseRecord

_LEASE = "service"
"""The lease row's name: one service per ledger."""


class LeaseLedger(LedgerCore):
    """The service's lease (a part of `Ledger`)."""

    def lease(self) -> LeaseRecord | None:
        """Who holds the ledger's one-service lease, or None when nobody does."""
        with self._session() as session:
            row = session.get(LeaseRow, _LEASE)
            return None if row is None else _lease_record(row)

    def take_lease(
        self,
        *,
        host: str,
        pid: int,
        process_started: float,
        token: str,
        replacing: str | None = None,
    ) -> bool:
        """Take the lease for the process (`host`, `pid`, `process_started`) under `token`:
        when nobody holds it, or, to take over a holder judged dead, when the holder is still
        the one whose token is `replacing`. False when another holds it (or took it first)."""
        now = self._now()
        try:
            with self._session(write=True) as session:
                row = session.get(LeaseRow, _LEASE, with_for_update=True)
                if row is None:
                    session.add(
                        LeaseRow(
                            name=_LEASE,
                            host=host,
                            pid=pid,
                            process_started=process_started,
                            token=token,
                            acquired_at=now,
                            heartbeat_at=now,
                        )
                    )
                    session.flush()
                    return True
                if replacing is None or row.token != replacing:
                    return False
                row.host, row.pid, row.process_started = host, pid, process_started
                row.token, row.acquired_at, row.heartbeat_at = token, now, now
                return True
        except IntegrityError:  # another service added it between the get and the insert
            return False

    def renew_lease(self, token: str) -> bool:
        """The holder's heartbeat: the lease's time becomes now. False when `token` no longer
        holds it (it was taken over, or released)."""
        with self._session(write=True) as session:
            renewed = session.connection().execute(
                update(LeaseRow)
                .where(LeaseRow.name == _LEASE, LeaseRow.token == token)
                .values(heartbeat_at=self._now())
            )
            return renewed.rowcount == 1

    def release_lease(self, token: str) -> bool:
        """Give the lease up; False (and nothing done) when `token` does not hold it."""
        with self._session(write=True) as session:
            released = session.connection().execute(
                delete(LeaseRow).where(LeaseRow.name == _LEASE, LeaseRow.token == token)
            )
            return released.rowcount == 1


def _lease_record(row: LeaseRow) -> LeaseRecord:
    return LeaseRecord(
        host=row.host,
        pid=row.pid,
        process_started=row.process_started,
        token=row.token,
        acquired_at=row.acquired_at,
        heartbeat_at=row.heartbeat_at,
    )
