"""The dispatcher: new messages become outbox rows, one transaction per batch.

What it owns (docs/outbound.md, "Dispatcher"): taking undispatched messages
oldest first, loading what the recipient rule and the no-flood rules need for a
whole batch at once, and writing the outbox rows those rules decide
(`bridge.outbound.plan`) together with `messages.dispatched_at`, so that a
crash leaves either both or neither. `Dispatcher` hands one batch at a time to the
daemon's poll loop (`bridge.poll`).

What it does not do: decide who is notified or in which mode (pure rules in
`bridge.policy.recipients` and `bridge.policy.mode`), render, send, or issue
reply tokens (the sender's side).

Concurrency. On SQLite the write transaction starts with `BEGIN IMMEDIATE`, so
dispatchers, senders and portals are serialised. On PostgreSQL several
instances share the work:

* messages are taken `FOR UPDATE SKIP LOCKED`;
* their threads are then locked `FOR NO KEY UPDATE SKIP LOCKED`, so two
  instances never decide about one thread at once (each would otherwise see no
  earlier email and both would send one). A message whose thread another
  transaction holds is left for a later batch instead of waited for, and so is
  every message of a thread newer than one another instance holds (taken but
  not dispatched): every thread is dispatched in id order, as on SQLite;
* mailbox rows are read `FOR SHARE`, so a read mark being written is waited
  for rather than missed;
* pending convenience carriers are locked `FOR UPDATE`, so a sender claims a
  carrier either before we extend it (we then start a new one) or after.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Self

import sqlalchemy as sa
from sqlmodel import col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.config import OutboundSettings
from bridge.outbound.plan import History, NewMessage, ThreadInfo, plan
from bridge.policy.recipients import Member
from bridge.poll import PollLoop, Worker
from bridge.store.engine import Store
from bridge.store.models import (
    Audience,
    EmailAddress,
    Mailbox,
    Message,
    NotificationMode,
    NotificationPreference,
    Organization,
    Outbox,
    OutboxKind,
    OutboxStatus,
    Participant,
    ParticipantKind,
    ParticipantRole,
    StaffRole,
    Thread,
    ThreadClinician,
)

log = logging.getLogger(__name__)

# Outbox rows that already told the recipient about the thread (secure coalescing).
_TELLING = (OutboxStatus.PENDING.value, OutboxStatus.SENDING.value, OutboxStatus.SENT.value)
# Notices (automatic answers to refused replies) are not about new messages.
_ABOUT_MESSAGES = (OutboxKind.NOTIFICATION.value, OutboxKind.INVITATION.value)


@dataclass(frozen=True)
class DispatchResult:
    """What one batch did: messages dispatched, outbox rows written by status."""

    messages: int
    pending: int
    coalesced: int


async def dispatch_batch(
    store: Store, *, now: datetime, coalesce_window: timedelta, limit: int = 100
) -> DispatchResult:
    """Dispatch up to `limit` undispatched messages, oldest first, in one transaction.

    `now` (timezone-aware) stamps `dispatched_at`, the rows' `created_at` and the
    due time of secure rows; a convenience carrier is due at its first message's
    `created_at + coalesce_window`.
    """
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    at = now.astimezone(UTC)
    postgres = store.dialect == "postgresql"
    async with store.transaction() as session:
        taken = await _take_messages(session, limit, postgres=postgres)
        if not taken:
            return DispatchResult(0, 0, 0)
        threads = await _lock_threads(session, {m.thread_id for m in taken}, postgres=postgres)
        batch = [m for m in taken if m.thread_id in threads]
        if postgres and batch:
            batch = await _in_thread_order(session, batch)
        if not batch:
            log.info("dispatch deferred", extra={"deferred": len(taken)})
            return DispatchResult(0, 0, 0)
        thread_ids = sorted({m.thread_id for m in batch})
        history = History()
        members = await _load_members(session, threads, thread_ids, history, postgres=postgres)
        await _load_history(session, thread_ids, history, postgres=postgres)
        rows = plan(batch, threads, members, history, at, coalesce_window)
        # Carriers loaded from the store were raised in place; the session flushes them.
        # New rows go in as one multi-row INSERT: nothing needs their ids back.
        if rows:
            await session.exec(sa.insert(Outbox), params=[_values(row) for row in rows])
        await session.exec(
            update(Message)
            .where(col(Message.id).in_([m.id for m in batch]))
            .values(dispatched_at=at)
        )
        await session.flush()
    result = DispatchResult(
        messages=len(batch),
        pending=sum(row.status == OutboxStatus.PENDING.value for row in rows),
        coalesced=sum(row.status == OutboxStatus.COALESCED.value for row in rows),
    )
    log.info(
        "dispatched",
        extra={
            "messages": result.messages,
            "pending": result.pending,
            "coalesced": result.coalesced,
            "deferred": len(taken) - len(batch),
        },
    )
    return result


# --- loading ----------------------------------------------------------------------------


async def _take_messages(session: AsyncSession, limit: int, *, postgres: bool) -> list[NewMessage]:
    query = (
        select(Message.id, Message.thread_id, Message.author_id, Message.created_at)
        .where(col(Message.dispatched_at).is_(None))
        .order_by(col(Message.id))
        .limit(limit)
    )
    if postgres:
        query = query.with_for_update(skip_locked=True)
    return [
        NewMessage(mid, tid, aid, _utc(created))
        for mid, tid, aid, created in await session.exec(query)
        if mid is not None
    ]


async def _lock_threads(
    session: AsyncSession, thread_ids: Iterable[int], *, postgres: bool
) -> dict[int, ThreadInfo]:
    """The threads with their organization's mode; on PostgreSQL only those we could lock."""
    query = (
        select(Thread.id, Thread.audience, Organization)
        .join(Organization, col(Organization.id) == col(Thread.organization_id))
        .where(col(Thread.id).in_(sorted(thread_ids)))
        .order_by(col(Thread.id))
    )
    if postgres:
        query = query.with_for_update(of=Thread, key_share=True, skip_locked=True)
    found: dict[int, ThreadInfo] = {}
    for tid, audience, org in await session.exec(query):
        assert tid is not None and org.id is not None
        found[tid] = ThreadInfo(
            id=tid,
            organization_id=org.id,
            audience=Audience(audience),
            org_mode=NotificationMode(org.notification_mode),
            acknowledged=org.convenience_acknowledged_at is not None,
        )
    return found


