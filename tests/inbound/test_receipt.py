"""`check_recipient` and `store_raw` against a real store (SQLite and PostgreSQL).

The recipient verdicts follow the contract table in docs/inbound.md; access
is changed the way a portal changes it (through `Portal`, or in plain SQL
for a portal that forgets to revoke tokens).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from sqlmodel import col, delete, update

from bridge.inbound.receipt import (
    HEADER_SCAN_LIMIT,
    RecipientVerdict,
    check_recipient,
    header_block,
    message_id_of,
    store_raw,
)
from bridge.store.models import (
    Audience,
    InboundStatus,
    InboundVia,
    Mailbox,
    Participant,
    ParticipantRole,
    StaffRole,
)

if TYPE_CHECKING:
    from conftest import Practice

UNKNOWN = "550 5.1.1 Unknown reply address; please answer in the portal"
EXPIRED = "550 5.1.1 This reply address has expired; please answer in the portal"
NO_LONGER = "550 5.1.1 This reply address is no longer valid; please answer in the portal"
NO_REPLY = "550 5.1.1 This address does not accept replies; please answer in the portal"


async def verdict(practice: Practice, address: str, **overrides: Any) -> RecipientVerdict:
    options: dict[str, Any] = {
        "token_secret": practice.secret,
        "address_format": practice.address_format,
        "noreply_address": practice.noreply,
        "now": practice.now,
        **overrides,
    }
    async with practice.store.read() as session:
        return await check_recipient(session, address, **options)


def refused(result: RecipientVerdict, answer: str, reason: str) -> bool:
    return (result.ok, result.code, result.answer, result.reason) == (False, 550, answer, reason)


# --- check_recipient -----------------------------------------------------------------


async def test_a_valid_reply_address_is_accepted_with_its_token_row(practice: Practice) -> None:
    token, token_id = await practice.token(practice.client_id)

    result = await verdict(practice, practice.address_for(token))

    assert result == RecipientVerdict(True, 250, "250 2.1.5 OK", "valid", token_id)


async def test_case_of_local_part_and_domain_and_angle_brackets_do_not_matter(
    practice: Practice,
) -> None:
    token, _ = await practice.token(practice.client_id)
    address = practice.address_for(token)
    local, _, domain = address.partition("@")

    result = await verdict(practice, f"<{local.upper()}@{domain.upper()}.>")

    assert result.ok


async def test_the_no_reply_address_is_refused_in_any_case(practice: Practice) -> None:
    result = await verdict(practice, practice.noreply.upper())

    assert refused(result, NO_REPLY, "no_reply_address")
    assert result.token_id is None


@pytest.mark.parametrize(
    "local",
    ["someone", "reply+", "reply+tooshort", "reply+{t}x", "xreply+{t}", "réply+{t}"],
)
async def test_addresses_that_are_not_reply_addresses_are_unknown(
    practice: Practice, local: str
) -> None:
    token, _ = await practice.token(practice.client_id)

    result = await verdict(practice, f"{local.format(t=token)}@{practice.reply_domain}")

    assert refused(result, UNKNOWN, "unknown")


async def test_a_token_that_was_never_stored_is_unknown(practice: Practice) -> None:
    assert refused(await verdict(practice, practice.unknown_address()), UNKNOWN, "unknown")


async def test_a_valid_token_at_a_foreign_domain_is_unknown(practice: Practice) -> None:
    token, _ = await practice.token(practice.client_id)

    result = await verdict(practice, practice.address_for(token, "elsewhere.example.com"))

    assert refused(result, UNKNOWN, "unknown")


async def test_a_token_is_valid_only_at_its_own_organizations_reply_domain(
    practice: Practice,
) -> None:
    await practice.portal.create_organization(
        "Other practice", "https://other.example.org", "replies.other.example.org"
    )
    token, _ = await practice.token(practice.client_id)

    result = await verdict(practice, practice.address_for(token, "replies.other.example.org"))

    assert refused(result, UNKNOWN, "unknown")


async def test_a_token_stored_under_another_secret_is_unknown(practice: Practice) -> None:
    token, _ = await practice.token(practice.client_id)

    result = await verdict(practice, practice.address_for(token), token_secret=b"x" * 32)

    assert refused(result, UNKNOWN, "unknown")


async def test_a_token_is_expired_from_the_instant_it_expires(practice: Practice) -> None:
    token, token_id = await practice.token(practice.client_id, expires_at=practice.now)
    address = practice.address_for(token)

    before = await verdict(practice, address, now=practice.now - timedelta(microseconds=1))
    at = await verdict(practice, address)

    assert before.ok
    assert refused(at, EXPIRED, "expired")
    assert at.token_id == token_id


async def test_a_revoked_token_is_no_longer_valid(practice: Practice) -> None:
    address = await practice.address(practice.client_id, revoked_at=practice.now)

    assert refused(await verdict(practice, address), NO_LONGER, "revoked")


async def test_losing_the_audience_revokes_the_scheduler_but_not_the_assigned_clinician(
    practice: Practice,
) -> None:
    scheduler = await practice.address(practice.scheduler_id)
    clinician = await practice.address(practice.clinician_id)
    assert (await verdict(practice, scheduler)).ok

    await practice.portal.change_audience(practice.thread_id, Audience.CLINICAL)

    assert refused(await verdict(practice, scheduler), NO_LONGER, "revoked")
    assert (await verdict(practice, clinician)).ok


async def test_deactivation_through_the_portal_revokes(practice: Practice) -> None:
    address = await practice.address(practice.client_id)

    await practice.portal.deactivate(practice.client_id)

    assert refused(await verdict(practice, address), NO_LONGER, "revoked")


async def test_deleting_the_thread_permanently_revokes(practice: Practice) -> None:
    address = await practice.address(practice.client_id)

    await practice.portal.delete_permanently(practice.thread_id, practice.client_id)

    assert refused(await verdict(practice, address), NO_LONGER, "revoked")


# A portal writing plain SQL may change access and forget the tokens: access is
# checked again at every RCPT, so the token is refused all the same.


async def test_a_participant_without_a_mailbox_row_has_no_access(practice: Practice) -> None:
    address = await practice.address(practice.client_id)
    async with practice.store.transaction() as session:
        await session.exec(
            delete(Mailbox)
            .where(col(Mailbox.thread_id) == practice.thread_id)
            .where(col(Mailbox.participant_id) == practice.client_id)
        )

    assert refused(await verdict(practice, address), NO_LONGER, "no_access")


async def test_an_inactive_participant_has_no_access(practice: Practice) -> None:
    address = await practice.address(practice.client_id)
    async with practice.store.transaction() as session:
        await session.exec(
            update(Participant)
            .where(col(Participant.id) == practice.client_id)
            .values(active=False)
        )

    assert refused(await verdict(practice, address), NO_LONGER, "no_access")


async def test_staff_whose_roles_no_longer_see_the_audience_have_no_access(
    practice: Practice,
) -> None:
    address = await practice.address(practice.scheduler_id)
    async with practice.store.transaction() as session:
        await session.exec(
            update(ParticipantRole)
            .where(col(ParticipantRole.participant_id) == practice.scheduler_id)
            .values(role=StaffRole.BILLER.value)
        )

    assert refused(await verdict(practice, address), NO_LONGER, "no_access")


async def test_a_clinician_no_longer_assigned_loses_a_clinical_thread(practice: Practice) -> None:
    await practice.portal.change_audience(practice.thread_id, Audience.CLINICAL)
    address = await practice.address(practice.clinician_id)
    assert (await verdict(practice, address)).ok
    async with practice.store.transaction() as session:
        await session.exec(
            update(ParticipantRole)
            .where(col(ParticipantRole.participant_id) == practice.clinician_id)
            .values(role=StaffRole.BILLER.value)
        )

    assert refused(await verdict(practice, address), NO_LONGER, "no_access")


async def test_no_answer_echoes_the_address_or_the_token(practice: Practice) -> None:
    token, _ = await practice.token(practice.client_id, revoked_at=practice.now)
    addresses = [practice.address_for(token), practice.unknown_address(), practice.noreply]

    for address in addresses:
        answer = (await verdict(practice, address)).answer
        assert address.split("@")[0].lower() not in answer.lower()
        assert token not in answer.lower()


# --- store_raw -------------------------------------------------------------------------

RAW = (
    b"From: Client <client@home.example.net>\r\n"
    b"Subject: Re: Appointment\r\n"
    b"Message-ID: <abc.123@home.example.net>\r\n"
    b"\r\n"
    b"Message-ID: <not-a-header@body>\r\n"
    b"Tuesday is fine.\r\n"
)


async def test_store_raw_writes_one_received_row_per_recipient(practice: Practice) -> None:
    recipients = ["reply+a@x.example", "reply+b@x.example"]
    async with practice.store.transaction() as session:
        ids = await store_raw(
            session,
            RAW,
            via=InboundVia.LMTP,
            envelope_sender=practice.sender,
            envelope_recipients=recipients,
            now=practice.now,
        )

    rows = await practice.rows()
    assert [row.id for row in rows] == ids
    assert [row.envelope_recipient for row in rows] == recipients
    for row in rows:
        assert row.raw == RAW
        assert row.sha256 == hashlib.sha256(RAW).hexdigest()
        assert row.message_id_header == "<abc.123@home.example.net>"
        assert row.received_via == InboundVia.LMTP.value
        assert row.envelope_sender == practice.sender
        assert row.status == InboundStatus.RECEIVED.value
        assert row.participant_id is None and row.thread_id is None


async def test_store_raw_writes_a_recipient_given_twice_once(practice: Practice) -> None:
    async with practice.store.transaction() as session:
        ids = await store_raw(
            session,
            RAW,
            via=InboundVia.SMTP,
            envelope_sender=None,
            envelope_recipients=["reply+a@x.example", "b@x.example", "REPLY+A@x.example"],
            now=practice.now,
        )

    rows = await practice.rows()
    assert len(rows) == 2
    assert ids[0] == ids[2] != ids[1]
    assert rows[0].envelope_sender is None


async def test_store_raw_hashes_large_messages_exactly(practice: Practice) -> None:
    raw = RAW + b"x" * (3 * 1024 * 1024) + b"\r\n"
    async with practice.store.transaction() as session:
        await store_raw(
            session,
            raw,
            via=InboundVia.SMTP,
            envelope_sender=practice.sender,
            envelope_recipients=["reply+a@x.example"],
            now=practice.now,
        )

    (row,) = await practice.rows()
    assert row.raw == raw
    assert row.sha256 == hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize(
    ("sender", "recipients"),
    [
        ("a@b.example", []),
        ("x" * 321, ["reply+a@x.example"]),
        ("a@b.example", ["r" * 321]),
        ("a\udcff@b.example", ["reply+a@x.example"]),
        ("a\x00@b.example", ["reply+a@x.example"]),
    ],
)
async def test_store_raw_refuses_envelopes_the_table_cannot_hold(
    practice: Practice, sender: str, recipients: list[str]
) -> None:
    with pytest.raises(ValueError):
        async with practice.store.transaction() as session:
            await store_raw(
                session,
                RAW,
                via=InboundVia.SMTP,
                envelope_sender=sender,
                envelope_recipients=recipients,
                now=practice.now,
            )

    assert await practice.rows() == []


# --- the Message-ID, from the header block only ----------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (RAW, "<abc.123@home.example.net>"),
        (b"message-id:   <lower@case>  \n\nbody\n", "<lower@case>"),
        (b"Message-ID:\r\n <folded@example>\r\n\r\n", "<folded@example>"),
        (b"Message-ID: <first@x>\r\nMessage-ID: <second@x>\r\n\r\n", "<first@x>"),
        (b"Subject: none\r\n\r\nMessage-ID: <in-body@x>\r\n", None),
        (b"\r\nMessage-ID: <after-empty-line@x>\r\n", None),
        (b"Message-ID:\r\n\r\n", None),
        (b"Message-ID: <" + b"a" * 1000 + b"@x>\r\n\r\n", None),
        (b"Message-ID: <a\x01b@x>\r\n\r\n", None),
        ("Message-ID: <grüße@bücher.example>\r\n\r\n".encode(), "<grüße@bücher.example>"),
        (b"Message-ID: <\xff@x>\r\n\r\n", "<\ufffd@x>"),
        (b"garbage without any header", None),
        (b"", None),
    ],
)
def test_message_id_is_read_from_the_header_block(raw: bytes, expected: str | None) -> None:
    assert message_id_of(raw) == expected


def test_message_id_beyond_the_scan_limit_is_not_looked_for() -> None:
    filler = b"X-Filler: " + b"y" * 900 + b"\r\n"
    head = filler * (HEADER_SCAN_LIMIT // len(filler) + 1)

    assert message_id_of(head + b"Message-ID: <late@x>\r\n\r\n") is None
    assert message_id_of(b"Message-ID: <early@x>\r\n" + head + b"\r\n") == "<early@x>"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"A: 1\r\nB: 2\r\n\r\nbody\r\n", b"A: 1\r\nB: 2\r\n"),
        (b"A: 1\nB: 2\n\nbody\n", b"A: 1\nB: 2\n"),
        (b"A: 1\r\n", b"A: 1\r\n"),
        (b"A: 1", b"A: 1"),
        (b"\r\nbody", b""),
    ],
)
def test_header_block_ends_at_the_first_empty_line(data: bytes, expected: bytes) -> None:
    assert header_block(data) == expected
