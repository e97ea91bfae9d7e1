"""Rendering outbox rows from a real store (SQLite, and PostgreSQL when configured).

Scenarios are written through the portal API; outbox rows are inserted directly,
as the dispatcher would. Every email is serialised and parsed back before it is
inspected, and content fields hold unique markers so a leak cannot hide.
"""

from __future__ import annotations

import email
import email.policy
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel, col, delete, select, update

from bridge.config import OutboundSettings, TokenSettings
from bridge.mail.compose import (
    INVITATION_SUBJECT,
    NOTICE_REASONS,
    NOTICE_SUBJECT,
    SECURE_SUBJECT,
    NoticeReason,
    thread_root_id,
)
from bridge.mail.extract import REPLY_MARKER
from bridge.mail.headers import OWN_MAIL_HEADER
from bridge.outbound.render import (
    RenderContext,
    RenderError,
    RenderFailure,
    envelope,
    render,
)
from bridge.policy.tokens import hash_token, token_from_address
from bridge.portal import AttachmentIn, Portal
from bridge.store.engine import Store
from bridge.store.models import (
    EmailAddress,
    NotificationMode,
    Organization,
    Outbox,
    OutboxKind,
    OutboxStatus,
    ReplyToken,
    StaffRole,
    Thread,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET = b"render-test-secret-0123456789abcdef"
CTX = RenderContext(
    from_address="no-reply@bridge.example",
    token_secret=SECRET,
    token_lifetime=timedelta(days=30),
    address_format="reply+{token}",
)
PORTAL_URL = "https://portal.example.com"
REPLY_DOMAIN = "reply.example.com"


def marker() -> str:
    return f"mk{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Scene:
    portal: Portal
    org: int
    admin: int
    clinician: int
    client: int
    parent: int
    thread: int
    first_message: int
    markers: dict[str, str]


@pytest.fixture
async def scene(store: Store, tmp_path: Path) -> Scene:
    """A practice whose every content field, name and file name is a marker."""
    m = {
        key: marker()
        for key in (
            "practice",
            "admin",
            "clinician",
            "client",
            "parent",
            "subject",
            "topic",
            "text",
            "html",
            "file",
        )
    }
    portal = Portal(store, blob_dir=tmp_path / "blobs")
    org = await portal.create_organization(f"Practice {m['practice']}", PORTAL_URL, REPLY_DOMAIN)
    admin = await portal.add_staff(
        org, f"Admin {m['admin']}", [StaffRole.PRACTICE_ADMIN], ["admin@practice.example"]
    )
    clinician = await portal.add_staff(
        org, f"Dr {m['clinician']}", [StaffRole.CLINICIAN], ["clin@practice.example"]
    )
    client = await portal.add_client(
        org,
        f"Client {m['client']}",
        ["client@example.org"],
        has_portal_account=True,
        email_content_consent=True,
    )
    parent = await portal.add_contact(
        client, f"Parent {m['parent']}", ["parent@example.org"], email_content_consent=True
    )
    await portal.assign_clinician(client, clinician)
    ref = await portal.create_thread(
        org,
        client,
        f"Subject {m['subject']}",
        topic=f"Topic {m['topic']}",
        cc_contact_ids=[parent],
        author_id=clinician,
        body_text=f"Dear client, {m['text']}",
        body_html=f"<p>Dear client, <b>{m['html']}</b></p>",
        attachments=[AttachmentIn(f"{m['file']}.pdf", "application/pdf", b"%PDF-1.4 x")],
        now=T0,
    )
    return Scene(portal, org, admin, clinician, client, parent, ref.thread_id, ref.message_id, m)


async def convenience_mode(s: Scene) -> None:
    await s.portal.set_notification_mode(
        s.org, NotificationMode.CONVENIENCE, acknowledged_by=s.admin
    )


async def add_row(store: Store, s: Scene, **fields: Any) -> int:
    values: dict[str, Any] = {
        "organization_id": s.org,
        "recipient_id": s.client,
        "thread_id": s.thread,
        "message_id": s.first_message,
        "status": OutboxStatus.SENDING.value,
    }
    values.update(fields)
    row = Outbox(**values)
    async with store.transaction() as session:
        session.add(row)
        await session.flush()
        assert row.id is not None
        return row.id


async def render_row(store: Store, row_id: int, now: datetime = NOW) -> EmailMessage:
    """Render and commit, the way the sender does, then read the email back from its bytes."""
    async with store.transaction() as session:
        row = await session.get(Outbox, row_id)
        assert row is not None
        built = await render(session, row, CTX, now=now)
    parsed = email.message_from_bytes(bytes(built), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


async def render_fails(store: Store, row_id: int) -> RenderFailure:
    async with store.transaction() as session:
        row = await session.get(Outbox, row_id)
        assert row is not None
        with pytest.raises(RenderError) as failed:
            await render(session, row, CTX, now=NOW)
    assert failed.value.outbox_id == row_id
    return failed.value.reason


def everything_readable(msg: EmailMessage) -> str:
    """Raw bytes, decoded headers, decoded contents and transfer-decoded payloads."""
    raw = bytes(msg)
    found = [raw.decode("utf-8", "replace")]
    for part in msg.walk():
        found += [f"{name}: {value}" for name, value in part.items()]
        if part.is_multipart():
            continue
        assert isinstance(part, EmailMessage)
        found.append(str(part.get_content()))
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        found.append(payload.decode("utf-8", "replace"))
    return "\n".join(found)


def text_of(msg: EmailMessage, subtype: str = "plain") -> str:
    part = msg.get_body(preferencelist=(subtype,))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


async def table_dump(store: Store) -> str:
    """Every value of every table of the store, as text."""
    values: list[str] = []
    async with store.read() as session:
        for table in SQLModel.metadata.sorted_tables:
            for row in (await session.execute(sa.select(table))).all():
                values += [str(v) for v in row]
    return "\n".join(values)


# -- invariant 3, end to end ------------------------------------------------------------


@pytest.mark.parametrize("kind", [OutboxKind.NOTIFICATION, OutboxKind.INVITATION])
async def test_secure_row_renders_nothing_from_the_store_but_address_and_link(
    store: Store, scene: Scene, kind: OutboxKind
) -> None:
    # The organization is in convenience mode and the client consented: only the row's
    # mode keeps the content out, and the positive control shows the content is there.
    await convenience_mode(scene)
    secure = await render_row(store, await add_row(store, scene, kind=kind.value))
    leaked = everything_readable(secure)
    assert [key for key, m in scene.markers.items() if m in leaked] == []
    link = (
        f"{PORTAL_URL}/invitation"
        if kind is OutboxKind.INVITATION
        else f"{PORTAL_URL}/threads/{scene.thread}"
    )
    assert link in text_of(secure)
    assert secure["Subject"] == (
        INVITATION_SUBJECT if kind is OutboxKind.INVITATION else SECURE_SUBJECT
    )
    assert secure["Reply-To"] is None

    full = await render_row(
        store, await add_row(store, scene, kind=kind.value, mode=NotificationMode.CONVENIENCE.value)
    )
    shown = everything_readable(full)
    assert [key for key, m in scene.markers.items() if m not in shown] == [
        "admin",
        "client",
        "parent",
        "topic",
    ]


async def test_secure_row_issues_no_reply_token(store: Store, scene: Scene) -> None:
    await render_row(store, await add_row(store, scene))
    async with store.read() as session:
        assert list(await session.exec(select(ReplyToken))) == []


# -- headers ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [NotificationMode.SECURE, NotificationMode.CONVENIENCE])
async def test_headers_name_one_recipient_and_the_message_id_is_saved_on_the_row(
    store: Store, scene: Scene, mode: NotificationMode
) -> None:
    await convenience_mode(scene)
    row_id = await add_row(store, scene, mode=mode.value)
    msg = await render_row(store, row_id)
    assert [a.addr_spec for a in msg["To"].addresses] == ["client@example.org"]
    assert msg["Cc"] is None and msg["Bcc"] is None
    assert msg[OWN_MAIL_HEADER] == str(row_id)
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Message-ID"].startswith(f"<n.{row_id}.")
    assert msg["Message-ID"].endswith(f"@{REPLY_DOMAIN}>")
    assert msg["Date"].datetime == NOW
    assert envelope(msg) == ("no-reply@bridge.example", ["client@example.org"])
    async with store.read() as session:
        row = await session.get(Outbox, row_id)
        assert row is not None and row.message_id_header == msg["Message-ID"]


async def test_primary_address_is_used_when_the_recipient_has_several(
    store: Store, scene: Scene
) -> None:
    await scene.portal.add_email(scene.client, "newer@example.org", primary=True)
    msg = await render_row(store, await add_row(store, scene))
    assert [a.addr_spec for a in msg["To"].addresses] == ["newer@example.org"]


async def test_thread_root_is_stable_per_recipient_and_thread_and_differs_between_people(
    store: Store, scene: Scene
) -> None:
    first = await render_row(store, await add_row(store, scene))
    second = await render_row(store, await add_row(store, scene))
    for_parent = await render_row(store, await add_row(store, scene, recipient_id=scene.parent))
    other = await scene.portal.create_thread(
        scene.org, scene.client, "Another", author_id=scene.clinician, body_text="hi"
    )
    other_thread = await render_row(
        store, await add_row(store, scene, thread_id=other.thread_id, message_id=other.message_id)
    )
    root = first["In-Reply-To"]
    assert root.startswith("<t.") and root.endswith(f"@{REPLY_DOMAIN}>")
    assert second["In-Reply-To"] == root == first["References"] == second["References"]
    assert first["Message-ID"] != second["Message-ID"]
    assert for_parent["In-Reply-To"] != root
    assert other_thread["In-Reply-To"] != root


# -- convenience: which messages --------------------------------------------------------


async def test_convenience_carries_messages_after_the_previous_sent_row_oldest_first_not_own(
    store: Store, scene: Scene
) -> None:
    await convenience_mode(scene)
    p = scene.portal
    await add_row(
        store,
        scene,
        mode="convenience",
        status=OutboxStatus.SENT.value,
        message_id=scene.first_message,
    )
    second = await p.post_message(scene.thread, scene.clinician, "second-from-clinician")
    await p.post_message(scene.thread, scene.client, "client-own-words")
    fourth = await p.post_message(scene.thread, scene.parent, "fourth-from-parent")
    await p.post_message(scene.thread, scene.clinician, "fifth-after-the-row")
    assert second < fourth
    msg = await render_row(
        store, await add_row(store, scene, mode="convenience", message_id=fourth)
    )
    text = text_of(msg)
    assert "second-from-clinician" in text and "fourth-from-parent" in text
    assert text.index("second-from-clinician") < text.index("fourth-from-parent")
    assert "client-own-words" not in everything_readable(msg)
    assert "fifth-after-the-row" not in everything_readable(msg)
    assert scene.markers["text"] not in everything_readable(msg)  # the first message went before
    assert f"Parent {scene.markers['parent']} wrote on" in text


async def test_convenience_without_a_previous_sent_row_starts_after_the_read_mark(
    store: Store, scene: Scene
) -> None:
    await convenience_mode(scene)
    await scene.portal.mark_read(scene.thread, scene.client, scene.first_message)
    newer = await scene.portal.post_message(scene.thread, scene.clinician, "after-the-read-mark")
    # A failed earlier convenience row does not count as sent.
    await add_row(
        store, scene, mode="convenience", status=OutboxStatus.FAILED.value, message_id=newer
    )
    msg = await render_row(store, await add_row(store, scene, mode="convenience", message_id=newer))
    shown = everything_readable(msg)
    assert "after-the-read-mark" in shown
    assert scene.markers["text"] not in shown


async def test_convenience_for_a_recipient_who_never_read_carries_the_whole_thread(
    store: Store, scene: Scene
) -> None:
    await convenience_mode(scene)
    newer = await scene.portal.post_message(scene.thread, scene.clinician, "second-message")
    msg = await render_row(store, await add_row(store, scene, mode="convenience", message_id=newer))
    text = text_of(msg)
    assert text.index(scene.markers["text"]) < text.index("second-message")


async def test_convenience_email_shows_subject_names_marker_and_attachment_links(
    store: Store, scene: Scene
) -> None:
    await convenience_mode(scene)
    msg = await render_row(store, await add_row(store, scene, mode="convenience"))
    m = scene.markers
    assert msg["Subject"] == f"Re: Subject {m['subject']}"
    assert msg["From"].addresses[0].display_name == f"Practice {m['practice']}"
    text, page = text_of(msg), text_of(msg, "html")
    assert text.splitlines()[0] == REPLY_MARKER
    assert REPLY_MARKER in page.split("</p>", 1)[0]
    assert f"Dr {m['clinician']} wrote on 1 March 2026, 09:00 UTC:" in text
    assert f"<b>{m['html']}</b>" in page
    async with store.read() as session:
        attachment_id = (await session.execute(sa.text("SELECT id FROM attachments"))).scalar_one()
    url = f"{PORTAL_URL}/threads/{scene.thread}/attachments/{attachment_id}"
    assert f'<a href="{url}">{m["file"]}.pdf</a>' in page
    assert f"{m['file']}.pdf (10 bytes): {url}" in text
    assert f"{PORTAL_URL}/threads/{scene.thread}" in text


# -- convenience: the reply token ---------------------------------------------------------


async def test_reply_token_is_stored_only_as_its_hash_and_bound_to_recipient_and_thread(
    store: Store, scene: Scene
) -> None:
    await convenience_mode(scene)
    msg = await render_row(store, await add_row(store, scene, mode="convenience"))
    token = token_from_address(
        CTX.address_format, msg["Reply-To"].addresses[0].addr_spec, REPLY_DOMAIN
    )
    assert token is not None
    async with store.read() as session:
        tokens = list(await session.exec(select(ReplyToken)))
    assert len(tokens) == 1
    assert tokens[0].token_hash == hash_token(SECRET, token)
    assert (tokens[0].participant_id, tokens[0].thread_id) == (scene.client, scene.thread)
    expires = tokens[0].expires_at
    assert (expires if expires.tzinfo else expires.replace(tzinfo=UTC)) == NOW + timedelta(days=30)
    dump = await table_dump(store)
    assert token not in dump and token.upper() not in dump
    assert tokens[0].token_hash in dump  # the dump does see the table


async def test_every_convenience_email_gets_its_own_token(store: Store, scene: Scene) -> None:
    await convenience_mode(scene)
    first = await render_row(store, await add_row(store, scene, mode="convenience"))
    second = await render_row(store, await add_row(store, scene, mode="convenience"))
    assert first["Reply-To"] != second["Reply-To"]
    async with store.read() as session:
        assert len(list(await session.exec(select(ReplyToken)))) == 2


# -- what can only make an email say less -------------------------------------------------


async def test_convenience_row_goes_out_secure_when_the_practice_switched_back(
    store: Store, scene: Scene
) -> None:
    await convenience_mode(scene)
    row_id = await add_row(store, scene, mode="convenience")
    await scene.portal.set_notification_mode(
        scene.org, NotificationMode.SECURE, acknowledged_by=None
    )
    msg = await render_row(store, row_id)
    assert msg["Subject"] == SECURE_SUBJECT
    leaked = everything_readable(msg)
    assert [key for key, m in scene.markers.items() if m in leaked] == []
    async with store.read() as session:
        row = await session.get(Outbox, row_id)
        assert row is not None and row.mode == NotificationMode.SECURE.value
        assert list(await session.exec(select(ReplyToken))) == []


async def test_secure_row_stays_secure_even_when_convenience_would_apply(
    store: Store, scene: Scene
) -> None:
    await convenience_mode(scene)
    msg = await render_row(store, await add_row(store, scene, mode="secure"))
    assert msg["Subject"] == SECURE_SUBJECT


# -- rows that cannot be rendered ---------------------------------------------------------


async def test_recipient_without_address_fails_with_no_address(store: Store, scene: Scene) -> None:
    async with store.transaction() as session:
        await session.exec(
            delete(EmailAddress).where(col(EmailAddress.participant_id) == scene.client)
        )
    assert await render_fails(store, await add_row(store, scene)) is RenderFailure.NO_ADDRESS


async def test_unusable_stored_address_fails_with_bad_address_and_leaves_no_token(
    store: Store, scene: Scene
) -> None:
    await convenience_mode(scene)
    async with store.transaction() as session:
        await session.exec(
            update(EmailAddress)
            .where(col(EmailAddress.participant_id) == scene.client)
            .values(address="client@example.org\r\nBcc: everyone@example.net")
        )
    row_id = await add_row(store, scene, mode="convenience")
    assert await render_fails(store, row_id) is RenderFailure.BAD_ADDRESS
    async with store.read() as session:
        assert list(await session.exec(select(ReplyToken))) == []


async def test_non_web_portal_url_fails_with_unsafe_link(store: Store, scene: Scene) -> None:
    async with store.transaction() as session:
        await session.exec(
            update(Organization)
            .where(col(Organization.id) == scene.org)
            .values(portal_base_url="javascript:alert(1)//")
        )
    assert await render_fails(store, await add_row(store, scene)) is RenderFailure.UNSAFE_LINK


async def test_row_without_thread_fails_with_thread_gone(store: Store, scene: Scene) -> None:
    row_id = await add_row(store, scene, thread_id=None, message_id=None)
    assert await render_fails(store, row_id) is RenderFailure.THREAD_GONE


async def test_row_whose_thread_was_purged_meanwhile_fails_with_thread_gone(
    store: Store, scene: Scene
) -> None:
    row_id = await add_row(store, scene)
    async with store.transaction() as session:
        claimed = await session.get(Outbox, row_id)
        assert claimed is not None
    # The purge deletes the thread (and, by cascade, the row) after the row was claimed.
    async with store.transaction() as session:
        await session.exec(delete(Thread).where(col(Thread.id) == scene.thread))
    async with store.transaction() as session:
        with pytest.raises(RenderError) as failed:
            await render(session, claimed, CTX, now=NOW)
    assert failed.value.reason is RenderFailure.THREAD_GONE


async def test_recipient_who_lost_access_gets_nothing(store: Store, scene: Scene) -> None:
    await convenience_mode(scene)
    row_id = await add_row(store, scene, mode="convenience")
    await scene.portal.delete_permanently(scene.thread, scene.client)
    assert await render_fails(store, row_id) is RenderFailure.NO_ACCESS
    async with store.read() as session:
        assert list(await session.exec(select(ReplyToken))) == []


async def test_deactivated_recipient_gets_nothing(store: Store, scene: Scene) -> None:
    row_id = await add_row(store, scene)
    await scene.portal.deactivate(scene.client)
    assert await render_fails(store, row_id) is RenderFailure.NO_ACCESS


async def test_convenience_row_with_nothing_left_to_carry_fails_with_nothing_new(
    store: Store, scene: Scene
) -> None:
    await convenience_mode(scene)
    await scene.portal.mark_read(scene.thread, scene.client)
    assert (
        await render_fails(store, await add_row(store, scene, mode="convenience"))
        is RenderFailure.NOTHING_NEW
    )


async def test_render_error_carries_no_content(store: Store, scene: Scene) -> None:
    async with store.transaction() as session:
        await session.exec(
            delete(EmailAddress).where(col(EmailAddress.participant_id) == scene.client)
        )
    row_id = await add_row(store, scene)
    async with store.transaction() as session:
        row = await session.get(Outbox, row_id)
        assert row is not None
        with pytest.raises(RenderError) as failed:
            await render(session, row, CTX, now=NOW)
    assert str(failed.value) == f"no_address (outbox {row_id})"


def test_the_context_comes_from_outbound_and_tokens_settings() -> None:
    ctx = RenderContext.from_settings(
        OutboundSettings(from_address="notify@practice.example"),
        TokenSettings(lifetime_days=7, address_format="r-{token}"),
        token_secret=SECRET,
    )
    assert ctx == RenderContext("notify@practice.example", SECRET, timedelta(days=7), "r-{token}")


# -- notices: automatic answers to held emails ------------------------------------------


NOTICE = OutboxKind.NOTICE.value


def notice_row(**fields: Any) -> dict[str, Any]:
    """A notice as the inbound side writes it: a reason, no message."""
    return {"kind": NOTICE, "message_id": None, **fields}


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("reason", list(NoticeReason))
async def test_each_notice_reason_tells_the_participant_what_to_do_at_the_address_on_file(
    store: Store, scene: Scene, reason: NoticeReason
) -> None:
    # The held email came from elsewhere; the notice goes to the address we have on file.
    row_id = await add_row(
        store, scene, **notice_row(reason=reason.value, to_address="imposter@elsewhere.example")
    )
    msg = await render_row(store, row_id)
    assert msg["Subject"] == NOTICE_SUBJECT
    assert [a.addr_spec for a in msg["To"].addresses] == ["client@example.org"]
    assert msg["Cc"] is None and msg["Bcc"] is None and msg["Reply-To"] is None
    text, page = text_of(msg), text_of(msg, "html")
    assert flat(NOTICE_REASONS[reason]) in flat(text)
    assert [r for r in NoticeReason if flat(NOTICE_REASONS[r]) in flat(text)] == [reason]
    link = f"{PORTAL_URL}/threads/{scene.thread}"
    assert link in text and f'href="{link}"' in page
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg[OWN_MAIL_HEADER] == str(row_id)
    root = thread_root_id(SECRET, scene.thread, scene.client, REPLY_DOMAIN)
    assert msg["In-Reply-To"] == msg["References"] == root
    assert msg["Message-ID"].startswith(f"<n.{row_id}.")
    assert msg["Message-ID"].endswith(f"@{REPLY_DOMAIN}>")
    async with store.read() as session:
        row = await session.get(Outbox, row_id)
        assert row is not None and row.message_id_header == msg["Message-ID"]


async def test_a_notice_carries_nothing_from_the_store_even_where_convenience_applies(
    store: Store, scene: Scene
) -> None:
    # Convenience mode, consent, and even a convenience `mode` on the row: a notice
    # still shows no subject, body, name, topic or file name, and issues no token.
    await convenience_mode(scene)
    for reason in NoticeReason:
        for person in (scene.client, scene.parent, scene.clinician):
            notice = await render_row(
                store,
                await add_row(
                    store,
                    scene,
                    **notice_row(reason=reason.value, recipient_id=person, mode="convenience"),
                ),
            )
            leaked = everything_readable(notice)
            assert [key for key, m in scene.markers.items() if m in leaked] == [], reason
            assert notice["Reply-To"] is None
    async with store.read() as session:
        assert list(await session.exec(select(ReplyToken))) == []
    # The positive control: the same search finds the content in a convenience email.
    full = everything_readable(
        await render_row(store, await add_row(store, scene, mode="convenience"))
    )
    assert scene.markers["subject"] in full and scene.markers["text"] in full


async def test_a_notice_to_an_unknown_sender_goes_to_the_bare_address_with_the_front_page(
    store: Store, scene: Scene
) -> None:
    row_id = await add_row(
        store,
        scene,
        **notice_row(
            reason=NoticeReason.UNKNOWN_RECIPIENT.value,
            recipient_id=None,
            thread_id=None,
            to_address="stranger@elsewhere.example",
        ),
    )
    msg = await render_row(store, row_id)
    assert [a.addr_spec for a in msg["To"].addresses] == ["stranger@elsewhere.example"]
    text = text_of(msg)
    assert PORTAL_URL in text and "/threads/" not in everything_readable(msg)
    assert msg["In-Reply-To"] is None and msg["References"] is None
    assert msg["Auto-Submitted"] == "auto-replied"
    leaked = everything_readable(msg)
    assert [key for key, m in scene.markers.items() if m in leaked] == []


async def test_a_notice_to_a_participant_who_lost_the_thread_links_to_the_front_page(
    store: Store, scene: Scene
) -> None:
    row_id = await add_row(store, scene, **notice_row(reason="sender_mismatch"))
    await scene.portal.delete_permanently(scene.thread, scene.client)
    msg = await render_row(store, row_id)
    assert "/threads/" not in everything_readable(msg)
    assert PORTAL_URL in text_of(msg)
    assert msg["In-Reply-To"] is None


async def test_a_notice_with_a_reason_that_has_no_wording_is_not_sent(
    store: Store, scene: Scene
) -> None:
    for reason in ("no_such_reason", None):
        row_id = await add_row(store, scene, **notice_row(reason=reason))
        assert await render_fails(store, row_id) is RenderFailure.UNKNOWN_REASON


async def test_a_notice_for_a_deactivated_participant_is_not_sent(
    store: Store, scene: Scene
) -> None:
    row_id = await add_row(store, scene, **notice_row(reason="empty_reply"))
    await scene.portal.deactivate(scene.client)
    assert await render_fails(store, row_id) is RenderFailure.NO_ACCESS
