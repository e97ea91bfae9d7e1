"""The portal API, proved by reading its effects back from the store's tables.

Every test runs on SQLite and (with BRIDGE_TEST_DATABASE_URL) on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import secrets
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, col, select

from bridge.portal import AttachmentIn, Portal, PortalError, Preferences, people
from bridge.store.blobs import blob_path
from bridge.store.engine import Store
from bridge.store.models import (
    Attachment,
    Audience,
    AuditEvent,
    ClientClinician,
    EmailAddress,
    Mailbox,
    MassMessage,
    Message,
    NotificationMode,
    NotificationPreference,
    Organization,
    Participant,
    ParticipantRole,
    ReplyToken,
    StaffRole,
    Thread,
    ThreadClinician,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
M = TypeVar("M", bound=SQLModel)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite gives back naive UTC; PostgreSQL gives aware datetimes."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


async def rows(store: Store, model: type[M], *where: Any) -> list[M]:
    async with store.read() as session:
        return list(await session.exec(select(model).where(*where)))


async def mailbox_ids(store: Store, thread_id: int) -> set[int]:
    boxes = await rows(store, Mailbox, Mailbox.thread_id == thread_id)
    return {box.participant_id for box in boxes}


async def add_token(store: Store, participant_id: int, thread_id: int) -> int:
    token = ReplyToken(
        token_hash=secrets.token_hex(32),
        participant_id=participant_id,
        thread_id=thread_id,
        expires_at=T0 + timedelta(days=30),
    )
    async with store.transaction() as session:
        session.add(token)
        await session.flush()
        assert token.id is not None
        return token.id


async def token(store: Store, token_id: int) -> ReplyToken:
    async with store.read() as session:
        found = await session.get(ReplyToken, token_id)
        assert found is not None
        return found


@dataclass(frozen=True)
class Practice:
    """One organization with a person in every role the rules distinguish."""

    org: int
    clinician: int  # assigned to `client`
    other_clinician: int  # assigned to nobody
    supervisor: int
    clinical_admin: int
    practice_admin: int
    scheduler: int
    biller: int
    retired_supervisor: int  # inactive
    client: int
    parent: int  # contact of `client`
    other_client: int
    other_parent: int  # contact of `other_client`
    inactive_client: int


@pytest.fixture
def portal(store: Store, tmp_path: Path) -> Portal:
    return Portal(store, blob_dir=tmp_path / "blobs")


@pytest.fixture
async def practice(portal: Portal) -> Practice:
    org = await portal.create_organization(
        "Harbour Therapy", "https://portal.example.com", "reply.example.com", now=T0
    )

    async def staff(name: str, *roles: StaffRole) -> int:
        return await portal.add_staff(org, name, roles, [f"{name}@harbour.example"], now=T0)

    clinician = await staff("clin", StaffRole.CLINICIAN)
    retired = await staff("retired", StaffRole.SUPERVISOR)
    await portal.deactivate(retired, now=T0)
    client = await portal.add_client(org, "Client One", ["one@client.example"], now=T0)
    other_client = await portal.add_client(org, "Client Two", ["two@client.example"], now=T0)
    await portal.assign_clinician(client, clinician)
    return Practice(
        org=org,
        clinician=clinician,
        other_clinician=await staff("clin2", StaffRole.CLINICIAN),
        supervisor=await staff("super", StaffRole.SUPERVISOR),
        clinical_admin=await staff("cadmin", StaffRole.CLINICAL_ADMIN),
        practice_admin=await staff("padmin", StaffRole.PRACTICE_ADMIN),
        scheduler=await staff("sched", StaffRole.SCHEDULER),
        biller=await staff("bill", StaffRole.BILLER),
        retired_supervisor=retired,
        client=client,
        parent=await portal.add_contact(client, "Parent One", ["parent@client.example"]),
        other_client=other_client,
        other_parent=await portal.add_contact(other_client, "Parent Two", ["p2@client.example"]),
        inactive_client=await portal.add_client(org, "Gone", [], active=False, now=T0),
    )


async def open_thread(
    portal: Portal, p: Practice, audience: Audience = Audience.CLINICAL, **kwargs: Any
) -> int:
    ref = await portal.create_thread(
        p.org,
        p.client,
        "Appointment",
        audience=audience,
        author_id=kwargs.pop("author_id", p.client),
        body_text="Hello",
        now=T0,
        **kwargs,
    )
    return ref.thread_id


# --- organizations and notification mode ------------------------------------------------


async def test_new_organization_is_secure_with_normalized_reply_domain(
    portal: Portal, store: Store
) -> None:
    org_id = await portal.create_organization(
        "Clinic", "https://p.example", "Reply.Bücher.de.", trash_retention_days=30, now=T0
    )
    [org] = await rows(store, Organization, Organization.id == org_id)
    assert org.notification_mode == NotificationMode.SECURE.value
    assert org.convenience_acknowledged_at is None
    assert org.trash_retention_days == 30
    assert org.reply_domain == "reply.xn--bcher-kva.de"
    assert as_utc(org.created_at) == T0


@pytest.mark.parametrize(
    ("url", "domain", "days", "field"),
    [
        ("ftp://p.example", "r.example", 15, "portal_base_url"),
        ("https://p.example", "not a domain", 15, "reply_domain"),
        ("https://p.example", "r.example", 0, "trash_retention_days"),
    ],
)
async def test_create_organization_refuses_invalid_settings(
    portal: Portal, store: Store, url: str, domain: str, days: int, field: str
) -> None:
    with pytest.raises(PortalError) as caught:
        await portal.create_organization("C", url, domain, trash_retention_days=days)
    assert (caught.value.reason, caught.value.field) == ("invalid_value", field)
    assert await rows(store, Organization) == []


async def test_convenience_mode_without_acknowledgement_is_refused(
    portal: Portal, store: Store, practice: Practice
) -> None:
    with pytest.raises(PortalError) as caught:
        await portal.set_notification_mode(practice.org, "convenience", acknowledged_by=None)
    assert caught.value.reason == "convenience_needs_acknowledgement"
    assert caught.value.ids == {"organization_id": practice.org}
    [org] = await rows(store, Organization)
    assert org.notification_mode == "secure"


@pytest.mark.parametrize(
    "who", ["clinician", "supervisor", "clinical_admin", "retired_supervisor", "client"]
)
async def test_convenience_acknowledgement_must_come_from_an_active_practice_admin(
    portal: Portal, store: Store, practice: Practice, who: str
) -> None:
    with pytest.raises(PortalError) as caught:
        await portal.set_notification_mode(
            practice.org, NotificationMode.CONVENIENCE, acknowledged_by=getattr(practice, who)
        )
    assert caught.value.reason == "acknowledger_not_admin"
    [org] = await rows(store, Organization)
    assert org.notification_mode == "secure"


async def test_convenience_acknowledgement_by_an_admin_of_another_org_is_refused(
    portal: Portal, practice: Practice
) -> None:
    other = await portal.create_organization("Other", "https://o.example", "o.example")
    stranger = await portal.add_staff(other, "admin", [StaffRole.PRACTICE_ADMIN], [])
    with pytest.raises(PortalError) as caught:
        await portal.set_notification_mode(practice.org, "convenience", acknowledged_by=stranger)
    assert caught.value.reason == "acknowledger_not_admin"


async def test_convenience_mode_records_who_acknowledged_and_audits_the_change(
    portal: Portal, store: Store, practice: Practice
) -> None:
    later = T0 + timedelta(hours=1)
    await portal.set_notification_mode(
        practice.org, "convenience", acknowledged_by=practice.practice_admin, now=later
    )
    [org] = await rows(store, Organization)
    assert org.notification_mode == "convenience"
    assert org.convenience_acknowledged_by == practice.practice_admin
    assert as_utc(org.convenience_acknowledged_at) == later
    [event] = await rows(store, AuditEvent, AuditEvent.action == "notification_mode_changed")
    assert event.organization_id == practice.org
    assert event.detail == {"from": "secure", "to": "convenience"}
    assert event.actor == f"portal:participant:{practice.practice_admin}"


async def test_back_to_secure_clears_the_acknowledgement_so_sql_cannot_silently_reenable(
    portal: Portal, store: Store, practice: Practice
) -> None:
    await portal.set_notification_mode(
        practice.org, "convenience", acknowledged_by=practice.practice_admin
    )
    await portal.set_notification_mode(practice.org, "secure", acknowledged_by=None)
    [org] = await rows(store, Organization)
    assert (org.notification_mode, org.convenience_acknowledged_at) == ("secure", None)
    assert org.convenience_acknowledged_by is None
    # Another portal flipping the mode in plain SQL now hits the CHECK constraint.
    with pytest.raises(IntegrityError):
        async with store.transaction() as session:
            await session.exec(sa.update(Organization).values(notification_mode="convenience"))
    events = await rows(store, AuditEvent, AuditEvent.action == "notification_mode_changed")
    assert [e.detail["to"] for e in sorted(events, key=lambda e: e.id or 0)] == [
        "convenience",
        "secure",
    ]


# --- people --------------------------------------------------------------------------------


async def test_add_staff_stores_roles_addresses_and_preferences(
    portal: Portal, store: Store, practice: Practice
) -> None:
    staff_id = await portal.add_staff(
        practice.org,
        "Dr Who",
        [StaffRole.CLINICIAN, "supervisor"],
        ["  Dr.Who@Example.COM ", "<who@bücher.de>"],
        preferences=Preferences(billing=False),
        now=T0,
    )
    [person] = await rows(store, Participant, Participant.id == staff_id)
    assert (person.kind, person.active, person.has_portal_account) == ("staff", True, True)
    roles = await rows(store, ParticipantRole, ParticipantRole.participant_id == staff_id)
    assert {r.role for r in roles} == {"clinician", "supervisor"}
    emails = await rows(store, EmailAddress, EmailAddress.participant_id == staff_id)
    by_address = {e.address: (e.normalized, e.is_primary) for e in emails}
    assert by_address == {
        "Dr.Who@Example.COM": ("dr.who@example.com", True),
        "who@bücher.de": ("who@xn--bcher-kva.de", False),
    }
    [prefs] = await rows(
        store, NotificationPreference, NotificationPreference.participant_id == staff_id
    )
    assert (prefs.email_enabled, prefs.billing, prefs.clinical) == (True, False, True)


async def test_staff_without_roles_is_refused(portal: Portal, practice: Practice) -> None:
    with pytest.raises(PortalError) as caught:
        await portal.add_staff(practice.org, "Nobody", [], ["n@example.com"])
    assert caught.value.reason == "no_roles"


async def test_clients_and_contacts_are_linked_and_flags_stored(
    portal: Portal, store: Store, practice: Practice
) -> None:
    client = await portal.add_client(
        practice.org, "C", ["c@example.com"], has_portal_account=True, email_content_consent=True
    )
    contact = await portal.add_contact(client, "Mum", ["mum@example.com"])
    [c] = await rows(store, Participant, Participant.id == client)
    [k] = await rows(store, Participant, Participant.id == contact)
    assert (c.kind, c.has_portal_account, c.email_content_consent) == ("client", True, True)
    assert (k.kind, k.contact_of_id, k.organization_id) == ("contact", client, practice.org)
    assert (k.has_portal_account, k.email_content_consent) == (False, False)


async def test_a_contact_must_belong_to_a_client(portal: Portal, practice: Practice) -> None:
    with pytest.raises(PortalError) as caught:
        await portal.add_contact(practice.clinician, "X", [])
    assert caught.value.reason == "not_a_client"


async def test_duplicate_or_invalid_addresses_refuse_the_whole_participant(
    portal: Portal, store: Store, practice: Practice
) -> None:
    before = len(await rows(store, Participant))
    with pytest.raises(PortalError) as dup:
        await portal.add_client(practice.org, "Twice", ["a@example.com", "A@EXAMPLE.com"])
    with pytest.raises(PortalError) as bad:
        await portal.add_client(practice.org, "Broken", ["ok@example.com", "not an address"])
    assert (dup.value.reason, bad.value.reason) == ("duplicate_email", "invalid_address")
    assert "not an address" not in str(bad.value)
    assert len(await rows(store, Participant)) == before


async def test_add_email_can_make_a_new_primary_and_refuses_duplicates(
    portal: Portal, store: Store, practice: Practice
) -> None:
    new_id = await portal.add_email(practice.client, "New@Client.example", primary=True)
    emails = await rows(store, EmailAddress, EmailAddress.participant_id == practice.client)
    assert {e.id: e.is_primary for e in emails} == {e.id: e.id == new_id for e in emails}
    assert len(emails) == 2
    with pytest.raises(PortalError) as caught:
        await portal.add_email(practice.client, "new@client.EXAMPLE")
    assert caught.value.reason == "duplicate_email"


async def test_first_added_address_becomes_primary(
    portal: Portal, store: Store, practice: Practice
) -> None:
    await portal.add_email(practice.inactive_client, "gone@example.com")
    [email] = await rows(
        store, EmailAddress, EmailAddress.participant_id == practice.inactive_client
    )
    assert email.is_primary


async def test_set_preferences_changes_only_what_is_given(
    portal: Portal, store: Store, practice: Practice
) -> None:
    first = await portal.set_preferences(practice.clinician, clinical=False)
    second = await portal.set_preferences(practice.clinician, email_enabled=False)
    assert first == Preferences(clinical=False)
    assert second == Preferences(email_enabled=False, clinical=False)
    [row] = await rows(
        store, NotificationPreference, NotificationPreference.participant_id == practice.clinician
    )
    assert (row.email_enabled, row.administrative, row.billing, row.clinical) == (
        False,
        True,
        True,
        False,
    )
    with pytest.raises(PortalError) as caught:
        await portal.set_preferences(practice.client, clinical=False)
    assert caught.value.reason == "not_staff"


async def test_assign_clinician_is_idempotent_and_needs_the_clinician_role(
    portal: Portal, store: Store, practice: Practice
) -> None:
    await portal.assign_clinician(practice.client, practice.clinician)  # already assigned
    assignments = await rows(store, ClientClinician, ClientClinician.client_id == practice.client)
    assert [a.clinician_id for a in assignments] == [practice.clinician]
    with pytest.raises(PortalError) as caught:
        await portal.assign_clinician(practice.client, practice.scheduler)
    assert caught.value.reason == "not_a_clinician"


async def test_deactivate_revokes_every_reply_token_of_the_participant(
    portal: Portal, store: Store, practice: Practice
) -> None:
    first = await open_thread(portal, practice)
    second = await open_thread(portal, practice)
    tokens = [await add_token(store, practice.clinician, t) for t in (first, second)]
    supervisor_token = await add_token(store, practice.supervisor, first)
    later = T0 + timedelta(days=1)
    assert await portal.deactivate(practice.clinician, now=later) == 2
    [person] = await rows(store, Participant, Participant.id == practice.clinician)
    assert not person.active
    assert [as_utc((await token(store, t)).revoked_at) for t in tokens] == [later, later]
    assert (await token(store, supervisor_token)).revoked_at is None


# --- threads -----------------------------------------------------------------------------


async def test_clinical_thread_gives_mailboxes_to_client_contacts_clinicians_and_clinical_staff(
    portal: Portal, store: Store, practice: Practice
) -> None:
    ref = await portal.create_thread(
        practice.org,
        practice.client,
        "About Tuesday",
        cc_contact_ids=[practice.parent],
        author_id=practice.client,
        body_text="Can we move it?",
        now=T0,
    )
    assert await mailbox_ids(store, ref.thread_id) == {
        practice.client,
        practice.parent,
        practice.clinician,  # the client's assigned clinician, by default
        practice.supervisor,
        practice.clinical_admin,
    }
    clinicians = await rows(store, ThreadClinician, ThreadClinician.thread_id == ref.thread_id)
    assert [c.clinician_id for c in clinicians] == [practice.clinician]
    [message] = await rows(store, Message, Message.thread_id == ref.thread_id)
    assert (message.id, message.author_id, message.source) == (
        ref.message_id,
        practice.client,
        "portal",
    )
    assert message.dispatched_at is None
    assert as_utc(message.created_at) == T0
    boxes = {
        b.participant_id: b for b in await rows(store, Mailbox, Mailbox.thread_id == ref.thread_id)
    }
    assert boxes[practice.client].last_read_message_id == ref.message_id
    assert boxes[practice.parent].last_read_message_id is None


async def test_administrative_thread_adds_schedulers_and_practice_admins_not_billers(
    portal: Portal, store: Store, practice: Practice
) -> None:
    thread_id = await open_thread(portal, practice, Audience.ADMINISTRATIVE, clinician_ids=[])
    assert await mailbox_ids(store, thread_id) == {
        practice.client,
        practice.supervisor,
        practice.clinical_admin,
        practice.practice_admin,
        practice.scheduler,
    }


async def test_staff_author_clinician_joins_the_thread_clinicians(
    portal: Portal, store: Store, practice: Practice
) -> None:
    thread_id = await open_thread(
        portal, practice, author_id=practice.other_clinician, clinician_ids=[]
    )
    clinicians = await rows(store, ThreadClinician, ThreadClinician.thread_id == thread_id)
    assert [c.clinician_id for c in clinicians] == [practice.other_clinician]
    assert practice.other_clinician in await mailbox_ids(store, thread_id)
    assert practice.clinician not in await mailbox_ids(store, thread_id)


async def test_cc_of_another_clients_contact_is_refused_and_nothing_is_written(
    portal: Portal, store: Store, practice: Practice
) -> None:
    with pytest.raises(PortalError) as caught:
        await open_thread(portal, practice, cc_contact_ids=[practice.parent, practice.other_parent])
    assert caught.value.reason == "not_contact_of_client"
    assert caught.value.ids == {
        "client_id": practice.client,
        "contact_ids": (practice.other_parent,),
    }
    assert "Parent" not in str(caught.value)
    assert await rows(store, Thread) == []
    assert await rows(store, Message) == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"client": "inactive_client"}, "inactive_client"),
        ({"client": "other_parent"}, "not_a_client"),
        ({"clinician_ids": ["scheduler"]}, "not_a_clinician"),
        ({"author_id": "biller"}, "no_access"),
        ({"author_id": "other_client"}, "no_access"),
        ({"author_id": "other_parent"}, "not_contact_of_client"),
        ({"author_id": "retired_supervisor"}, "inactive_participant"),
    ],
)
async def test_create_thread_refusals_have_reason_codes(
    portal: Portal, store: Store, practice: Practice, change: dict[str, Any], reason: str
) -> None:
    def pick(name: str) -> int:
        value = getattr(practice, name)
        assert isinstance(value, int)
        return value

    kwargs: dict[str, Any] = {"author_id": practice.client}
    client = practice.client
    for key, value in change.items():
        if key == "client":
            client = pick(value)
        elif key == "clinician_ids":
            kwargs[key] = [pick(v) for v in value]
        else:
            kwargs[key] = pick(value)
    with pytest.raises(PortalError) as caught:
        await portal.create_thread(practice.org, client, "S", body_text="B", **kwargs)
    assert caught.value.reason == reason
    assert await rows(store, Thread) == []


async def test_a_contact_who_writes_first_is_copied_in(
    portal: Portal, store: Store, practice: Practice
) -> None:
    thread_id = await open_thread(portal, practice, author_id=practice.parent)
    assert practice.parent in await mailbox_ids(store, thread_id)


# --- messages and attachments ----------------------------------------------------------------


async def test_post_message_is_undispatched_and_marks_only_the_author_read(
    portal: Portal, store: Store, practice: Practice
) -> None:
    thread_id = await open_thread(portal, practice)
    later = T0 + timedelta(minutes=5)
    message_id = await portal.post_message(
        thread_id, practice.clinician, "Yes", "<p>Yes</p>", now=later
    )
    [message] = await rows(store, Message, Message.id == message_id)
    assert (message.body_text, message.body_html, message.dispatched_at) == (
        "Yes",
        "<p>Yes</p>",
        None,
    )
    assert as_utc(message.created_at) == later
    boxes = {
        b.participant_id: b for b in await rows(store, Mailbox, Mailbox.thread_id == thread_id)
    }
    assert boxes[practice.clinician].last_read_message_id == message_id
    assert boxes[practice.client].last_read_message_id != message_id


async def test_post_message_by_a_non_member_is_refused(
    portal: Portal, store: Store, practice: Practice
) -> None:
    thread_id = await open_thread(portal, practice)
    for outsider in (practice.other_client, practice.other_parent, practice.scheduler):
        with pytest.raises(PortalError) as caught:
            await portal.post_message(thread_id, outsider, "hi")
        assert caught.value.reason == "not_a_member"
        assert caught.value.ids == {"thread_id": thread_id, "participant_id": outsider}
    assert len(await rows(store, Message, Message.thread_id == thread_id)) == 1


async def test_post_message_by_staff_whose_audience_excludes_them_is_refused(
    portal: Portal, store: Store, practice: Practice
) -> None:
    thread_id = await open_thread(portal, practice)
    # Another portal gave the biller a mailbox row on a clinical thread.
    async with store.transaction() as session:
        session.add(Mailbox(thread_id=thread_id, participant_id=practice.biller))
    with pytest.raises(PortalError) as caught:
        await portal.post_message(thread_id, practice.biller, "invoice")
    assert caught.value.reason == "no_access"


async def test_post_message_to_a_missing_thread_or_empty_is_refused(
    portal: Portal, practice: Practice
) -> None:
    thread_id = await open_thread(portal, practice)
    with pytest.raises(PortalError) as missing:
        await portal.post_message(thread_id + 1000, practice.client, "hi")
    with pytest.raises(PortalError) as empty:
        await portal.post_message(thread_id, practice.client, "  \n")
    assert (missing.value.reason, empty.value.reason) == ("no_such_thread", "empty_message")


async def test_attachments_land_content_addressed_with_safe_names(
    portal: Portal, store: Store, practice: Practice, tmp_path: Path
) -> None:
    thread_id = await open_thread(portal, practice)
    data = b"root:x:0:0:root:/root:/bin/bash\n" * 100
    message_id = await portal.post_message(
        thread_id,
        practice.client,
        "see attached",
        attachments=[
            AttachmentIn("../../etc/passwd", "Text/Plain; charset=utf-8", data),
            AttachmentIn("scan\u202efdp.exe", "not a type", b""),
        ],
    )
    found = await rows(store, Attachment, Attachment.message_id == message_id)
    by_name = {a.filename: a for a in found}
    assert set(by_name) == {"passwd", "scanfdp.exe"}
    passwd = by_name["passwd"]
    sha = hashlib.sha256(data).hexdigest()
    assert (passwd.sha256, passwd.size, passwd.content_type) == (sha, len(data), "text/plain")
    assert by_name["scanfdp.exe"].content_type == "application/octet-stream"
    path = tmp_path / "blobs" / sha[:2] / sha[2:4] / sha
    assert path == blob_path(tmp_path / "blobs", sha)
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list((tmp_path / "blobs").rglob(".incoming-*"))
    assert not (tmp_path / "etc").exists()


async def test_identical_attachments_share_one_blob(
    portal: Portal, store: Store, practice: Practice, tmp_path: Path
) -> None:
    thread_id = await open_thread(portal, practice)
    for name in ("a.pdf", "b.pdf"):
        await portal.post_message(
            thread_id,
            practice.client,
            "x",
            attachments=[AttachmentIn(name, "application/pdf", b"%PDF")],
        )
    assert len(await rows(store, Attachment)) == 2
    assert len([p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]) == 1


async def test_attachments_without_a_blob_dir_are_refused(
    store: Store, portal: Portal, practice: Practice
) -> None:
    thread_id = await open_thread(portal, practice)
    no_blobs = Portal(store)
    with pytest.raises(PortalError) as caught:
        await no_blobs.post_message(
            thread_id, practice.client, "x", attachments=[AttachmentIn("a", "text/plain", b"1")]
        )
    assert caught.value.reason == "no_blob_dir"


async def test_message_inserted_in_plain_sql_by_another_portal_gets_defaults_and_is_undispatched(
    portal: Portal, store: Store, practice: Practice
) -> None:
    thread_id = await open_thread(portal, practice)
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.text("INSERT INTO messages (thread_id, author_id, body_text) VALUES (:t, :a, :b)"),
            {"t": thread_id, "a": practice.client, "b": "from elsewhere"},
        )
    async with store.engine.connect() as conn:
        result = await conn.execute(
            sa.text("SELECT id FROM messages WHERE dispatched_at IS NULL ORDER BY id")
        )
        undispatched = result.all()
    messages = await rows(store, Message, Message.thread_id == thread_id)
    raw = max(messages, key=lambda m: m.id or 0)
    assert (raw.body_text, raw.source, raw.dispatched_at) == ("from elsewhere", "portal", None)
    assert raw.created_at is not None
    assert [row[0] for row in undispatched] == sorted(m.id for m in messages if m.id is not None)
    # And the API keeps working on top of it.
    assert await portal.mark_read(thread_id, practice.clinician) == raw.id


# --- mass messages -----------------------------------------------------------------------------


async def test_mass_message_to_fifty_clients_makes_fifty_private_threads(
    portal: Portal, store: Store, practice: Practice
) -> None:
    clients = [
        await portal.add_client(practice.org, f"Client {i}", [f"c{i}@example.com"])
        for i in range(50)
    ]
    for client in clients:
        await portal.assign_clinician(client, practice.clinician)
    ref = await portal.send_mass_message(
        practice.org, practice.clinician, clients, "Office closed", "Closed Monday", now=T0
    )
    assert len(ref.thread_ids) == 50
    threads = {t.id: t for t in await rows(store, Thread, col(Thread.id).in_(ref.thread_ids))}
    assert {t.mass_message_id for t in threads.values()} == {ref.mass_message_id}
    assert [threads[tid].client_id for tid in ref.thread_ids] == clients
    client_set = set(clients) | {practice.client, practice.other_client}
    for thread_id in ref.thread_ids:
        members = await mailbox_ids(store, thread_id)
        assert members & client_set == {threads[thread_id].client_id}
        assert practice.clinician in members
        [message] = await rows(store, Message, Message.thread_id == thread_id)
        assert (message.author_id, message.dispatched_at) == (practice.clinician, None)
    [mass] = await rows(store, MassMessage)
    assert (mass.id, mass.author_id) == (ref.mass_message_id, practice.clinician)


async def test_mass_message_naming_an_inactive_client_is_refused_whole(
    portal: Portal, store: Store, practice: Practice
) -> None:
    with pytest.raises(PortalError) as caught:
        await portal.send_mass_message(
            practice.org,
            practice.practice_admin,
            [practice.client, practice.inactive_client, practice.other_client],
            "S",
            "B",
            audience=Audience.ADMINISTRATIVE,
        )
    assert caught.value.reason == "inactive_client"
    assert caught.value.ids == {"client_ids": (practice.inactive_client,)}
    assert await rows(store, MassMessage) == []
    assert await rows(store, Thread) == []


async def test_clinician_mass_message_to_an_unassigned_client_is_refused(
    portal: Portal, store: Store, practice: Practice
) -> None:
    with pytest.raises(PortalError) as caught:
        await portal.send_mass_message(
            practice.org, practice.clinician, [practice.client, practice.other_client], "S", "B"
        )
    assert caught.value.reason == "no_access"
    assert caught.value.ids["client_ids"] == (practice.other_client,)
    assert await rows(store, Thread) == []


async def test_mass_message_to_a_non_client_is_refused(portal: Portal, practice: Practice) -> None:
    with pytest.raises(PortalError) as caught:
        await portal.send_mass_message(
            practice.org, practice.clinical_admin, [practice.client, practice.parent], "S", "B"
        )
    assert caught.value.reason == "not_a_client"
    assert caught.value.ids["client_ids"] == (practice.parent,)


async def test_practice_admin_mass_message_must_use_an_audience_they_see(
    portal: Portal, store: Store, practice: Practice
) -> None:
    with pytest.raises(PortalError) as caught:
        await portal.send_mass_message(
            practice.org, practice.practice_admin, [practice.client], "S", "B"
        )
    assert caught.value.reason == "no_access"
    ref = await portal.send_mass_message(
        practice.org,
        practice.practice_admin,
        [practice.client, practice.other_client],
        "S",
        "B",
        audience="administrative",
    )
    assert len(ref.thread_ids) == 2
    for thread_id in ref.thread_ids:
        assert practice.practice_admin in await mailbox_ids(store, thread_id)
        assert await rows(store, ThreadClinician, ThreadClinician.thread_id == thread_id) == []


async def test_mass_message_reach_follows_roles_and_activity(
    portal: Portal, practice: Practice
) -> None:
    inactive_assigned = await portal.add_client(practice.org, "Old", [])
    await portal.assign_clinician(inactive_assigned, practice.clinician)
    await portal.deactivate(inactive_assigned)
    active_clients = sorted([practice.client, practice.other_client])
    assert await portal.mass_message_reach(practice.clinician) == [practice.client]
    assert await portal.mass_message_reach(practice.other_clinician) == []
    assert await portal.mass_message_reach(practice.practice_admin) == active_clients
    assert await portal.mass_message_reach(practice.clinical_admin) == active_clients
    assert await portal.mass_message_reach(practice.scheduler) == []
    with pytest.raises(PortalError) as caught:
        await portal.mass_message_reach(practice.client)
    assert caught.value.reason == "not_staff"


# --- audience changes --------------------------------------------------------------------------


async def test_administrative_to_clinical_removes_scheduler_and_revokes_tokens_supervisor_stays(
    portal: Portal, store: Store, practice: Practice
) -> None:
    thread_id = await open_thread(portal, practice, Audience.ADMINISTRATIVE)
    other_thread = await open_thread(portal, practice, Audience.ADMINISTRATIVE)
    assert {practice.scheduler, practice.supervisor} <= await mailbox_ids(store, thread_id)
    scheduler_tokens = [await add_token(store, practice.scheduler, thread_id) for _ in range(2)]
    elsewhere = await add_token(store, practice.scheduler, other_thread)
    supervisor_token = await add_token(store, practice.supervisor, thread_id)
    later = T0 + timedelta(days=2)

    change = await portal.change_audience(thread_id, Audience.CLINICAL, now=later)

    assert change.removed == tuple(sorted([practice.scheduler, practice.practice_admin]))
    assert change.tokens_revoked == 2
    members = await mailbox_ids(store, thread_id)
    assert practice.scheduler not in members
    assert practice.practice_admin not in members
    assert {practice.supervisor, practice.clinical_admin, practice.clinician} <= members
    for token_id in scheduler_tokens:
        assert as_utc((await token(store, token_id)).revoked_at) == later
    assert (await token(store, elsewhere)).revoked_at is None
    assert (await token(store, supervisor_token)).revoked_at is None
    [thread] = await rows(store, Thread, Thread.id == thread_id)
    assert thread.audience == "clinical"
    events = await rows(store, AuditEvent, AuditEvent.thread_id == thread_id)
    assert {e.action for e in events} == {"audience_changed", "thread_access_revoked"}
    revoked_for = {e.participant_id for e in events if e.action == "thread_access_revoked"}
    assert revoked_for == set(change.removed)
    with pytest.raises(PortalError) as caught:
        await portal.post_message(thread_id, practice.scheduler, "still here?")
    assert caught.value.reason == "not_a_member"


async def test_clinical_to_billing_gives_billers_a_mailbox(
    portal: Portal, store: Store, practice: Practice
) -> None:
    thread_id = await open_thread(portal, practice)
    change = await portal.change_audience(thread_id, "billing")
    assert change.added == (practice.biller,)
    assert change.removed == ()
    assert practice.biller in await mailbox_ids(store, thread_id)
    assert practice.retired_supervisor not in await mailbox_ids(store, thread_id)
    await portal.post_message(thread_id, practice.biller, "Invoice attached")


async def test_change_to_the_same_audience_changes_nothing(
    portal: Portal, store: Store, practice: Practice
) -> None:
    thread_id = await open_thread(portal, practice)
    before = await mailbox_ids(store, thread_id)
    change = await portal.change_audience(thread_id, Audience.CLINICAL)
    assert (change.removed, change.added, change.tokens_revoked) == ((), (), 0)
    assert await mailbox_ids(store, thread_id) == before
    assert await rows(store, AuditEvent, AuditEvent.action == "audience_changed") == []


# --- one person's mailbox ------------------------------------------------------------------------


async def test_mark_read_moves_forward_only_and_checks_the_message(
    portal: Portal, store: Store, practice: Practice
) -> None:
    thread_id = await open_thread(portal, practice)
    second = await portal.post_message(thread_id, practice.clinician, "two")
    third = await portal.post_message(thread_id, practice.clinician, "three")
    assert await portal.mark_read(thread_id, practice.supervisor, second) == second
    assert await portal.mark_read(thread_id, practice.supervisor) == third
    assert await portal.mark_read(thread_id, practice.supervisor, second) == third
    other_thread = await open_thread(portal, practice)
    elsewhere = await portal.post_message(other_thread, practice.clinician, "elsewhere")
    with pytest.raises(PortalError) as caught:
        await portal.mark_read(thread_id, practice.supervisor, elsewhere)
    assert caught.value.reason == "no_such_message"


async def test_archive_and_unarchive(portal: Portal, store: Store, practice: Practice) -> None:
    thread_id = await open_thread(portal, practice)
    await portal.archive(thread_id, practice.client, now=T0)
    await portal.archive(thread_id, practice.client, now=T0 + timedelta(days=1))
    box = await _box(store, thread_id, practice.client)
    assert as_utc(box.archived_at) == T0
    await portal.unarchive(thread_id, practice.client)
    assert (await _box(store, thread_id, practice.client)).archived_at is None


async def test_trash_restore_and_permanent_delete(
    portal: Portal, store: Store, practice: Practice
) -> None:
    thread_id = await open_thread(portal, practice)
    client_token = await add_token(store, practice.client, thread_id)
    await portal.trash(thread_id, practice.client, now=T0)
    await portal.trash(thread_id, practice.client, now=T0 + timedelta(days=5))
    assert as_utc((await _box(store, thread_id, practice.client)).trashed_at) == T0
    await portal.restore(thread_id, practice.client)
    assert (await _box(store, thread_id, practice.client)).trashed_at is None

    later = T0 + timedelta(days=6)
    await portal.trash(thread_id, practice.client, now=later)
    await portal.delete_permanently(thread_id, practice.client, now=later)
    members = await mailbox_ids(store, thread_id)
    assert practice.client not in members
    assert practice.clinician in members  # the others keep theirs
    assert as_utc((await token(store, client_token)).revoked_at) == later
    assert len(await rows(store, Message, Message.thread_id == thread_id)) == 1
    [event] = await rows(store, AuditEvent, AuditEvent.action == "mailbox_deleted")
    assert (event.thread_id, event.participant_id) == (thread_id, practice.client)
    for operation in (portal.restore, portal.trash, portal.delete_permanently):
        with pytest.raises(PortalError) as caught:
            await operation(thread_id, practice.client)
        assert caught.value.reason == "not_a_member"


async def test_mailbox_operations_on_a_missing_thread_say_so(
    portal: Portal, practice: Practice
) -> None:
    with pytest.raises(PortalError) as caught:
        await portal.trash(424242, practice.client)
    assert caught.value.reason == "no_such_thread"


async def test_naive_datetimes_are_refused(portal: Portal, practice: Practice) -> None:
    thread_id = await open_thread(portal, practice)
    with pytest.raises(PortalError) as caught:
        await portal.trash(thread_id, practice.client, now=datetime(2026, 1, 1))
    assert caught.value.reason == "naive_datetime"


async def test_functions_share_a_caller_transaction_and_roll_back_together(
    store: Store, practice: Practice
) -> None:
    with pytest.raises(PortalError):
        async with store.transaction() as session:
            await people.add_client(session, practice.org, "Rolled back", ["rb@example.com"])
            await people.add_contact(session, practice.clinician, "Nope", [])
    names = [p.display_name for p in await rows(store, Participant)]
    assert "Rolled back" not in names


async def _box(store: Store, thread_id: int, participant_id: int) -> Mailbox:
    async with store.read() as session:
        box = await session.get(Mailbox, (thread_id, participant_id))
        assert box is not None
        return box
