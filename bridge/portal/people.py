"""Organizations and the people in them, as a portal writes them.

Creating an organization and switching its notification mode; adding staff,
clients and contacts with their email addresses; roles, clinician
assignments, notification preferences; deactivation. Each function takes an
open write session (`async with store.transaction() as session:`) and never
commits. Threads and mailboxes are in `bridge.portal.threads`.

Decisions recorded here because the store cannot express them:

* Switching to convenience mode needs the id of an active practice admin of
  the organization who acknowledged that HIPAA compliance can then not be
  guaranteed. Switching back to secure *clears* the acknowledgement columns,
  so that every later switch to convenience, even one written in plain SQL by
  another portal, needs a fresh acknowledgement (the CHECK constraint enforces
  it). The history of acknowledgements is in `audit_events`.
* Deactivating a participant revokes all their unrevoked reply tokens: an
  inactive person has lost access (DESIGN invariant 4). Their mailbox rows
  stay, so a reactivation by the portal finds their threads again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.mail.address import InvalidAddress, normalize_address, normalize_domain
from bridge.portal import _rows
from bridge.portal.errors import PortalError, Reason
from bridge.store.models import (
    ClientClinician,
    EmailAddress,
    NotificationMode,
    NotificationPreference,
    Organization,
    Participant,
    ParticipantKind,
    ParticipantRole,
    StaffRole,
)

_NAME_LENGTH = 200
_URL_LENGTH = 500


@dataclass(frozen=True)
class Preferences:
    """A staff member's notification preferences (the defaults when no row exists)."""

    email_enabled: bool = True
    administrative: bool = True
    billing: bool = True
    clinical: bool = True


async def create_organization(
    session: AsyncSession,
    display_name: str,
    portal_base_url: str,
    reply_domain: str,
    *,
    trash_retention_days: int = 15,
    now: datetime | None = None,
) -> int:
    """A new organization in secure mode; returns its id."""
    url = _rows.text_value(portal_base_url, "portal_base_url", max_length=_URL_LENGTH)
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise PortalError(Reason.INVALID_VALUE, field="portal_base_url")
    try:
        domain = normalize_domain(reply_domain)
    except InvalidAddress as err:
        raise PortalError(Reason.INVALID_VALUE, field="reply_domain") from err
    if trash_retention_days < 1:
        raise PortalError(Reason.INVALID_VALUE, field="trash_retention_days")
    org = Organization(
        display_name=_rows.text_value(display_name, "display_name", max_length=_NAME_LENGTH),
        portal_base_url=url,
        reply_domain=domain,
        trash_retention_days=trash_retention_days,
        created_at=_rows.utc(now),
    )
    session.add(org)
    await session.flush()
    assert org.id is not None
    return org.id


async def set_notification_mode(
    session: AsyncSession,
    org_id: int,
    mode: NotificationMode | str,
    *,
    acknowledged_by: int | None,
    now: datetime | None = None,
) -> None:
    """Switch an organization between secure and convenience mode.

    Convenience needs `acknowledged_by`: an active practice admin of the
    organization. Each switch to convenience (re-)records who acknowledged
    and when; switching to secure clears that record (see the module notes).
    Setting the mode the organization already has in secure mode is a no-op.
    """
    at = _rows.utc(now)
    target = _rows.enum_value(NotificationMode, mode, "mode")
    org = await _rows.organization(session, org_id)
    previous = org.notification_mode
    if target is NotificationMode.CONVENIENCE:
        if acknowledged_by is None:
            raise PortalError(Reason.CONVENIENCE_NEEDS_ACKNOWLEDGEMENT, organization_id=org_id)
        admin = await session.get(Participant, acknowledged_by)
        member = None
        if (
            admin is not None
            and admin.organization_id == org_id
            and admin.kind == ParticipantKind.STAFF.value
        ):
            member = await _rows.staff_member(session, admin)
        if member is None or not member.active or StaffRole.PRACTICE_ADMIN not in member.roles:
            raise PortalError(
                Reason.ACKNOWLEDGER_NOT_ADMIN,
                organization_id=org_id,
                participant_id=acknowledged_by,
            )
        org.convenience_acknowledged_at = at
        org.convenience_acknowledged_by = acknowledged_by
    elif previous == NotificationMode.SECURE.value:
        return
    else:
        org.convenience_acknowledged_at = None
        org.convenience_acknowledged_by = None
    org.notification_mode = target.value
    _rows.audit(
        session,
        "notification_mode_changed",
        at,
        actor_id=acknowledged_by,
        organization_id=org_id,
        detail={"from": previous, "to": target.value},
    )


