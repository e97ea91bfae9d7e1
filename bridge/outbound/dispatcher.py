"""The dispatcher: new messages become outbox rows, one transaction per batch.

What it owns (docs/outbound.md, "Dispatcher"): taking undispatched messages
oldest first, loading what the recipient rule needs for a whole batch at once,
applying the no-flood rules (secure coalescing, the convenience window), and
writing the outbox rows together with `messages.dispatched_at`, so that a crash
leaves either both or neither. Also the poll loop around it (`Dispatcher`).

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
  a thread with an older undispatched message that another instance holds:
  every thread is dispatched in id order, as on SQLite;
* mailbox rows are read `FOR SHARE`, so a read mark being written is waited
  for rather than missed;
* pending convenience carriers are locked `FOR UPDATE`, so a sender claims a
  carrier either before we extend it (we then start a new one) or after.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

import sqlalchemy as sa
from sqlmodel import col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.policy.recipients import Member, Recipient, recipients
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

Key = tuple[int, int]  # (recipient id, thread id)


@dataclass(frozen=True)
class DispatchResult:
    """What one batch did: messages dispatched, outbox rows written by status."""

    messages: int
    pending: int
    coalesced: int


@dataclass(frozen=True)
class _NewMessage:
    id: int
    thread_id: int
    author_id: int
    created_at: datetime


@dataclass(frozen=True)
class _ThreadInfo:
    id: int
    organization_id: int
    audience: Audience
    org_mode: NotificationMode
    acknowledged: bool


@dataclass
class _History:
    """The outbox as far as it matters for the batch's threads, kept current as rows are added."""

    # Highest message id a pending, sending or sent row told the recipient about.
    told_up_to: dict[Key, int] = field(default_factory=dict)
    # The pending (unclaimed) convenience row new messages join.
    carriers: dict[Key, Outbox] = field(default_factory=dict)
    # The recipient's read mark on the thread (None: nothing read).
    last_read: dict[Key, int | None] = field(default_factory=dict)


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
        history = _History()
        members = await _load_members(session, threads, thread_ids, history, postgres=postgres)
        await _load_history(session, thread_ids, history, postgres=postgres)
        rows = _plan(batch, threads, members, history, at, coalesce_window)
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


async def _take_messages(session: AsyncSession, limit: int, *, postgres: bool) -> list[_NewMessage]:
    query = (
        select(Message.id, Message.thread_id, Message.author_id, Message.created_at)
        .where(col(Message.dispatched_at).is_(None))
        .order_by(col(Message.id))
        .limit(limit)
    )
    if postgres:
        query = query.with_for_update(skip_locked=True)
    return [
        _NewMessage(mid, tid, aid, _utc(created))
        for mid, tid, aid, created in await session.exec(query)
        if mid is not None
    ]


async def _lock_threads(
    session: AsyncSession, thread_ids: Iterable[int], *, postgres: bool
) -> dict[int, _ThreadInfo]:
    """The threads with their organization's mode; on PostgreSQL only those we could lock."""
    query = (
        select(Thread.id, Thread.audience, Organization)
        .join(Organization, col(Organization.id) == col(Thread.organization_id))
        .where(col(Thread.id).in_(sorted(thread_ids)))
        .order_by(col(Thread.id))
    )
    if postgres:
        query = query.with_for_update(of=Thread, key_share=True, skip_locked=True)
    found: dict[int, _ThreadInfo] = {}
    for tid, audience, org in await session.exec(query):
        assert tid is not None and org.id is not None
        found[tid] = _ThreadInfo(
            id=tid,
            organization_id=org.id,
            audience=Audience(audience),
            org_mode=NotificationMode(org.notification_mode),
            acknowledged=org.convenience_acknowledged_at is not None,
        )
    return found


async def _in_thread_order(
    session: AsyncSession, batch: Sequence[_NewMessage]
) -> list[_NewMessage]:
    """The messages of threads whose older undispatched messages are all in `batch`.

    Another instance may hold an older message of a thread whose lock we got; that
    thread waits for a later batch, so each thread is dispatched in id order.
    """
    first: dict[int, int] = {}
    for message in batch:
        first[message.thread_id] = min(first.get(message.thread_id, message.id), message.id)
    query = (
        select(Message.thread_id, sa.func.min(Message.id))
        .where(col(Message.dispatched_at).is_(None))
        .where(col(Message.thread_id).in_(sorted(first)))
        .group_by(col(Message.thread_id))
    )
    oldest = {tid: mid for tid, mid in await session.exec(query) if mid is not None}
    return [m for m in batch if oldest.get(m.thread_id) == first[m.thread_id]]


