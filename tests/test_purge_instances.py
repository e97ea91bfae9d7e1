"""The purge across processes: killed mid-batch, and three instances on one PostgreSQL.

Both tests run the purge in child processes started from this same file (see
`main` at the bottom): `purge` mode runs one purge under the lease, as
`bridge purge` does; `daemon` mode runs the daemon's `Scheduler` for a while.

* Kill: the child purges in batches of two threads and gets SIGKILL as soon
  as its first thread batch has committed, so it dies inside (or just between)
  batches and before its blob sweep. The next run, once the dead child's lease
  has expired, completes the purge: every due row is gone, no blob file is left
  without an attachment, nothing that was not due was touched.
* Three instances: three daemon-like processes share one PostgreSQL store and
  each schedules the purge every second for about 20 seconds (the issue asks
  for a minute; 20 s keeps CI bounded and still gives some 60 scheduled
  attempts; `BRIDGE_PURGE_TEST_SECONDS=60` runs the full minute). Threads
  become due one after another during that time. The audit trail must show
  runs that never overlap, and the counts of all batches must add up to
  exactly the due rows, each deleted once.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col, select

from bridge.config import JobSchedule, RetentionSettings
from bridge.portal import AttachmentIn, Portal
from bridge.purge import AUDIT_BATCH, AUDIT_RUN, PurgeCounts, purge
from bridge.scheduler import PURGE_JOB, Scheduler
from bridge.store.blobs import blob_path
from bridge.store.engine import Store
from bridge.store.leases import HeldLease, LeaseBusyError, database_now
from bridge.store.models import (
    Attachment,
    AuditEvent,
    InboundEmail,
    InboundStatus,
    Mailbox,
    Message,
    ReplyToken,
    StaffRole,
    Thread,
)

HERE = Path(__file__)
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)
INSTANCE_SECONDS = float(os.environ.get("BRIDGE_PURGE_TEST_SECONDS", "20"))


async def build(
    store: Store, blob_dir: Path, threads: int, trashed_at: list[datetime | None]
) -> list[int]:
    """`threads` threads held by a client and a clinician, each with its own file.

    Thread i is trashed by both at `trashed_at[i]` (None: never trashed). Every
    thread also gets a reply token and a filed raw email. Blob files are aged
    past the scheduler's grace.
    """
    portal = Portal(store, blob_dir)
    org = await portal.create_organization("P", "https://p.example.org", "r.example.org", now=T0)
    staff = await portal.add_staff(org, "S", [StaffRole.CLINICIAN], ["s@p.example.org"], now=T0)
    client = await portal.add_client(org, "C", ["c@home.example.net"], now=T0)
    ids = []
    for i in range(threads):
        ref = await portal.create_thread(
            org,
            client,
            "subject",
            clinician_ids=[staff],
            author_id=staff,
            body_text="body",
            attachments=[
                AttachmentIn(f"f{i}.txt", "text/plain", f"file {i}".encode()),
                AttachmentIn("shared.txt", "text/plain", b"shared by all"),
            ],
            now=T0,
        )
        ids.append(ref.thread_id)
        async with store.transaction() as session:
            session.add(
                ReplyToken(
                    token_hash=hashlib.sha256(f"t{i}".encode()).hexdigest(),
                    participant_id=client,
                    thread_id=ref.thread_id,
                    expires_at=T0 + timedelta(days=3650),
                )
            )
            session.add(
                InboundEmail(
                    raw=b"raw",
                    sha256="0" * 64,
                    received_via="smtp",
                    envelope_recipient="reply@r.example.org",
                    thread_id=ref.thread_id,
                    status=InboundStatus.FILED.value,
                )
            )
        when = trashed_at[i]
        if when is not None:
            for person in (client, staff):
                await portal.trash(ref.thread_id, person, now=when)
    await asyncio.to_thread(age_files, blob_dir)
    return ids


def age_files(folder: Path) -> None:
    old = time.time() - 7200
    for path in folder.rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))


def files_in(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.is_file()]


async def count(store: Store, model: Any, *where: Any) -> int:
    async with store.read() as session:
        query = select(sa.func.count()).select_from(model).where(*where)
        return int((await session.exec(query)).one())


async def thread_rows(store: Store, ids: list[int]) -> int:
    """Rows of any kind that still belong to these threads."""
    messages = select(Message.id).where(col(Message.thread_id).in_(ids))
    return sum(
        [
            await count(store, Thread, col(Thread.id).in_(ids)),
            await count(store, Mailbox, col(Mailbox.thread_id).in_(ids)),
            await count(store, Message, col(Message.thread_id).in_(ids)),
            await count(store, Attachment, col(Attachment.message_id).in_(messages)),
            await count(store, ReplyToken, col(ReplyToken.thread_id).in_(ids)),
            await count(store, InboundEmail, col(InboundEmail.thread_id).in_(ids)),
        ]
    )


async def orphan_blobs(store: Store, blob_dir: Path) -> list[str]:
    """Blob files that no attachment row references."""
    async with store.read() as session:
        known = set(await session.exec(select(Attachment.sha256).distinct()))
    return sorted(name for name in await asyncio.to_thread(files_in, blob_dir) if name not in known)


async def audit(store: Store, action: str) -> list[AuditEvent]:
    async with store.read() as session:
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        return list(await session.exec(query))


async def child(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE),
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


# --- killed mid-batch -------------------------------------------------------------------


async def test_a_purge_killed_mid_batch_is_completed_by_the_next_run(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    blob_dir = tmp_path / "blobs"
    due, kept = 30, 4
    ids = await build(store, blob_dir, due + kept, [T0] * due + [None] * kept)
    now = T0 + timedelta(days=15)

    process = await child("purge", database_url, str(blob_dir), "victim", "--now", now.isoformat())
    try:
        async with asyncio.timeout(60):
            while not any(e.detail["step"] == "threads" for e in await audit(store, AUDIT_BATCH)):
                assert process.returncode is None, "the child finished before it could be killed"
                await asyncio.sleep(0.005)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()

    # The child died after some thread batches committed and before its sweep.
    assert await audit(store, AUDIT_RUN) == []
    assert await thread_rows(store, ids[:due]) > 0
    left_behind = await orphan_blobs(store, blob_dir)
    assert left_behind, "the kill came too late to leave files behind"

    # Its lease has not expired yet; once it has, the next run takes over.
    with pytest.raises(LeaseBusyError):
        async with HeldLease(store, PURGE_JOB, "next", LEASE):
            pass
    later = datetime.now(UTC) + LEASE + timedelta(seconds=1)
    async with HeldLease(store, PURGE_JOB, "next", LEASE, clock=lambda: later) as lease:
        report = await purge(
            store, blob_dir, actor="next", now=now, fence=lease.check, blob_grace=timedelta(0)
        )
    assert report.complete and report.blobs.blobs >= len(left_behind)

    assert await thread_rows(store, ids[:due]) == 0
    assert await count(store, Thread, col(Thread.id).in_(ids[due:])) == kept
    assert await orphan_blobs(store, blob_dir) == []
    assert blob_path(blob_dir, hashlib.sha256(b"shared by all").hexdigest()).is_file()
    # Every due row is accounted for once over both runs' committed batches.
    total = PurgeCounts()
    for event in await audit(store, AUDIT_BATCH):
        total += PurgeCounts.from_detail(event.detail)
    assert (total.threads, total.mailboxes, total.messages) == (due, 2 * due, due)
    assert (total.attachments, total.inbound_emails) == (2 * due, due)


# --- three instances on one PostgreSQL --------------------------------------------------


async def test_three_instances_never_purge_at_once_and_delete_each_row_once(
    store: Store, database_url: str, tmp_path: Path
) -> None:
    if store.dialect != "postgresql":
        pytest.skip("several instances share a PostgreSQL store (BRIDGE_TEST_DATABASE_URL)")
    blob_dir = tmp_path / "blobs"
    async with store.read() as session:
        start = await database_now(session)
    # Thread i becomes due at start + 0.2 s * i: over the first 12 seconds of the run.
    due, kept = 60, 5
    retention = timedelta(days=15)
    when: list[datetime | None] = [
        start - retention + timedelta(seconds=0.2 * i) for i in range(due)
    ]
    when += [start + timedelta(days=1)] * 2 + [None] * (kept - 2)
    ids = await build(store, blob_dir, due + kept, when)

    processes = [
        await child("daemon", database_url, str(blob_dir), f"instance-{i}") for i in range(3)
    ]
    codes = []
    for process in processes:
        _, stderr = await asyncio.wait_for(process.communicate(), INSTANCE_SECONDS + 60)
        codes.append((process.returncode, stderr.decode()[-2000:]))
    assert [code for code, _ in codes] == [0, 0, 0], codes

    runs = await audit(store, AUDIT_RUN)
    assert len(runs) >= 10
    assert len({run.actor for run in runs}) >= 2
    spans = sorted(
        (
            datetime.fromisoformat(str(r.detail["started_at"])),
            datetime.fromisoformat(str(r.detail["finished_at"])),
            r.actor,
        )
        for r in runs
    )
    for (_, finished, actor), (started, _, next_actor) in itertools.pairwise(spans):
        assert started >= finished, f"{actor} and {next_actor} purged at the same time"

    batches = await audit(store, AUDIT_BATCH)
    run_of = {str(r.detail["run"]): r.actor for r in runs}
    assert all(run_of[str(b.detail["run"])] == b.actor for b in batches)
    total = PurgeCounts()
    for event in batches:
        total += PurgeCounts.from_detail(event.detail)
    assert (total.threads, total.mailboxes, total.messages) == (due, 2 * due, due)
    assert (total.attachments, total.inbound_emails) == (2 * due, due)
    assert await thread_rows(store, ids[:due]) == 0
    assert await count(store, Mailbox, col(Mailbox.thread_id).in_(ids[due:])) == 2 * kept
    assert await orphan_blobs(store, blob_dir) == []
    for i in range(due, due + kept):
        assert blob_path(blob_dir, hashlib.sha256(f"file {i}".encode()).hexdigest()).is_file()


# --- the child processes ----------------------------------------------------------------


async def run_purge(args: argparse.Namespace) -> None:
    """One purge under the lease, in batches of two, as `bridge purge` runs it."""
    async with (
        Store(args.database_url) as store,
        HeldLease(store, PURGE_JOB, args.instance, LEASE) as lease,
    ):
        await purge(
            store,
            Path(args.blob_dir),
            actor=args.instance,
            batch_size=2,
            now=datetime.fromisoformat(args.now),
            fence=lease.check,
            blob_grace=timedelta(0),
        )


async def run_daemon(args: argparse.Namespace) -> None:
    """The daemon's scheduler with the purge every second, for `INSTANCE_SECONDS`."""
    retention = RetentionSettings(
        purge=JobSchedule(every_seconds=1.0),
        housekeeping=JobSchedule(every_seconds=3600.0),
        batch_size=5,
        lease_seconds=30.0,
    )
    async with (
        Store(args.database_url) as store,
        Scheduler(store, retention, blob_dir=Path(args.blob_dir), instance=args.instance),
    ):
        await asyncio.sleep(INSTANCE_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["purge", "daemon"])
    parser.add_argument("database_url")
    parser.add_argument("blob_dir")
    parser.add_argument("instance")
    parser.add_argument("--now", default=T0.isoformat())
    args = parser.parse_args()
    asyncio.run(run_purge(args) if args.mode == "purge" else run_daemon(args))


if __name__ == "__main__":
    main()
