"""Mass messages: one message to many clients, with blind-copy semantics.

Each client gets a private thread of their own, linked to one `mass_messages`
row; no client's mailbox is ever in another client's thread, so nobody
learns who else received it. Clinicians reach their assigned active
clients; practice admins and clinical admins reach every active client of
the organization.

Decisions: a call naming any client that is unknown, inactive or out of the
author's reach is refused whole, with the offending ids, and writes nothing.
The author is the thread clinician of each thread if they hold the clinician
role; they must be able to see the threads under the chosen audience (a
practice admin sends administrative mass messages, not clinical ones).
Clients' contacts are not copied in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.portal import _rows
from bridge.portal.errors import PortalError, Reason
from bridge.portal.threads import SUBJECT_LENGTH, TOPIC_LENGTH, NewThread, open_thread
from bridge.store.models import (
    Audience,
    ClientClinician,
    MassMessage,
    Participant,
    ParticipantKind,
    StaffRole,
)

# Roles that reach every active client of their organization.
_REACH_ALL = frozenset({StaffRole.PRACTICE_ADMIN, StaffRole.CLINICAL_ADMIN})


@dataclass(frozen=True)
class MassRef:
    mass_message_id: int
    thread_ids: tuple[int, ...]


async def mass_message_reach(session: AsyncSession, author_id: int) -> list[int]:
    """The clients `author_id` may reach with a mass message, by id (ascending).

    Empty for an inactive staff member or one with neither an admin role nor
    the clinician role; NOT_STAFF for a client or contact.
    """
    author = await _rows.participant(session, author_id)
    member = await _rows.staff_member(session, author)
    if not member.active:
        return []
    query = (
        select(Participant.id)
        .where(Participant.organization_id == author.organization_id)
        .where(Participant.kind == ParticipantKind.CLIENT.value)
        .where(col(Participant.active))
        .order_by(col(Participant.id))
    )
    if member.roles.isdisjoint(_REACH_ALL):
        if StaffRole.CLINICIAN not in member.roles:
            return []
        query = query.join(
            ClientClinician, col(ClientClinician.client_id) == col(Participant.id)
        ).where(ClientClinician.clinician_id == author_id)
    return [pid for pid in await session.exec(query) if pid is not None]


async def send_mass_message(
    session: AsyncSession,
    org_id: int,
    author_id: int,
    client_ids: Iterable[int],
    subject: str,
    body_text: str,
    body_html: str | None = None,
    *,
    audience: Audience | str = Audience.CLINICAL,
    topic: str | None = None,
    now: datetime | None = None,
) -> MassRef:
    """One private thread per client, each with the same first message."""
    at = _rows.utc(now)
    chosen = _rows.enum_value(Audience, audience, "audience")
    targets = _rows.ids_of(client_ids)
    title = _rows.text_value(subject, "subject", max_length=SUBJECT_LENGTH)
    label = None if topic is None else _rows.text_value(topic, "topic", max_length=TOPIC_LENGTH)
    if not targets:
        raise PortalError(Reason.NO_RECIPIENTS, organization_id=org_id)
    await _rows.organization(session, org_id)
    author = await _rows.participant(session, author_id)
    if author.organization_id != org_id:
        raise PortalError(Reason.WRONG_ORGANIZATION, organization_id=org_id, author_id=author_id)
    staff = await _rows.staff_of(session, org_id)
    member = await _rows.staff_member(session, author)
    if not member.active:
        raise PortalError(Reason.INACTIVE_PARTICIPANT, participant_id=author_id)
    clinicians = frozenset({author_id}) if StaffRole.CLINICIAN in member.roles else frozenset()
    if not member.may_see(chosen, clinicians):
        raise PortalError(Reason.NO_ACCESS, participant_id=author_id)
    await _check_clients(session, org_id, author_id, targets)

    mass = MassMessage(organization_id=org_id, author_id=author_id, created_at=at)
    session.add(mass)
    await session.flush()
    assert mass.id is not None
    thread_ids: list[int] = []
    for client_id in targets:
        new = NewThread(
            organization_id=org_id,
            client_id=client_id,
            subject=title,
            topic=label,
            audience=chosen,
            clinician_ids=clinicians,
            contact_ids=frozenset(),
            mass_message_id=mass.id,
        )
        ref = await open_thread(session, new, staff, author_id, body_text, body_html, (), None, at)
        thread_ids.append(ref.thread_id)
    _rows.audit(
        session,
        "mass_message_sent",
        at,
        actor_id=author_id,
        organization_id=org_id,
        participant_id=author_id,
        detail={"mass_message_id": mass.id, "threads": len(thread_ids)},
    )
    await session.flush()
    return MassRef(mass.id, tuple(thread_ids))


async def _check_clients(
    session: AsyncSession, org_id: int, author_id: int, targets: list[int]
) -> None:
    """Refuse the whole call if any target is unknown, inactive or out of reach."""
    rows = {
        row.id: row
        for row in await session.exec(select(Participant).where(col(Participant.id).in_(targets)))
    }
    unknown = [
        cid
        for cid in targets
        if cid not in rows
        or rows[cid].kind != ParticipantKind.CLIENT.value
        or rows[cid].organization_id != org_id
    ]
    if unknown:
        raise PortalError(Reason.NOT_A_CLIENT, organization_id=org_id, client_ids=unknown)
    inactive = [cid for cid in targets if not rows[cid].active]
    if inactive:
        raise PortalError(Reason.INACTIVE_CLIENT, client_ids=inactive)
    reach = set(await mass_message_reach(session, author_id))
    unreachable = [cid for cid in targets if cid not in reach]
    if unreachable:
        raise PortalError(Reason.NO_ACCESS, participant_id=author_id, client_ids=unreachable)
