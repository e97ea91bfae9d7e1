"""The sender: due outbox rows out through a transport, each sent once, none lost.

`Sender` owns the life of an outbox row from `pending` to an outcome (the
"Sender" section of docs/outbound.md):

1. **Claim** a batch in one transaction: rows `pending` and due, or `sending`
   under a lease that has expired (a dead instance's), oldest first, with
   `FOR UPDATE SKIP LOCKED` on PostgreSQL (SQLite's `BEGIN IMMEDIATE`
   serialises claims). Each becomes `sending` under our lease, unless the
   **hourly cap** (`bridge.outbound.cap`) puts it back to `pending` for later.
2. **Render** each row in its own transaction (the renderer may insert a reply
   token and sets `message_id_header`), committed before the send.
3. **Send** through the transport, at most `concurrency` at a time.
4. **Record** the outcome (`bridge.outbound.outcomes`): `sent`; back to
   `pending` with backoff (4xx, connection errors); `failed` with an audit
   event (5xx, past the retry horizon, a row the renderer can never render);
   or `coalesced` (a convenience row with nothing left to carry).

Between the relay's 250 and the commit of `sent` the code awaits nothing but
that one UPDATE: a crash there is the only way to send an email twice.

One claim-render-send-record round is the step of a `bridge.poll.PollLoop`,
which owns pacing, back-off after a failing round and the heartbeat.

It does not decide who gets an email or what it says (dispatcher and
renderer), and it does not know how bytes reach the relay (`transport`).
Logs carry ids, SMTP codes and attempt numbers; never an address, a subject,
content, or the relay's answer (which may echo an address).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Self

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.config import OutboundSettings
from bridge.errors import BridgeError
from bridge.metrics import Metrics
from bridge.outbound.cap import HourlyLoad
from bridge.outbound.outcomes import Job, Outcomes, Retry, ours
from bridge.outbound.render import RenderContext, RenderError, RenderFailure, render
from bridge.outbound.transport import (
    PermanentSendError,
    TransientSendError,
    Transport,
    transport_from_settings,
)
from bridge.poll import PollLoop, Worker
from bridge.store.engine import Store
from bridge.store.models import Outbox, OutboxStatus

log = logging.getLogger(__name__)

Render = Callable[[AsyncSession, Outbox, datetime], Awaitable[EmailMessage]]
"""Loads what one claimed row needs and composes its email (see `bridge.outbound.render`).

