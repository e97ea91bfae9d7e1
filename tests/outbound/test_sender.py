"""The sender against a real store (both backends) and an aiosmtpd sink told how to answer.

Time moves only through the injected clock; jitter comes from a seeded
`random.Random`, so backoff schedules are exact. Rows are rendered by
`plain_render` (tests/outbound/sender_runner.py) unless a test is about the
real renderer.
"""

from __future__ import annotations

import asyncio
import logging
import random
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from sender_runner import FROM_ADDRESS, plain_render
from smtp_sink import Seed, Sink
from sqlmodel import col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.config import OutboundSettings, OutboundSmtpSettings, TokenSettings
from bridge.mail.headers import OWN_MAIL_HEADER
from bridge.outbound.dispatcher import dispatch_batch
from bridge.outbound.outcomes import AUDIT_FAILED
from bridge.outbound.queue import AUDIT_RETRIED, list_rows, retry
from bridge.outbound.render import RenderContext, render
from bridge.outbound.sender import Render, Sender
from bridge.outbound.transport import SmtpTransport
from bridge.portal import Portal
from bridge.store.engine import Store
from bridge.store.models import (
    AuditEvent,
    NotificationMode,
    Outbox,
    OutboxKind,
    OutboxStatus,
    ReplyToken,
    StaffRole,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
BASE = timedelta(minutes=1)
CAP = timedelta(minutes=30)
SEED = 7

PENDING, SENDING = OutboxStatus.PENDING.value, OutboxStatus.SENDING.value
COALESCED = OutboxStatus.COALESCED.value
CONTEXT = RenderContext(
    from_address=FROM_ADDRESS,
    token_secret=b"k" * 32,
    token_lifetime=timedelta(days=30),
    address_format="reply+{token}",
)
SENT, FAILED = OutboxStatus.SENT.value, OutboxStatus.FAILED.value


class Clock:
    """The sender's only source of time; tests move it by hand."""

    def __init__(self, at: datetime) -> None:
        self.now = at

    def __call__(self) -> datetime:
        return self.now


def make_sender(
    store: Store,
    sink: Sink,
    clock: Clock,
    *,
    render_with: Render = plain_render,
    instance: str = "test-a",
    **options: Any,
) -> aclosing[Sender]:
    """A sender whose rounds the test runs itself (`run_once`); leaving closes its transport."""
    options.setdefault("hourly_cap", 1000)
    sender = Sender(
        store,
        SmtpTransport(sink.settings()),
        render_with,
        instance=instance,
        envelope_sender=FROM_ADDRESS,
        backoff_base=BASE,
        backoff_cap=CAP,
        clock=clock,
        rng=random.Random(SEED),
        **options,
    )
    return aclosing(sender)


async def outbox_row(store: Store, row_id: int) -> Outbox:
    async with store.read() as session:
        row = await session.get(Outbox, row_id)
        assert row is not None
        return row


async def statuses(store: Store) -> dict[int, str]:
    async with store.read() as session:
        return {r.id or 0: r.status for r in await session.exec(select(Outbox))}


async def audit_events(store: Store, action: str = AUDIT_FAILED) -> list[AuditEvent]:
    async with store.read() as session:
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(col(AuditEvent.id))
        return list(await session.exec(query))


async def set_row(store: Store, row_id: int, **values: Any) -> None:
    async with store.transaction() as session:
        await session.exec(update(Outbox).where(col(Outbox.id) == row_id).values(**values))


# --- retries -------------------------------------------------------------------------------


async def test_451_twice_then_250_delivers_once_on_the_backoff_schedule(
    store: Store, seed: Seed, sink: Sink
) -> None:
    (client,) = await seed.people(1, T0)
    (row_id,) = await seed.rows([client], T0)
    sink.script("451 4.3.0 try later", "451 4.3.0 try later", "250 OK")
    clock, jitter = Clock(T0), random.Random(SEED)

    async with make_sender(store, sink, clock) as sender:
        assert await sender.run_once() == 1
        row = await outbox_row(store, row_id)
        first_due = T0 + BASE * jitter.uniform(0.5, 1.5)
        assert (row.status, row.attempts, row.smtp_code) == (PENDING, 1, 451)
        assert row.smtp_answer == "4.3.0 try later"
        assert row.next_attempt_at == first_due

        clock.now = first_due - timedelta(microseconds=1)
        assert await sender.run_once() == 0, "not due yet"

        clock.now = first_due
        assert await sender.run_once() == 1
        row = await outbox_row(store, row_id)
        second_due = first_due + 2 * BASE * jitter.uniform(0.5, 1.5)
        assert (row.status, row.attempts, row.next_attempt_at) == (PENDING, 2, second_due)

        clock.now = second_due
        assert await sender.run_once() == 1

    row = await outbox_row(store, row_id)
    assert (row.status, row.attempts, row.smtp_code, row.sent_at) == (SENT, 3, 250, second_due)
    assert (row.lease_owner, row.lease_expires_at) == (None, None)
    assert sink.notification_ids() == [str(row_id)]
    assert sink.refused == 2


async def test_backoff_doubles_up_to_the_cap(store: Store, seed: Seed, sink: Sink) -> None:
    (client,) = await seed.people(1, T0)
    (row_id,) = await seed.rows([client], T0)
    sink.script(*["451 4.3.0 try later"] * 8)
    clock, jitter = Clock(T0), random.Random(SEED)
    delays = []

    async with make_sender(store, sink, clock) as sender:
        for attempt in range(8):
            await sender.run_once()
            due = (await outbox_row(store, row_id)).next_attempt_at
            expected = min(CAP, BASE * 2**attempt) * jitter.uniform(0.5, 1.5)
            assert due - clock.now == expected
            delays.append(min(CAP, BASE * 2**attempt))
            clock.now = due

    assert delays[-3:] == [CAP, CAP, CAP]
    assert (await outbox_row(store, row_id)).attempts == 8


async def test_a_550_fails_the_row_with_the_answer_and_an_audit_event_of_ids_only(
    store: Store, seed: Seed, sink: Sink
) -> None:
    (client,) = await seed.people(1, T0)
    (row_id,) = await seed.rows([client], T0)
    sink.script("550 5.7.1 <client0@example.net> refused by policy")

    async with make_sender(store, sink, Clock(T0)) as sender:
        await sender.run_once()
        assert await sender.run_once() == 0, "a failed row is never tried again"

    row = await outbox_row(store, row_id)
    assert (row.status, row.attempts, row.smtp_code) == (FAILED, 1, 550)
    assert row.smtp_answer == "5.7.1 <client0@example.net> refused by policy"
    (event,) = await audit_events(store)
    assert (event.outbox_id, event.participant_id, event.organization_id) == (
        row_id,
        client,
        seed.org,
    )
    assert event.detail == {"code": 550}
    assert (event.actor, event.at) == ("test-a", T0)
    assert sink.deliveries == []


async def test_past_the_retry_horizon_a_temporary_failure_fails_the_row(
    store: Store, seed: Seed, sink: Sink
) -> None:
    old_client, young_client = await seed.people(2, T0)
    (old,) = await seed.rows([old_client], T0 - timedelta(hours=2, seconds=1))
    (young,) = await seed.rows([young_client], T0)
    sink.script("451 4.3.0 try later", "451 4.3.0 try later")

    async with make_sender(store, sink, Clock(T0), retry_horizon=timedelta(hours=2)) as sender:
        await sender.run_once()

    assert (await outbox_row(store, old)).status == FAILED
    assert (await outbox_row(store, young)).status == PENDING
    (event,) = await audit_events(store)
    assert event.outbox_id == old
    assert event.detail == {"code": 451, "reason": "retry_horizon"}


async def test_relay_down_for_a_while_then_back_delivers_every_row_exactly_once(
    store: Store, seed: Seed, sink: Sink
) -> None:
    clients = await seed.people(12, T0)
    rows = await seed.rows(clients, T0)
    clock = Clock(T0)

    async with make_sender(store, sink, clock, batch_size=5) as sender:
        await sender.run_once()  # part of the queue goes out
        await sink.stop()
        for _ in range(3):  # the relay stays down over several rounds and retries
            clock.now += CAP * 2
            await sender.run_once()
            await sender.run_once()
        deferred = [r for r in await list_rows(store) if r.status == PENDING]
        assert deferred, "rows waited while the relay was down"
        assert all(r.smtp_code is None and r.attempts >= 1 for r in deferred)

        await sink.start()
        for _ in range(10):
            clock.now += CAP * 2
            await sender.run_once()

    assert set((await statuses(store)).values()) == {SENT}
    assert sorted(sink.notification_ids()) == sorted(str(r) for r in rows)


# --- claims and leases ---------------------------------------------------------------------


async def test_an_expired_lease_of_a_dead_instance_is_taken_over_and_a_live_one_is_not(
    store: Store, seed: Seed, sink: Sink
) -> None:
    a, b = await seed.people(2, T0)
    dead, busy = await seed.rows([a, b], T0)
    await set_row(
        store, dead, status=SENDING, lease_owner="dead", lease_expires_at=T0 - timedelta(seconds=1)
    )
    await set_row(
        store, busy, status=SENDING, lease_owner="busy", lease_expires_at=T0 + timedelta(minutes=5)
    )
    clock = Clock(T0)

    async with make_sender(store, sink, clock) as sender:
        assert await sender.run_once() == 1
        assert sink.notification_ids() == [str(dead)]
        busy_row = await outbox_row(store, busy)
        assert (busy_row.status, busy_row.lease_owner) == (SENDING, "busy")

        clock.now = T0 + timedelta(minutes=5, seconds=1)
        assert await sender.run_once() == 1

    assert sink.notification_ids() == [str(dead), str(busy)]
    assert set((await statuses(store)).values()) == {SENT}


async def test_a_row_whose_lease_ran_short_before_the_send_waits_for_the_lease_to_expire(
    store: Store, seed: Seed, sink: Sink
) -> None:
    (client,) = await seed.people(1, T0)
    (row_id,) = await seed.rows([client], T0)
    clock = Clock(T0)
    renders = 0

    async def slow_render(session: AsyncSession, row: Outbox, now: datetime) -> EmailMessage:
        nonlocal renders
        renders += 1
        if renders == 1:
            clock.now += timedelta(minutes=3)  # 3 of the 5 lease minutes gone before the send
        return await plain_render(session, row, now)

    lease = timedelta(minutes=5)
    async with make_sender(store, sink, clock, render_with=slow_render, lease=lease) as sender:
        await sender.run_once()
        assert sink.deliveries == []
        row = await outbox_row(store, row_id)
        assert (row.status, row.lease_expires_at, row.attempts) == (SENDING, T0 + lease, 0)

        clock.now = T0 + lease
        assert await sender.run_once() == 0, "the lease has not expired yet"

        clock.now = T0 + lease + timedelta(seconds=1)
        await sender.run_once()

    assert sink.notification_ids() == [str(row_id)]


async def test_two_senders_on_two_connections_to_one_store_send_each_of_100_rows_once(
    store: Store, database_url: str, seed: Seed, sink: Sink
) -> None:
    clients = await seed.people(10, T0)
    rows = await seed.rows(clients * 10, T0)
    other_sink = Sink()
    await other_sink.start()
    clock = Clock(T0)

    async def drain(sender: Sender) -> None:
        while await sender.run_once():
            pass

    try:
        async with (
            Store(database_url) as other_store,
            make_sender(store, sink, clock, instance="a", batch_size=7) as first,
            make_sender(other_store, other_sink, clock, instance="b", batch_size=7) as second,
        ):
            await asyncio.gather(drain(first), drain(second))
    finally:
        await other_sink.stop()

    both = sink.notification_ids() + other_sink.notification_ids()
    assert sorted(both) == sorted(str(r) for r in rows), "each row exactly once"
    assert sink.deliveries and other_sink.deliveries, "both senders took part"
    assert set((await statuses(store)).values()) == {SENT}


# --- hourly cap ----------------------------------------------------------------------------


async def test_the_hourly_cap_delays_the_overflow_and_sends_it_when_room_frees_up(
    store: Store, seed: Seed, sink: Sink
) -> None:
    (client,) = await seed.people(1, T0)
    (earlier,) = await seed.rows([client], T0 - timedelta(minutes=40))
    await set_row(store, earlier, status=SENT, sent_at=T0 - timedelta(minutes=30))
    first, second, third = await seed.rows([client] * 3, T0)
    clock = Clock(T0)

    async with make_sender(store, sink, clock, hourly_cap=2) as sender:
        assert await sender.run_once() == 3  # one sent, two put back
        assert sink.notification_ids() == [str(first)]
        for row_id in (second, third):
            row = await outbox_row(store, row_id)
            # Room frees up when the email sent at T0-30min leaves the hour.
            assert (row.status, row.attempts) == (PENDING, 0)
            assert row.next_attempt_at == T0 + timedelta(minutes=30)

        clock.now = T0 + timedelta(minutes=29)
        assert await sender.run_once() == 0

        clock.now = T0 + timedelta(minutes=30)
        await sender.run_once()
        assert sink.notification_ids() == [str(first), str(second)]
        assert (await outbox_row(store, third)).next_attempt_at == T0 + timedelta(hours=1)

        clock.now = T0 + timedelta(hours=1)
        await sender.run_once()

    assert sink.notification_ids() == [str(first), str(second), str(third)]
    assert set((await statuses(store)).values()) == {SENT}
    assert await audit_events(store) == []


async def test_the_hourly_cap_counts_each_recipient_on_its_own(
    store: Store, seed: Seed, sink: Sink
) -> None:
    a, b = await seed.people(2, T0)
    await seed.rows([a, a, b, b], T0)

    async with make_sender(store, sink, Clock(T0), hourly_cap=1) as sender:
        await sender.run_once()

    assert len(sink.deliveries) == 2
    assert sorted(d.rcpt_tos[0] for d in sink.deliveries) == [
        "client0@example.net",
        "client1@example.net",
    ]


# --- what render decides -------------------------------------------------------------------


async def test_a_row_the_renderer_cannot_render_fails_with_the_reason_and_no_attempt(
    store: Store, seed: Seed, sink: Sink
) -> None:
    portal = Portal(store)
    await seed.people(1, T0)
    nobody = await portal.add_client(seed.org, "No Address", [], now=T0)
    (row_id,) = await seed.rows([nobody], T0)

    async with make_sender(store, sink, Clock(T0)) as sender:
        await sender.run_once()

    row = await outbox_row(store, row_id)
    assert (row.status, row.attempts, row.smtp_code) == (FAILED, 0, None)
    (event,) = await audit_events(store)
    assert event.detail == {"code": None, "reason": "no_address"}
    assert sink.deliveries == []


async def test_an_email_naming_more_than_its_one_recipient_is_never_sent(
    store: Store, seed: Seed, sink: Sink
) -> None:
    a, b = await seed.people(2, T0)
    copied, two_to = await seed.rows([a, b], T0)

    async def leaky_render(session: AsyncSession, row: Outbox, now: datetime) -> EmailMessage:
        message = await plain_render(session, row, now)
        if row.id == copied:
            message["Cc"] = "someone.else@example.net"
        else:
            del message["To"]
            message["To"] = "client0@example.net, client1@example.net"
        return message

    async with make_sender(store, sink, Clock(T0), render_with=leaky_render) as sender:
        await sender.run_once()

    assert sink.deliveries == []
    reasons = {e.outbox_id: e.detail["reason"] for e in await audit_events(store)}
    assert reasons == {copied: "extra_recipients", two_to: "no_single_recipient"}


async def test_a_bug_in_the_renderer_is_a_temporary_failure(
    store: Store, seed: Seed, sink: Sink
) -> None:
    (client,) = await seed.people(1, T0)
    (row_id,) = await seed.rows([client], T0)
    calls = 0

    async def flaky_render(session: AsyncSession, row: Outbox, now: datetime) -> EmailMessage:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("renderer bug")
        return await plain_render(session, row, now)

    clock = Clock(T0)
    async with make_sender(store, sink, clock, render_with=flaky_render) as sender:
        await sender.run_once()
        assert (await outbox_row(store, row_id)).status == PENDING
        clock.now += CAP * 2
        await sender.run_once()

    assert sink.notification_ids() == [str(row_id)]


# --- the loop ------------------------------------------------------------------------------


async def test_entered_it_runs_rounds_beats_and_wake_starts_a_round_at_once(
    store: Store, seed: Seed, sink: Sink
) -> None:
    (client,) = await seed.people(1, T0)
    beats: list[str] = []
    first_round = asyncio.Event()

    def beat(name: str) -> None:
        beats.append(name)
        first_round.set()

    sender = Sender(
        store,
        SmtpTransport(sink.settings()),
        plain_render,
        instance="test-a",
        envelope_sender=FROM_ADDRESS,
        clock=Clock(T0),
        beat=beat,
        poll_interval=3600,
    )
    async with sender:
        await asyncio.wait_for(first_round.wait(), 10)
        (row_id,) = await seed.rows([client], T0)  # arrives while the loop sleeps for an hour

        sender.wake()

        await sink.wait_for(1)

    assert sink.notification_ids() == [str(row_id)]
    assert (await outbox_row(store, row_id)).status == SENT, "the round finished before exit"
    assert len(beats) >= 2 and set(beats) == {"sender"}
    assert sink.live == set(), "leaving closed the transport's connections"


async def test_run_with_a_stop_event_survives_a_failing_round(
    store: Store, seed: Seed, sink: Sink
) -> None:
    (client,) = await seed.people(1, T0)
    (row_id,) = await seed.rows([client], T0)
    rounds: list[datetime] = []

    def failing_then_fine_clock() -> datetime:
        rounds.append(T0)
        if len(rounds) == 1:
            raise RuntimeError("clock bug")  # the whole round fails, before any claim
        return T0

    stop = asyncio.Event()
    async with aclosing(
        Sender(
            store,
            SmtpTransport(sink.settings()),
            plain_render,
            instance="test-a",
            envelope_sender=FROM_ADDRESS,
            clock=failing_then_fine_clock,
            poll_interval=0.01,
        )
    ) as sender:
        loop = asyncio.create_task(sender.run(stop))
        await sink.wait_for(1)
        stop.set()
        await asyncio.wait_for(loop, 10)

    assert sink.notification_ids() == [str(row_id)]


async def test_log_lines_carry_ids_and_codes_and_never_an_address(
    store: Store, seed: Seed, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    clients = await seed.people(3, T0)
    rows = await seed.rows(clients, T0)
    sink.script("250 OK", "451 4.3.0 try later", "550 5.1.1 <client2@example.net> unknown")

    with caplog.at_level(logging.INFO, logger="bridge.outbound"):
        async with make_sender(store, sink, Clock(T0), concurrency=1) as sender:
            await sender.run_once()

    lines = [r for r in caplog.records if r.name.startswith("bridge.outbound.")]
    assert {r.getMessage() for r in lines} == {"outbox sent", "outbox deferred", "outbox failed"}
    assert {(getattr(r, "outbox_id", None), getattr(r, "code", None)) for r in lines} == {
        (rows[0], 250),
        (rows[1], 451),
        (rows[2], 550),
    }
    assert all(getattr(r, "attempt", None) == 1 for r in lines)
    for record in lines:
        text = f"{record.getMessage()} {vars(record)}"
        assert "@" not in text and "unknown" not in text


# --- the CLI's queue operations ------------------------------------------------------------


async def test_retry_puts_a_failed_row_back_in_line_now_and_keeps_its_attempts(
    store: Store, seed: Seed, sink: Sink
) -> None:
    (client,) = await seed.people(1, T0)
    (row_id,) = await seed.rows([client], T0)
    sink.script("550 5.7.1 refused")
    clock = Clock(T0)

    async with make_sender(store, sink, clock) as sender:
        await sender.run_once()
        (listed,) = await list_rows(store, FAILED)
        assert (listed.id, listed.attempts, listed.smtp_code) == (row_id, 1, 550)

        later = T0 + timedelta(hours=3)
        assert await retry(store, row_id, later)
        assert not await retry(store, row_id + 1000, later), "no such row"
        (listed,) = await list_rows(store, PENDING)
        assert (listed.next_attempt_at, listed.attempts) == (later, 1)

        clock.now = later
        await sender.run_once()

    assert (await outbox_row(store, row_id)).status == SENT
    assert not await retry(store, row_id, later), "a sent row is not retried"
    (event,) = await audit_events(store, AUDIT_RETRIED)
    assert (event.outbox_id, event.detail) == (row_id, {"previous_status": FAILED})


async def test_list_rows_shows_ids_states_and_codes_only(store: Store, seed: Seed) -> None:
    clients = await seed.people(3, T0)
    rows = await seed.rows(clients, T0)

    listed = await list_rows(store, limit=2)

    assert [r.id for r in listed] == rows[:0:-1]  # newest first
    assert "@" not in repr(listed)


# --- through the real renderer -------------------------------------------------------------


async def test_a_portal_message_reaches_the_relay_once_through_dispatcher_and_renderer(
    store: Store, sink: Sink
) -> None:
    portal = Portal(store)
    org = await portal.create_organization(
        "Harbour Therapy", "https://portal.example.com", "reply.example.com", now=T0
    )
    clinician = await portal.add_staff(
        org, "Dr Quill", [StaffRole.CLINICIAN], ["quill@harbour.example"], now=T0
    )
    client = await portal.add_client(
        org, "Ingrid Velazquez", ["ingrid@client.example"], has_portal_account=True, now=T0
    )
    await portal.assign_clinician(client, clinician)
    ref = await portal.create_thread(
        org,
        client,
        "Panic attacks at work",
        clinician_ids=[clinician],
        author_id=client,
        body_text="I could not sleep again",
        now=T0,
    )
    await dispatch_batch(store, now=T0, coalesce_window=timedelta(seconds=60))

    async with make_sender(store, sink, Clock(T0), render_with=real_render) as sender:
        assert await sender.run_once() >= 1
        await sender.run_once()

    async with store.read() as session:
        (row,) = await session.exec(select(Outbox).where(Outbox.recipient_id == clinician))
        tokens = list(await session.exec(select(ReplyToken)))
    (delivery,) = [d for d in sink.deliveries if d.rcpt_tos == ("quill@harbour.example",)]
    assert row.status == SENT
    assert delivery.header(OWN_MAIL_HEADER) == str(row.id)
    assert delivery.header("Message-ID") == row.message_id_header
    assert delivery.mail_from == FROM_ADDRESS
    assert b"Panic attacks" not in delivery.data and b"sleep" not in delivery.data
    assert tokens == [], "secure mode issues no reply token"
    assert ref.thread_id == row.thread_id


async def real_render(session: AsyncSession, row: Outbox, now: datetime) -> EmailMessage:
    return await render(session, row, CONTEXT, now=now)


async def test_a_convenience_row_with_nothing_left_to_carry_is_coalesced_not_failed(
    store: Store, sink: Sink
) -> None:
    portal = Portal(store)
    org = await portal.create_organization(
        "Harbour Therapy", "https://portal.example.com", "reply.example.com", now=T0
    )
    admin = await portal.add_staff(
        org, "Admin", [StaffRole.PRACTICE_ADMIN], ["admin@harbour.example"], now=T0
    )
    clinician = await portal.add_staff(
        org, "Dr Quill", [StaffRole.CLINICIAN], ["quill@harbour.example"], now=T0
    )
    client = await portal.add_client(
        org,
        "Ingrid",
        ["ingrid@client.example"],
        has_portal_account=True,
        email_content_consent=True,
        now=T0,
    )
    await portal.set_notification_mode(org, NotificationMode.CONVENIENCE, acknowledged_by=admin)
    ref = await portal.create_thread(
        org, client, "Subject", author_id=clinician, body_text="hello", now=T0
    )
    await dispatch_batch(store, now=T0, coalesce_window=timedelta(seconds=60))
    # Within the coalescing window the client reads the message in the portal.
    await portal.mark_read(ref.thread_id, client)
    async with store.read() as session:
        (row,) = await session.exec(select(Outbox).where(Outbox.recipient_id == client))
    assert (row.mode, row.status) == (NotificationMode.CONVENIENCE.value, PENDING)
    assert row.id is not None

    async with make_sender(
        store, sink, Clock(T0 + timedelta(minutes=2)), render_with=real_render
    ) as sender:
        await sender.run_once()

    done = await outbox_row(store, row.id)
    assert (done.status, done.attempts, done.smtp_code) == (COALESCED, 0, None)
    assert (done.lease_owner, done.lease_expires_at) == (None, None)
    assert await audit_events(store) == []
    assert sink.deliveries == []


async def test_a_notice_to_an_unknown_sender_is_sent_to_that_address_as_an_auto_reply(
    store: Store, seed: Seed, sink: Sink
) -> None:
    await seed.people(1, T0)
    async with store.transaction() as session:
        notice = Outbox(
            kind=OutboxKind.NOTICE.value,
            reason="unknown_recipient",
            organization_id=seed.org,
            to_address="Stranger@Elsewhere.example",
            created_at=T0,
            next_attempt_at=T0,
        )
        session.add(notice)
        await session.flush()
        assert notice.id is not None
        notice_id = notice.id

    async with make_sender(store, sink, Clock(T0), render_with=real_render) as sender:
        await sender.run_once()

    (delivery,) = sink.deliveries
    assert delivery.rcpt_tos == ("Stranger@elsewhere.example",)
    assert delivery.header("Auto-Submitted") == "auto-replied"
    assert delivery.header(OWN_MAIL_HEADER) == str(notice_id)
    assert (await outbox_row(store, notice_id)).status == SENT


async def test_from_settings_takes_sender_address_batch_size_and_backoff_from_outbound(
    store: Store, sink: Sink
) -> None:
    portal = Portal(store)
    org = await portal.create_organization(
        "Harbour Therapy", "https://portal.example.com", "reply.example.com", now=T0
    )
    clinician = await portal.add_staff(
        org, "Dr Quill", [StaffRole.CLINICIAN], ["quill@harbour.example"], now=T0
    )
    client = await portal.add_client(
        org, "Ingrid", ["ingrid@client.example"], has_portal_account=True, now=T0
    )
    for subject in ("one", "two", "three"):
        await portal.create_thread(
            org, client, subject, author_id=clinician, body_text="hello", now=T0
        )
    await dispatch_batch(store, now=T0, coalesce_window=timedelta(seconds=60))
    settings = OutboundSettings(
        from_address="notify@harbour.example",
        batch_size=2,
        retry_base_seconds=10,
        retry_max_seconds=10,
        smtp=OutboundSmtpSettings(concurrency=1),
    )
    context = RenderContext.from_settings(settings, TokenSettings(), token_secret=b"k" * 32)
    sink.script("451 4.3.0 try later")
    sender = Sender.from_settings(
        store,
        settings,
        context,
        instance="test-a",
        transport=SmtpTransport(sink.settings()),
        clock=Clock(T0),
        rng=random.Random(SEED),
    )

    async with aclosing(sender):
        assert await sender.run_once() == 2, "batch_size"

    first, second, third = sorted((await statuses(store)).items())
    assert [first[1], second[1], third[1]] == [PENDING, SENT, PENDING]
    deferred = await outbox_row(store, first[0])
    assert deferred.next_attempt_at == T0 + timedelta(seconds=10) * random.Random(SEED).uniform(
        0.5, 1.5
    )
    assert (await outbox_row(store, third[0])).attempts == 0, "left for the next round"
    (delivery,) = sink.deliveries
    assert delivery.mail_from == "notify@harbour.example"
    assert delivery.message()["From"].addresses[0].addr_spec == "notify@harbour.example"
