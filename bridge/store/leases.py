"""Named leases between daemon instances, on the `leases` table, and the store's clock.

A lease is one row: a name (the job, such as the purge), the instance that holds
it, and when it expires. `acquire` takes it with a single conditional upsert, so
the database decides who wins: the row is inserted when absent, taken over when
it has expired, and extended when it is already ours; otherwise nothing changes.
That one statement is race-free on PostgreSQL (`INSERT ... ON CONFLICT DO UPDATE
... WHERE` locks the conflicting row and re-checks the condition on its newest
version) and on SQLite (`store.transaction()` starts with `BEGIN IMMEDIATE`,
which serialises writers). A crashed holder's lease simply expires.

`HeldLease` is the way jobs use it: an async context manager that acquires (or
raises `LeaseBusyError`), renews in the background, releases at the end, and
offers `check(session)`, a fence to call inside each write transaction of the
work. The fence renews the lease in that same transaction, so on PostgreSQL the
lease row stays locked until the work commits, and work done after the lease
was lost is rolled back instead of committed beside another holder's.

Times come from the database (`database_now`) unless a caller injects `now`
(tests do). This module knows nothing about what the jobs do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, delete, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.errors import BridgeError
from bridge.store.engine import Store
from bridge.store.models import Lease

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# Column widths of `leases` (see models.py).
MAX_NAME_LENGTH = 64
MAX_OWNER_LENGTH = 128


class LeaseBusyError(BridgeError):
    """Another instance holds the lease."""

    def __init__(self, name: str, holder: str | None, expires_at: datetime | None) -> None:
        super().__init__(f"lease {name!r} is held by {holder or 'another instance'}")
        self.name = name
        self.holder = holder
        self.expires_at = expires_at


class LeaseLostError(BridgeError):
    """The lease is no longer ours: it expired and another instance took it over."""

    def __init__(self, name: str, owner: str) -> None:
        super().__init__(f"lease {name!r} is no longer held by {owner}")
        self.name = name
        self.owner = owner


@dataclass(frozen=True)
class LeaseState:
    """A lease row as read: who holds it, until when."""

    name: str
    owner: str
    expires_at: datetime


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive UTC, PostgreSQL aware values; both become aware UTC."""
    return moment.replace(tzinfo=UTC) if moment.utcoffset() is None else moment.astimezone(UTC)


async def database_now(session: AsyncSession) -> datetime:
    """The database server's current time, aware UTC, read in `session`.

    SQLite's `CURRENT_TIMESTAMP` has one-second resolution, so its time is read
    with milliseconds through `strftime`; PostgreSQL's is its transaction time.
    """
    connection = await session.connection()
    if connection.dialect.name == "sqlite":
        query = sa.text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")
        text = (await connection.execute(query)).scalar_one()
        return datetime.fromisoformat(str(text)).replace(tzinfo=UTC)
    moment = (await connection.execute(sa.select(sa.func.current_timestamp()))).scalar_one()
    return as_utc(moment)


async def _time(session: AsyncSession, now: datetime | None) -> datetime:
    if now is None:
        return await database_now(session)
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _check_names(name: str, owner: str) -> None:
    if not 0 < len(name) <= MAX_NAME_LENGTH:
        raise ValueError(f"a lease name has 1 to {MAX_NAME_LENGTH} characters")
    if not 0 < len(owner) <= MAX_OWNER_LENGTH:
        raise ValueError(f"a lease owner has 1 to {MAX_OWNER_LENGTH} characters")


async def acquire_in(
    session: AsyncSession, name: str, owner: str, ttl: timedelta, now: datetime | None = None
) -> bool:
    """`acquire` inside the caller's write transaction."""
    _check_names(name, owner)
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    at = await _time(session, now)
    dialect = (await session.connection()).dialect.name
    insert = postgresql.insert(Lease) if dialect == "postgresql" else sqlite.insert(Lease)
    statement = (
        insert.values(name=name, owner=owner, expires_at=at + ttl)
        .on_conflict_do_update(
            index_elements=["name"],
            set_={"owner": insert.excluded.owner, "expires_at": insert.excluded.expires_at},
            where=(col(Lease.owner) == owner) | (col(Lease.expires_at) <= at),
        )
        .returning(col(Lease.owner))
    )
    return (await session.exec(statement)).first() is not None


