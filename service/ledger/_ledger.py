"""The job ledger: batches and their slides, schedules and their inbox files, in a database,
each method one short transaction of its own, so the service's threads (and processes) share
one `Ledger` without a lock.

`Ledger` is its parts, one mixin per concept over `LedgerCore` (engine, clock, sessions):
`BatchLedger` (batches and their slides), `ScheduleLedger`, `InboxLedger` and `LeaseLedger`.
Mixins rather than parts it holds and delegates to, because a transaction crosses concepts (a
batch that ends releases its inbox files in the same session; an inbox write locks its
schedule's row): the parts share sessions and row helpers, not only an engine, and each
public method is written once, where its concept lives, yet stays a method of `Ledger` that
a subclass may override."""

from __future__ import annotations

from slidemill.service.ledger._batches import BatchLedger
from slidemill.service.ledger._inbox import InboxLedger
from slidemill.service.ledger._lease import LeaseLedger
from slidemill.service.ledger._schedules import ScheduleLedger


class Ledger(BatchLedger, ScheduleLedger, InboxLedger, LeaseLedger):
    """Batches and their slides, kept in SQLite (a file) or PostgreSQL.

    Open it with `Ledger.open(url)`; every method opens, commits and closes its own session,
    so one instance serves many threads. What comes back are frozen records, never ORM
    objects. Datetimes, given and returned, are timezone-aware UTC.
    """