async def _in_thread_order(session: AsyncSession, batch: Sequence[NewMessage]) -> list[NewMessage]:
    """Per thread, the messages of `batch` older than any undispatched one it lacks.

    Another instance may hold messages of a thread whose lock we got: one older
    than all of ours (the thread then waits for a later batch), or one between
    two of ours (we dispatch up to it, the rest waits). Each thread is thus
    dispatched in id order, as on SQLite.
    """
    ours = sorted(m.id for m in batch)
    query = (
        select(Message.thread_id, sa.func.min(Message.id))
        .where(col(Message.dispatched_at).is_(None))
        .where(col(Message.thread_id).in_(sorted({m.thread_id for m in batch})))
        .where(col(Message.id).not_in(ours))
        .group_by(col(Message.thread_id))
    )
    # The oldest undispatched message of each thread that is not in `batch`.
    gap = {tid: mid for tid, mid in await session.exec(query) if mid is not None}
    return [m for m in batch if m.thread_id not in gap or m.id < gap[m.thread_id]]


async def _load_members(
    session: AsyncSession,
    threads: dict[int, ThreadInfo],
    thread_ids: Sequence[int],
    history: History,
    *,
    postgres: bool,
) -> dict[int, list[Member]]:
    """Each thread's members as the recipient rule sees them; read marks go to `history`."""
    has_address = (
        select(EmailAddress.id)
        .where(col(EmailAddress.participant_id) == col(Participant.id))
        .where(col(EmailAddress.is_primary))
        .exists()
        .label("has_address")
    )
    query = (
        select(Mailbox, Participant, NotificationPreference, has_address)
        .join(Participant, col(Participant.id) == col(Mailbox.participant_id))
        .outerjoin(
            NotificationPreference,
            col(NotificationPreference.participant_id) == col(Mailbox.participant_id),
        )
        .where(col(Mailbox.thread_id).in_(thread_ids))
        .order_by(col(Mailbox.thread_id), col(Mailbox.participant_id))
    )
    if postgres:
        query = query.with_for_update(read=True, of=Mailbox)
    found = list(await session.exec(query))
    roles = await _roles_of(session, thread_ids)
    assigned = await _assigned_clinicians(session, thread_ids)
    members: dict[int, list[Member]] = defaultdict(list)
    for box, person, prefs, addressable in found:
        assert person.id is not None
        audience = threads[box.thread_id].audience
        history.last_read[(person.id, box.thread_id)] = box.last_read_message_id
        members[box.thread_id].append(
            Member(
                participant_id=person.id,
                kind=ParticipantKind(person.kind),
                roles=roles.get(person.id, frozenset()),
                active=person.active,
                has_portal_account=person.has_portal_account,
                consents=person.email_content_consent,
                assigned_clinician=(box.thread_id, person.id) in assigned,
                wants_email=_wants_email(prefs, audience),
                has_address=bool(addressable),
            )
        )
    return members


async def _roles_of(
    session: AsyncSession, thread_ids: Sequence[int]
) -> dict[int, frozenset[StaffRole]]:
    holders = select(Mailbox.participant_id).where(col(Mailbox.thread_id).in_(thread_ids))
    query = select(ParticipantRole.participant_id, ParticipantRole.role).where(
        col(ParticipantRole.participant_id).in_(holders)
    )
    held: dict[int, set[StaffRole]] = defaultdict(set)
    for pid, role in await session.exec(query):
        held[pid].add(StaffRole(role))
    return {pid: frozenset(roles) for pid, roles in held.items()}


