"""Notices: the short automatic answer to a person whose reply was held.

Owns the "Notices" rules of docs/inbound.md on the writing side: one outbox
row `kind = notice` with a reason code and no message content (the sender
renders it with a portal link), naming the participant (`recipient_id`) or,
for an unknown sender on the IMAP path, the bare address (`to_address`).
At most one per (address, reason) within a day: an outbox notice row for the
same participant (or address, compared case-insensitively) and reason created
in the last 24 hours suppresses the new one. On PostgreSQL a transaction-level
advisory lock on that key makes the check-then-insert hold between instances;
on SQLite `BEGIN IMMEDIATE` already serialises writers.

Does not: decide whether a notice is due (which reasons, never to machines:
the pipeline), render or send it, or log anything.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.store.models import NotificationMode, Outbox, OutboxKind, OutboxStatus

NOTICE_WINDOW = timedelta(days=1)


async def add_notice(
    session: AsyncSession,
    *,
    organization_id: int,
    reason: str,
    now: datetime,
    recipient_id: int | None = None,
    to_address: str | None = None,
    thread_id: int | None = None,
    postgres: bool = False,
) -> int | None:
    """Queue a notice unless one for the same destination and reason is less than a
    day old; returns the new outbox id, or None when suppressed."""
    if recipient_id is None and to_address is None:
        raise ValueError("a notice needs a recipient_id or a to_address")
    address = None if to_address is None else to_address.strip().lower()
    if postgres:
        await session.exec(
            select(sa.func.pg_advisory_xact_lock(_lock_key(recipient_id, address, reason)))
        )
    same_destination = (
        col(Outbox.recipient_id) == recipient_id
        if recipient_id is not None
        else sa.func.lower(col(Outbox.to_address)) == address
    )
    earlier = (
        select(Outbox.id)
        .where(col(Outbox.kind) == OutboxKind.NOTICE.value)
        .where(col(Outbox.reason) == reason)
        .where(same_destination)
        .where(col(Outbox.created_at) > now - NOTICE_WINDOW)
        .limit(1)
    )
    if (await session.exec(earlier)).first() is not None:
        return None
    row = Outbox(
        kind=OutboxKind.NOTICE.value,
        # A notice carries no message content, whatever the organization's mode.
        mode=NotificationMode.SECURE.value,
        status=OutboxStatus.PENDING.value,
        organization_id=organization_id,
        recipient_id=recipient_id,
        to_address=None if recipient_id is not None else address,
        thread_id=thread_id,
        reason=reason,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(row)
    await session.flush()
    return row.id


def _lock_key(recipient_id: int | None, address: str | None, reason: str) -> int:
    """A signed 64-bit advisory-lock key for (destination, reason)."""
    text = f"bridge-notice:{recipient_id}:{address}:{reason}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big", signed=True)
