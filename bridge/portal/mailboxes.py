"""One person's hold on one thread: read state, archive, trash, permanent delete.

Each function acts on the caller's own mailbox row and refuses with
`not_a_member` when there is none. Purging a thread's content once nobody
holds it any more is the daemon's retention job, not this module's.

Decisions: `mark_read` never moves backwards (the daemon's "one email until
read" rule counts on it); trashing a trashed thread keeps the first trash
time, so retention is not extended by trashing twice; deleting permanently
also revokes the person's reply tokens for the thread (they lost access).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.portal import _rows
from bridge.portal.errors import PortalError, Reason
from bridge.store.models import Mailbox, Message


async def mark_read(
    session: AsyncSession,
    thread_id: int,
    participant_id: int,
    up_to_message_id: int | None = None,
) -> int | None:
    """Mark the thread read up to a message (None: the latest); returns the new mark."""
    box = await _mailbox(session, thread_id, participant_id)
    if up_to_message_id is None:
        latest = await session.exec(
            select(sa.func.max(Message.id)).where(Message.thread_id == thread_id)
        )
        target = latest.one()
    else:
        message = await session.get(Message, up_to_message_id)
        if message is None or message.thread_id != thread_id:
            raise PortalError(
                Reason.NO_SUCH_MESSAGE, thread_id=thread_id, message_id=up_to_message_id
            )
        target = up_to_message_id
    if target is not None and (box.last_read_message_id or 0) < target:
        box.last_read_message_id = target
        await session.flush()
    return box.last_read_message_id


async def archive(
    session: AsyncSession, thread_id: int, participant_id: int, *, now: datetime | None = None
) -> None:
    """Move the thread to the person's archive (keeps the first archive time)."""
    at = _rows.utc(now)
    box = await _mailbox(session, thread_id, participant_id)
    if box.archived_at is None:
        box.archived_at = at
        await session.flush()


async def unarchive(session: AsyncSession, thread_id: int, participant_id: int) -> None:
    """Bring an archived thread back to the person's inbox."""
    box = await _mailbox(session, thread_id, participant_id)
    box.archived_at = None
    await session.flush()


async def trash(
    session: AsyncSession, thread_id: int, participant_id: int, *, now: datetime | None = None
) -> None:
    """Move the thread to the person's trash; retention counts from the first trashing."""
    at = _rows.utc(now)
    box = await _mailbox(session, thread_id, participant_id)
    if box.trashed_at is None:
        box.trashed_at = at
        await session.flush()


async def restore(session: AsyncSession, thread_id: int, participant_id: int) -> None:
    """Take the thread out of the person's trash."""
    box = await _mailbox(session, thread_id, participant_id)
    box.trashed_at = None
    await session.flush()


async def delete_permanently(
    session: AsyncSession, thread_id: int, participant_id: int, *, now: datetime | None = None
) -> None:
    """Remove the person's mailbox row for good and revoke their tokens for the thread."""
    at = _rows.utc(now)
    box = await _mailbox(session, thread_id, participant_id)
    thread = await _rows.thread(session, thread_id)
    await session.delete(box)
    revoked = await _rows.revoke_tokens(session, [participant_id], at, thread_id=thread_id)
    _rows.audit(
        session,
        "mailbox_deleted",
        at,
        actor_id=participant_id,
        organization_id=thread.organization_id,
        thread_id=thread_id,
        participant_id=participant_id,
        detail={"tokens_revoked": revoked},
    )
    await session.flush()


async def _mailbox(session: AsyncSession, thread_id: int, participant_id: int) -> Mailbox:
    box = await session.get(Mailbox, (thread_id, participant_id))
    if box is None:
        await _rows.thread(session, thread_id)  # a precise code when the thread is gone
        raise PortalError(Reason.NOT_A_MEMBER, thread_id=thread_id, participant_id=participant_id)
    return box
