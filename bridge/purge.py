"""Retention: the trash purge and the housekeeping of the daemon's own tables.

`purge` keeps the promise of the trash ("permanently deleted after N days,
not retrievable"), for every portal that shares the store:

1. mailbox rows trashed longer ago than their organization's
   `trash_retention_days` are deleted (the participant's tokens for the thread
   are revoked), in batches;
2. threads that no mailbox row holds any more (after step 1, or after
   permanent deletes) are deleted with everything in them, in batches;
3. blob files that no attachment references are removed, after those
   transactions have committed (`_purge_blobs`).

Each batch is one short write transaction of at most `batch_size` rows, and
writes one `purge_batch` audit event per organization it touched, with counts
only; the run ends with one `purge_run` event (counts, blob files removed, the
run's start and end on the database's clock). An interrupted run loses nothing
and leaves nothing half done: committed batches stay committed, the rest is
still due, and the next run's sweep removes the files. `dry_run` counts what
would go, per organization, and changes nothing.

`housekeeping` applies the other retention rules (`_purge_housekeeping`) and
writes one `housekeeping_run` event.

Time: the database's clock unless `now` is given (tests). Exclusion between
instances: the caller's lease, passed in as `fence` (called inside every write
transaction; see `bridge.store.leases.HeldLease.check`). This module neither
schedules nor takes leases.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import col, insert, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge import _purge_housekeeping, _purge_rows
from bridge._purge_blobs import SweepResult, sweep
from bridge._purge_housekeeping import TOKEN_GRACE, HousekeepingRules
from bridge._purge_rows import PurgeCounts
from bridge.store.engine import Store
from bridge.store.leases import as_utc, database_now
from bridge.store.models import AuditEvent

__all__ = [
    "AUDIT_BATCH",
    "AUDIT_HOUSEKEEPING",
    "AUDIT_RUN",
    "BLOB_GRACE",
    "GENTLE",
    "TOKEN_GRACE",
    "HousekeepingReport",
    "HousekeepingRules",
    "OrganizationCounts",
    "Pacing",
    "PurgeCounts",
    "PurgeReport",
    "SweepResult",
    "dry_run",
    "housekeeping",
    "last_runs",
    "purge",
]

log = logging.getLogger(__name__)

AUDIT_BATCH = "purge_batch"
AUDIT_RUN = "purge_run"
AUDIT_HOUSEKEEPING = "housekeeping_run"

# A blob file changed less than this long ago is never removed: its writer may not
# have committed the attachment row yet (writers store the file first).
BLOB_GRACE = timedelta(hours=1)

Fence = Callable[[AsyncSession], Awaitable[None]]
StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class Pacing:
    """How a run leaves the store to other work between its batches.

    After each batch it waits `pause` seconds plus `ratio` times as long as the
    batch took: with `ratio = 1` a run holds the store at most half the time,
    however slow the store is at that moment. On SQLite, where every writer
    waits for the one write lock, this is what keeps inbound mail flowing.
    """

    pause: float = 0.0
    ratio: float = 0.0

    async def rest(self, began: float) -> None:
        wait = self.pause + self.ratio * (time.monotonic() - began)
        await asyncio.sleep(wait)


# What the daemon's jobs and `bridge purge` use (see bench/purge.py for the figures).
GENTLE = Pacing(pause=0.01, ratio=1.0)


@dataclass(frozen=True)
class PurgeReport:
    """One purge run. `complete` is False when it was asked to stop early."""

    counts: PurgeCounts
    blobs: SweepResult
    batches: int
    started_at: datetime
    finished_at: datetime
    as_of: datetime
    complete: bool


@dataclass(frozen=True)
class OrganizationCounts:
    organization_id: int
    counts: PurgeCounts


@dataclass(frozen=True)
class HousekeepingReport:
    counts: dict[str, int]
    batches: int
    started_at: datetime
    finished_at: datetime
    complete: bool


async def _no_fence(session: AsyncSession) -> None:
    return None


def _never() -> bool:
    return False


def _utc(now: datetime) -> datetime:
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


async def _clock(store: Store) -> datetime:
    async with store.read() as session:
        return await database_now(session)


async def _audit(
    session: AsyncSession,
    actor: str,
    action: str,
    detail: dict[str, int | str | bool | None],
    organization_id: int | None = None,
) -> None:
    """Stamped by the database (`CURRENT_TIMESTAMP`), like the portal's own events."""
    statement = insert(AuditEvent).values(
        at=sa.func.current_timestamp(),
        actor=actor,
        action=action,
        organization_id=organization_id,
        detail=detail,
    )
    await session.exec(statement)


class _PurgeRun:
    """One run's state: who we are, the fence, and the totals so far."""

    def __init__(self, store: Store, actor: str, fence: Fence, at: datetime) -> None:
        self.store = store
        self.actor = actor
        self.fence = fence
        self.at = at
        self.run = secrets.token_hex(8)
        self.total = PurgeCounts()
        self.batches = 0

    async def _record(
        self, session: AsyncSession, step: str, counts: dict[int, PurgeCounts]
    ) -> None:
        for org, done in sorted(counts.items()):
            detail: dict[str, int | str | bool | None] = {"run": self.run, "step": step}
            await _audit(session, self.actor, AUDIT_BATCH, {**detail, **done.as_detail()}, org)
        self.batches += 1
        for done in counts.values():
            self.total += done

    async def expire_mailboxes(
        self, due: list[_purge_rows.DueMailbox], limits: dict[int, datetime]
    ) -> bool:
        """One batch of step 1; False when nothing could be deleted."""
        async with self.store.transaction() as session:
            await self.fence(session)
            counts = await _purge_rows.expire_mailboxes(session, due, limits, self.at)
            await self._record(session, "mailboxes", counts)
        return bool(counts)

    async def delete_threads(self, candidates: list[int], after: int, budget: int) -> int:
        """One batch of step 2; returns where the next search starts."""
        async with self.store.transaction() as session:
            await self.fence(session)
            batch = await _purge_rows.delete_threads(session, candidates, after, budget)
            await self._record(session, "threads", batch.counts)
        return batch.after


