"""Housekeeping: the daemon's own tables, kept small and free of stale content.

Each step is one bounded statement, repeated by the caller until it touches
fewer rows than the batch size:

* reply tokens: deleted `TOKEN_GRACE` after they expired or were revoked. Until
  then a late reply gets the precise answer ("expired", "no longer valid")
  rather than "unknown reply address";
* outbox rows `sending` under an expired lease go back to `pending`, and
  expired leases on inbound rows are cleared (their instance died);
* raw inbound mail: `filed`, `dropped` and `held` rows whose processing ended
  more than `raw_inbound_days` ago are deleted. A filed message keeps its text
  (`messages.inbound_email_id` becomes NULL). `received` rows (not processed
  yet) and `parked` rows (waiting for an operator) are kept;
* outbox rows `sent`, `failed` or `coalesced` more than `sent_outbox_days` ago;
* audit events older than `audit_events_days`, only when `prune_audit_events`.

Not here: trash and threads (`_purge_rows`), loops, leases and audit (`purge`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import col, delete, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.config import RetentionSettings
from bridge.store.models import (
    AuditEvent,
    InboundEmail,
    InboundStatus,
    Outbox,
    OutboxStatus,
    ReplyToken,
)

# How long an expired or revoked token is kept, so a late reply is told why it is refused.
TOKEN_GRACE = timedelta(days=30)

_PROCESSED = (InboundStatus.FILED.value, InboundStatus.DROPPED.value, InboundStatus.HELD.value)
_FINISHED = (OutboxStatus.SENT.value, OutboxStatus.FAILED.value, OutboxStatus.COALESCED.value)


@dataclass(frozen=True)
class HousekeepingRules:
    """The retention periods housekeeping applies (from `[retention]`)."""

    raw_inbound_days: int = 30
    sent_outbox_days: int = 90
    prune_audit_events: bool = False
    audit_events_days: int = 2190
    token_grace: timedelta = TOKEN_GRACE

    @classmethod
    def from_settings(cls, retention: RetentionSettings) -> HousekeepingRules:
        return cls(
            raw_inbound_days=retention.raw_inbound_days,
            sent_outbox_days=retention.sent_outbox_days,
            prune_audit_events=retention.prune_audit_events,
            audit_events_days=retention.audit_events_days,
        )


# One step: given a session, the run's time and a batch size, change at most that many rows.
Step = Callable[[AsyncSession, datetime, int], Awaitable[int]]


def steps(rules: HousekeepingRules) -> list[tuple[str, Step]]:
    """The steps in order, each named by the count it reports."""
    chosen: list[tuple[str, Step]] = [
        ("tokens_deleted", lambda s, at, n: _tokens(s, at - rules.token_grace, n)),
        ("outbox_leases_returned", _outbox_leases),
        ("inbound_leases_cleared", _inbound_leases),
        (
            "inbound_emails_deleted",
            lambda s, at, n: _raw_inbound(s, at - timedelta(days=rules.raw_inbound_days), n),
        ),
        (
            "outbox_deleted",
            lambda s, at, n: _outbox(s, at - timedelta(days=rules.sent_outbox_days), n),
        ),
    ]
    if rules.prune_audit_events:
        chosen.append(
            (
                "audit_events_deleted",
                lambda s, at, n: _audit(s, at - timedelta(days=rules.audit_events_days), n),
            )
        )
    return chosen


async def _tokens(session: AsyncSession, before: datetime, limit: int) -> int:
    stale = sa.or_(col(ReplyToken.expires_at) < before, col(ReplyToken.revoked_at) < before)
    ids = select(ReplyToken.id).where(stale).limit(limit).scalar_subquery()
    done = await session.exec(delete(ReplyToken).where(col(ReplyToken.id).in_(ids)))
    return int(done.rowcount)


async def _outbox_leases(session: AsyncSession, at: datetime, limit: int) -> int:
    expired = (col(Outbox.status) == OutboxStatus.SENDING.value) & (
        col(Outbox.lease_expires_at) < at
    )
    ids = select(Outbox.id).where(expired).limit(limit).scalar_subquery()
    statement = (
        update(Outbox)
        .where(col(Outbox.id).in_(ids), expired)
        .values(status=OutboxStatus.PENDING.value, lease_owner=None, lease_expires_at=None)
    )
    return int((await session.exec(statement)).rowcount)


async def _inbound_leases(session: AsyncSession, at: datetime, limit: int) -> int:
    expired = col(InboundEmail.lease_expires_at) < at
    ids = select(InboundEmail.id).where(expired).limit(limit).scalar_subquery()
    statement = (
        update(InboundEmail)
        .where(col(InboundEmail.id).in_(ids), expired)
        .values(lease_owner=None, lease_expires_at=None)
    )
    return int((await session.exec(statement)).rowcount)


async def _raw_inbound(session: AsyncSession, before: datetime, limit: int) -> int:
    ended = sa.func.coalesce(col(InboundEmail.processed_at), col(InboundEmail.received_at))
    old = col(InboundEmail.status).in_(_PROCESSED) & (ended < before)
    ids = select(InboundEmail.id).where(old).limit(limit).scalar_subquery()
    done = await session.exec(delete(InboundEmail).where(col(InboundEmail.id).in_(ids)))
    return int(done.rowcount)


async def _outbox(session: AsyncSession, before: datetime, limit: int) -> int:
    ended = sa.func.coalesce(col(Outbox.sent_at), col(Outbox.created_at))
    old = col(Outbox.status).in_(_FINISHED) & (ended < before)
    ids = select(Outbox.id).where(old).limit(limit).scalar_subquery()
    done = await session.exec(delete(Outbox).where(col(Outbox.id).in_(ids)))
    return int(done.rowcount)


async def _audit(session: AsyncSession, before: datetime, limit: int) -> int:
    ids = select(AuditEvent.id).where(col(AuditEvent.at) < before).limit(limit).scalar_subquery()
    done = await session.exec(delete(AuditEvent).where(col(AuditEvent.id).in_(ids)))
    return int(done.rowcount)
