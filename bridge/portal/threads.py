"""Threads and messages, as a portal writes them.

Opening a thread (with its clinicians and every mailbox row it needs) and
posting a message with attachments. Audience changes are in
`bridge.portal.access`, mass messages in `bridge.portal.mass`, per-person
mailbox state in `bridge.portal.mailboxes`.

Messages are written with `dispatched_at` NULL: notifying people is the
daemon's dispatcher's job, not this module's.

Decisions recorded here because the brief of the store leaves them open:

* `clinician_ids=None` (the default) assigns the client's assigned clinicians
  (`client_clinicians`) to the thread; an explicit list, even empty, is taken
  as given. An author holding the clinician role is always added.
* A contact of the client who writes the first message is Cc'd implicitly.
* Inactive staff get no new mailbox rows; inactive participants may not
  author messages; threads are not opened for inactive clients.
* `post_message` locks the thread row before checking access, so a message
  cannot slip in from an author whose access a concurrent audience change
  (`bridge.portal.access`) is removing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.mail.filenames import safe_filename
from bridge.portal import _rows
from bridge.portal.errors import PortalError, Reason
from bridge.store.blobs import write_blob
from bridge.store.models import (
    Attachment,
    Audience,
    ClientClinician,
    Mailbox,
    Message,
    MessageSource,
    Participant,
    ParticipantKind,
    StaffRole,
    Thread,
    ThreadClinician,
)

SUBJECT_LENGTH = 500
TOPIC_LENGTH = 200
_CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")
_FALLBACK_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class ThreadRef:
    thread_id: int
    message_id: int


@dataclass(frozen=True)
class AttachmentIn:
    """An uploaded file: its name and type as the uploader gave them, and its bytes."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class NewThread:
    """A validated thread to open (what `open_thread` writes)."""

    organization_id: int
    client_id: int
    subject: str
    topic: str | None
    audience: Audience
    clinician_ids: frozenset[int]
    contact_ids: frozenset[int]
    mass_message_id: int | None = None


async def create_thread(
    session: AsyncSession,
    org_id: int,
    client_id: int,
    subject: str,
    *,
    audience: Audience | str = Audience.CLINICAL,
    topic: str | None = None,
    clinician_ids: Iterable[int] | None = None,
    cc_contact_ids: Iterable[int] = (),
    author_id: int,
    body_text: str,
    body_html: str | None = None,
    attachments: Iterable[AttachmentIn] = (),
    blob_dir: Path | None = None,
    now: datetime | None = None,
) -> ThreadRef:
    """Open a thread about one client and post its first message."""
    at = _rows.utc(now)
    chosen = _rows.enum_value(Audience, audience, "audience")
    await _rows.organization(session, org_id)
    await active_client(session, org_id, client_id)
    staff = await _rows.staff_of(session, org_id)
    if clinician_ids is None:
        clinicians = await _assigned_clinicians(session, client_id, staff)
    else:
        clinicians = _checked_clinicians(_rows.ids_of(clinician_ids), staff)
    contacts = await _checked_contacts(session, client_id, _rows.ids_of(cc_contact_ids))

    await _admit_author(session, org_id, client_id, author_id, chosen, staff, clinicians, contacts)
    new = NewThread(
        organization_id=org_id,
        client_id=client_id,
        subject=_rows.text_value(subject, "subject", max_length=SUBJECT_LENGTH),
        topic=None if topic is None else _rows.text_value(topic, "topic", max_length=TOPIC_LENGTH),
        audience=chosen,
        clinician_ids=frozenset(clinicians),
        contact_ids=frozenset(contacts),
    )
    return await open_thread(
        session, new, staff, author_id, body_text, body_html, tuple(attachments), blob_dir, at
    )


