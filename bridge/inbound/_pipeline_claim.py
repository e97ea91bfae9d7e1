"""Claims and leases on `inbound_emails` rows: who works on which row, and until when.

Owns the life of a row around its processing (docs/inbound.md, "Pipeline"):

* `claim` takes a batch of due rows in one transaction: `received`, due
  (`next_attempt_at <= now`) and not under a live lease, oldest first,
  `FOR UPDATE SKIP LOCKED` on PostgreSQL (SQLite's `BEGIN IMMEDIATE`
  serialises claimers). Each gets our lease and one more attempt. A row that
  has already been claimed `max_attempts` times without ever being finished
  (the process died on it each time) is parked instead of tried again.
* `finish` ends a row (`filed`, `dropped`, `held`, `parked`), guarded by
  `status = received AND lease_owner = us`, inside the caller's transaction:
  a row whose lease another instance took over is left to that instance.
* `retry_later` gives a row that failed unexpectedly back with a back-off, or
  parks it (`error`) once it has had `max_attempts`.

A claimed row stays `received` (the status enumeration has no "processing");
the lease says it is taken. Datetimes are bound through model columns, so
SQLite stores them like every other timestamp. Does not: read the raw mail or
decide anything about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.store.engine import Store
from bridge.store.models import AuditEvent, InboundEmail, InboundStatus

AUDIT_PARKED = "inbound_parked"
REASON_ERROR = "error"

_RECEIVED = InboundStatus.RECEIVED.value


@dataclass(frozen=True)
class Job:
    """A row this instance holds a lease on; `attempts` includes the current one."""

    id: int
    attempts: int


async def claim(
    store: Store,
    *,
    instance: str,
    now: datetime,
    lease: timedelta,
    batch_size: int,
    max_attempts: int,
) -> tuple[list[Job], list[int]]:
    """Claim up to `batch_size` due rows; returns (jobs, ids of rows parked instead)."""
    free = col(InboundEmail.lease_expires_at).is_(None) | (col(InboundEmail.lease_expires_at) < now)
    query = (
        select(InboundEmail.id, InboundEmail.attempts)
        .where(col(InboundEmail.status) == _RECEIVED)
        .where(col(InboundEmail.next_attempt_at) <= now)
        .where(free)
        .order_by(col(InboundEmail.id))
        .limit(batch_size)
        .with_for_update(skip_locked=True)
    )
    async with store.transaction() as session:
        rows = [(row_id, attempts) for row_id, attempts in await session.exec(query) if row_id]
        exhausted = [row_id for row_id, attempts in rows if attempts >= max_attempts]
        jobs = [Job(row_id, attempts + 1) for row_id, attempts in rows if attempts < max_attempts]
        for row_id in exhausted:
            await _park(session, row_id, now, actor=instance, attempts=max_attempts, leased=False)
        if jobs:
            await session.exec(
                update(InboundEmail)
                .where(col(InboundEmail.id).in_([job.id for job in jobs]))
                .values(
                    attempts=col(InboundEmail.attempts) + 1,
                    lease_owner=instance,
                    lease_expires_at=now + lease,
                )
            )
    return jobs, exhausted


async def finish(
    session: AsyncSession,
    job: Job,
    *,
    instance: str,
    status: InboundStatus,
    reason: str | None,
    now: datetime,
    participant_id: int | None = None,
    thread_id: int | None = None,
    defects: int | None = None,
) -> bool:
    """End the row in the caller's transaction; False if it is no longer ours to end."""
    values: dict[str, object] = {
        "status": status.value,
        "reason": reason,
        "processed_at": now,
        "lease_owner": None,
        "lease_expires_at": None,
        "participant_id": participant_id,
        "thread_id": thread_id,
    }
    if defects is not None:
        values["defects"] = defects
    result = await session.exec(
        update(InboundEmail)
        .where(col(InboundEmail.id) == job.id)
        .where(col(InboundEmail.status) == _RECEIVED)
        .where(col(InboundEmail.lease_owner) == instance)
        .values(**values)
    )
    return result.rowcount == 1


async def retry_later(
    store: Store,
    job: Job,
    *,
    instance: str,
    now: datetime,
    max_attempts: int,
    backoff: timedelta,
) -> bool:
    """After an unexpected failure: back in line at `now + backoff`, or parked once
    `max_attempts` are used up. Returns True when the row was parked."""
    async with store.transaction() as session:
        if job.attempts >= max_attempts:
            return await _park(session, job.id, now, actor=instance, attempts=job.attempts)
        await session.exec(
            update(InboundEmail)
            .where(col(InboundEmail.id) == job.id)
            .where(col(InboundEmail.status) == _RECEIVED)
            .where(col(InboundEmail.lease_owner) == instance)
            .values(lease_owner=None, lease_expires_at=None, next_attempt_at=now + backoff)
        )
    return False


async def _park(
    session: AsyncSession,
    row_id: int,
    now: datetime,
    *,
    actor: str,
    attempts: int,
    leased: bool = True,
) -> bool:
    """Park a row with reason `error` and audit it: only while we hold its lease, or
    (`leased=False`) a row the caller has just selected for update in this transaction."""
    query = (
        update(InboundEmail)
        .where(col(InboundEmail.id) == row_id)
        .where(col(InboundEmail.status) == _RECEIVED)
    )
    if leased:
        query = query.where(col(InboundEmail.lease_owner) == actor)
    result = await session.exec(
        query.values(
            status=InboundStatus.PARKED.value,
            reason=REASON_ERROR,
            processed_at=now,
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    if result.rowcount != 1:
        return False
    session.add(
        AuditEvent(
            at=now,
            actor=actor,
            action=AUDIT_PARKED,
            inbound_email_id=row_id,
            detail={"reason": REASON_ERROR, "attempts": attempts},
        )
    )
    return True
