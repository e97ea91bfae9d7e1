"""How a claimed outbox row leaves the sender's hands: sent, deferred, failed or coalesced.

Each outcome is one short transaction whose UPDATE holds only while the row is
still ours (`status = sending AND lease_owner = instance`) and gives the lease
up. An instance whose lease expired and whose row another instance took over
records nothing: the row belongs to the other one now.

* **sent**: `sent_at`, the relay's code and answer. This is the commit that
  closes the only window in which a crash sends an email twice, so it is
  retried briefly while the lease lasts.
* **deferred**: back to `pending`, due after `min(cap, base * 2**(n-1))` times
  a jitter in 0.5..1.5 (n = the attempt that failed); past the retry horizon
  (counted from `created_at`) it is failed instead.
* **failed**: for good, plus an `outbox_failed` audit event with ids, the SMTP
  code and a reason code (never the relay's answer, which may echo an address;
  that stays on the row).
* **coalesced**: nothing is left to send (a convenience row whose messages the
  person has read meanwhile); not a failure, so no audit event.

It does not claim, render or send (`bridge.outbound.sender` does). Log lines
carry ids, codes and attempt numbers only.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, update

from bridge.metrics import Metrics
from bridge.outbound.transport import SendResult, clip
from bridge.store.engine import Store
from bridge.store.models import AuditEvent, Outbox, OutboxStatus

log = logging.getLogger(__name__)

AUDIT_FAILED = "outbox_failed"

# Pauses between attempts to record a send the relay has accepted (see `Outcomes.sent`).
_RECORD_RETRY_PAUSES_S = (0.2, 1.0)


@dataclass(frozen=True)
class Job:
    """A row claimed by this instance: what the later steps need, detached from any session."""

    id: int
    attempts: int
    created_at: datetime
    lease_expires_at: datetime
    organization_id: int
    recipient_id: int | None
    thread_id: int | None
    message_id: int | None
    mode: str
    kind: str

    @classmethod
    def of(cls, row: Outbox, lease_expires_at: datetime) -> Job:
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
            row.mode,
            row.kind,
        )


def ours(job: Job, instance: str) -> tuple[sa.ColumnElement[bool], ...]:
    """The conditions for `job`'s row while `instance` still holds its lease."""
    return (
        col(Outbox.id) == job.id,
        col(Outbox.status) == OutboxStatus.SENDING.value,
        col(Outbox.lease_owner) == instance,
    )


@dataclass(frozen=True)
class Retry:
    """When a temporary failure is tried again, and when it is given up."""

    base: timedelta
    cap: timedelta
    horizon: timedelta

    def delay(self, attempt: int, rng: random.Random) -> timedelta:
        """The wait after failed attempt number `attempt` (1, 2, ...)."""
        return min(self.cap, self.base * (1 << min(attempt - 1, 32))) * rng.uniform(0.5, 1.5)


class Outcomes:
    """Records outcomes for the rows `instance` holds; `clock` bounds the sent-record retries."""

    def __init__(
        self,
        store: Store,
        *,
        instance: str,
        retry: Retry,
        rng: random.Random,
        clock: Callable[[], datetime],
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.instance = instance
        self.retry = retry
        self.rng = rng
        self.clock = clock

    def _release(self, job: Job, **values: Any) -> sa.Update:
        """The UPDATE that records an outcome and gives the lease up, if it is still ours."""
        return (
            update(Outbox)
            .where(*ours(job, self.instance))
            .values(lease_owner=None, lease_expires_at=None, **values)
        )

    async def sent(self, job: Job, now: datetime, result: SendResult) -> None:
        """Record the 250. A store error here would turn into a duplicate once the lease
        expires, so the UPDATE is tried again a few times while the lease lasts."""
        statement = self._release(
            job,
            status=OutboxStatus.SENT.value,
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
            if self.metrics is not None:
                self.metrics.notification_sent(job.mode, job.kind)
                # From the outbox row's creation (the dispatch, within a poll of the message).
                self.metrics.observe_latency("outbound", job.created_at, now)
        else:
            log.warning("outbox sent, but the lease was lost before recording it", extra=extra)

    async def defer(self, job: Job, now: datetime, code: int | None, answer: str) -> None:
        """A temporary failure: back to `pending` with backoff, or failed past the horizon."""
        attempt = job.attempts + 1
        if now >= job.created_at + self.retry.horizon:
            await self.fail(job, now, code, answer, reason="retry_horizon")
            return
        due = now + self.retry.delay(attempt, self.rng)
        async with self.store.transaction() as session:
            await session.exec(
                self._release(
                    job,
                    status=OutboxStatus.PENDING.value,
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

    async def fail(
        self,
        job: Job,
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
                    status=OutboxStatus.FAILED.value,
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
        if self.metrics is not None:
            self.metrics.notification_failed(job.mode, reason)
        log.warning(
            "outbox failed",
            extra={"outbox_id": job.id, "code": code, "attempt": attempt, "reason": reason or "-"},
        )

    async def coalesce(self, job: Job, *, reason: str) -> None:
        """Nothing left to send: `coalesced`, attempts unchanged, no audit event."""
        async with self.store.transaction() as session:
            await session.exec(self._release(job, status=OutboxStatus.COALESCED.value))
        log.info("outbox coalesced", extra={"outbox_id": job.id, "reason": reason})