async def open_thread(
    session: AsyncSession,
    new: NewThread,
    staff: dict[int, _rows.StaffMember],
    author_id: int,
    body_text: str,
    body_html: str | None,
    attachments: tuple[AttachmentIn, ...],
    blob_dir: Path | None,
    at: datetime,
) -> ThreadRef:
    """Write a validated thread: rows, clinicians, mailboxes, first message."""
    _check_content(body_text, body_html, attachments, blob_dir)
    thread = Thread(
        organization_id=new.organization_id,
        client_id=new.client_id,
        subject=new.subject,
        topic=new.topic,
        audience=new.audience.value,
        mass_message_id=new.mass_message_id,
        created_at=at,
    )
    session.add(thread)
    await session.flush()
    assert thread.id is not None
    seeing = {
        member.id
        for member in staff.values()
        if member.active and member.may_see(new.audience, new.clinician_ids)
    }
    members = {new.client_id} | new.contact_ids | new.clinician_ids | seeing
    session.add_all(
        ThreadClinician(thread_id=thread.id, clinician_id=cid) for cid in sorted(new.clinician_ids)
    )
    session.add_all(
        Mailbox(thread_id=thread.id, participant_id=pid, joined_at=at) for pid in sorted(members)
    )
    await session.flush()
    message_id = await _insert_message(
        session, thread.id, author_id, body_text, body_html, attachments, blob_dir, at
    )
    author_box = await session.get(Mailbox, (thread.id, author_id))
    assert author_box is not None
    author_box.last_read_message_id = message_id
    await session.flush()
    return ThreadRef(thread.id, message_id)


async def post_message(
    session: AsyncSession,
    thread_id: int,
    author_id: int,
    body_text: str,
    body_html: str | None = None,
    *,
    attachments: Iterable[AttachmentIn] = (),
    blob_dir: Path | None = None,
    now: datetime | None = None,
) -> int:
    """Post a message to a thread the author belongs to; returns the message id.

    The author needs a mailbox row on the thread, must be active and, if
    staff, must still see the thread by its audience. Their own mailbox is
    marked read up to the new message.
    """
    at = _rows.utc(now)
    files = tuple(attachments)
    _check_content(body_text, body_html, files, blob_dir)
    thread = await _rows.thread(session, thread_id, lock=True)
    box = await session.get(Mailbox, (thread_id, author_id))
    if box is None:
        raise PortalError(Reason.NOT_A_MEMBER, thread_id=thread_id, participant_id=author_id)
    author = await _rows.participant(session, author_id)
    if not author.active:
        raise PortalError(Reason.INACTIVE_PARTICIPANT, participant_id=author_id)
    if author.kind == ParticipantKind.STAFF.value:
        member = await _rows.staff_member(session, author)
        assigned = await _rows.thread_clinician_ids(session, thread_id)
        if not member.may_see(Audience(thread.audience), assigned):
            raise PortalError(Reason.NO_ACCESS, thread_id=thread_id, participant_id=author_id)
    message_id = await _insert_message(
        session, thread_id, author_id, body_text, body_html, files, blob_dir, at
    )
    box.last_read_message_id = message_id
    await session.flush()
    return message_id


async def _admit_author(
    session: AsyncSession,
    org_id: int,
    client_id: int,
    author_id: int,
    audience: Audience,
    staff: dict[int, _rows.StaffMember],
    clinicians: set[int],
    contacts: set[int],
) -> None:
    """Check that `author_id` may open the thread; add them to `clinicians` or
    `contacts` when their role makes them a member."""
    author = await _rows.participant(session, author_id)
    if author.organization_id != org_id:
        raise PortalError(Reason.WRONG_ORGANIZATION, organization_id=org_id, author_id=author_id)
    if not author.active:
        raise PortalError(Reason.INACTIVE_PARTICIPANT, participant_id=author_id)
    if author.kind == ParticipantKind.STAFF.value:
        member = staff.get(author_id)
        if member is not None and StaffRole.CLINICIAN in member.roles:
            clinicians.add(author_id)
        if member is None or not member.may_see(audience, clinicians):
            raise PortalError(Reason.NO_ACCESS, participant_id=author_id)
    elif author.kind == ParticipantKind.CONTACT.value:
        if author.contact_of_id != client_id:
            raise PortalError(
                Reason.NOT_CONTACT_OF_CLIENT, contact_id=author_id, client_id=client_id
            )
        contacts.add(author_id)
    elif author_id != client_id:
        raise PortalError(Reason.NO_ACCESS, participant_id=author_id)


