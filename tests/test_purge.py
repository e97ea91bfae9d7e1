"""The trash purge and housekeeping, on a real store built through the portal API.

Time is injected: the portal trashes at `T0 + n days`, the purge runs `now=`
some later day. Blob files are fresh in these tests, so the purge runs with a
zero blob grace, except where the grace itself is the point. Every test runs on
SQLite and (with BRIDGE_TEST_DATABASE_URL) on PostgreSQL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel, col, select

from bridge import config
from bridge import purge as retention
from bridge.commands import Context
from bridge.commands import retention as retention_commands
from bridge.portal import AttachmentIn, Portal
from bridge.purge import AUDIT_BATCH, AUDIT_RUN, HousekeepingRules, PurgeCounts
from bridge.store import leases
from bridge.store.blobs import blob_path, write_blob_sync
from bridge.store.engine import Store
from bridge.store.models import (
    Attachment,
    Audience,
    AuditEvent,
    InboundEmail,
    InboundStatus,
    Mailbox,
    Message,
    Outbox,
    OutboxStatus,
    ReplyToken,
    StaffRole,
    Thread,
    ThreadClinician,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
M = TypeVar("M", bound=SQLModel)
SUBJECT = "Session notes about Anna Berg"
BODY = "Anna Berg talked about her sleep."
FILE = AttachmentIn("anna-berg-intake.pdf", "application/pdf", b"%PDF intake form of Anna Berg")


def day(n: float) -> datetime:
    return T0 + n * DAY


@dataclass
class Practice:
    store: Store
    portal: Portal
    blob_dir: Path
    org_id: int
    client_id: int
    clinician_id: int

    async def thread(self, files: tuple[AttachmentIn, ...] = (FILE,), messages: int = 1) -> int:
        """A clinical thread held by the client and the clinician, with replies and files."""
        ref = await self.portal.create_thread(
            self.org_id,
            self.client_id,
            SUBJECT,
            audience=Audience.CLINICAL,
            author_id=self.clinician_id,
            body_text=BODY,
            attachments=files,
            now=T0,
        )
        for _ in range(messages - 1):
            await self.portal.post_message(ref.thread_id, self.client_id, BODY, now=T0)
        return ref.thread_id

    async def trash_for_all(self, thread_id: int, at: datetime) -> None:
        for person in (self.client_id, self.clinician_id):
            await self.portal.trash(thread_id, person, now=at)

    async def purge(self, at: datetime, **options: Any) -> retention.PurgeReport:
        options = {"actor": "test", "now": at, "blob_grace": timedelta(0), **options}
        return await retention.purge(self.store, self.blob_dir, **options)


@pytest.fixture
async def practice(store: Store, tmp_path: Path) -> Practice:
    blob_dir = tmp_path / "blobs"
    portal = Portal(store, blob_dir)
    org = await portal.create_organization(
        "Practice", "https://portal.example.org", "replies.example.org", now=T0
    )
    clinician = await portal.add_staff(
        org, "Clinician", [StaffRole.CLINICIAN], ["clinician@practice.example.org"], now=T0
    )
    client = await portal.add_client(org, "Anna Berg", ["anna@home.example.net"], now=T0)
    await portal.assign_clinician(client, clinician)
    return Practice(store, portal, blob_dir, org, client, clinician)


async def rows(store: Store, model: type[M], *where: Any) -> list[M]:
    async with store.read() as session:
        return list(await session.exec(select(model).where(*where)))


async def count(store: Store, model: type[SQLModel], *where: Any) -> int:
    async with store.read() as session:
        query = select(sa.func.count()).select_from(model).where(*where)
        return int((await session.exec(query)).one())


async def left_of(store: Store, thread_id: int) -> dict[str, int]:
    """Rows that still belong to the thread, table by table."""
    message_ids = select(Message.id).where(Message.thread_id == thread_id)
    return {
        "threads": await count(store, Thread, Thread.id == thread_id),
        "mailboxes": await count(store, Mailbox, Mailbox.thread_id == thread_id),
        "messages": await count(store, Message, Message.thread_id == thread_id),
        "attachments": await count(store, Attachment, col(Attachment.message_id).in_(message_ids)),
        "tokens": await count(store, ReplyToken, ReplyToken.thread_id == thread_id),
        "outbox": await count(store, Outbox, Outbox.thread_id == thread_id),
        "inbound": await count(store, InboundEmail, InboundEmail.thread_id == thread_id),
        "clinicians": await count(store, ThreadClinician, ThreadClinician.thread_id == thread_id),
    }


async def add_daemon_rows(practice: Practice, thread_id: int) -> dict[str, int]:
    """What the daemon adds to a thread: a token, an outbox row, a filed email reply."""
    store = practice.store
    async with store.transaction() as session:
        token = ReplyToken(
            token_hash=hashlib.sha256(f"t{thread_id}".encode()).hexdigest(),
            participant_id=practice.client_id,
            thread_id=thread_id,
            expires_at=day(30),
        )
        filed = InboundEmail(
            raw=f"Subject: {SUBJECT}\r\n\r\n{BODY}\r\n".encode(),
            sha256="a" * 64,
            received_via="smtp",
            envelope_recipient="reply+x@replies.example.org",
            thread_id=thread_id,
            participant_id=practice.client_id,
            status=InboundStatus.FILED.value,
        )
        # Linked only through the message it became (no thread_id): no cascade reaches it.
        linked = InboundEmail(
            raw=b"Subject: x\r\n\r\nsecond reply\r\n",
            sha256="b" * 64,
            received_via="smtp",
            envelope_recipient="reply+y@replies.example.org",
            status=InboundStatus.FILED.value,
        )
        session.add_all([token, filed, linked])
        await session.flush()
        reply = Message(
            thread_id=thread_id,
            author_id=practice.client_id,
            body_text=BODY,
            source="email",
            inbound_email_id=linked.id,
        )
        session.add(reply)
        await session.flush()
        outbox = Outbox(
            organization_id=practice.org_id,
            recipient_id=practice.clinician_id,
            thread_id=thread_id,
            message_id=reply.id,
        )
        session.add(outbox)
        await session.flush()
        assert token.id and filed.id and linked.id and outbox.id
        return {"token": token.id, "filed": filed.id, "linked": linked.id, "outbox": outbox.id}


def blob_of(practice: Practice, data: bytes = FILE.data) -> Path:
    return blob_path(practice.blob_dir, hashlib.sha256(data).hexdigest())


# --- trash and retention ----------------------------------------------------------------


async def test_restored_on_day_14_the_thread_is_kept(practice: Practice) -> None:
    thread = await practice.thread()
    await practice.trash_for_all(thread, day(0))
    await practice.portal.restore(thread, practice.client_id)
    report = await practice.purge(day(15))
    # The clinician's row went; the client restored hers in time.
    assert report.counts == PurgeCounts(mailboxes=1)
    boxes = await rows(practice.store, Mailbox, Mailbox.thread_id == thread)
    assert [(b.participant_id, b.trashed_at) for b in boxes] == [(practice.client_id, None)]
    assert (await left_of(practice.store, thread))["messages"] == 1
    assert blob_of(practice).is_file()


async def test_trashed_on_day_0_nothing_is_purged_before_day_15(practice: Practice) -> None:
    thread = await practice.thread()
    await practice.trash_for_all(thread, day(0))
    report = await practice.purge(day(15) - timedelta(seconds=1))
    assert not report.counts
    assert (await left_of(practice.store, thread))["mailboxes"] == 2
    # Restoring is still possible.
    await practice.portal.restore(thread, practice.client_id)


async def test_trashed_on_day_0_everything_is_gone_on_day_15(practice: Practice) -> None:
    thread = await practice.thread()
    ids = await add_daemon_rows(practice, thread)
    unrelated = await practice.thread(files=())
    assert blob_of(practice).is_file()

    await practice.trash_for_all(thread, day(0))
    report = await practice.purge(day(15))

    assert report.complete
    assert report.counts == PurgeCounts(
        mailboxes=2,
        threads=1,
        messages=2,
        attachments=1,
        bytes=len(FILE.data),
        inbound_emails=2,
    )
    assert report.blobs.blobs == 1 and report.blobs.bytes == len(FILE.data)
    assert not blob_of(practice).exists()
    assert set((await left_of(practice.store, thread)).values()) == {0}
    for model, key in ((InboundEmail, "filed"), (InboundEmail, "linked"), (Outbox, "outbox")):
        assert await count(practice.store, model, model.id == ids[key]) == 0  # type: ignore[attr-defined]
    assert (await left_of(practice.store, unrelated))["messages"] == 1

    again = await practice.purge(day(15))
    assert not again.counts and again.batches == 0 and again.blobs.blobs == 0


async def test_a_participant_still_holding_the_thread_keeps_it(practice: Practice) -> None:
    thread = await practice.thread()
    await add_daemon_rows(practice, thread)
    await practice.portal.trash(thread, practice.client_id, now=day(0))
    report = await practice.purge(day(20))

    assert report.counts == PurgeCounts(mailboxes=1)
    left = await left_of(practice.store, thread)
    assert left["threads"] == left["mailboxes"] == 1 and left["messages"] == 2
    assert blob_of(practice).is_file()
    # Her mailbox row is gone for good, and so is what it let her do.
    tokens = await rows(practice.store, ReplyToken, ReplyToken.thread_id == thread)
    assert [t.revoked_at is not None for t in tokens] == [True]
    boxes = await rows(practice.store, Mailbox, Mailbox.thread_id == thread)
    assert [b.participant_id for b in boxes] == [practice.clinician_id]


async def test_a_permanent_delete_takes_effect_on_the_next_purge(practice: Practice) -> None:
    thread = await practice.thread()
    for person in (practice.client_id, practice.clinician_id):
        await practice.portal.delete_permanently(thread, person, now=day(0))
    report = await practice.purge(day(0) + timedelta(minutes=1))
    assert report.counts.threads == 1 and report.counts.mailboxes == 0
    assert set((await left_of(practice.store, thread)).values()) == {0}
    assert not blob_of(practice).exists()


async def test_a_shared_blob_stays_while_another_attachment_references_it(
    practice: Practice,
) -> None:
    first = await practice.thread()
    second = await practice.thread()
    await practice.trash_for_all(first, day(0))
    report = await practice.purge(day(15))
    assert report.counts.threads == 1 and report.blobs.blobs == 0
    assert blob_of(practice).is_file()

    await practice.trash_for_all(second, day(1))
    report = await practice.purge(day(16))
    assert report.counts.threads == 1 and report.blobs.blobs == 1
    assert not blob_of(practice).exists()


async def test_each_organization_keeps_trash_for_its_own_retention(
    practice: Practice,
) -> None:
    portal = practice.portal
    short = await portal.create_organization(
        "Short", "https://short.example.org", "replies.short.example.org",
        trash_retention_days=3, now=T0,
    )  # fmt: skip
    staff = await portal.add_staff(
        short, "Staff", [StaffRole.CLINICIAN], ["s@short.example.org"], now=T0
    )
    client = await portal.add_client(short, "Client", ["c@home.example.net"], now=T0)
    other = await portal.create_thread(
        short, client, "x", clinician_ids=[staff], author_id=staff, body_text="y", now=T0
    )
    thread = await practice.thread()
    await practice.trash_for_all(thread, day(0))
    for person in (client, staff):
        await portal.trash(other.thread_id, person, now=day(0))

    report = await practice.purge(day(3))
    assert report.counts.threads == 1
    assert (await left_of(practice.store, other.thread_id))["threads"] == 0
    assert (await left_of(practice.store, thread))["threads"] == 1


async def test_batches_are_bounded_and_a_large_thread_goes_over_several(
    practice: Practice,
) -> None:
    threads = [await practice.thread(files=()) for _ in range(3)]
    big = await practice.thread(messages=5)
    for thread in [*threads, big]:
        await practice.trash_for_all(thread, day(0))
    report = await practice.purge(day(15), batch_size=2)

    assert report.counts.mailboxes == 8 and report.counts.threads == 4
    assert report.counts.messages == 8
    # 8 mailbox rows in batches of 2, 3 small threads in 2 batches, 5 messages in 3.
    assert report.batches == 4 + 2 + 3
    events = await rows(practice.store, AuditEvent, AuditEvent.action == AUDIT_BATCH)
    assert len(events) == report.batches
    assert max(e.detail["messages"] or 0 for e in events) <= 2  # type: ignore[operator]
    assert max(e.detail["mailboxes"] or 0 for e in events) <= 2  # type: ignore[operator]
    assert set((await left_of(practice.store, big)).values()) == {0}


async def test_audit_events_carry_counts_and_no_content(practice: Practice) -> None:
    thread = await practice.thread()
    await add_daemon_rows(practice, thread)
    await practice.trash_for_all(thread, day(0))
    report = await practice.purge(day(15))

    runs = await rows(practice.store, AuditEvent, AuditEvent.action == AUDIT_RUN)
    assert len(runs) == 1
    run = runs[0]
    assert run.actor == "test" and run.organization_id is None
    assert PurgeCounts.from_detail(run.detail) == report.counts
    assert run.detail["blobs_removed"] == 1 and run.detail["complete"] is True
    assert run.detail["as_of"] == day(15).isoformat()
    started = datetime.fromisoformat(str(run.detail["started_at"]))
    finished = datetime.fromisoformat(str(run.detail["finished_at"]))
    assert started <= finished
    batches = await rows(practice.store, AuditEvent, AuditEvent.action == AUDIT_BATCH)
    assert {e.organization_id for e in batches} == {practice.org_id}
    assert {e.detail["run"] for e in batches} == {run.detail["run"]}
    total = PurgeCounts()
    for event in batches:
        total += PurgeCounts.from_detail(event.detail)
    assert total == report.counts
    everything = json.dumps([e.detail for e in [*runs, *batches]])
    for secret in ("Anna", "Berg", "sleep", "intake", hashlib.sha256(FILE.data).hexdigest()):
        assert secret not in everything


async def test_the_database_clock_is_used_when_no_time_is_injected(practice: Practice) -> None:
    thread = await practice.thread()
    # Trashed at T0 (2026-03-01): long past its retention by the real clock.
    await practice.trash_for_all(thread, day(0))
    report = await retention.purge(
        practice.store, practice.blob_dir, actor="test", blob_grace=timedelta(0)
    )
    assert report.counts.threads == 1
    assert abs(report.as_of - datetime.now(UTC)) < timedelta(seconds=5)


async def test_a_stop_request_ends_the_run_early_and_the_next_run_finishes(
    practice: Practice,
) -> None:
    threads = [await practice.thread(files=()) for _ in range(3)]
    for thread in threads:
        await practice.trash_for_all(thread, day(0))
    asked = []

    def stop_after_two() -> bool:
        asked.append(1)
        return len(asked) > 2

    first = await practice.purge(day(15), batch_size=2, should_stop=stop_after_two)
    assert not first.complete and first.batches == 2
    second = await practice.purge(day(15), batch_size=2)
    assert second.complete
    assert first.counts.mailboxes + second.counts.mailboxes == 6
    assert second.counts.threads == 3


# --- the dry run ------------------------------------------------------------------------


async def test_dry_run_counts_per_organization_and_changes_nothing(practice: Practice) -> None:
    gone = await practice.thread(messages=2)
    kept = await practice.thread()
    await add_daemon_rows(practice, gone)
    await practice.trash_for_all(gone, day(0))
    await practice.portal.trash(kept, practice.client_id, now=day(0))

    plan = await retention.dry_run(practice.store, now=day(15))
    assert plan == [
        retention.OrganizationCounts(
            practice.org_id,
            PurgeCounts(
                mailboxes=3,
                threads=1,
                messages=3,
                attachments=1,
                bytes=len(FILE.data),
                inbound_emails=2,
            ),
        )
    ]
    assert (await left_of(practice.store, gone))["mailboxes"] == 2
    assert await retention.dry_run(practice.store, now=day(14)) == []
    report = await practice.purge(day(15))
    assert report.counts == plan[0].counts


# --- blob files -------------------------------------------------------------------------


async def test_orphan_blobs_are_swept_but_not_within_the_grace(practice: Practice) -> None:
    # A portal wrote a file, then its transaction rolled back: no row references it.
    orphan = blob_path(practice.blob_dir, write_blob_sync(practice.blob_dir, b"rolled back"))
    kept = await practice.thread()
    report = await retention.purge(
        practice.store, practice.blob_dir, actor="test", now=day(1), blob_grace=timedelta(hours=1)
    )
    assert report.blobs.blobs == 0 and orphan.is_file()

    old = time.time() - 7200
    os.utime(orphan, (old, old))
    os.utime(blob_of(practice), (old, old))
    report = await retention.purge(
        practice.store, practice.blob_dir, actor="test", now=day(1), blob_grace=timedelta(hours=1)
    )
    assert report.blobs.blobs == 1 and not orphan.exists()
    assert blob_of(practice).is_file()
    assert (await left_of(practice.store, kept))["attachments"] == 1


async def test_sweep_finishes_what_a_dead_sweep_left(practice: Practice) -> None:
    await practice.thread()
    referenced = blob_of(practice)
    orphan = blob_path(practice.blob_dir, write_blob_sync(practice.blob_dir, b"orphan"))
    # A sweep died after setting both aside, and a writer died mid-write.
    aside_kept = referenced.with_name(f".purging-{referenced.name}")
    aside_gone = orphan.with_name(f".purging-{orphan.name}")
    referenced.rename(aside_kept)
    orphan.rename(aside_gone)
    partial = orphan.with_name(".incoming-abc123")
    partial.write_bytes(b"half a file")
    old = time.time() - 7200
    os.utime(partial, (old, old))

    report = await practice.purge(day(1))
    assert report.blobs.blobs == 1 and report.blobs.temporary == 1
    assert referenced.is_file() and referenced.read_bytes() == FILE.data
    assert not aside_kept.exists() and not aside_gone.exists() and not partial.exists()


async def test_files_that_are_not_blobs_are_left_alone(practice: Practice) -> None:
    practice.blob_dir.mkdir(parents=True)
    stray = practice.blob_dir / "README"
    stray.write_text("not a blob")
    misplaced = practice.blob_dir / "ab" / "cd" / ("ef" + "0" * 62)
    misplaced.parent.mkdir(parents=True)
    misplaced.write_bytes(b"wrong folder")
    old = time.time() - 7200
    os.utime(misplaced, (old, old))
    report = await practice.purge(day(1))
    assert report.blobs.blobs == 0 and stray.exists() and misplaced.exists()


# --- housekeeping -----------------------------------------------------------------------


async def test_housekeeping_applies_each_retention_rule(practice: Practice) -> None:
    store = practice.store
    thread = await practice.thread()
    now = day(200)
    async with store.transaction() as session:

        def token(name: str, expires: datetime, revoked: datetime | None = None) -> ReplyToken:
            return ReplyToken(
                token_hash=hashlib.sha256(name.encode()).hexdigest(),
                participant_id=practice.client_id,
                thread_id=thread,
                expires_at=expires,
                revoked_at=revoked,
            )

        def inbound(status: InboundStatus, processed: datetime | None) -> InboundEmail:
            return InboundEmail(
                raw=b"x",
                sha256="c" * 64,
                received_via="smtp",
                envelope_recipient="r@replies.example.org",
                status=status.value,
                received_at=day(0),
                processed_at=processed,
            )

        def outbox(status: OutboxStatus, sent: datetime | None, **more: Any) -> Outbox:
            return Outbox(
                organization_id=practice.org_id,
                recipient_id=practice.client_id,
                status=status.value,
                created_at=day(0),
                sent_at=sent,
                **more,
            )

        tokens = {
            "expired_long_ago": token("a", now - timedelta(days=31)),
            "expired_recently": token("b", now - timedelta(days=29)),
            "revoked_long_ago": token("c", now + DAY, now - timedelta(days=31)),
            "valid": token("d", now + DAY),
        }
        inbounds = {
            "filed_old": inbound(InboundStatus.FILED, now - timedelta(days=31)),
            "dropped_old": inbound(InboundStatus.DROPPED, now - timedelta(days=31)),
            "held_old": inbound(InboundStatus.HELD, now - timedelta(days=31)),
            "filed_recent": inbound(InboundStatus.FILED, now - timedelta(days=29)),
            "parked_old": inbound(InboundStatus.PARKED, now - timedelta(days=31)),
            "received_old": inbound(InboundStatus.RECEIVED, None),
        }
        inbounds["leased"] = inbound(InboundStatus.RECEIVED, None)
        inbounds["leased"].lease_owner, inbounds["leased"].lease_expires_at = "dead", now - DAY
        outboxes = {
            "sent_old": outbox(OutboxStatus.SENT, now - timedelta(days=91)),
            "failed_old": outbox(OutboxStatus.FAILED, None),
            "sent_recent": outbox(OutboxStatus.SENT, now - timedelta(days=89)),
            "pending_old": outbox(OutboxStatus.PENDING, None),
            "stuck": outbox(
                OutboxStatus.SENDING, None, lease_owner="dead", lease_expires_at=now - DAY
            ),
            "live": outbox(
                OutboxStatus.SENDING, None, lease_owner="alive", lease_expires_at=now + DAY
            ),
        }
        session.add_all([*tokens.values(), *inbounds.values(), *outboxes.values()])
        await session.flush()
        filed_message = Message(
            thread_id=thread,
            author_id=practice.client_id,
            body_text="kept text",
            source="email",
            inbound_email_id=inbounds["filed_old"].id,
        )
        session.add(filed_message)
        session.add(AuditEvent(at=day(0), actor="test", action="old_event", detail={}))

    report = await retention.housekeeping(
        store, HousekeepingRules(), actor="test", now=now, batch_size=2
    )
    assert report.complete
    assert report.counts == {
        "tokens_deleted": 2,
        "outbox_leases_returned": 1,
        "inbound_leases_cleared": 1,
        "inbound_emails_deleted": 3,
        "outbox_deleted": 2,
    }
    left_tokens = {t.id for t in await rows(store, ReplyToken)}
    assert left_tokens == {tokens["expired_recently"].id, tokens["valid"].id}
    left_inbound = {r.id: r for r in await rows(store, InboundEmail)}
    assert set(left_inbound) == {
        inbounds[k].id for k in ("filed_recent", "parked_old", "received_old", "leased")
    }
    assert left_inbound[inbounds["leased"].id].lease_owner is None
    left_outbox = {r.id: r for r in await rows(store, Outbox)}
    assert set(left_outbox) == {
        outboxes[k].id for k in ("sent_recent", "pending_old", "stuck", "live")
    }
    assert left_outbox[outboxes["stuck"].id].status == OutboxStatus.PENDING.value
    assert left_outbox[outboxes["stuck"].id].lease_owner is None
    assert left_outbox[outboxes["live"].id].status == OutboxStatus.SENDING.value
    message = (await rows(store, Message, Message.id == filed_message.id))[0]
    assert message.body_text == "kept text" and message.inbound_email_id is None
    # Audit events are kept unless pruning them is switched on.
    assert await count(store, AuditEvent, AuditEvent.action == "old_event") == 1
    event = (await rows(store, AuditEvent, AuditEvent.action == retention.AUDIT_HOUSEKEEPING))[0]
    assert event.detail["tokens_deleted"] == 2 and event.detail["complete"] is True

    pruning = HousekeepingRules(prune_audit_events=True, audit_events_days=100)
    report = await retention.housekeeping(store, pruning, actor="test", now=now)
    assert report.counts["audit_events_deleted"] == 1
    assert await count(store, AuditEvent, AuditEvent.action == "old_event") == 0


async def test_last_runs_come_from_the_audit_trail(practice: Practice) -> None:
    assert await retention.last_runs(practice.store) == {}
    await practice.purge(day(1))
    await retention.housekeeping(practice.store, HousekeepingRules(), actor="test", now=day(1))
    last = await retention.last_runs(practice.store)
    assert set(last) == {AUDIT_RUN, retention.AUDIT_HOUSEKEEPING}
    for at in last.values():
        assert abs(at - datetime.now(UTC)) < timedelta(seconds=5)


# --- the commands (bridge.commands.retention, wired without the CLI's module list) ------


async def command(
    argv: list[str], database_url: str, blob_dir: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="bridge")
    common = argparse.ArgumentParser(add_help=False)
    retention_commands.register(parser.add_subparsers(dest="command", required=True), common)
    args = parser.parse_args(argv)
    settings = config.Settings.model_validate(
        {"store": {"url": database_url, "blob_dir": str(blob_dir)}}
    )
    capsys.readouterr()
    code = await args.handler(args, Context(settings, None, {}))
    out, err = capsys.readouterr()
    return code, out, err


async def test_purge_dry_run_command_prints_counts_per_organization(
    practice: Practice, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await command(["purge", "--dry-run"], database_url, practice.blob_dir, capsys)
    assert (code, out) == (0, "nothing to purge\n")
    thread = await practice.thread()
    await practice.trash_for_all(thread, day(0))
    code, out, _ = await command(["purge", "--dry-run"], database_url, practice.blob_dir, capsys)
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == [
        "organization", "mailboxes", "threads", "messages", "attachments", "bytes",
        "inbound_emails",
    ]  # fmt: skip
    assert row.split() == [str(practice.org_id), "2", "1", "1", "1", str(len(FILE.data)), "0"]
    assert (await left_of(practice.store, thread))["threads"] == 1


async def test_purge_command_respects_the_lease_and_then_purges(
    practice: Practice, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    thread = await practice.thread()
    await practice.trash_for_all(thread, day(0))
    assert await leases.acquire(practice.store, "purge", "daemon-a", timedelta(minutes=10))
    code, out, err = await command(["purge"], database_url, practice.blob_dir, capsys)
    assert code == 1 and out == ""
    assert "daemon-a" in err and "nothing done" in err
    assert (await left_of(practice.store, thread))["threads"] == 1

    await leases.release(practice.store, "purge", "daemon-a")
    # Older than the grace the command keeps for files whose rows may not be committed.
    old = time.time() - 7200
    os.utime(blob_of(practice), (old, old))
    code, out, _ = await command(["purge"], database_url, practice.blob_dir, capsys)
    assert code == 0
    assert "threads 1" in out and "mailboxes 2" in out and "blob files 1" in out
    assert (await left_of(practice.store, thread))["threads"] == 0
    assert not blob_of(practice).exists()
    (run,) = await rows(practice.store, AuditEvent, AuditEvent.action == AUDIT_RUN)
    assert run.actor.startswith("cli:")
    assert await leases.current(practice.store, "purge") is None


async def test_jobs_command_lists_schedule_last_and_next_run_and_the_holder(
    practice: Practice, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await command(["jobs"], database_url, practice.blob_dir, capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:2] == ["job", "schedule"]
    purge_line = next(line for line in lines if line.startswith("purge"))
    assert "daily at 03:30 UTC" in purge_line and purge_line.split()[-1] == "-"

    await practice.purge(day(1))
    assert await leases.acquire(practice.store, "housekeeping", "daemon-b", timedelta(minutes=10))
    code, out, _ = await command(["jobs"], database_url, practice.blob_dir, capsys)
    lines = out.splitlines()
    purge_line = next(line for line in lines if line.startswith("purge"))
    housekeeping_line = next(line for line in lines if line.startswith("housekeeping"))
    assert f"{datetime.now(UTC):%Y-%m-%d}" in purge_line
    assert "every 300 s" in housekeeping_line and housekeeping_line.split()[-1] == "daemon-b"