async def purge(
    store: Store,
    blob_dir: Path,
    *,
    actor: str,
    batch_size: int = 1000,
    now: datetime | None = None,
    fence: Fence = _no_fence,
    should_stop: StopCheck = _never,
    pacing: Pacing = Pacing(),
    blob_grace: timedelta = BLOB_GRACE,
) -> PurgeReport:
    """Run the purge once (see the module's docstring); `actor` names us in audit events.

    `pacing` spaces the batches out. `should_stop` is asked between batches;
    when it says yes the run ends early and the next one carries on.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    async with store.read() as session:
        started = await database_now(session)
        at = started if now is None else _utc(now)
        limits = await _purge_rows.cutoffs(session, at)
    state = _PurgeRun(store, actor, fence, at)
    while not should_stop():
        began = time.monotonic()
        async with store.read() as session:
            due = await _purge_rows.due_mailboxes(session, limits, batch_size)
        if not due or not await state.expire_mailboxes(due, limits):
            break
        if len(due) < min(batch_size, _purge_rows.MAX_IDS):
            break
        await pacing.rest(began)
    after = 0
    while not should_stop():
        began = time.monotonic()
        async with store.read() as session:
            candidates = await _purge_rows.orphan_threads(session, after, batch_size)
        if not candidates:
            break
        after = await state.delete_threads(candidates, after, batch_size)
        await pacing.rest(began)

    complete = not should_stop()
    blobs = SweepResult()
    if complete:
        blobs = await sweep(store, blob_dir, time.time() - blob_grace.total_seconds())
    async with store.transaction() as session:
        await fence(session)
        finished = await database_now(session)
        detail: dict[str, int | str | bool | None] = {
            "run": state.run,
            **state.total.as_detail(),
            "blobs_removed": blobs.blobs,
            "blob_bytes_removed": blobs.bytes,
            "temporary_files_removed": blobs.temporary,
            "batches": state.batches,
            "complete": complete,
            "as_of": at.isoformat(),
            "started_at": started.isoformat(),
            "finished_at": finished.isoformat(),
        }
        await _audit(session, actor, AUDIT_RUN, detail)
    log.info("purge run", extra={k: v for k, v in detail.items() if k != "run"})
    return PurgeReport(state.total, blobs, state.batches, started, finished, at, complete)


async def dry_run(store: Store, *, now: datetime | None = None) -> list[OrganizationCounts]:
    """What `purge` would remove at `now` (default: the database's time), per organization."""
    async with store.read() as session:
        at = await database_now(session) if now is None else _utc(now)
        limits = await _purge_rows.cutoffs(session, at)
        counts = await _purge_rows.counts_by_organization(session, limits)
    return [OrganizationCounts(org, done) for org, done in counts.items()]


async def housekeeping(
    store: Store,
    rules: HousekeepingRules,
    *,
    actor: str,
    batch_size: int = 1000,
    now: datetime | None = None,
    fence: Fence = _no_fence,
    should_stop: StopCheck = _never,
    pacing: Pacing = Pacing(),
) -> HousekeepingReport:
    """Apply the housekeeping rules once, in batches; one audit event with the counts."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    started = await _clock(store)
    at = started if now is None else _utc(now)
    counts: dict[str, int] = defaultdict(int)
    batches = 0
    for name, step in _purge_housekeeping.steps(rules):
        counts[name] += 0
        while not should_stop():
            began = time.monotonic()
            async with store.transaction() as session:
                await fence(session)
                changed = await step(session, at, batch_size)
            batches += 1
            counts[name] += changed
            if changed < batch_size:
                break
            await pacing.rest(began)
    complete = not should_stop()
    async with store.transaction() as session:
        await fence(session)
        finished = await database_now(session)
        detail: dict[str, int | str | bool | None] = {
            **counts,
            "batches": batches,
            "complete": complete,
            "as_of": at.isoformat(),
            "started_at": started.isoformat(),
            "finished_at": finished.isoformat(),
        }
        await _audit(session, actor, AUDIT_HOUSEKEEPING, detail)
    log.info("housekeeping run", extra=detail)
    return HousekeepingReport(dict(counts), batches, started, finished, complete)


async def last_runs(store: Store) -> dict[str, datetime]:
    """When each kind of run last finished, by any instance, from the audit trail."""
    query = (
        select(AuditEvent.action, sa.func.max(AuditEvent.at))
        .where(col(AuditEvent.action).in_((AUDIT_RUN, AUDIT_HOUSEKEEPING)))
        .group_by(col(AuditEvent.action))
    )
    async with store.read() as session:
        return {action: as_utc(at) for action, at in await session.exec(query) if at is not None}