async def active_client(session: AsyncSession, org_id: int, client_id: int) -> Participant:
    """The client, if it is an active client of the organization."""
    client = await session.get(Participant, client_id)
    if (
        client is None
        or client.kind != ParticipantKind.CLIENT.value
        or client.organization_id != org_id
    ):
        raise PortalError(Reason.NOT_A_CLIENT, organization_id=org_id, client_id=client_id)
    if not client.active:
        raise PortalError(Reason.INACTIVE_CLIENT, client_id=client_id)
    return client


async def _assigned_clinicians(
    session: AsyncSession, client_id: int, staff: dict[int, _rows.StaffMember]
) -> set[int]:
    query = select(ClientClinician.clinician_id).where(ClientClinician.client_id == client_id)
    return {
        cid
        for cid in await session.exec(query)
        if cid in staff and staff[cid].active and StaffRole.CLINICIAN in staff[cid].roles
    }


def _checked_clinicians(ids: list[int], staff: dict[int, _rows.StaffMember]) -> set[int]:
    wrong = [cid for cid in ids if cid not in staff or StaffRole.CLINICIAN not in staff[cid].roles]
    if wrong:
        raise PortalError(Reason.NOT_A_CLINICIAN, clinician_ids=wrong)
    inactive = [cid for cid in ids if not staff[cid].active]
    if inactive:
        raise PortalError(Reason.INACTIVE_PARTICIPANT, participant_ids=inactive)
    return set(ids)


async def _checked_contacts(session: AsyncSession, client_id: int, ids: list[int]) -> set[int]:
    if not ids:
        return set()
    rows = {
        row.id: row
        for row in await session.exec(select(Participant).where(col(Participant.id).in_(ids)))
    }
    wrong = [
        pid
        for pid in ids
        if pid not in rows
        or rows[pid].kind != ParticipantKind.CONTACT.value
        or rows[pid].contact_of_id != client_id
    ]
    if wrong:
        raise PortalError(Reason.NOT_CONTACT_OF_CLIENT, client_id=client_id, contact_ids=wrong)
    inactive = [pid for pid in ids if not rows[pid].active]
    if inactive:
        raise PortalError(Reason.INACTIVE_PARTICIPANT, participant_ids=inactive)
    return set(ids)


def _check_content(
    body_text: str,
    body_html: str | None,
    attachments: tuple[AttachmentIn, ...],
    blob_dir: Path | None,
) -> None:
    if not body_text.strip() and not (body_html or "").strip() and not attachments:
        raise PortalError(Reason.EMPTY_MESSAGE)
    if attachments and blob_dir is None:
        raise PortalError(Reason.NO_BLOB_DIR)


async def _insert_message(
    session: AsyncSession,
    thread_id: int,
    author_id: int,
    body_text: str,
    body_html: str | None,
    attachments: tuple[AttachmentIn, ...],
    blob_dir: Path | None,
    at: datetime,
) -> int:
    message = Message(
        thread_id=thread_id,
        author_id=author_id,
        body_text=body_text,
        body_html=body_html,
        source=MessageSource.PORTAL.value,
        created_at=at,
    )
    session.add(message)
    await session.flush()
    assert message.id is not None
    for item in attachments:
        assert blob_dir is not None  # _check_content refused attachments without a folder
        # The blob is written before the transaction commits; if it then rolls
        # back, the blob is an orphan that the purge job may collect.
        sha256 = await write_blob(blob_dir, item.data)
        session.add(
            Attachment(
                message_id=message.id,
                filename=safe_filename(item.filename),
                content_type=_content_type(item.content_type),
                size=len(item.data),
                sha256=sha256,
            )
        )
    await session.flush()
    return message.id


def _content_type(given: str) -> str:
    """`type/subtype` in lower case without parameters; octet-stream if unusable."""
    value = given.split(";", 1)[0].strip().lower()
    return value if len(value) <= 255 and _CONTENT_TYPE.fullmatch(value) else _FALLBACK_CONTENT_TYPE
