"""Issue 3: a mass message to 50 clients, end to end, on both backends.

Portal -> `dispatch_batch` -> a real `Sender` with the real renderer -> the
aiosmtpd sink. Fifty emails go out, each naming exactly one recipient, and no
client's reply token resolves to another client's thread.
"""

from __future__ import annotations

import random
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import getaddresses

from smtp_sink import Delivery, Sink
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.inbound.receipt import ReplyRules, check_recipient
from bridge.outbound.dispatcher import dispatch_batch
from bridge.outbound.render import RenderContext, render
from bridge.outbound.sender import Sender
from bridge.outbound.transport import SmtpTransport
from bridge.policy.tokens import hash_token, token_from_address
from bridge.portal import Portal
from bridge.store.engine import Store
from bridge.store.models import (
    Audience,
    NotificationMode,
    Outbox,
    OutboxStatus,
    ReplyToken,
    StaffRole,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=60)
CLIENTS = 50
FROM_ADDRESS = "notify@harbour.example"
REPLY_DOMAIN = "reply.harbour.example"
RULES = ReplyRules(
    token_secret=b"m" * 32,
    address_format="reply+{token}",
    noreply_address="noreply@harbour.example",
)
CONTEXT = RenderContext(
    from_address=FROM_ADDRESS,
    token_secret=RULES.token_secret,
    token_lifetime=timedelta(days=30),
    address_format=RULES.address_format,
)


def client_name(number: int) -> str:
    # Zero-padded, so no client's name or address is a substring of another's.
    return f"Marigold{number:02d} Quenby{number:02d}"


def client_address(number: int) -> str:
    return f"marigold{number:02d}.quenby@clients.example"


async def real_render(session: AsyncSession, row: Outbox, now: datetime) -> EmailMessage:
    return await render(session, row, CONTEXT, now=now)


def addresses(message: EmailMessage, header: str) -> list[str]:
    return [
        addr.lower() for _, addr in getaddresses([str(v) for v in message.get_all(header) or []])
    ]


async def test_a_mass_message_to_50_clients_is_50_emails_each_naming_one_recipient(
    store: Store, sink: Sink
) -> None:
    portal = Portal(store)
    org = await portal.create_organization(
        "Harbour Therapy", "https://portal.harbour.example", REPLY_DOMAIN, now=T0
    )
    admin = await portal.add_staff(
        org, "Practice Admin", [StaffRole.PRACTICE_ADMIN], ["admin@harbour.example"], now=T0
    )
    await portal.set_notification_mode(
        org, NotificationMode.CONVENIENCE, acknowledged_by=admin, now=T0
    )
    clients: dict[int, int] = {}  # participant id -> client number
    for number in range(CLIENTS):
        client = await portal.add_client(
            org,
            client_name(number),
            [client_address(number)],
            has_portal_account=True,
            email_content_consent=True,
            now=T0,
        )
        clients[client] = number
    ref = await portal.send_mass_message(
        org,
        admin,
        list(clients),
        "Office closed on Friday",
        "The practice is closed this Friday; sessions move to Monday.",
        audience=Audience.ADMINISTRATIVE,
        now=T0,
    )
    assert len(ref.thread_ids) == CLIENTS

    dispatched = 0
    while (await dispatch_batch(store, now=T0, coalesce_window=WINDOW)).messages:
        dispatched += 1
    assert dispatched >= 1

    async with store.read() as session:
        rows = list(await session.exec(select(Outbox)))
    assert len(rows) == CLIENTS
    assert {r.recipient_id for r in rows} == set(clients), "the author gets no email"
    assert all(r.mode == NotificationMode.CONVENIENCE.value for r in rows)
    thread_of = {r.recipient_id: r.thread_id for r in rows}
    assert set(thread_of.values()) == set(ref.thread_ids), "one private thread per client"

    # Past the convenience window: every row is due.
    at = T0 + WINDOW * 2
    sender = Sender(
        store,
        SmtpTransport(sink.settings()),
        real_render,
        instance="mass-test",
        envelope_sender=FROM_ADDRESS,
        hourly_cap=1000,
        batch_size=20,
        clock=lambda: at,
        rng=random.Random(3),
    )
    async with aclosing(sender):
        for _ in range(CLIENTS):  # bounded; a round sends up to batch_size rows
            if await sender.run_once() == 0:
                break
        assert await sender.run_once() == 0, "the queue is empty"

    async with store.read() as session:
        rows = list(await session.exec(select(Outbox)))
        tokens = {t.token_hash: t for t in await session.exec(select(ReplyToken))}
    assert {r.status for r in rows} == {OutboxStatus.SENT.value}
    assert len(sink.deliveries) == CLIENTS
    assert sink.refused == 0

    by_address = {client_address(n): c for c, n in clients.items()}
    seen: dict[int, Delivery] = {}
    for delivery in sink.deliveries:
        (recipient,) = delivery.rcpt_tos
        recipient = recipient.lower()
        assert recipient in by_address
        client = by_address[recipient]
        assert client not in seen, "one email per client"
        seen[client] = delivery
        message = delivery.message()
        assert addresses(message, "To") == [recipient]
        assert message.get_all("Cc") is None and message.get_all("Bcc") is None
        raw = delivery.data.lower()
        assert b"\ncc:" not in raw and b"\nbcc:" not in raw
        for other, number in clients.items():
            if other == client:
                continue
            assert client_address(number).encode() not in raw
            assert client_name(number).split()[0].lower().encode() not in raw
            assert client_name(number).split()[1].lower().encode() not in raw

        (reply_to,) = addresses(message, "Reply-To")
        token = token_from_address(RULES.address_format, reply_to, REPLY_DOMAIN)
        assert token is not None
        row = tokens[hash_token(RULES.token_secret, token)]
        assert row.participant_id == client
        assert row.thread_id == thread_of[client]
    assert set(seen) == set(clients)

    # Client A's reply address is valid and resolves to A's thread, and only to it.
    first = next(iter(clients))
    (reply_a,) = addresses(seen[first].message(), "Reply-To")
    async with store.read() as session:
        verdict = await check_recipient(
            session,
            reply_a,
            token_secret=RULES.token_secret,
            address_format=RULES.address_format,
            noreply_address=RULES.noreply_address,
            now=at,
        )
        assert verdict.ok and verdict.reason == "valid"
        token_row = await session.get(ReplyToken, verdict.token_id)
    assert token_row is not None
    assert (token_row.participant_id, token_row.thread_id) == (first, thread_of[first])
    others = {thread_of[c] for c in clients if c != first}
    assert len(others) == CLIENTS - 1
    assert token_row.thread_id not in others
    # No token of any client resolves to another client's thread.
    for row in tokens.values():
        assert row.thread_id == thread_of[row.participant_id]
