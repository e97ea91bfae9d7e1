"""The purge's SQL: which rows are due, and one bounded batch of deleting them.

Two kinds of batch, each run in the caller's write transaction:

* `expire_mailboxes`: delete mailbox rows whose `trashed_at` is older than the
  organization's `trash_retention_days` (the same as that participant's
  permanent delete, so their reply tokens for the thread are revoked too).
* `delete_threads`: delete threads that no mailbox row holds any more, with
  their messages, and the `inbound_emails` rows those messages were filed from
  (no cascade reaches those). Everything else goes by `ON DELETE CASCADE`:
  attachments rows and outbox rows (from messages), reply tokens, outbox rows,
  assigned clinicians and the raw emails filed into the thread (from threads).

Candidates are found in a read transaction first (`due_mailboxes`,
`orphan_threads`), so the search never holds SQLite's write lock; the write
batch re-checks each condition before it deletes. `counts_by_organization` is
the dry run. Every batch is bounded: at most `limit` mailbox rows, threads or
messages.

Retention is compared per distinct `trash_retention_days` value with a cutoff
computed from the run's time, so the SQL is the same on both backends.

Not here: blob files (`_purge_blobs`), leases, audit events or loops (`purge`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Self, TypeVar

import sqlalchemy as sa
from sqlmodel import col, delete, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.store.models import (
    Attachment,
    InboundEmail,
    Mailbox,
    Message,
    Organization,
    ReplyToken,
    Thread,
)

T = TypeVar("T")

# Bound parameters per statement stay well below both backends' limits
# (SQLite 32766, PostgreSQL 65535), whatever `retention.batch_size` says.
MAX_IDS = 5000


@dataclass(frozen=True)
class PurgeCounts:
    """What a purge removed (or, in a dry run, would remove). Counts only."""

    mailboxes: int = 0
    threads: int = 0
    messages: int = 0
    attachments: int = 0
    bytes: int = 0
    inbound_emails: int = 0

    def __add__(self, other: PurgeCounts) -> PurgeCounts:
        return PurgeCounts(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def as_detail(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_detail(cls, detail: dict[str, Any]) -> Self:
        return cls(**{f.name: int(detail.get(f.name) or 0) for f in fields(cls)})


@dataclass(frozen=True)
class DueMailbox:
    thread_id: int
    participant_id: int
    organization_id: int
    retention_days: int


def chunks(items: Sequence[T], size: int = MAX_IDS) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def cutoffs(session: AsyncSession, at: datetime) -> dict[int, datetime]:
    """For each retention period in use: trashed at or before this time is due at `at`."""
    days = await session.exec(select(Organization.trash_retention_days).distinct())
    return {int(d): at - timedelta(days=int(d)) for d in days}


def is_due(limits: dict[int, datetime]) -> sa.ColumnElement[bool]:
    """A mailbox row (joined with its thread's organization) is past its retention."""
    if not limits:
        return sa.false()
    # The overall bound is redundant, but lets the database walk `trashed_at`'s index.
    per_retention = sa.or_(
        *(
            sa.and_(
                col(Organization.trash_retention_days) == days, col(Mailbox.trashed_at) <= cutoff
            )
            for days, cutoff in limits.items()
        )
    )
    return sa.and_(col(Mailbox.trashed_at) <= max(limits.values()), per_retention)


def _no_holder() -> sa.ColumnElement[bool]:
    return ~sa.exists().where(col(Mailbox.thread_id) == col(Thread.id))


# --- step 1: mailbox rows past their retention ------------------------------------------


async def due_mailboxes(
    session: AsyncSession, limits: dict[int, datetime], limit: int
) -> list[DueMailbox]:
    """Up to `limit` due mailbox rows, longest in the trash first."""
    query = (
        select(
            Mailbox.thread_id,
            Mailbox.participant_id,
            Thread.organization_id,
            Organization.trash_retention_days,
        )
        .join(Thread, col(Thread.id) == col(Mailbox.thread_id))
        .join(Organization, col(Organization.id) == col(Thread.organization_id))
        .where(is_due(limits))
        .order_by(col(Mailbox.trashed_at))
        .limit(min(limit, MAX_IDS))
    )
    return [DueMailbox(*row) for row in await session.exec(query)]


async def expire_mailboxes(
    session: AsyncSession, rows: Sequence[DueMailbox], limits: dict[int, datetime], at: datetime
) -> dict[int, PurgeCounts]:
    """Delete these rows if they are still due; revoke the tokens they held. Per organization.

    Statements go per participant (`participant_id = ? AND thread_id IN (...)`):
    a list of (thread, participant) pairs is what PostgreSQL plans worst.
    """
    threads_of: dict[tuple[int, int], list[int]] = defaultdict(list)
    for row in rows:
        threads_of[(row.participant_id, row.retention_days)].append(row.thread_id)
    organization = {(r.thread_id, r.participant_id): r.organization_id for r in rows}
    deleted: dict[int, list[int]] = defaultdict(list)
    for (person, days), threads in threads_of.items():
        cutoff = limits.get(days)
        if cutoff is None:  # the retention period changed since the search
            continue
        # Re-checked here: a restore committed since the search keeps the row.
        statement = (
            delete(Mailbox)
            .where(col(Mailbox.participant_id) == person, col(Mailbox.thread_id).in_(threads))
            .where(col(Mailbox.trashed_at) <= cutoff)
            .returning(col(Mailbox.thread_id))
        )
        deleted[person].extend(int(t) for t in (await session.exec(statement)).scalars())
    for person, threads in deleted.items():
        # Losing the mailbox row is losing access: the tokens stop working too.
        revoke = (
            update(ReplyToken)
            .where(col(ReplyToken.participant_id) == person)
            .where(col(ReplyToken.thread_id).in_(threads))
            .where(col(ReplyToken.revoked_at).is_(None))
            .values(revoked_at=at)
        )
        await session.exec(revoke)
    counts: dict[int, int] = defaultdict(int)
    for person, threads in deleted.items():
        for thread_id in threads:
            counts[organization[(thread_id, person)]] += 1
    return {org: PurgeCounts(mailboxes=n) for org, n in counts.items()}


# --- step 2: threads nobody holds -------------------------------------------------------


async def orphan_threads(session: AsyncSession, after: int, limit: int) -> list[int]:
    """Ids of up to `limit` threads with no mailbox row, above `after`, in id order."""
    query = (
        select(Thread.id)
        .where(col(Thread.id) > after, _no_holder())
        .order_by(col(Thread.id))
        .limit(min(limit, MAX_IDS))
    )
    return [int(i) for i in await session.exec(query) if i is not None]


@dataclass(frozen=True)
class ThreadBatch:
    """What one `delete_threads` batch did: counts per organization, and where to go on."""

    counts: dict[int, PurgeCounts]
    # The next search starts above this id. A thread too large for one batch keeps
    # the cursor where it is, and loses its messages over several batches.
    after: int


async def delete_threads(
    session: AsyncSession, candidates: Sequence[int], after: int, budget: int
) -> ThreadBatch:
    """Delete the candidates that nobody holds, up to about `budget` messages in all."""
    if (await session.connection()).dialect.name == "postgresql":
        # Lock first, then look again in a new statement (a new snapshot): a mailbox row
        # or message committed meanwhile is seen, and none can be added from now on.
        lock = select(Thread.id).where(col(Thread.id).in_(candidates)).order_by(col(Thread.id))
        await session.exec(lock.with_for_update())
    rows = await session.exec(
        select(Thread.id, Thread.organization_id)
        .where(col(Thread.id).in_(candidates), _no_holder())
        .order_by(col(Thread.id))
    )
    orphans = [(int(t or 0), int(o)) for t, o in rows]
    if not orphans:
        return ThreadBatch({}, max(candidates, default=after))
    sizes = {
        int(t): int(n)
        for t, n in await session.exec(
            select(Message.thread_id, sa.func.count())
            .where(col(Message.thread_id).in_([t for t, _ in orphans]))
            .group_by(col(Message.thread_id))
        )
    }
    whole: list[tuple[int, int]] = []
    used = 0
    for thread_id, org in orphans:
        size = sizes.get(thread_id, 0)
        if used + size > budget and (whole or size <= budget):
            break
        if size > budget:  # a thread larger than a whole batch: part of it now
            return await _delete_part(session, thread_id, org, budget, after)
        whole.append((thread_id, org))
        used += size
    return ThreadBatch(await _delete_whole(session, whole), whole[-1][0])


async def _delete_whole(
    session: AsyncSession, threads: Sequence[tuple[int, int]]
) -> dict[int, PurgeCounts]:
    counts: dict[int, PurgeCounts] = {}
    by_org: dict[int, list[int]] = defaultdict(list)
    for thread_id, org in threads:
        by_org[org].append(thread_id)
    for org, ids in by_org.items():
        in_threads = col(Message.thread_id).in_(ids)
        content = await _delete_messages(session, in_threads)
        filed_here = await session.exec(
            select(sa.func.count()).where(col(InboundEmail.thread_id).in_(ids))
        )
        gone = await session.exec(delete(Thread).where(col(Thread.id).in_(ids)))
        counts[org] = content + PurgeCounts(
            threads=int(gone.rowcount), inbound_emails=int(filed_here.one())
        )
    return counts


async def _delete_part(
    session: AsyncSession, thread_id: int, org: int, budget: int, after: int
) -> ThreadBatch:
    last = (
        await session.exec(
            select(Message.id)
            .where(col(Message.thread_id) == thread_id)
            .order_by(col(Message.id))
            .offset(budget - 1)
            .limit(1)
        )
    ).one()
    part = (col(Message.thread_id) == thread_id) & (col(Message.id) <= last)
    return ThreadBatch({org: await _delete_messages(session, part)}, after)


async def _delete_messages(session: AsyncSession, which: sa.ColumnElement[bool]) -> PurgeCounts:
    """Delete the messages matching `which`, and the raw emails they were filed from.

    Everything after the first look-up goes by primary or foreign-key index,
    which keeps the plans simple whatever the tables' statistics say.
    """
    found = list(await session.exec(select(Message.id, Message.inbound_email_id).where(which)))
    ids = [int(message_id or 0) for message_id, _ in found]
    sources = [int(source) for _, source in found if source is not None]
    done = PurgeCounts()
    for chunk in chunks(ids):
        files = (
            await session.exec(
                select(
                    sa.func.count(col(Attachment.id)),
                    sa.func.coalesce(sa.func.sum(Attachment.size), 0),
                ).where(col(Attachment.message_id).in_(chunk))
            )
        ).one()
        gone = await session.exec(delete(Message).where(col(Message.id).in_(chunk)))
        done += PurgeCounts(
            messages=int(gone.rowcount), attachments=int(files[0]), bytes=int(files[1])
        )
    for chunk in chunks(sources):
        raw = await session.exec(delete(InboundEmail).where(col(InboundEmail.id).in_(chunk)))
        done += PurgeCounts(inbound_emails=int(raw.rowcount))
    return done


# --- the dry run ------------------------------------------------------------------------


async def counts_by_organization(
    session: AsyncSession, limits: dict[int, datetime]
) -> dict[int, PurgeCounts]:
    """What a purge at this time would remove, per organization, without removing it."""
    due = is_due(limits)
    results: dict[int, dict[str, int]] = defaultdict(dict)
    mailboxes = (
        select(Thread.organization_id, sa.func.count())
        .select_from(Mailbox)
        .join(Thread, col(Thread.id) == col(Mailbox.thread_id))
        .join(Organization, col(Organization.id) == col(Thread.organization_id))
        .where(due)
        .group_by(col(Thread.organization_id))
    )
    for org, n in await session.exec(mailboxes):
        results[int(org)]["mailboxes"] = int(n)
    # A thread goes when every row that holds it is due (or none is left).
    held = (
        sa.exists()
        .where(col(Mailbox.thread_id) == col(Thread.id))
        .where(sa.or_(col(Mailbox.trashed_at).is_(None), sa.not_(due)))
    )
    doomed = (
        select(col(Thread.id).label("id"), col(Thread.organization_id).label("org"))
        .join(Organization, col(Organization.id) == col(Thread.organization_id))
        .where(sa.not_(held))
        .subquery()
    )
    # The raw emails go with the thread, or with the message they were filed as.
    raw = sa.union(
        select(doomed.c.org, col(InboundEmail.id).label("id")).join(
            InboundEmail, col(InboundEmail.thread_id) == doomed.c.id
        ),
        select(doomed.c.org, col(Message.inbound_email_id).label("id"))
        .join(Message, col(Message.thread_id) == doomed.c.id)
        .where(col(Message.inbound_email_id).isnot(None)),
    ).subquery()
    per_org: list[tuple[str, Any]] = [
        ("threads", select(doomed.c.org, sa.func.count()).group_by(doomed.c.org)),
        (
            "messages",
            select(doomed.c.org, sa.func.count())
            .join(Message, col(Message.thread_id) == doomed.c.id)
            .group_by(doomed.c.org),
        ),
        (
            "attachments",
            select(doomed.c.org, sa.func.count(), sa.func.coalesce(sa.func.sum(Attachment.size), 0))
            .join(Message, col(Message.thread_id) == doomed.c.id)
            .join(Attachment, col(Attachment.message_id) == col(Message.id))
            .group_by(doomed.c.org),
        ),
        (
            "inbound_emails",
            select(raw.c.org, sa.func.count(sa.distinct(raw.c.id))).group_by(raw.c.org),
        ),
    ]
    for name, query in per_org:
        for row in await session.exec(query):
            results[int(row[0])][name] = int(row[1])
            if name == "attachments":
                results[int(row[0])]["bytes"] = int(row[2])
    return {org: PurgeCounts(**values) for org, values in sorted(results.items())}