async def _load_members(
    session: AsyncSession,
    threads: dict[int, _ThreadInfo],
    thread_ids: Sequence[int],
    history: _History,
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
    session: AsyncSession, thread_ids: Sequence[int], history: _History, *, postgres: bool
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


# --- deciding ---------------------------------------------------------------------------


def _plan(
    batch: Sequence[_NewMessage],
    threads: dict[int, _ThreadInfo],
    members: dict[int, list[Member]],
    history: _History,
    at: datetime,
    window: timedelta,
) -> list[Outbox]:
    """The outbox rows for `batch`, in message order; updates `history` as it goes."""
    rows: list[Outbox] = []
    for message in sorted(batch, key=lambda m: m.id):
        thread = threads[message.thread_id]
        chosen = recipients(
            audience=thread.audience,
            org_mode=thread.org_mode,
            acknowledged=thread.acknowledged,
            members=members.get(thread.id, ()),
            author_id=message.author_id,
        )
        rows.extend(_row_for(message, thread, r, history, at, window) for r in chosen)
    return rows


def _row_for(
    message: _NewMessage,
    thread: _ThreadInfo,
    recipient: Recipient,
    history: _History,
    at: datetime,
    window: timedelta,
) -> Outbox:
    key = (recipient.participant_id, thread.id)
    row = Outbox(
        kind=recipient.kind.value,
        mode=recipient.mode.value,
        status=OutboxStatus.PENDING.value,
        organization_id=thread.organization_id,
        recipient_id=recipient.participant_id,
        thread_id=thread.id,
        message_id=message.id,
        next_attempt_at=at,
        created_at=at,
    )
    if recipient.mode is NotificationMode.CONVENIENCE:
        carrier = history.carriers.get(key)
        if carrier is not None:
            # Never lower the carrier: on PostgreSQL a later message of the thread
            # may have been dispatched first by another instance.
            carrier.message_id = max(carrier.message_id or 0, message.id)
            row.status = OutboxStatus.COALESCED.value
        else:
            row.next_attempt_at = message.created_at + window
            history.carriers[key] = carrier = row
        _told(history, key, carrier.message_id or message.id)
        return row
    told = history.told_up_to.get(key)
    read = history.last_read.get(key)
    if told is not None and (read is None or told > read):
        # They have not read what an earlier email told them about.
        row.status = OutboxStatus.COALESCED.value
    else:
        _told(history, key, message.id)
    return row


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


def _told(history: _History, key: Key, message_id: int) -> None:
    history.told_up_to[key] = max(history.told_up_to.get(key, 0), message_id)


def _utc(value: datetime) -> datetime:
    """SQLite gives back naive UTC, PostgreSQL aware values."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --- the loop ---------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Dispatcher:
    """The dispatch loop: batches until the queue is empty, then a pause.

    As an async context manager it runs the loop in a background task and, on
    exit, lets the batch in flight finish (one short transaction) before it
    returns. `run(stop)` is the loop itself, for callers with their own task.
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
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self._store = store
        self._window = coalesce_window
        self._poll_interval = poll_interval
        self._batch_size = batch_size
        self._clock = clock
        self._beat = beat
        self._max_backoff = max(max_backoff, poll_interval)
        self._failures = 0
        self._woken = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._stopping.clear()
        self._task = asyncio.create_task(self.run(self._stopping), name=self.name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            await task

    def wake(self) -> None:
        """Look for new messages now instead of at the end of the pause."""
        self._woken.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set; one failing batch never ends the loop."""
        while not stop.is_set():
            # Cleared before the batch, so a wake-up during it is not lost.
            self._woken.clear()
            if self._beat is not None:
                self._beat(self.name)
            if not await self._one_batch():
                await self._pause(stop)

    async def _one_batch(self) -> bool:
        """One isolated iteration; true when it dispatched something (more may wait)."""
        try:
            result = await dispatch_batch(
                self._store,
                now=self._clock(),
                coalesce_window=self._window,
                limit=self._batch_size,
            )
        except Exception:
            # The traceback carries SQL and bound ids, never content: no query binds any.
            self._failures += 1
            log.exception("dispatch batch failed", extra={"failures": self._failures})
            return False
        self._failures = 0
        return result.messages > 0

    async def _pause(self, stop: asyncio.Event) -> None:
        """Wait out the delay, in poll-interval steps that each beat: backing off is alive."""
        remaining = self._delay()
        while remaining > 0 and not stop.is_set() and not self._woken.is_set():
            step = min(remaining, self._poll_interval)
            await self._wait(stop, step)
            remaining -= step
            if self._beat is not None and remaining > 0:
                self._beat(self.name)

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        waiters = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self._woken.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _delay(self) -> float:
        """The pause: the poll interval, doubled per consecutive failure up to `max_backoff`.

        A batch that keeps failing (the store down, a row the store refuses) is
        retried and logged ever less often, not every poll interval.
        """
        if self._failures == 0:
            return self._poll_interval
        return min(self._poll_interval * 2.0 ** min(self._failures, 32), self._max_backoff)