async def add_staff(
    session: AsyncSession,
    org_id: int,
    display_name: str,
    roles: Iterable[StaffRole | str],
    emails: Iterable[str],
    *,
    has_portal_account: bool = True,
    email_content_consent: bool = False,
    preferences: Preferences | None = None,
    now: datetime | None = None,
) -> int:
    """A staff member with at least one role; returns the participant id."""
    held = {_rows.enum_value(StaffRole, role, "roles") for role in roles}
    if not held:
        raise PortalError(Reason.NO_ROLES, organization_id=org_id)
    await _rows.organization(session, org_id)
    staff_id = await _add_participant(
        session,
        org_id,
        ParticipantKind.STAFF,
        display_name,
        emails,
        has_portal_account=has_portal_account,
        email_content_consent=email_content_consent,
        now=now,
    )
    session.add_all(ParticipantRole(participant_id=staff_id, role=role.value) for role in held)
    if preferences is not None:
        session.add(NotificationPreference(participant_id=staff_id, **vars(preferences)))
    await session.flush()
    return staff_id


async def add_client(
    session: AsyncSession,
    org_id: int,
    display_name: str,
    emails: Iterable[str],
    *,
    active: bool = True,
    has_portal_account: bool = False,
    email_content_consent: bool = False,
    now: datetime | None = None,
) -> int:
    """A client of the organization; returns the participant id."""
    await _rows.organization(session, org_id)
    return await _add_participant(
        session,
        org_id,
        ParticipantKind.CLIENT,
        display_name,
        emails,
        active=active,
        has_portal_account=has_portal_account,
        email_content_consent=email_content_consent,
        now=now,
    )


async def add_contact(
    session: AsyncSession,
    client_id: int,
    display_name: str,
    emails: Iterable[str],
    *,
    email_content_consent: bool = False,
    has_portal_account: bool = False,
    now: datetime | None = None,
) -> int:
    """A contact (parent, guardian) of one client; returns the participant id."""
    client = await _rows.participant(session, client_id)
    if client.kind != ParticipantKind.CLIENT.value:
        raise PortalError(Reason.NOT_A_CLIENT, client_id=client_id)
    return await _add_participant(
        session,
        client.organization_id,
        ParticipantKind.CONTACT,
        display_name,
        emails,
        contact_of_id=client_id,
        has_portal_account=has_portal_account,
        email_content_consent=email_content_consent,
        now=now,
    )


async def add_email(
    session: AsyncSession, participant_id: int, address: str, primary: bool = False
) -> int:
    """Another address of a participant; returns the address row id.

    The first address a participant gets is primary whatever `primary` says;
    a new primary address demotes the previous one.
    """
    await _rows.participant(session, participant_id)
    normalized = _normalized(address, participant_id)
    existing = list(
        await session.exec(
            select(EmailAddress).where(EmailAddress.participant_id == participant_id)
        )
    )
    if any(row.normalized == normalized for row in existing):
        raise PortalError(Reason.DUPLICATE_EMAIL, participant_id=participant_id)
    if primary:
        for row in existing:
            row.is_primary = False
    row = EmailAddress(
        participant_id=participant_id,
        address=_as_given(address),
        normalized=normalized,
        is_primary=primary or not any(r.is_primary for r in existing),
    )
    session.add(row)
    await session.flush()
    assert row.id is not None
    return row.id


