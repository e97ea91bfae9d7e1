"""Changing who may see a thread: its audience, and what follows from it.

When a thread's audience changes, staff who may no longer see it lose their
mailbox row and every unrevoked reply token for it (DESIGN invariant 4: a
reply lands only where its sender belongs), and active staff who newly may
see it get a mailbox row. Clients, contacts and the thread's assigned
clinicians are not affected by audience. Each change is audited, with one
extra event per person who lost access.

The thread row is locked first, so a concurrent `post_message` either
finishes before the change or sees the author's access already gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.portal import _rows
from bridge.store.models import Audience, Mailbox


@dataclass(frozen=True)
class AudienceChange:
    """Who lost and who gained a mailbox row, and how many tokens were revoked."""

    removed: tuple[int, ...]
    added: tuple[int, ...]
    tokens_revoked: int


async def change_audience(
    session: AsyncSession,
    thread_id: int,
    audience: Audience | str,
    *,
    actor_id: int | None = None,
    now: datetime | None = None,
) -> AudienceChange:
    """Give a thread a new audience and make mailboxes and tokens follow.

    Staff who may no longer see the thread lose their mailbox row and every
    unrevoked reply token for it; active staff who newly may see it get a
    mailbox row. Clients, contacts and assigned clinicians are unaffected.
    """
    at = _rows.utc(now)
    target = _rows.enum_value(Audience, audience, "audience")
    thread = await _rows.thread(session, thread_id, lock=True)
    previous = thread.audience
    if previous == target.value:
        return AudienceChange((), (), 0)
    thread.audience = target.value
    staff = await _rows.staff_of(session, thread.organization_id)
    assigned = await _rows.thread_clinician_ids(session, thread_id)
    members = set(
        await session.exec(select(Mailbox.participant_id).where(Mailbox.thread_id == thread_id))
    )
    barred = {member.id for member in staff.values() if not member.may_see(target, assigned)}
    removed = tuple(sorted(barred & members))
    added = tuple(
        sorted(
            member.id
            for member in staff.values()
            if member.active and member.id not in barred and member.id not in members
        )
    )
    revoked = await _rows.revoke_tokens(session, sorted(barred), at, thread_id=thread_id)
    if removed:
        await session.exec(
            delete(Mailbox)
            .where(col(Mailbox.thread_id) == thread_id)
            .where(col(Mailbox.participant_id).in_(removed))
        )
    session.add_all(Mailbox(thread_id=thread_id, participant_id=pid, joined_at=at) for pid in added)
    _rows.audit(
        session,
        "audience_changed",
        at,
        actor_id=actor_id,
        organization_id=thread.organization_id,
        thread_id=thread_id,
        detail={
            "from": previous,
            "to": target.value,
            "removed": len(removed),
            "added": len(added),
            "tokens_revoked": revoked,
        },
    )
    for pid in removed:
        _rows.audit(
            session,
            "thread_access_revoked",
            at,
            actor_id=actor_id,
            organization_id=thread.organization_id,
            thread_id=thread_id,
            participant_id=pid,
        )
    await session.flush()
    return AudienceChange(removed, added, revoked)