async def acquire(
    store: Store, name: str, owner: str, ttl: timedelta, now: datetime | None = None
) -> bool:
    """Take lease `name` for `owner` until now + `ttl`; True when it is ours.

    It is ours when nobody held it, when the holder's lease had expired, or when
    we already held it (then it is extended).
    """
    async with store.transaction() as session:
        return await acquire_in(session, name, owner, ttl, now)


async def renew_in(
    session: AsyncSession, name: str, owner: str, ttl: timedelta, now: datetime | None = None
) -> bool:
    """`renew` inside the caller's write transaction (which then holds the row's lock)."""
    at = await _time(session, now)
    statement = (
        update(Lease)
        .where(col(Lease.name) == name, col(Lease.owner) == owner)
        .values(expires_at=at + ttl)
    )
    return bool((await session.exec(statement)).rowcount)


async def renew(
    store: Store, name: str, owner: str, ttl: timedelta, now: datetime | None = None
) -> bool:
    """Extend our lease to now + `ttl`; False when it is no longer ours.

    A lease that has expired but that nobody took over is still ours: no one
    else can have worked under it.
    """
    async with store.transaction() as session:
        return await renew_in(session, name, owner, ttl, now)


async def release(store: Store, name: str, owner: str) -> bool:
    """Give the lease up; False when it was not ours (any more)."""
    async with store.transaction() as session:
        statement = delete(Lease).where(col(Lease.name) == name, col(Lease.owner) == owner)
        return bool((await session.exec(statement)).rowcount)


async def current(store: Store, name: str) -> LeaseState | None:
    """The lease row, expired or not; None when nobody has held it since its release."""
    async with store.read() as session:
        row = (await session.exec(select(Lease).where(col(Lease.name) == name))).first()
    if row is None:
        return None
    return LeaseState(row.name, row.owner, as_utc(row.expires_at))


class HeldLease:
    """Hold lease `name` for the duration of an `async with` block.

    Entering acquires it or raises `LeaseBusyError`. While the block runs, a
    background task renews it every `renew_every` (default a third of `ttl`).
    Work that writes calls `await held.check(session)` inside each of its
    transactions: that renews the lease in the transaction, or raises
    `LeaseLostError` so that the transaction rolls back. Leaving the block
    releases the lease. `clock` injects the time (tests); None means the
    database's clock.
    """

    def __init__(
        self,
        store: Store,
        name: str,
        owner: str,
        ttl: timedelta,
        *,
        renew_every: timedelta | None = None,
        clock: Clock | None = None,
    ) -> None:
        _check_names(name, owner)
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        self.store = store
        self.name = name
        self.owner = owner
        self.ttl = ttl
        self.renew_every = renew_every or ttl / 3
        self._clock = clock
        self.lost = False
        self._keeper: asyncio.Task[None] | None = None

    def _now(self) -> datetime | None:
        return None if self._clock is None else self._clock()

    async def __aenter__(self) -> Self:
        if not await acquire(self.store, self.name, self.owner, self.ttl, self._now()):
            holder = await current(self.store, self.name)
            raise LeaseBusyError(
                self.name,
                holder.owner if holder else None,
                holder.expires_at if holder else None,
            )
        self.lost = False
        self._keeper = asyncio.create_task(self._keep(), name=f"lease:{self.name}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if self.lost:
            return
        try:
            await release(self.store, self.name, self.owner)
        except Exception:  # the lease then expires on its own
            log.warning("lease release failed", extra={"lease": self.name}, exc_info=True)

    async def check(self, session: AsyncSession) -> None:
        """The fence: renew the lease inside `session`'s transaction, or raise."""
        if self.lost or not await renew_in(session, self.name, self.owner, self.ttl, self._now()):
            self.lost = True
            raise LeaseLostError(self.name, self.owner)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.renew_every.total_seconds())
            try:
                ours = await renew(self.store, self.name, self.owner, self.ttl, self._now())
            except Exception:  # a store outage: try again; the fence decides in the end
                log.warning("lease renewal failed", extra={"lease": self.name}, exc_info=True)
                continue
            if not ours:
                self.lost = True
                log.warning("lease lost", extra={"lease": self.name, "owner": self.owner})
                return