async def set_preferences(
    session: AsyncSession,
    staff_id: int,
    *,
    email_enabled: bool | None = None,
    administrative: bool | None = None,
    billing: bool | None = None,
    clinical: bool | None = None,
) -> Preferences:
    """Change some of a staff member's preferences (None keeps a value); returns them all."""
    await _rows.staff_member(session, await _rows.participant(session, staff_id))
    row = await session.get(NotificationPreference, staff_id)
    if row is None:
        row = NotificationPreference(participant_id=staff_id, **vars(Preferences()))
        session.add(row)
    changes = {
        "email_enabled": email_enabled,
        "administrative": administrative,
        "billing": billing,
        "clinical": clinical,
    }
    for name, value in changes.items():
        if value is not None:
            setattr(row, name, value)
    await session.flush()
    return Preferences(row.email_enabled, row.administrative, row.billing, row.clinical)


async def assign_clinician(session: AsyncSession, client_id: int, clinician_id: int) -> None:
    """Assign a clinician to a client (idempotent). Existing threads are not changed."""
    client = await _rows.participant(session, client_id)
    if client.kind != ParticipantKind.CLIENT.value:
        raise PortalError(Reason.NOT_A_CLIENT, client_id=client_id)
    clinician = await _rows.participant(session, clinician_id)
    if clinician.organization_id != client.organization_id:
        raise PortalError(Reason.WRONG_ORGANIZATION, client_id=client_id, clinician_id=clinician_id)
    member = await _rows.staff_member(session, clinician)
    if StaffRole.CLINICIAN not in member.roles:
        raise PortalError(Reason.NOT_A_CLINICIAN, clinician_id=clinician_id)
    if not member.active:
        raise PortalError(Reason.INACTIVE_PARTICIPANT, participant_id=clinician_id)
    if await session.get(ClientClinician, (client_id, clinician_id)) is None:
        session.add(ClientClinician(client_id=client_id, clinician_id=clinician_id))
        await session.flush()


async def deactivate(
    session: AsyncSession, participant_id: int, *, now: datetime | None = None
) -> int:
    """Mark a participant inactive and revoke their reply tokens; returns how many.

    Idempotent: deactivating an inactive participant revokes nothing new.
    """
    at = _rows.utc(now)
    person = await _rows.participant(session, participant_id)
    was_active = person.active
    person.active = False
    revoked = await _rows.revoke_tokens(session, [participant_id], at)
    if was_active or revoked:
        _rows.audit(
            session,
            "participant_deactivated",
            at,
            organization_id=person.organization_id,
            participant_id=participant_id,
            detail={"tokens_revoked": revoked},
        )
    return revoked


async def _add_participant(
    session: AsyncSession,
    org_id: int,
    kind: ParticipantKind,
    display_name: str,
    emails: Iterable[str],
    *,
    active: bool = True,
    has_portal_account: bool,
    email_content_consent: bool,
    contact_of_id: int | None = None,
    now: datetime | None,
) -> int:
    addresses = [(_as_given(address), _normalized(address, None)) for address in emails]
    normalized = [pair[1] for pair in addresses]
    if len(set(normalized)) != len(normalized):
        raise PortalError(Reason.DUPLICATE_EMAIL, organization_id=org_id)
    person = Participant(
        organization_id=org_id,
        kind=kind.value,
        display_name=_rows.text_value(display_name, "display_name", max_length=_NAME_LENGTH),
        active=active,
        has_portal_account=has_portal_account,
        email_content_consent=email_content_consent,
        contact_of_id=contact_of_id,
        created_at=_rows.utc(now),
    )
    session.add(person)
    await session.flush()
    assert person.id is not None
    session.add_all(
        EmailAddress(
            participant_id=person.id, address=given, normalized=norm, is_primary=index == 0
        )
        for index, (given, norm) in enumerate(addresses)
    )
    await session.flush()
    return person.id


def _as_given(address: str) -> str:
    """The address as the person wrote it, minus surrounding blanks and <>."""
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text


def _normalized(address: str, participant_id: int | None) -> str:
    try:
        return normalize_address(address)
    except InvalidAddress as err:
        raise PortalError(Reason.INVALID_ADDRESS, participant_id=participant_id) from err
