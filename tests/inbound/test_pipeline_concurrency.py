"""The pipeline's claims, leases and retries: several workers, crashes, a row that keeps failing.

Two pipelines get two `Store` objects (two connection pools, as two daemon
instances would). Faults are injected in the database (a trigger refusing one
row's message) and crashes are simulated by claiming rows under another
instance's name and never finishing them; time comes from the harness clock.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlmodel import col
from test_pipeline import Harness, harness_for, reply

from bridge.inbound._pipeline_claim import claim
from bridge.inbound.pipeline import retry
from bridge.store.engine import Store
from bridge.store.models import InboundEmail, InboundVia, Message

if TYPE_CHECKING:
    from conftest import DatabaseFaults, Practice

GENEROUS = {"sender_limit_per_hour": 10_000, "thread_limit_per_hour": 10_000, "batch_size": 7}


@pytest.fixture
def harness(practice: Practice, tmp_path: Path) -> Harness:
    return harness_for(practice, tmp_path)


async def test_two_pipelines_over_one_store_file_every_row_exactly_once(
    practice: Practice, tmp_path: Path
) -> None:
    harness = harness_for(practice, tmp_path, **GENEROUS)
    address = await practice.address(practice.client_id)
    rows = [await harness.deliver(reply(address, text=f"Reply {n}"), address) for n in range(100)]
    async with Store(practice.store.url) as second_store:
        first = harness.pipeline(instance="one")
        second = harness.pipeline(second_store, instance="two")

        await asyncio.gather(harness.run(first), harness.run(second))

    stored = await harness.all(InboundEmail)
    assert [row.status for row in stored] == ["filed"] * 100
    assert all(row.lease_owner is None and row.attempts == 1 for row in stored)
    messages = await harness.messages()
    assert sorted(m.inbound_email_id for m in messages) == rows
    assert sorted(m.body_text for m in messages) == sorted(f"Reply {n}" for n in range(100))
    # Both did a share of the work: the claims really were concurrent.
    assert {e.actor for e in await harness.audits("inbound_filed")} == {"one", "two"}


async def test_twins_processed_by_two_pipelines_at_once_are_filed_once(
    practice: Practice, tmp_path: Path
) -> None:
    harness = harness_for(practice, tmp_path, **GENEROUS)
    address = await practice.address(practice.client_id)
    for n in range(30):
        raw = reply(address, text=f"Twin {n}", message_id=f"<twin.{n}@home.example.net>")
        await harness.deliver(raw, address)
        fetched = b"X-Fetched: yes\r\n" + raw
        await harness.deliver(fetched, address, via=InboundVia.IMAP, envelope_sender=None)
    async with Store(practice.store.url) as second_store:
        first = harness.pipeline(instance="one")
        second = harness.pipeline(second_store, instance="two")

        await asyncio.gather(harness.run(first), harness.run(second))

    stored = await harness.all(InboundEmail)
    assert sorted(row.status for row in stored) == ["dropped"] * 30 + ["filed"] * 30
    assert {row.reason for row in stored if row.status == "dropped"} == {"duplicate"}
    assert len(await harness.messages()) == 30


def refuse_message_for(faults: DatabaseFaults, row_id: int) -> None:
    """The database refuses to insert a message filed from inbound row `row_id`."""
    if faults.store.dialect == "sqlite":
        faults.run(
            "CREATE TRIGGER refuse_one BEFORE INSERT ON messages "
            f"WHEN NEW.inbound_email_id = {row_id} "
            "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
        )
        return
    faults.run(
        "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.inbound_email_id = {row_id} THEN RAISE EXCEPTION 'injected fault'; END IF; "
        "RETURN NEW; END $$",
        "CREATE TRIGGER refuse_one BEFORE INSERT ON messages "
        "FOR EACH ROW EXECUTE FUNCTION refuse_one()",
    )


def accept_messages(faults: DatabaseFaults) -> None:
    if faults.store.dialect == "sqlite":
        faults.run("DROP TRIGGER refuse_one")
    else:
        faults.run("DROP TRIGGER refuse_one ON messages")


async def test_a_row_that_keeps_failing_is_retried_with_backoff_then_parked(
    practice: Practice, tmp_path: Path, faults: DatabaseFaults
) -> None:
    harness = harness_for(practice, tmp_path, max_attempts=3)
    address = await practice.address(practice.client_id)
    good, bad, other = [
        await harness.deliver(reply(address, text=f"Note {n}"), address) for n in range(3)
    ]
    refuse_message_for(faults, bad)
    start = harness.now

    await harness.run()

    assert [(await harness.row(r)).status for r in (good, bad, other)] == [
        "filed",
        "received",
        "filed",
    ]
    failing = await harness.row(bad)
    assert (failing.attempts, failing.lease_owner) == (1, None)
    assert failing.next_attempt_at.replace(tzinfo=None) == (start + timedelta(seconds=30)).replace(
        tzinfo=None
    )
    harness.now = start + timedelta(seconds=29)
    await harness.run()
    assert (await harness.row(bad)).attempts == 1  # not due yet
    harness.now = start + timedelta(seconds=30)
    await harness.run()
    second = await harness.row(bad)
    assert (second.status, second.attempts) == ("received", 2)
    assert second.next_attempt_at.replace(tzinfo=None) == (
        harness.now + timedelta(seconds=60)
    ).replace(tzinfo=None)
    harness.now += timedelta(seconds=60)
    await harness.run()

    parked = await harness.row(bad)
    assert (parked.status, parked.reason, parked.attempts) == ("parked", "error", 3)
    [event] = await harness.audits("inbound_parked")
    assert (event.inbound_email_id, event.detail) == (bad, {"reason": "error", "attempts": 3})
    assert len(await harness.messages()) == 2

    # An operator fixes the cause and retries: the row is filed now.
    accept_messages(faults)
    assert await retry(harness.store, bad, harness.now)
    await harness.run()
    assert (await harness.row(bad)).status == "filed"


async def test_a_row_of_an_instance_that_died_is_taken_over_when_its_lease_expires(
    harness: Harness,
) -> None:
    address = await harness.practice.address(harness.practice.client_id)
    row_id = await harness.deliver(reply(address), address)
    await _claim_as_dead_instance(harness)

    await harness.run()
    assert (await harness.row(row_id)).lease_owner == "dead"  # its lease is still live

    harness.now += timedelta(seconds=harness.settings.lease_seconds + 1)
    await harness.run()

    row = await harness.row(row_id)
    assert (row.status, row.attempts, row.lease_owner) == ("filed", 2, None)


async def test_a_row_that_killed_every_instance_that_took_it_is_parked(
    practice: Practice, tmp_path: Path
) -> None:
    harness = harness_for(practice, tmp_path, max_attempts=2)
    address = await practice.address(practice.client_id)
    row_id = await harness.deliver(reply(address), address)
    for _ in range(2):
        await _claim_as_dead_instance(harness)
        harness.now += timedelta(seconds=harness.settings.lease_seconds + 1)

    await harness.run()

    row = await harness.row(row_id)
    assert (row.status, row.reason, row.attempts) == ("parked", "error", 2)
    assert await harness.messages() == []


async def _claim_as_dead_instance(harness: Harness) -> None:
    jobs, _ = await claim(
        harness.store,
        instance="dead",
        now=harness.now,
        lease=timedelta(seconds=harness.settings.lease_seconds),
        batch_size=10,
        max_attempts=harness.settings.max_attempts,
    )
    assert jobs


async def test_the_running_loop_files_a_reply_when_woken(harness: Harness) -> None:
    beats: list[str] = []
    pipeline = harness.pipeline(beat=beats.append)
    address = await harness.practice.address(harness.practice.client_id)

    async with pipeline:
        row_id = await harness.deliver(reply(address), address)
        pipeline.wake()
        for _ in range(200):
            if (await harness.row(row_id)).status == "filed":
                break
            await asyncio.sleep(0.02)

    assert (await harness.row(row_id)).status == "filed"
    assert beats and set(beats) == {"inbound-pipeline"}


async def test_filing_counts_only_rows_that_were_filed(harness: Harness) -> None:
    # A held row keeps no message; its later retry by an operator does file it.
    address = await harness.practice.address(harness.practice.client_id)
    row_id = await harness.deliver(reply(address, sender="other@home.example.net"), address)
    await harness.run()
    assert (await harness.row(row_id)).reason == "sender_mismatch"
    await harness.practice.portal.add_email(harness.practice.client_id, "other@home.example.net")

    assert await retry(harness.store, row_id, harness.now)
    await harness.run()

    row = await harness.row(row_id)
    assert (row.status, row.attempts) == ("filed", 1)
    messages: list[Any] = await harness.all(Message, col(Message.inbound_email_id) == row_id)
    assert len(messages) == 1
