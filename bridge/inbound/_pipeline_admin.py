"""What the operator can see and do with `inbound_emails` from the command line.

Owns the store side of `bridge inbound list|show|retry`: rows as ids,
statuses, reason codes, counts and times (never an address, a subject or
content); the stored content of one row only when explicitly asked for; and
putting a `parked`, `held` or `dropped` row back in line, audited.

Prints nothing (the CLI formats) and does not process rows (the pipeline does).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from bridge.errors import BridgeError
from bridge.store.engine import Store
from bridge.store.models import AuditEvent, InboundEmail, InboundStatus, Message

AUDIT_RETRIED = "inbound_retried"
# Rows an operator may send through the pipeline again. Never `filed` (it would be
# refused as a duplicate at best) and not `received` (it is already in line).
RETRYABLE = (InboundStatus.PARKED.value, InboundStatus.HELD.value, InboundStatus.DROPPED.value)


class UnknownStatusError(BridgeError):
    """`status` is not one of the inbound states."""

    def __init__(self, status: str) -> None:
        allowed = ", ".join(s.value for s in InboundStatus)
        super().__init__(f"unknown inbound status {status!r} (use one of {allowed})")
        self.status = status


@dataclass(frozen=True)
class InboundRow:
    """One row as the operator sees it. `content` is filled only on request."""

    id: int
    status: str
    reason: str | None
    received_via: str
    attempts: int
    defects: int
    size: int
    participant_id: int | None
    thread_id: int | None
    message_id: int | None
    received_at: datetime
    processed_at: datetime | None
    next_attempt_at: datetime
    lease_owner: str | None
    sha256: str
    envelope_sender: str | None = field(default=None, repr=False)
    envelope_recipient: str | None = field(default=None, repr=False)
    raw: bytes | None = field(default=None, repr=False)


# In the field order of `InboundRow`.
_COLUMNS: tuple[Any, ...] = (
    InboundEmail.id,
    InboundEmail.status,
    InboundEmail.reason,
    InboundEmail.received_via,
    InboundEmail.attempts,
    InboundEmail.defects,
    sa.func.length(col(InboundEmail.raw)),
    InboundEmail.participant_id,
    InboundEmail.thread_id,
    Message.id,
    InboundEmail.received_at,
    InboundEmail.processed_at,
    InboundEmail.next_attempt_at,
    InboundEmail.lease_owner,
    InboundEmail.sha256,
)


def _overview() -> sa.Select[Any]:
    return sa.select(*_COLUMNS).outerjoin(
        Message, col(Message.inbound_email_id) == col(InboundEmail.id)
    )


async def list_rows(store: Store, status: str | None = None, limit: int = 50) -> list[InboundRow]:
    """The newest `limit` rows (all, or those in `status`), newest first; no content."""
    if status is not None and status not in {s.value for s in InboundStatus}:
        raise UnknownStatusError(status)
    query = _overview()
    if status is not None:
        query = query.where(col(InboundEmail.status) == status)
    query = query.order_by(col(InboundEmail.id).desc()).limit(max(limit, 0))
    async with store.read() as session:
        return [InboundRow(*found) for found in await session.execute(query)]


async def show_row(store: Store, row_id: int, *, content: bool = False) -> InboundRow | None:
    """One row; with `content`, its envelope and raw bytes as well."""
    async with store.read() as session:
        query = _overview().where(col(InboundEmail.id) == row_id)
        found = (await session.execute(query)).first()
        if found is None:
            return None
        row = InboundRow(*found)
        if not content:
            return row
        envelope = select(
            InboundEmail.envelope_sender, InboundEmail.envelope_recipient, InboundEmail.raw
        ).where(col(InboundEmail.id) == row_id)
        sender, recipient, raw = (await session.exec(envelope)).one()
    return replace(row, envelope_sender=sender, envelope_recipient=recipient, raw=raw)


async def retry(store: Store, row_id: int, now: datetime, *, actor: str = "cli") -> bool:
    """Put a parked, held or dropped row back in line (`received`, due `now`, attempts
    reset); False if there is no such row. The change is audited."""
    async with store.transaction() as session:
        query = (
            select(InboundEmail)
            .where(col(InboundEmail.id) == row_id, col(InboundEmail.status).in_(RETRYABLE))
            .with_for_update()
        )
        row = (await session.exec(query)).first()
        if row is None:
            return False
        previous, reason = row.status, row.reason
        row.status, row.reason = InboundStatus.RECEIVED.value, None
        row.attempts, row.next_attempt_at, row.processed_at = 0, now, None
        row.lease_owner = row.lease_expires_at = None
        session.add(
            AuditEvent(
                at=now,
                actor=actor,
                action=AUDIT_RETRIED,
                thread_id=row.thread_id,
                participant_id=row.participant_id,
                inbound_email_id=row_id,
                detail={"previous_status": previous, "previous_reason": reason},
            )
        )
    return True
