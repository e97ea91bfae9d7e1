"""kill -9 a sender mid-batch, restart it: every row is sent, and duplicates stay in the window.

The sender runs in a child process (`sender_runner.py`) against the test's
store and the sink, which runs in this process on a real port. After the sink
has accepted N emails the child gets SIGKILL. Once the dead child's
connections are closed, the sink's deliveries are final and the rows it
accepted that are not `sent` in the store are exactly the crash window: the
relay has the email (250) but the commit never happened. A new instance with
its clock past the old lease then finishes the queue.

Claims: every row reaches the relay; duplicates (counted by
`X-Bridge-Notification`) are at most the rows in those windows; and each
window holds at most `concurrency` rows, the number of sends in flight.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from smtp_sink import Seed, Sink
from sqlmodel import select

from bridge.store.engine import Store
from bridge.store.models import Outbox, OutboxStatus

RUNNER = Path(__file__).with_name("sender_runner.py")
CLIENTS, ROWS_EACH = 8, 10
CONCURRENCY = 4
LEASE_S = 60
KILL_AFTER = (20, 50)  # total deliveries at the sink when each child is killed


async def start_sender(
    database_url: str, sink: Sink, instance: str, clock_offset: float, log: Path
) -> asyncio.subprocess.Process:
    with log.open("ab") as stderr:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            str(RUNNER),
            database_url,
            str(sink.port),
            instance,
            "--concurrency",
            str(CONCURRENCY),
            "--lease-seconds",
            str(LEASE_S),
            "--clock-offset-seconds",
            str(clock_offset),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )


async def sent_ids(store: Store) -> set[int]:
    async with store.read() as session:
        query = select(Outbox.id).where(Outbox.status == OutboxStatus.SENT.value)
        return {row_id for row_id in await session.exec(query) if row_id is not None}


@pytest.mark.timeout(30)
async def test_a_sender_killed_mid_batch_loses_nothing_and_duplicates_only_its_window(
    store: Store, database_url: str, seed: Seed, sink: Sink, tmp_path: Path
) -> None:
    now = datetime.now(UTC)  # the child runs on the real clock (plus an offset)
    clients = await seed.people(CLIENTS, now)
    rows = await seed.rows(clients * ROWS_EACH, now)
    log = tmp_path / "sender.log"
    windows: list[int] = []

    for run, kill_at in enumerate(KILL_AFTER):
        child = await start_sender(database_url, sink, f"doomed-{run}", run * (LEASE_S + 1), log)
        await sink.wait_for(kill_at, within=20)
        child.kill()
        await asyncio.wait_for(child.wait(), 10)
        await sink.wait_until(lambda: not sink.live, "the killed sender's connections to close")
        accepted = {int(i) for i in sink.notification_ids()}
        windows.append(len(accepted - await sent_ids(store)))

    survivor = await start_sender(
        database_url, sink, "survivor", len(KILL_AFTER) * (LEASE_S + 1), log
    )
    status = await asyncio.wait_for(survivor.wait(), 20)

    assert status == 0, log.read_text()
    assert await sent_ids(store) == set(rows)
    arrivals = Counter(int(i) for i in sink.notification_ids())
    assert set(arrivals) == set(rows), "every row reached the relay"
    duplicates = sum(arrivals.values()) - len(arrivals)
    print(f"crash windows {windows}, duplicates {duplicates}, rows {len(rows)}")
    assert duplicates <= sum(windows), (windows, duplicates)
    assert all(window <= CONCURRENCY for window in windows), windows
