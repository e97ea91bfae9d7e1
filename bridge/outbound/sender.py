"""The sender: due outbox rows out through a transport, each sent once, none lost.

`Sender` owns the life of an outbox row from `pending` to `sent` or `failed`
(the "Sender" section of docs/outbound.md):

1. **Claim** a batch in one transaction: rows `pending` and due, or `sending`
   under a lease that has expired (a dead instance's), oldest first, with
   `FOR UPDATE SKIP LOCKED` on PostgreSQL (SQLite's `BEGIN IMMEDIATE`
   serialises claims). Each becomes `sending` under our lease.
2. **Hourly cap**, in the same transaction: a row whose recipient already has
   `hourly_cap` emails sent in the last hour (or in flight) goes back to
   `pending`, due when the oldest of those leaves the hour.
3. **Render** each row in its own transaction (the renderer may insert a reply
   token and sets `message_id_header`), committed before the send.
4. **Send** through the transport, at most `concurrency` at a time.
5. **Record** in one short transaction guarded by `lease_owner = us`: `sent`;
   or back to `pending` with backoff (4xx, connection errors); or `failed`
   with an `outbox_failed` audit event (5xx, past the retry horizon, or a row
   the renderer can never render).

Between the relay's 250 and the commit of `sent` the code awaits nothing but
that one UPDATE: a crash there is the only way to send an email twice.

It does not decide who gets an email or what it says (dispatcher and
renderer), and it does not know how bytes reach the relay (`transport`).
Logs carry ids, SMTP codes and attempt numbers; never an address, a subject,
content, or the relay's answer (which may echo an address).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import getaddresses
from types import TracebackType
from typing import Any, Self

import sqlalchemy as sa
from sqlmodel import col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.config import OutboundSettings
from bridge.errors import BridgeError
from bridge.outbound.render import RenderError
from bridge.outbound.transport import (
    PermanentSendError,
    SendResult,
    TransientSendError,
    Transport,
    clip,
)
from bridge.store.engine import Store
from bridge.store.models import AuditEvent, Outbox, OutboxStatus

log = logging.getLogger(__name__)

Render = Callable[[AsyncSession, Outbox, datetime], Awaitable[EmailMessage]]
"""Loads what one claimed row needs and composes its email (see `bridge.outbound.render`).

