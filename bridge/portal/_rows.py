"""Row look-ups and small writes shared by the portal modules.

Loading an organization, participant or thread by id (or refusing with the
right reason code), the staff of an organization with their roles, the
audit trail, and reply-token revocation. Every function takes the caller's
session and never commits: transactions belong to the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeVar

from sqlmodel import col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.policy.audience import staff_may_see
from bridge.portal.errors import PortalError, Reason
from bridge.store.models import (
    Audience,
    AuditEvent,
    Organization,
    Participant,
    ParticipantKind,
    ParticipantRole,
    ReplyToken,
    StaffRole,
    Thread,
    ThreadClinician,
)

E = TypeVar("E", bound=StrEnum)

# The `actor` of audit events written through this API.
ACTOR = "portal"


@dataclass(frozen=True)
class StaffMember:
    id: int
    active: bool
    roles: frozenset[StaffRole]

    def may_see(self, audience: Audience, assigned: Iterable[int]) -> bool:
        return staff_may_see(audience, self.roles, assigned_clinician=self.id in set(assigned))


def utc(now: datetime | None) -> datetime:
    """The time to stamp: `now` in UTC, or the current time. Naive times are refused."""
    if now is None:
        return datetime.now(UTC)
    if now.utcoffset() is None:
        raise PortalError(Reason.NAIVE_DATETIME)
    return now.astimezone(UTC)


def enum_value(kind: type[E], value: E | str, field: str) -> E:
    """`value` as a member of `kind`, or INVALID_VALUE naming `field`."""
    try:
        return kind(value)
    except ValueError as err:
        raise PortalError(Reason.INVALID_VALUE, field=field) from err


def text_value(value: str, field: str, *, max_length: int, allow_empty: bool = False) -> str:
    """`value` stripped, within the column's length; INVALID_VALUE naming `field` otherwise."""
    stripped = value.strip()
    if len(stripped) > max_length or (not stripped and not allow_empty):
        raise PortalError(Reason.INVALID_VALUE, field=field)
    return stripped


def ids_of(values: Iterable[int]) -> list[int]:
    """Ids without duplicates, in the order first given."""
    return list(dict.fromkeys(values))


async def organization(session: AsyncSession, org_id: int) -> Organization:
    org = await session.get(Organization, org_id)
    if org is None:
        raise PortalError(Reason.NO_SUCH_ORGANIZATION, organization_id=org_id)
    return org


async def participant(session: AsyncSession, participant_id: int) -> Participant:
    found = await session.get(Participant, participant_id)
    if found is None:
        raise PortalError(Reason.NO_SUCH_PARTICIPANT, participant_id=participant_id)
    return found


async def thread(session: AsyncSession, thread_id: int, *, lock: bool = False) -> Thread:
    """The thread; `lock` takes its row lock (PostgreSQL) so that access checks
    and audience changes on one thread happen one after the other."""
    query = select(Thread).where(Thread.id == thread_id)
    if lock:
        query = query.with_for_update()
    found = (await session.exec(query)).first()
    if found is None:
        raise PortalError(Reason.NO_SUCH_THREAD, thread_id=thread_id)
    return found


async def staff_of(
    session: AsyncSession, org_id: int, *, only: Iterable[int] | None = None
) -> dict[int, StaffMember]:
    """The staff of an organization (active or not) with their roles, by id."""
    query = (
        select(Participant.id, Participant.active, ParticipantRole.role)
        .join(ParticipantRole, col(ParticipantRole.participant_id) == col(Participant.id))
        .where(Participant.organization_id == org_id)
        .where(Participant.kind == ParticipantKind.STAFF.value)
    )
    if only is not None:
        query = query.where(col(Participant.id).in_(list(only)))
    roles: dict[int, set[StaffRole]] = {}
    active: dict[int, bool] = {}
    for pid, is_active, role in await session.exec(query):
        assert pid is not None
        roles.setdefault(pid, set()).add(StaffRole(role))
        active[pid] = is_active
    return {pid: StaffMember(pid, active[pid], frozenset(held)) for pid, held in roles.items()}


async def staff_member(session: AsyncSession, person: Participant) -> StaffMember:
    """`person` as a staff member with roles, or NOT_STAFF."""
    if person.kind != ParticipantKind.STAFF.value or person.id is None:
        raise PortalError(Reason.NOT_STAFF, participant_id=person.id)
    found = await staff_of(session, person.organization_id, only=[person.id])
    return found.get(person.id, StaffMember(person.id, person.active, frozenset()))


async def thread_clinician_ids(session: AsyncSession, thread_id: int) -> set[int]:
    query = select(ThreadClinician.clinician_id).where(ThreadClinician.thread_id == thread_id)
    return set(await session.exec(query))


async def revoke_tokens(
    session: AsyncSession,
    participant_ids: Iterable[int],
    at: datetime,
    *,
    thread_id: int | None = None,
) -> int:
    """Revoke the unrevoked reply tokens of these participants (on one thread,
    or everywhere); returns how many were revoked."""
    ids = list(participant_ids)
    if not ids:
        return 0
    statement = (
        update(ReplyToken)
        .where(col(ReplyToken.participant_id).in_(ids))
        .where(col(ReplyToken.revoked_at).is_(None))
        .values(revoked_at=at)
    )
    if thread_id is not None:
        statement = statement.where(col(ReplyToken.thread_id) == thread_id)
    result = await session.exec(statement)
    return int(result.rowcount)


def audit(
    session: AsyncSession,
    action: str,
    at: datetime,
    *,
    actor_id: int | None = None,
    organization_id: int | None = None,
    thread_id: int | None = None,
    message_id: int | None = None,
    participant_id: int | None = None,
    detail: dict[str, int | str | bool | None] | None = None,
) -> None:
    """Add an audit event: ids, codes and counts only, never content."""
    session.add(
        AuditEvent(
            at=at,
            actor=ACTOR if actor_id is None else f"{ACTOR}:participant:{actor_id}",
            action=action,
            organization_id=organization_id,
            thread_id=thread_id,
            message_id=message_id,
            participant_id=participant_id,
            detail=detail or {},
        )
    )