async def _assigned_clinicians(
    session: AsyncSession, thread_ids: Sequence[int]
) -> set[tuple[int, int]]:
    """(thread id, clinician id) pairs."""
    query = select(ThreadClinician.thread_id, ThreadClinician.clinician_id).where(
        col(ThreadClinician.thread_id).in_(thread_ids)
    )
    return {(tid, cid) for tid, cid in await session.exec(query)}


def _wants_email(prefs: NotificationPreference | None, audience: Audience) -> bool:
    """Preferences resolved for one audience; no row means the defaults, all yes."""
    if prefs is None:
        return True
    by_audience = {
        Audience.ADMINISTRATIVE: prefs.administrative,
        Audience.BILLING: prefs.billing,
        Audience.CLINICAL: prefs.clinical,
    }
    return prefs.email_enabled and by_audience[audience]


async def _load_history(
    session: AsyncSession, thread_ids: Sequence[int], history: History, *, postgres: bool
) -> None:
    told = (
        select(Outbox.recipient_id, Outbox.thread_id, sa.func.max(Outbox.message_id))
        .where(col(Outbox.thread_id).in_(thread_ids))
        .where(col(Outbox.status).in_(_TELLING))
        .where(col(Outbox.kind).in_(_ABOUT_MESSAGES))
        .where(col(Outbox.message_id).is_not(None))
        .where(col(Outbox.recipient_id).is_not(None))
        .group_by(col(Outbox.recipient_id), col(Outbox.thread_id))
    )
    for rid, tid, highest in await session.exec(told):
        if rid is not None and tid is not None and highest is not None:
            history.told_up_to[(rid, tid)] = highest
    carriers = (
        select(Outbox)
        .where(col(Outbox.thread_id).in_(thread_ids))
        .where(col(Outbox.status) == OutboxStatus.PENDING.value)
        .where(col(Outbox.mode) == NotificationMode.CONVENIENCE.value)
        .where(col(Outbox.kind).in_(_ABOUT_MESSAGES))
        .where(col(Outbox.recipient_id).is_not(None))
        .order_by(col(Outbox.id))
    )
    if postgres:
        carriers = carriers.with_for_update()
    for row in await session.exec(carriers):
        assert row.recipient_id is not None and row.thread_id is not None
        # Should there ever be two, the newest one carries (the older goes out as it is).
        history.carriers[(row.recipient_id, row.thread_id)] = row


def _values(row: Outbox) -> dict[str, object]:
    return {
        "kind": row.kind,
        "mode": row.mode,
        "status": row.status,
        "organization_id": row.organization_id,
        "recipient_id": row.recipient_id,
        "thread_id": row.thread_id,
        "message_id": row.message_id,
        "next_attempt_at": row.next_attempt_at,
        "created_at": row.created_at,
    }


def _utc(value: datetime) -> datetime:
    """SQLite gives back naive UTC, PostgreSQL aware values."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --- the loop ---------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Dispatcher(Worker):
    """The dispatch loop: batches until the queue is empty, then a pause.

    One batch (`dispatch_batch`) is the step of a `bridge.poll.PollLoop`, which
    owns pacing, back-off after a failing batch and the heartbeat (`beat` gets
    the name "dispatcher"). As an async context manager it runs the loop in a
    background task and, on exit, lets the batch in flight finish (one short
    transaction) before it returns. `run(stop)` is the loop itself, for
    callers with their own task.
    """

    name = "dispatcher"

    def __init__(
        self,
        store: Store,
        *,
        coalesce_window: timedelta,
        poll_interval: float = 1.0,
        batch_size: int = 100,
        clock: Callable[[], datetime] = _utcnow,
        beat: Callable[[str], None] | None = None,
        max_backoff: float = 60.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._store = store
        self._window = coalesce_window
        self._batch_size = batch_size
        self._clock = clock
        self._loop = PollLoop(
            self.name, self._step, poll_interval=poll_interval, max_backoff=max_backoff, beat=beat
        )

    @classmethod
    def from_settings(
        cls,
        store: Store,
        settings: OutboundSettings,
        *,
        beat: Callable[[str], None] | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> Self:
        """A dispatcher configured from `[outbound]`."""
        return cls(
            store,
            coalesce_window=timedelta(seconds=settings.coalesce_window_seconds),
            poll_interval=settings.poll_interval_seconds,
            batch_size=settings.batch_size,
            clock=clock,
            beat=beat,
        )

    async def _step(self) -> bool:
        """One batch; true when it dispatched something (more may wait)."""
        result = await dispatch_batch(
            self._store, now=self._clock(), coalesce_window=self._window, limit=self._batch_size
        )
        return result.messages > 0