Called inside an open transaction that the sender commits; it may add rows
and must set `row.message_id_header`. Raises `RenderError` for a row that can
never be rendered.
"""

AUDIT_FAILED = "outbox_failed"
HOUR = timedelta(hours=1)

# Pauses between attempts to record a send the relay has accepted (see `_mark_sent`).
_RECORD_RETRY_PAUSES_S = (0.2, 1.0)

_PENDING = OutboxStatus.PENDING.value
_SENDING = OutboxStatus.SENDING.value
_SENT = OutboxStatus.SENT.value
_FAILED = OutboxStatus.FAILED.value


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _no_beat() -> None:
    return None


_Destination = int | str
"""Whom the hourly cap counts: a participant id, or (notices only) a lower-cased address."""


@dataclass(frozen=True)
class _Job:
    """A row claimed by this instance: what the later steps need, detached from any session."""

    id: int
    attempts: int
    created_at: datetime
    lease_expires_at: datetime
    organization_id: int
    recipient_id: int | None
    thread_id: int | None
    message_id: int | None

    @classmethod
    def of(cls, row: Outbox, lease_expires_at: datetime) -> _Job:
        assert row.id is not None
        return cls(
            row.id,
            row.attempts,
            row.created_at,
            lease_expires_at,
            row.organization_id,
            row.recipient_id,
            row.thread_id,
            row.message_id,
        )


@dataclass(frozen=True)
class _Ready:
    job: _Job
    message: EmailMessage
    recipient: str


class Sender:
    """Sends due outbox rows; one instance per daemon, several daemons per store.

    Enter it as an async context manager (leaving it closes the transport it
    was given), then either `await run(stop)` or call `run_once()` yourself.

    `render` is bound to its context by the caller, e.g.
    `lambda s, row, now: render.render(s, row, ctx, now=now)`.
    `instance` names this daemon in `lease_owner` and in audit events.
    Backoff after the n-th failed attempt (n = 1, 2, ...) is
    `min(backoff_cap, backoff_base * 2**(n-1)) * uniform(0.5, 1.5)` drawn from `rng`.
    `clock` is the only source of time; `beat` is called once per round (watchdog).

    A claimed row is sent only while more than half of its lease is left, so a
    send and its record fit in the lease; one that waited longer (a slow relay,
    a long batch) is left to be claimed again once the lease has expired.
    Stop it with the `stop` event: the round in progress then finishes.
    Cancelling a round instead leaves its rows `sending` until their lease
    expires, and a row cancelled between the relay's 250 and the record is
    sent again then.
    """

    def __init__(
        self,
        store: Store,
        transport: Transport,
        render: Render,
        *,
        instance: str,
        envelope_sender: str,
        hourly_cap: int = 20,
        retry_horizon: timedelta = timedelta(hours=48),
        concurrency: int = 4,
        batch_size: int = 50,
        lease: timedelta = timedelta(minutes=5),
        backoff_base: timedelta = timedelta(minutes=1),
        backoff_cap: timedelta = timedelta(hours=1),
        poll_interval: float = 5.0,
        clock: Callable[[], datetime] = _utcnow,
        rng: random.Random | None = None,
        beat: Callable[[], None] = _no_beat,
    ) -> None:
        if min(hourly_cap, concurrency, batch_size) < 1:
            raise ValueError("hourly_cap, concurrency and batch_size must be at least 1")
        if lease <= timedelta(0) or poll_interval <= 0:
            raise ValueError("lease and poll_interval must be positive")
        self.store = store
        self.transport = transport
        self.render = render
        self.instance = instance
        self.envelope_sender = envelope_sender
        self.hourly_cap = hourly_cap
        self.retry_horizon = retry_horizon
        self.batch_size = batch_size
        self.lease = lease
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.poll_interval = poll_interval
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        self.beat = beat
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()

    @classmethod
    def from_settings(
        cls,
        store: Store,
        transport: Transport,
        render: Render,
        settings: OutboundSettings,
        *,
        instance: str,
        **options: Any,
    ) -> Self:
        """A sender configured from `[outbound]`; `options` as for the constructor."""
        return cls(
            store,
            transport,
            render,
            instance=instance,
            envelope_sender=settings.from_address,
            hourly_cap=settings.hourly_cap,
            retry_horizon=timedelta(hours=settings.retry_horizon_hours),
            concurrency=settings.smtp.concurrency,
            **options,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.transport.aclose()

    def wake(self) -> None:
        """Start the next round now instead of at the end of the poll interval."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until `stop` is set; the round in progress is finished first."""
        while not stop.is_set():
            self._wake.clear()
            try:
                handled = await self.run_once()
            except Exception:
                log.exception("sender round failed")
                handled = 0
            self.beat()
            if handled < self.batch_size:
                await _first_of(stop, self._wake, within=self.poll_interval)

    async def run_once(self, now: datetime | None = None) -> int:
        """One round at time `now` (default: the clock); returns the rows it took.

        That count includes rows put back because of the hourly cap, so a full
        batch means "there may be more right now".
        """
        now = _aware(self.clock() if now is None else now)
        jobs, deferred = await self._claim(now)
        if jobs:
            await asyncio.gather(*(self._process_guarded(job, now) for job in jobs))
        return len(jobs) + deferred

    # --- claim -------------------------------------------------------------------------

    async def _claim(self, now: datetime) -> tuple[list[_Job], int]:
        due = ((col(Outbox.status) == _PENDING) & (col(Outbox.next_attempt_at) <= now)) | (
            (col(Outbox.status) == _SENDING) & (col(Outbox.lease_expires_at) < now)
        )
        query = (
            select(Outbox)
            .where(due)
            .order_by(col(Outbox.id))
            .limit(self.batch_size)
            .with_for_update(skip_locked=True)
        )
        jobs: list[_Job] = []
        deferred = 0
        async with self.store.transaction() as session:
            rows = list(await session.exec(query))
            if not rows:
                return [], 0
            load = await _recent_load(session, [_destination(row) for row in rows], now)
            expires = now + self.lease
            for row in rows:
                times = load.setdefault(_destination(row), [])
                release = _cap_release(times, self.hourly_cap)
                if release is not None:
                    row.status, row.next_attempt_at = _PENDING, release
                    row.lease_owner = row.lease_expires_at = None
                    deferred += 1
                    log.info("outbox over hourly cap", extra={"outbox_id": row.id})
                    continue
                times.append(now)  # counts towards the cap for the rest of this batch
                row.status, row.lease_owner, row.lease_expires_at = _SENDING, self.instance, expires
                jobs.append(_Job.of(row, expires))
        return jobs, deferred

    # --- one row -----------------------------------------------------------------------

    async def _process_guarded(self, job: _Job, now: datetime) -> None:
        # One row's bug must not cancel its siblings, which may sit between 250 and commit.
        async with self._slots:
            try:
                await self._process(job, now)
            except Exception:
                log.exception("outbox row failed unexpectedly", extra={"outbox_id": job.id})

    async def _process(self, job: _Job, now: datetime) -> None:
        ready = await self._prepare(job, now)
        if ready is None:
            return
        if self.clock() >= job.lease_expires_at - self.lease / 2:
            # Too little of the lease is left for a send and its record: another instance
            # could take the row over meanwhile and send it too. It is taken up again
            # (by anyone) once the lease has expired.
            log.warning("outbox lease too short to send", extra={"outbox_id": job.id})
            return
        try:
            result = await self.transport.send(
                ready.message,
                sender=self.envelope_sender,
                recipient=ready.recipient,
                name=str(job.id),
            )
        except TransientSendError as err:
            await self._defer(job, now, err.code, err.answer)
        except PermanentSendError as err:
            await self._fail(job, now, err.code, err.answer, reason=None)
        except Exception:
            log.exception("transport failed unexpectedly", extra={"outbox_id": job.id})
            await self._defer(job, now, None, "internal error in the transport")
        else:
            # Nothing but this one UPDATE between the relay's 250 and the commit.
            await self._mark_sent(job, now, result)

    async def _prepare(self, job: _Job, now: datetime) -> _Ready | None:
        """Render and commit (token, Message-ID); None when the row is done with or not ours."""
        try:
            async with self.store.transaction() as session:
                query = select(Outbox).where(*_ours(job, self.instance)).with_for_update()
                row = (await session.exec(query)).first()
                if row is None:
                    log.warning("outbox lease lost before render", extra={"outbox_id": job.id})
                    return None
                message = await self.render(session, row, now)
            recipient = envelope_recipient(message)
        except (RenderError, UnsendableError) as err:
            await self._fail(job, now, None, None, reason=str(err.reason), attempted=False)
            return None
        except Exception:
            log.exception("render failed unexpectedly", extra={"outbox_id": job.id})
            await self._defer(job, now, None, "internal error in the renderer")
            return None
        return _Ready(job, message, recipient)

    # --- outcomes ----------------------------------------------------------------------

    def _release(self, job: _Job, **values: Any) -> sa.Update:
        """The UPDATE that records an outcome and gives the lease up, if it is still ours."""
        return (
            update(Outbox)
            .where(*_ours(job, self.instance))
            .values(lease_owner=None, lease_expires_at=None, **values)
        )

    async def _mark_sent(self, job: _Job, now: datetime, result: SendResult) -> None:
        """Record the 250. A store error here would turn into a duplicate once the lease
        expires, so the UPDATE is tried again a few times while the lease lasts."""
        statement = self._release(
            job,
            status=_SENT,
            sent_at=now,
            attempts=job.attempts + 1,
            smtp_code=result.code,
            smtp_answer=clip(result.answer),
        )
        for pause in (*_RECORD_RETRY_PAUSES_S, None):
            try:
                async with self.store.transaction() as session:
                    done = await session.exec(statement)
                break
            except Exception:
                if pause is None or self.clock() >= job.lease_expires_at:
                    raise
                log.warning("outbox sent, recording it failed; retrying", exc_info=True)
                await asyncio.sleep(pause)
        extra = {"outbox_id": job.id, "code": result.code, "attempt": job.attempts + 1}
        if done.rowcount:
            log.info("outbox sent", extra=extra)
        else:
            log.warning("outbox sent, but the lease was lost before recording it", extra=extra)

    async def _defer(self, job: _Job, now: datetime, code: int | None, answer: str) -> None:
        attempt = job.attempts + 1
        if now >= job.created_at + self.retry_horizon:
            await self._fail(job, now, code, answer, reason="retry_horizon")
            return
        delay = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        due = now + delay * self.rng.uniform(0.5, 1.5)
        async with self.store.transaction() as session:
            await session.exec(
                self._release(
                    job,
                    status=_PENDING,
                    attempts=attempt,
                    next_attempt_at=due,
                    smtp_code=code,
                    smtp_answer=clip(answer),
                )
            )
        log.info(
            "outbox deferred",
            extra={
                "outbox_id": job.id,
                "code": code,
                "attempt": attempt,
                "retry_in_s": round((due - now).total_seconds()),
            },
        )

    async def _fail(
        self,
        job: _Job,
        now: datetime,
        code: int | None,
        answer: str | None,
        *,
        reason: str | None,
        attempted: bool = True,
    ) -> None:
        """`failed`, plus the audit event (ids and code only; the answer stays on the row).

        `attempted` is false when the email never reached the transport (render refused it).
        """
        attempt = job.attempts + int(attempted)
        detail: dict[str, int | str | bool | None] = {"code": code}
        if reason is not None:
            detail["reason"] = reason
        async with self.store.transaction() as session:
            done = await session.exec(
                self._release(
                    job,
                    status=_FAILED,
                    attempts=attempt,
                    smtp_code=code,
                    smtp_answer=None if answer is None else clip(answer),
                )
            )
            if done.rowcount:
                session.add(
                    AuditEvent(
                        at=now,
                        actor=self.instance,
                        action=AUDIT_FAILED,
                        organization_id=job.organization_id,
                        thread_id=job.thread_id,
                        message_id=job.message_id,
                        participant_id=job.recipient_id,
                        outbox_id=job.id,
                        detail=detail,
                    )
                )
        log.warning(
            "outbox failed",
            extra={"outbox_id": job.id, "code": code, "attempt": attempt, "reason": reason or "-"},
        )