Called inside an open transaction that the sender commits; it may add rows
and must set `row.message_id_header`. Raises `RenderError` for a row that can
never be rendered.
"""

_PENDING = OutboxStatus.PENDING.value
_SENDING = OutboxStatus.SENDING.value


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Ready:
    job: Job
    message: EmailMessage
    recipient: str


class Sender(Worker):
    """Sends due outbox rows; one instance per daemon, several daemons per store.

    As an async context manager it runs its loop in a background task; leaving
    it lets the round in progress finish, then closes the transport it was
    given. `run(stop)` is the loop itself, for callers with their own task;
    `run_once()` is one round, for callers that pace rounds themselves (then
    `aclose()` closes the transport).

    `render` is bound to its context by the caller, e.g.
    `lambda s, row, now: render.render(s, row, ctx, now=now)` (`from_settings`
    does this). `instance` names this daemon in `lease_owner` and in audit events.
    Backoff after the n-th failed attempt (n = 1, 2, ...) is
    `min(backoff_cap, backoff_base * 2**(n-1)) * uniform(0.5, 1.5)` drawn from `rng`.
    `clock` is the only source of time for rows; `beat` gets the loop's name
    ("sender") before every round and while the loop pauses (watchdog).

    A claimed row is sent only while more than half of its lease is left, so a
    send and its record fit in the lease; one that waited longer (a slow relay,
    a long batch) is left to be claimed again once the lease has expired.
    Cancelling a round (rather than stopping the loop) leaves its rows `sending`
    until their lease expires, and a row cancelled between the relay's 250 and
    the record is sent again then.
    """

    name = "sender"

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
        poll_interval: float = 1.0,
        clock: Callable[[], datetime] = _utcnow,
        rng: random.Random | None = None,
        beat: Callable[[str], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if min(hourly_cap, concurrency, batch_size) < 1:
            raise ValueError("hourly_cap, concurrency and batch_size must be at least 1")
        if lease <= timedelta(0):
            raise ValueError("lease must be positive")
        self.store = store
        self.transport = transport
        self.render = render
        self.instance = instance
        self.envelope_sender = envelope_sender
        self.hourly_cap = hourly_cap
        self.batch_size = batch_size
        self.lease = lease
        self.clock = clock
        self.outcomes = Outcomes(
            store,
            instance=instance,
            retry=Retry(base=backoff_base, cap=backoff_cap, horizon=retry_horizon),
            rng=rng or random.Random(),  # noqa: S311 (jitter, not a secret)
            clock=clock,
            metrics=metrics,
        )
        self._slots = asyncio.Semaphore(concurrency)
        self._loop = PollLoop(self.name, self._step, poll_interval=poll_interval, beat=beat)

    @classmethod
    def from_settings(
        cls,
        store: Store,
        settings: OutboundSettings,
        render_ctx: RenderContext,
        *,
        instance: str,
        beat: Callable[[str], None] | None = None,
        transport: Transport | None = None,
        clock: Callable[[], datetime] = _utcnow,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> Self:
        """A sender configured from `[outbound]`, rendering with `render_ctx`.

        The transport is the one `outbound.transport` names unless one is given.
        """

        async def render_row(session: AsyncSession, row: Outbox, now: datetime) -> EmailMessage:
            return await render(session, row, render_ctx, now=now)

        return cls(
            store,
            transport if transport is not None else transport_from_settings(settings),
            render_row,
            instance=instance,
            envelope_sender=settings.from_address,
            hourly_cap=settings.hourly_cap,
            retry_horizon=timedelta(hours=settings.retry_horizon_hours),
            concurrency=settings.smtp.concurrency,
            batch_size=settings.batch_size,
            lease=timedelta(seconds=settings.lease_seconds),
            backoff_base=timedelta(seconds=settings.retry_base_seconds),
            backoff_cap=timedelta(seconds=settings.retry_max_seconds),
            poll_interval=settings.poll_interval_seconds,
            clock=clock,
            rng=rng,
            beat=beat,
            metrics=metrics,
        )

    async def aclose(self) -> None:
        """Close the transport; the sender is not used afterwards."""
        await self.transport.aclose()

    async def _step(self) -> bool:
        # A full batch means "there may be more right now"; anything less, a pause.
        return await self.run_once() >= self.batch_size

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

    async def _claim(self, now: datetime) -> tuple[list[Job], int]:
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
        jobs: list[Job] = []
        deferred = 0
        async with self.store.transaction() as session:
            rows = list(await session.exec(query))
            if not rows:
                return [], 0
            load = await HourlyLoad.read(session, rows, now, cap=self.hourly_cap)
            expires = now + self.lease
            for row in rows:
                release = load.admit(row, now)
                if release is not None:
                    row.status, row.next_attempt_at = _PENDING, release
                    row.lease_owner = row.lease_expires_at = None
                    deferred += 1
                    log.info("outbox over hourly cap", extra={"outbox_id": row.id})
                    continue
                row.status, row.lease_owner, row.lease_expires_at = _SENDING, self.instance, expires
                jobs.append(Job.of(row, expires))
        return jobs, deferred

    # --- one row -----------------------------------------------------------------------

    async def _process_guarded(self, job: Job, now: datetime) -> None:
        # One row's bug must not cancel its siblings, which may sit between 250 and commit.
        async with self._slots:
            try:
                await self._process(job, now)
            except Exception:
                log.exception("outbox row failed unexpectedly", extra={"outbox_id": job.id})

    async def _process(self, job: Job, now: datetime) -> None:
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
            await self.outcomes.defer(job, now, err.code, err.answer)
        except PermanentSendError as err:
            await self.outcomes.fail(job, now, err.code, err.answer, reason=None)
        except Exception:
            log.exception("transport failed unexpectedly", extra={"outbox_id": job.id})
            await self.outcomes.defer(job, now, None, "internal error in the transport")
        else:
            # Nothing but this one UPDATE between the relay's 250 and the commit.
            await self.outcomes.sent(job, now, result)

    async def _prepare(self, job: Job, now: datetime) -> _Ready | None:
        """Render and commit (token, Message-ID); None when the row is done with or not ours."""
        try:
            async with self.store.transaction() as session:
                query = select(Outbox).where(*ours(job, self.instance)).with_for_update()
                row = (await session.exec(query)).first()
                if row is None:
                    log.warning("outbox lease lost before render", extra={"outbox_id": job.id})
                    return None
                message = await self.render(session, row, now)
            recipient = envelope_recipient(message)
        except (RenderError, UnsendableError) as err:
            await self._refused(job, now, err)
            return None
        except Exception:
            log.exception("render failed unexpectedly", extra={"outbox_id": job.id})
            await self.outcomes.defer(job, now, None, "internal error in the renderer")
            return None
        return _Ready(job, message, recipient)

    async def _refused(self, job: Job, now: datetime, err: RenderError | UnsendableError) -> None:
        """A row that will never become an email: failed for good, or coalesced."""
        reason = str(err.reason)
        if isinstance(err, RenderError) and err.reason is RenderFailure.NOTHING_NEW:
            # The person read everything in the portal meanwhile: nothing is missing.
            await self.outcomes.coalesce(job, reason=reason)
        else:
            await self.outcomes.fail(job, now, None, None, reason=reason, attempted=False)


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


def _aware(now: datetime) -> datetime:
    if now.utcoffset() is None:
        raise ValueError("the sender's clock must return timezone-aware datetimes")
    return now.astimezone(UTC)
