"""The dispatcher, proved by reading its outbox rows back from a real store.

Scenarios are written through the portal API, the way a practice writes them;
every test runs on SQLite and (with BRIDGE_TEST_DATABASE_URL) on PostgreSQL.
Faults are injected in the database itself: a trigger that refuses some
outbox rows stands in for any error the store can raise mid-batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel, col, select, update

from bridge.config import OutboundSettings
from bridge.outbound.dispatcher import Dispatcher, DispatchResult, dispatch_batch
from bridge.portal import Portal, Preferences, people, threads
from bridge.store.engine import Store
from bridge.store.models import (
    Audience,
    EmailAddress,
    Mailbox,
    Message,
    NotificationMode,
    Outbox,
    OutboxStatus,
    Participant,
    StaffRole,
    Thread,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=60)
M = TypeVar("M", bound=SQLModel)

SUBJECT = "Panic attacks at work"
BODY = "I could not sleep again, the dreams about my father"
CLIENT_NAME = "Ingrid Velazquez-Moor"
CLIENT_ADDRESS = "ingrid.vm@client.example"

PENDING, COALESCED = OutboxStatus.PENDING.value, OutboxStatus.COALESCED.value


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite gives back naive UTC; PostgreSQL gives aware datetimes."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


async def rows(store: Store, model: type[M], *where: Any) -> list[M]:
    async with store.read() as session:
        return list(await session.exec(select(model).where(*where)))


async def outbox(store: Store, *where: Any) -> list[Outbox]:
    async with store.read() as session:
        return list(await session.exec(select(Outbox).where(*where).order_by(col(Outbox.id))))


def recipient_ids(written: Iterable[Outbox]) -> list[int]:
    ids = [row.recipient_id for row in written]
    assert None not in ids, "a notification without a recipient"
    return [rid for rid in ids if rid is not None]


async def dispatch(
    store: Store, at: datetime = T0 + timedelta(minutes=5), **kw: Any
) -> DispatchResult:
    return await dispatch_batch(store, now=at, coalesce_window=WINDOW, **kw)


async def undispatched(store: Store) -> int:
    return len(await rows(store, Message, col(Message.dispatched_at).is_(None)))


async def eventually(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def portal(store: Store, tmp_path: Path) -> Portal:
    return Portal(store, blob_dir=tmp_path / "blobs")


@dataclass(frozen=True)
class Practice:
    org: int
    clinician: int  # assigned to `client`
    supervisor: int
    scheduler: int
    biller: int
    admin: int  # practice admin
    client: int


@pytest.fixture
async def practice(portal: Portal) -> Practice:
    org = await portal.create_organization(
        "Harbour Therapy", "https://portal.example.com", "reply.example.com", now=T0
    )

    async def staff(name: str, role: StaffRole) -> int:
        return await portal.add_staff(org, name, [role], [f"{name}@harbour.example"], now=T0)

    clinician = await staff("clin", StaffRole.CLINICIAN)
    client = await portal.add_client(
        org, CLIENT_NAME, [CLIENT_ADDRESS], has_portal_account=True, now=T0
    )
    await portal.assign_clinician(client, clinician)
    return Practice(
        org=org,
        clinician=clinician,
        supervisor=await staff("super", StaffRole.SUPERVISOR),
        scheduler=await staff("sched", StaffRole.SCHEDULER),
        biller=await staff("bill", StaffRole.BILLER),
        admin=await staff("padmin", StaffRole.PRACTICE_ADMIN),
        client=client,
    )


async def client_thread(
    portal: Portal, p: Practice, audience: Audience = Audience.CLINICAL, **kw: Any
) -> tuple[int, int]:
    """A thread opened by the client; returns (thread id, first message id)."""
    ref = await portal.create_thread(
        p.org,
        p.client,
        SUBJECT,
        audience=audience,
        author_id=p.client,
        body_text=BODY,
        now=T0,
        **kw,
    )
    return ref.thread_id, ref.message_id


# --- who gets a row ---------------------------------------------------------------------


async def test_a_client_message_in_a_clinical_thread_notifies_clinician_and_supervisor_only(
    store: Store, portal: Portal, practice: Practice
) -> None:
    thread_id, message_id = await client_thread(portal, practice)
    # A mailbox row a careless portal left behind: audience still keeps the scheduler out.
    async with store.transaction() as session:
        session.add(Mailbox(thread_id=thread_id, participant_id=practice.scheduler))

    result = await dispatch(store)

    written = await outbox(store, Outbox.message_id == message_id)
    assert {row.recipient_id for row in written} == {practice.clinician, practice.supervisor}
    assert result == DispatchResult(messages=1, pending=2, coalesced=0)
    for row in written:
        assert (row.organization_id, row.thread_id) == (practice.org, thread_id)
        assert (row.kind, row.mode, row.status) == ("notification", "secure", PENDING)
        assert as_utc(row.next_attempt_at) == T0 + timedelta(minutes=5)


async def test_a_billing_thread_notifies_the_biller_and_not_the_scheduler(
    store: Store, portal: Portal, practice: Practice
) -> None:
    _, message_id = await client_thread(portal, practice, Audience.BILLING)
    await dispatch(store)
    recipients = {row.recipient_id for row in await outbox(store, Outbox.message_id == message_id)}
    assert recipients == {practice.biller, practice.clinician, practice.supervisor}


async def test_staff_preferences_decide_per_audience(
    store: Store, portal: Portal, practice: Practice
) -> None:
    async def supervisor(name: str, prefs: Preferences) -> int:
        return await portal.add_staff(
            practice.org, name, [StaffRole.SUPERVISOR], [f"{name}@h.example"], preferences=prefs
        )

    muted = await supervisor("muted", Preferences(email_enabled=False))
    no_clinical = await supervisor("noclin", Preferences(clinical=False))
    no_billing = await supervisor("nobill", Preferences(billing=False))
    _, message_id = await client_thread(portal, practice)

    await dispatch(store)

    recipients = {row.recipient_id for row in await outbox(store, Outbox.message_id == message_id)}
    assert muted not in recipients
    assert no_clinical not in recipients
    assert no_billing in recipients  # a clinical thread; billing mail is what they declined


async def test_inactive_members_and_members_without_a_primary_address_get_no_row(
    store: Store, portal: Portal, practice: Practice
) -> None:
    parent = await portal.add_contact(practice.client, "Parent", ["parent@client.example"])
    guardian = await portal.add_contact(practice.client, "Guardian", ["guard@client.example"])
    thread_id, _ = await client_thread(portal, practice, cc_contact_ids=[parent, guardian])
    await portal.deactivate(parent)
    async with store.transaction() as session:
        await session.exec(
            update(EmailAddress)
            .where(col(EmailAddress.participant_id) == guardian)
            .values(is_primary=False)
        )
    reply = await portal.post_message(thread_id, practice.clinician, "See you Tuesday", now=T0)

    await dispatch(store)

    recipients = {row.recipient_id for row in await outbox(store, Outbox.message_id == reply)}
    assert recipients == {practice.client, practice.supervisor}


async def test_a_staff_reply_reaches_the_client_and_the_copied_contact_each_in_its_own_row(
    store: Store, portal: Portal, practice: Practice
) -> None:
    parent = await portal.add_contact(
        practice.client, "Parent", ["parent@client.example"], has_portal_account=True
    )
    thread_id, _ = await client_thread(portal, practice, cc_contact_ids=[parent])
    await dispatch(store)
    await portal.mark_read(thread_id, parent)
    reply = await portal.post_message(thread_id, practice.clinician, "See you Tuesday", now=T0)

    await dispatch(store)

    written = await outbox(
        store, Outbox.message_id == reply, Outbox.recipient_id != practice.supervisor
    )
    assert sorted(recipient_ids(written)) == sorted([practice.client, parent])
    assert all(row.status == PENDING and row.thread_id == thread_id for row in written)


async def test_a_mass_message_to_fifty_clients_gives_each_client_one_row_on_their_own_thread(
    store: Store, portal: Portal
) -> None:
    org = await portal.create_organization("Solo", "https://p.example.com", "r.example.com")
    therapist = await portal.add_staff(org, "T", [StaffRole.CLINICIAN], ["t@solo.example"])
    async with store.transaction() as session:
        clients = [
            await people.add_client(session, org, f"C{i}", [f"c{i}@client.example"])
            for i in range(50)
        ]
        for client in clients:
            await people.assign_clinician(session, client, therapist)
    mass = await portal.send_mass_message(org, therapist, clients, SUBJECT, BODY, now=T0)

    result = await dispatch(store)

    written = await outbox(store)
    owner = {
        t.id: t.client_id for t in await rows(store, Thread, col(Thread.id).in_(mass.thread_ids))
    }
    assert result.messages == 50 and len(written) == 50
    assert sorted(recipient_ids(written)) == sorted(clients)
    assert all(
        row.thread_id is not None and owner[row.thread_id] == row.recipient_id for row in written
    )
    assert len({row.thread_id for row in written}) == 50
    assert all(row.status == PENDING for row in written)


async def test_a_recipient_without_a_portal_account_gets_an_invitation(
    store: Store, portal: Portal, practice: Practice
) -> None:
    newcomer = await portal.add_client(practice.org, "New", ["new@client.example"])
    await portal.assign_clinician(newcomer, practice.clinician)
    invited = await portal.create_thread(
        practice.org, newcomer, "Hello", author_id=practice.clinician, body_text=BODY, now=T0
    )
    notified = await portal.create_thread(
        practice.org, practice.client, "Hello", author_id=practice.clinician, body_text=BODY
    )

    await dispatch(store)

    [to_newcomer] = await outbox(store, Outbox.recipient_id == newcomer)
    [to_client] = await outbox(store, Outbox.recipient_id == practice.client)
    assert (to_newcomer.kind, to_newcomer.message_id) == ("invitation", invited.message_id)
    assert (to_client.kind, to_client.message_id) == ("notification", notified.message_id)


# --- no floods ----------------------------------------------------------------------------


@pytest.mark.parametrize("batches", ["one batch", "a batch per message"])
async def test_secure_messages_coalesce_until_the_clinician_has_read(
    store: Store, portal: Portal, practice: Practice, batches: str
) -> None:
    thread_id, first = await client_thread(portal, practice)
    for n in range(4):
        if batches == "a batch per message":
            await dispatch(store)
        await portal.post_message(thread_id, practice.client, f"and {n}", now=T0)
    await dispatch(store)

    to_clinician = await outbox(store, Outbox.recipient_id == practice.clinician)
    assert Counter(row.status for row in to_clinician) == {PENDING: 1, COALESCED: 4}
    [carrier] = [row for row in to_clinician if row.status == PENDING]
    assert carrier.message_id == first

    await portal.mark_read(thread_id, practice.clinician)
    sixth = await portal.post_message(thread_id, practice.client, "still here", now=T0)
    await dispatch(store)

    [new] = await outbox(
        store, Outbox.recipient_id == practice.clinician, Outbox.message_id == sixth
    )
    assert new.status == PENDING
    # The supervisor has not read anything: their sixth row is coalesced.
    [unread] = await outbox(
        store, Outbox.recipient_id == practice.supervisor, Outbox.message_id == sixth
    )
    assert unread.status == COALESCED


@pytest.mark.parametrize("batches", ["one batch", "a batch per message"])
async def test_convenience_messages_within_the_window_ride_on_one_carrier(
    store: Store, portal: Portal, practice: Practice, batches: str
) -> None:
    consenting = await portal.add_client(
        practice.org, "Consenting", ["yes@client.example"], email_content_consent=True
    )
    await portal.set_notification_mode(
        practice.org, NotificationMode.CONVENIENCE, acknowledged_by=practice.admin, now=T0
    )
    ref = await portal.create_thread(
        practice.org, consenting, "Plan", author_id=practice.clinician, body_text=BODY, now=T0
    )
    messages = [ref.message_id]
    for seconds in (10, 20):
        if batches == "a batch per message":
            await dispatch(store, T0 + timedelta(seconds=seconds - 5))
        at = T0 + timedelta(seconds=seconds)
        messages.append(await portal.post_message(ref.thread_id, practice.clinician, "x", now=at))
    await dispatch(store, T0 + timedelta(seconds=25))

    to_client = await outbox(store, Outbox.recipient_id == consenting)
    assert [row.mode for row in to_client] == ["convenience"] * 3
    assert [row.status for row in to_client] == [PENDING, COALESCED, COALESCED]
    carrier = to_client[0]
    assert carrier.message_id == messages[-1]
    assert as_utc(carrier.next_attempt_at) == T0 + WINDOW
    assert [row.message_id for row in to_client[1:]] == messages[1:]

    # The sender claims the carrier; the next message cannot join it any more.
    async with store.transaction() as session:
        await session.exec(
            update(Outbox).where(col(Outbox.id) == carrier.id).values(status="sending")
        )
    later = T0 + timedelta(seconds=30)
    fourth = await portal.post_message(ref.thread_id, practice.clinician, "y", now=later)
    await dispatch(store, later)

    [new] = await outbox(store, Outbox.recipient_id == consenting, Outbox.message_id == fourth)
    assert (new.status, new.mode) == (PENDING, "convenience")
    assert as_utc(new.next_attempt_at) == later + WINDOW
    [claimed] = await outbox(store, Outbox.id == carrier.id)
    assert claimed.message_id == messages[-1]


async def test_staff_without_consent_stay_secure_in_a_convenience_practice(
    store: Store, portal: Portal, practice: Practice
) -> None:
    await portal.set_notification_mode(
        practice.org, NotificationMode.CONVENIENCE, acknowledged_by=practice.admin, now=T0
    )
    _, message_id = await client_thread(portal, practice)
    await dispatch(store)
    modes = {row.mode for row in await outbox(store, Outbox.message_id == message_id)}
    assert modes == {"secure"}


# --- one transaction ----------------------------------------------------------------------


async def test_every_dispatched_message_has_its_rows_and_a_second_batch_does_nothing(
    store: Store, portal: Portal, practice: Practice
) -> None:
    thread_id, _ = await client_thread(portal, practice)
    for n in range(3):
        await portal.post_message(thread_id, practice.clinician, f"reply {n}", now=T0)
    at = T0 + timedelta(minutes=7)

    first = await dispatch(store, at)
    second = await dispatch(store, at + timedelta(minutes=1))

    assert first == DispatchResult(messages=4, pending=3, coalesced=5)
    assert second == DispatchResult(messages=0, pending=0, coalesced=0)
    written = Counter(row.message_id for row in await outbox(store))
    for message in await rows(store, Message):
        assert as_utc(message.dispatched_at) == at
        assert written[message.id] == 2  # clinician+supervisor, or client+supervisor


async def refuse_outbox_rows_for(store: Store, participant_id: int) -> None:
    """Make the database refuse outbox rows for one recipient (a fault in the peer)."""
    async with store.engine.begin() as conn:
        if store.dialect == "sqlite":
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse_outbox BEFORE INSERT ON outbox "
                f"WHEN NEW.recipient_id = {participant_id} "
                "BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
            )
        else:
            await conn.exec_driver_sql(
                "CREATE FUNCTION refuse_outbox() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN IF NEW.recipient_id = {participant_id} THEN "
                "RAISE EXCEPTION 'refused by test'; END IF; RETURN NEW; END $$"
            )
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse_outbox BEFORE INSERT ON outbox "
                "FOR EACH ROW EXECUTE FUNCTION refuse_outbox()"
            )


async def accept_outbox_rows_again(store: Store) -> None:
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql(
            "DROP TRIGGER refuse_outbox" + ("" if store.dialect == "sqlite" else " ON outbox")
        )


async def test_a_batch_that_fails_midway_leaves_no_rows_and_no_dispatched_message(
    store: Store, portal: Portal, practice: Practice
) -> None:
    await client_thread(portal, practice)
    other = await portal.add_client(practice.org, "Other", ["o@client.example"])
    await portal.create_thread(
        practice.org, other, "Later", author_id=practice.clinician, body_text=BODY, now=T0
    )
    await refuse_outbox_rows_for(store, other)

    with pytest.raises(sa.exc.DBAPIError):
        await dispatch(store)

    assert await outbox(store) == []
    assert await undispatched(store) == 2
    await accept_outbox_rows_again(store)
    assert (await dispatch(store)).messages == 2


# --- several dispatchers --------------------------------------------------------------------


@pytest.fixture
async def second_store(database_url: str) -> AsyncIterator[Store]:
    """Another daemon instance on the same database."""
    async with Store(database_url) as opened:
        yield opened


async def test_concurrent_dispatchers_write_each_message_s_rows_exactly_once(
    store: Store, second_store: Store, portal: Portal, practice: Practice
) -> None:
    clients = [practice.client]
    for i in range(9):
        client = await portal.add_client(practice.org, f"C{i}", [f"c{i}@client.example"])
        await portal.assign_clinician(client, practice.clinician)
        clients.append(client)
    thread_of = {}
    for client in clients:
        ref = await portal.create_thread(
            practice.org, client, "s", author_id=client, body_text=BODY, now=T0
        )
        thread_of[client] = ref.thread_id
    async with store.transaction() as session:
        for n in range(190):
            client = clients[n % len(clients)]
            author = client if n % 3 else practice.clinician
            await threads.post_message(session, thread_of[client], author, f"m{n}", now=T0)

    async def worker(instance: Store) -> int:
        done = 0
        while True:
            result = await dispatch(instance, limit=7)
            done += result.messages
            if result.messages == 0:
                if await undispatched(store) == 0:
                    return done
                await asyncio.sleep(0.005)

    counts = await asyncio.gather(*(worker(s) for s in [store, second_store] * 3))

    assert sum(counts) == 200
    messages = await rows(store, Message)
    written = await outbox(store)
    assert len(messages) == 200
    pairs = Counter((row.message_id, row.recipient_id) for row in written)
    assert max(pairs.values()) == 1, "a recipient got two rows for one message"
    client_of = {thread: client for client, thread in thread_of.items()}
    for message in messages:
        want = {practice.clinician, practice.supervisor, client_of[message.thread_id]}
        got = {rid for (mid, rid) in pairs if mid == message.id}
        assert got == want - {message.author_id}, f"message {message.id}"
    # The statuses are those of one dispatcher taking the messages in id order.
    read = {
        (b.participant_id, b.thread_id): b.last_read_message_id for b in await rows(store, Mailbox)
    }
    told: dict[tuple[int, int], int] = {}
    expected: dict[tuple[int | None, int | None], str] = {}
    for message in sorted(messages, key=lambda m: m.id or 0):
        assert message.id is not None
        for rid in sorted(recipient_ids(row for row in written if row.message_id == message.id)):
            key = (rid, message.thread_id)
            last_told, last_read = told.get(key), read.get(key)
            if last_told is not None and (last_read is None or last_told > last_read):
                expected[(message.id, rid)] = COALESCED
            else:
                expected[(message.id, rid)] = PENDING
                told[key] = message.id
    assert {(row.message_id, row.recipient_id): row.status for row in written} == expected
    # The supervisor never reads: one email per thread, however the work was split.
    to_supervisor = [row for row in written if row.recipient_id == practice.supervisor]
    assert Counter(
        row.thread_id for row in to_supervisor if row.status == PENDING
    ) == dict.fromkeys(thread_of.values(), 1)


async def test_a_thread_locked_elsewhere_waits_for_a_later_batch_while_others_proceed(
    store: Store, portal: Portal, practice: Practice
) -> None:
    if store.dialect == "sqlite":
        pytest.skip("on SQLite BEGIN IMMEDIATE serialises whole transactions")
    busy, _ = await client_thread(portal, practice)
    other = await portal.add_client(practice.org, "Other", ["o@client.example"])
    free = await portal.create_thread(
        practice.org, other, "Later", author_id=practice.clinician, body_text=BODY, now=T0
    )
    # Another instance (or the portal posting into it) holds the first thread's row.
    async with store.engine.connect() as elsewhere:
        await elsewhere.begin()
        await elsewhere.execute(
            sa.text("SELECT id FROM threads WHERE id = :id FOR UPDATE"), {"id": busy}
        )
        meanwhile = await asyncio.wait_for(dispatch(store), 10)  # skipped, not waited for
        assert meanwhile.messages == 1
        assert {row.thread_id for row in await outbox(store)} == {free.thread_id}
        await elsewhere.rollback()

    assert (await dispatch(store)).messages == 1
    assert await undispatched(store) == 0


async def test_a_message_held_elsewhere_between_two_of_ours_stops_the_thread_there(
    store: Store, portal: Portal, practice: Practice
) -> None:
    if store.dialect == "sqlite":
        pytest.skip("on SQLite BEGIN IMMEDIATE serialises whole transactions")
    thread_id, first = await client_thread(portal, practice)
    middle = await portal.post_message(thread_id, practice.clinician, "two", now=T0)
    last = await portal.post_message(thread_id, practice.client, "three", now=T0)
    # Another instance has taken the middle message but not yet locked the thread.
    async with store.engine.connect() as elsewhere:
        await elsewhere.begin()
        await elsewhere.execute(
            sa.text("SELECT id FROM messages WHERE id = :id FOR UPDATE"), {"id": middle}
        )
        meanwhile = await asyncio.wait_for(dispatch(store), 10)
        assert meanwhile.messages == 1, "only the message before the gap"
        assert {row.message_id for row in await outbox(store)} == {first}
        await elsewhere.rollback()

    assert (await dispatch(store)).messages == 2
    dispatched = await outbox(store, col(Outbox.recipient_id) == practice.supervisor)
    # In id order, as one dispatcher would: the supervisor never read, so one email only.
    assert [(row.message_id, row.status) for row in dispatched] == [
        (first, PENDING),
        (middle, COALESCED),
        (last, COALESCED),
    ]


# --- cost -------------------------------------------------------------------------------


async def test_a_batch_costs_the_same_number_of_statements_for_ten_messages_or_a_hundred(
    store: Store, portal: Portal, practice: Practice
) -> None:
    async with store.transaction() as session:
        clients = [
            await people.add_client(session, practice.org, f"C{i}", [f"c{i}@client.example"])
            for i in range(110)
        ]
        for client in clients:
            await people.assign_clinician(session, client, practice.clinician)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sa.event.listen(store.engine.sync_engine, "before_cursor_execute", count)
    try:
        costs = []
        for group in (clients[:10], clients[10:]):
            await portal.send_mass_message(practice.org, practice.clinician, group, "s", BODY)
            statements.clear()
            result = await dispatch(store, limit=100)
            assert result.messages == len(group)
            costs.append(len(statements))
    finally:
        sa.event.remove(store.engine.sync_engine, "before_cursor_execute", count)

    assert costs[0] == costs[1]
    assert costs[1] <= 12


# --- the loop ------------------------------------------------------------------------------


async def test_the_loop_survives_a_failing_batch_and_then_dispatches(
    store: Store, portal: Portal, practice: Practice, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.outbound.dispatcher")
    thread_id, first = await client_thread(portal, practice)
    await refuse_outbox_rows_for(store, practice.supervisor)
    beats: list[str] = []
    dispatcher = Dispatcher(
        store, coalesce_window=WINDOW, poll_interval=0.02, beat=beats.append, clock=lambda: T0
    )

    async with dispatcher:
        await eventually(
            lambda: _true(any(r.levelno == logging.ERROR for r in caplog.records)),
            "the failure to be logged",
        )
        beats_at_failure = len(beats)
        await eventually(lambda: _true(len(beats) > beats_at_failure + 2), "more iterations")
        assert await undispatched(store) == 1

        await accept_outbox_rows_again(store)
        second = await portal.post_message(thread_id, practice.clinician, "answer", now=T0)
        dispatcher.wake()
        await eventually(lambda: _is_zero(undispatched(store)), "both messages dispatched")

    assert {row.message_id for row in await outbox(store)} == {first, second}
    assert set(beats) == {"dispatcher"}
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failures and all(r.exc_info is not None for r in failures)
    logged = caplog.text
    for secret in (SUBJECT, BODY, CLIENT_NAME, CLIENT_ADDRESS, "answer"):
        assert secret not in logged
    batch_lines = [r for r in caplog.records if r.getMessage() == "dispatched"]
    assert batch_lines and all(hasattr(r, "pending") for r in batch_lines)
    assert sum(getattr(r, "messages", 0) for r in batch_lines) == 2


async def test_wake_dispatches_without_waiting_for_the_poll_interval_and_stop_ends_the_pause(
    store: Store, portal: Portal, practice: Practice
) -> None:
    dispatcher = Dispatcher(store, coalesce_window=WINDOW, poll_interval=600)
    stop = asyncio.Event()
    loop = asyncio.create_task(dispatcher.run(stop))
    await asyncio.sleep(0.05)  # let the loop find the queue empty and pause
    await client_thread(portal, practice)

    dispatcher.wake()

    await eventually(lambda: _is_zero(undispatched(store)), "the woken loop to dispatch")
    stop.set()
    await asyncio.wait_for(loop, 10)


async def test_from_settings_takes_batch_size_and_coalesce_window_from_outbound(
    store: Store, portal: Portal, practice: Practice, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.outbound.dispatcher")
    await portal.set_notification_mode(
        practice.org, NotificationMode.CONVENIENCE, acknowledged_by=practice.admin
    )
    async with store.transaction() as session:
        await session.exec(
            update(Participant)
            .where(col(Participant.id) == practice.client)
            .values(email_content_consent=True)
        )
    thread_id, first = await client_thread(portal, practice)
    second = await portal.post_message(thread_id, practice.clinician, "answer", now=T0)
    settings = OutboundSettings(
        coalesce_window_seconds=600, batch_size=1, poll_interval_seconds=0.01
    )
    beats: list[str] = []

    async with Dispatcher.from_settings(store, settings, beat=beats.append, clock=lambda: T0):
        await eventually(lambda: _is_zero(undispatched(store)), "both messages dispatched")

    batches = [r for r in caplog.records if r.getMessage() == "dispatched"]
    assert [getattr(r, "messages", None) for r in batches] == [1, 1], "one message per batch"
    (carrier,) = await outbox(store, col(Outbox.recipient_id) == practice.client)
    assert (carrier.message_id, carrier.mode) == (second, NotificationMode.CONVENIENCE.value)
    assert as_utc(carrier.next_attempt_at) == T0 + timedelta(seconds=600)
    assert first < second
    assert set(beats) == {"dispatcher"}


async def _true(value: bool) -> bool:
    return value


async def _is_zero(count: Awaitable[int]) -> bool:
    return await count == 0
