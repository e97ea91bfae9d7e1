"""The pipeline's checks against a real store: tokens, senders, machines, loops, duplicates,
DMARC/DKIM. Each check ends a reply somewhere else than in a thread, with a reason code,
and tells a person only when they can act on it.

Built on the `Harness` of `test_pipeline.py`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlmodel import col, update
from test_pipeline import Harness, client_reply, harness_for, reply

from bridge.store.models import (
    Audience,
    InboundVia,
    Mailbox,
    NotificationMode,
    Outbox,
    OutboxKind,
    ReplyToken,
)

if TYPE_CHECKING:
    from conftest import Practice


@pytest.fixture
def harness(practice: Practice, tmp_path: Path) -> Harness:
    return harness_for(practice, tmp_path)


# --- whose reply, to which thread --------------------------------------------------------


async def test_a_spoofed_sender_is_held_and_the_participant_is_told_at_the_address_on_file(
    harness: Harness,
) -> None:
    practice = harness.practice
    address = await practice.address(practice.client_id)
    first = await harness.deliver(reply(address, sender="mallory@evil.example"), address)
    second = await harness.deliver(reply(address, sender="mallory@evil.example"), address)

    await harness.run()

    for row_id in (first, second):
        assert ((await harness.row(row_id)).status, (await harness.row(row_id)).reason) == (
            "held",
            "sender_mismatch",
        )
    assert await harness.messages() == []
    [notice] = await harness.notices()  # one per (address, reason, day)
    assert (notice.recipient_id, notice.to_address, notice.thread_id) == (
        practice.client_id,
        None,
        practice.thread_id,
    )
    assert notice.mode == NotificationMode.SECURE.value and notice.message_id is None
    held = await harness.audits("inbound_held")
    assert [e.outbox_id for e in held] == [notice.id, None]
    assert "evil" not in str([e.detail for e in held])


async def test_a_token_of_someone_else_is_not_filed_into_any_thread(harness: Harness) -> None:
    practice = harness.practice
    other_client = await practice.portal.add_client(practice.org_id, "Other", ["o@home.example"])
    other = await practice.portal.create_thread(
        practice.org_id, other_client, "Billing", author_id=practice.clinician_id, body_text="Hi"
    )
    stolen = await practice.address(other_client, thread_id=other.thread_id)
    staff = await practice.address(practice.scheduler_id)
    rows = [await harness.deliver(reply(a), a) for a in (stolen, staff)]

    await harness.run()

    for row_id in rows:
        assert (await harness.row(row_id)).reason == "sender_mismatch"
    assert await harness.messages() == []


async def test_the_token_decides_the_thread_whatever_the_references_say(harness: Harness) -> None:
    practice = harness.practice
    other = await practice.portal.create_thread(
        practice.org_id, practice.client_id, "Other", author_id=practice.clinician_id, body_text="x"
    )
    address = await practice.address(practice.client_id, thread_id=other.thread_id)
    await harness.deliver(reply(address, headers=[("In-Reply-To", "<n.1.x@replies>")]), address)

    await harness.run()

    [message] = await harness.messages()
    assert message.thread_id == other.thread_id


@pytest.mark.parametrize(
    ("token_args", "reason", "told"),
    [
        ({"expires_at_offset": timedelta(hours=1)}, "expired", True),
        ({"revoked": True}, "revoked", False),
    ],
)
async def test_a_token_no_longer_valid_when_processed_is_held_with_its_verdict(
    harness: Harness, token_args: dict[str, Any], reason: str, told: bool
) -> None:
    practice = harness.practice
    expires = practice.now + token_args.get("expires_at_offset", timedelta(days=30))
    token, token_id = await practice.token(practice.client_id, expires_at=expires)
    address = practice.address_for(token)
    row_id = await harness.deliver(reply(address), address)
    if token_args.get("revoked"):
        async with harness.store.transaction() as session:
            await session.exec(
                update(ReplyToken)
                .where(col(ReplyToken.id) == token_id)
                .values(revoked_at=practice.now)
            )
    harness.now = practice.now + timedelta(hours=2)  # time passes between RCPT and processing

    await harness.run()

    row = await harness.row(row_id)
    assert (row.status, row.reason) == ("held", reason)
    assert await harness.messages() == []
    assert [n.recipient_id for n in await harness.notices()] == (
        [practice.client_id] if told else []
    )


async def test_staff_who_lost_the_thread_to_an_audience_change_cannot_reply(
    harness: Harness,
) -> None:
    practice = harness.practice
    address = await practice.address(practice.scheduler_id)
    raw = reply(address, sender="scheduler@practice.example.org")
    row_id = await harness.deliver(raw, address, envelope_sender="scheduler@practice.example.org")
    await practice.portal.change_audience(practice.thread_id, Audience.CLINICAL)

    await harness.run()

    row = await harness.row(row_id)
    assert (row.status, row.reason) == ("held", "revoked")
    assert await harness.messages() == []


async def test_access_lost_without_revoking_the_token_is_still_refused(harness: Harness) -> None:
    practice = harness.practice
    address = await practice.address(practice.scheduler_id)
    raw = reply(address, sender="scheduler@practice.example.org")
    row_id = await harness.deliver(raw, address)
    # A portal that removes the mailbox row but forgets the token.
    async with harness.store.transaction() as session:
        box = await session.get(Mailbox, (practice.thread_id, practice.scheduler_id))
        await session.delete(box)

    await harness.run()

    assert (await harness.row(row_id)).reason == "no_access"


async def test_an_imap_reply_without_a_reply_address_is_found_through_in_reply_to(
    harness: Harness,
) -> None:
    practice = harness.practice
    await practice.token(practice.client_id)
    notification = "<n.77.0123456789abcdef@replies.example.org>"
    async with harness.store.transaction() as session:
        session.add(
            Outbox(
                kind=OutboxKind.NOTIFICATION.value,
                mode=NotificationMode.CONVENIENCE.value,
                status="sent",
                organization_id=practice.org_id,
                recipient_id=practice.client_id,
                thread_id=practice.thread_id,
                message_id_header=notification,
            )
        )
    inbox = "office@practice.example.org"
    raw = reply(inbox, headers=[("In-Reply-To", notification), ("References", notification)])
    row_id = await harness.deliver(raw, inbox, via=InboundVia.IMAP, envelope_sender=None)

    await harness.run()

    assert (await harness.row(row_id)).status == "filed"
    [message] = await harness.messages()
    assert (message.thread_id, message.author_id) == (practice.thread_id, practice.client_id)


async def test_an_imap_reply_to_nothing_known_is_held_and_the_sender_told(
    harness: Harness,
) -> None:
    inbox = "office@replies.example.org"
    raw = reply(inbox, sender="stranger@elsewhere.example")
    row_id = await harness.deliver(raw, inbox, via=InboundVia.IMAP, envelope_sender=None)

    await harness.run()

    assert ((await harness.row(row_id)).reason) == "unknown_recipient"
    [notice] = await harness.notices()
    assert (notice.recipient_id, notice.to_address) == (None, "stranger@elsewhere.example")
    assert notice.organization_id == harness.practice.org_id


# --- machines, loops, duplicates ----------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "envelope_sender", "reason"),
    [
        ([("Auto-Submitted", "auto-replied")], "client@home.example.net", "auto_reply"),
        ([("List-Id", "<friends.lists.example>")], "client@home.example.net", "list"),
        ([("X-Bridge-Notification", "n.5")], "no-reply@practice.example.org", "own_notification"),
        ([], None, "bounce"),  # the null sender
    ],
)
async def test_machine_mail_is_dropped_without_an_answer(
    harness: Harness, headers: list[tuple[str, str]], envelope_sender: str | None, reason: str
) -> None:
    address = await harness.practice.address(harness.practice.client_id)
    raw = reply(address, headers=headers)
    row_id = await harness.deliver(raw, address, envelope_sender=envelope_sender)

    await harness.run()

    row = await harness.row(row_id)
    assert (row.status, row.reason) == ("dropped", reason)
    assert await harness.messages() == [] and await harness.notices() == []


async def test_a_delivery_status_report_is_a_bounce(harness: Harness) -> None:
    address = await harness.practice.address(harness.practice.client_id)
    report = (
        f"From: Mail Delivery System <MAILER-DAEMON@mx.example>\r\nTo: {address}\r\n"
        "Subject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; x@y\r\nAction: failed\r\n"
        "Status: 5.1.1\r\n--b--\r\n"
    ).encode()
    row_id = await harness.deliver(report, address, envelope_sender=None)

    await harness.run()

    assert ((await harness.row(row_id)).status, (await harness.row(row_id)).reason) == (
        "dropped",
        "bounce",
    )
    assert await harness.notices() == []


async def test_the_same_email_by_smtp_and_by_imap_is_filed_once(harness: Harness) -> None:
    address = await harness.practice.address(harness.practice.client_id)
    raw = reply(address, message_id="<same@home.example.net>")
    by_smtp = await harness.deliver(raw, address)
    fetched = b"Received: from mx by imap.example; Sun, 1 Mar 2026 09:01:00 +0000\r\n" + raw
    by_imap = await harness.deliver(fetched, address, via=InboundVia.IMAP, envelope_sender=None)

    await harness.run()

    assert (await harness.row(by_smtp)).status == "filed"
    assert ((await harness.row(by_imap)).status, (await harness.row(by_imap)).reason) == (
        "dropped",
        "duplicate",
    )
    assert len(await harness.messages()) == 1


async def test_the_same_bytes_delivered_twice_are_filed_once(harness: Harness) -> None:
    address = await harness.practice.address(harness.practice.client_id)
    raw = reply(address)
    rows = [await harness.deliver(raw, address) for _ in range(2)]

    await harness.run()

    assert [(await harness.row(r)).status for r in rows] == ["filed", "dropped"]
    assert len(await harness.messages()) == 1


async def test_the_same_body_again_within_a_day_is_a_loop_and_after_a_day_is_filed(
    harness: Harness,
) -> None:
    first = await client_reply(harness)
    again = await client_reply(harness)
    await harness.run()
    harness.now += timedelta(days=1, minutes=1)
    later = await client_reply(harness)
    await harness.run()

    statuses = [
        ((await harness.row(r)).status, (await harness.row(r)).reason)
        for r in (first, again, later)
    ]
    assert statuses == [("filed", None), ("dropped", "loop"), ("filed", None)]


async def test_a_sender_over_the_hourly_limit_is_dropped_as_a_loop(
    practice: Practice, tmp_path: Path
) -> None:
    harness = harness_for(practice, tmp_path, sender_limit_per_hour=2)
    rows = [await client_reply(harness, text=f"Message number {n}") for n in range(3)]

    await harness.run()

    assert [(await harness.row(r)).reason for r in rows] == [None, None, "loop"]


# --- authentication ------------------------------------------------------------------------

TRUSTED = "mx.practice.example.org"


@pytest.mark.parametrize(
    ("results", "status", "reason"),
    [
        ([], "held", "auth_failed"),
        ([f"{TRUSTED}; dmarc=fail header.from=home.example.net"], "held", "auth_failed"),
        (["evil.example; dmarc=pass header.from=home.example.net"], "held", "auth_failed"),
        ([f"{TRUSTED}; dmarc=pass (p=reject) header.from=home.example.net"], "filed", None),
        ([f"{TRUSTED}; dkim=pass header.d=home.example.net header.s=s1"], "filed", None),
        ([f"{TRUSTED}; dkim=pass header.d=elsewhere.example"], "held", "auth_failed"),
    ],
)
async def test_required_authentication_needs_a_pass_from_a_trusted_server(
    practice: Practice, tmp_path: Path, results: list[str], status: str, reason: str | None
) -> None:
    harness = harness_for(
        practice, tmp_path, require_authentication=True, trusted_authserv_ids=(TRUSTED,)
    )
    headers = [("Authentication-Results", value) for value in results]
    row_id = await client_reply(harness, headers=headers)

    await harness.run()

    row = await harness.row(row_id)
    assert (row.status, row.reason) == (status, reason)
    if status == "held":
        assert [n.recipient_id for n in await harness.notices()] == [practice.client_id]


async def test_without_required_authentication_no_result_is_needed(harness: Harness) -> None:
    row_id = await client_reply(harness)

    await harness.run()

    assert (await harness.row(row_id)).status == "filed"