# --- helpers -----------------------------------------------------------------------------


class UnsendableError(BridgeError):
    """A rendered email that must not go out as it is; `reason` is a short code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def envelope_recipient(message: EmailMessage) -> str:
    """The one envelope recipient: the address in `To`.

    Outbound emails name exactly one recipient and never carry Cc or Bcc
    (docs/outbound.md); refusing anything else here keeps a renderer bug from
    showing one recipient's address to another. Raises `UnsendableError`.
    """
    if message.get_all("Cc") or message.get_all("Bcc"):
        raise UnsendableError("extra_recipients")
    found = [addr for _, addr in getaddresses([str(v) for v in message.get_all("To") or []])]
    if len(found) != 1 or "@" not in found[0]:
        raise UnsendableError("no_single_recipient")
    return found[0]


def _ours(job: _Job, instance: str) -> tuple[sa.ColumnElement[bool], ...]:
    """The conditions for `job`'s row while we still hold its lease."""
    return (
        col(Outbox.id) == job.id,
        col(Outbox.status) == _SENDING,
        col(Outbox.lease_owner) == instance,
    )


async def _recent_load(
    session: AsyncSession, destinations: Iterable[_Destination], now: datetime
) -> dict[_Destination, list[datetime]]:
    """Per destination: when each email of the last hour was sent; in-flight ones count as now.

    In flight means `sending` under another instance's live lease, so that
    two instances together stay near the cap.
    """
    wanted = set(destinations)
    people = sorted(d for d in wanted if isinstance(d, int))
    addresses = sorted(d for d in wanted if isinstance(d, str))
    to_address = sa.func.lower(col(Outbox.to_address))
    of_them = sa.or_(col(Outbox.recipient_id).in_(people), to_address.in_(addresses))
    sent = select(Outbox.recipient_id, to_address, Outbox.sent_at).where(
        of_them, col(Outbox.status) == _SENT, col(Outbox.sent_at) > now - HOUR
    )
    flying = select(Outbox.recipient_id, to_address, Outbox.lease_expires_at).where(
        of_them, col(Outbox.status) == _SENDING, col(Outbox.lease_expires_at) >= now
    )
    load: dict[_Destination, list[datetime]] = {}
    for recipient_id, address, sent_at in await session.exec(sent):
        if sent_at is not None:
            load.setdefault(_key(recipient_id, address), []).append(sent_at)
    for recipient_id, address, _ in await session.exec(flying):
        load.setdefault(_key(recipient_id, address), []).append(now)
    return load


def _key(recipient_id: int | None, address: str | None) -> _Destination:
    return recipient_id if recipient_id is not None else (address or "")


def _destination(row: Outbox) -> _Destination:
    return _key(row.recipient_id, (row.to_address or "").lower())


def _cap_release(times: list[datetime], cap: int) -> datetime | None:
    """None if one more email fits under `cap`; else when enough of `times` leave the hour."""
    if len(times) < cap:
        return None
    return sorted(times)[len(times) - cap] + HOUR


def _aware(now: datetime) -> datetime:
    if now.utcoffset() is None:
        raise ValueError("the sender's clock must return timezone-aware datetimes")
    return now.astimezone(UTC)


async def _first_of(*events: asyncio.Event, within: float) -> None:
    """Wait until one of `events` is set, or `within` seconds have passed."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
