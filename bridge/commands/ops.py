"""`bridge status`: queues, the oldest waiting item, the last purge, recent failures.

What an operator looks at first. Only counts, ids, ages, action names and
timestamps are printed: no address, name, subject or body.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import col, select

from bridge.commands import EXIT_FAILURE, EXIT_OK, Context
from bridge.store.engine import Store
from bridge.store.models import (
    AuditEvent,
    InboundEmail,
    InboundStatus,
    Outbox,
    OutboxStatus,
)

FAILURE_WINDOW = timedelta(hours=1)
# The audit action the sender writes when it gives an outbox row up.
OUTBOX_FAILED_ACTION = "outbox_failed"
_OUTBOX_WAITING = (OutboxStatus.PENDING.value, OutboxStatus.SENDING.value)


@dataclass(frozen=True)
class Oldest:
    row_id: int
    age_seconds: float


@dataclass(frozen=True)
class LastPurge:
    event_id: int
    action: str
    at: datetime


@dataclass(frozen=True)
class Status:
    outbox: dict[str, int]
    inbound: dict[str, int]
    oldest_outbox: Oldest | None
    oldest_inbound: Oldest | None
    last_purge: LastPurge | None
    outbox_failed_last_hour: int
    inbound_parked_last_hour: int


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    status = sub.add_parser(
        "status",
        parents=[common],
        help="queue depths, oldest waiting item, last purge, failures in the last hour",
    )
    status.set_defaults(handler=_status)


async def _status(args: argparse.Namespace, ctx: Context) -> int:
    try:
        async with Store(ctx.settings.store.url, password=ctx.store_password) as store:
            found = await read_status(store, datetime.now(UTC))
    except Exception as err:  # any store failure is one line and a failed status
        print(f"bridge: store unreachable: {type(err).__name__}", file=sys.stderr)
        return EXIT_FAILURE
    for line in render(found):
        print(line)
    return EXIT_OK


async def read_status(store: Store, now: datetime) -> Status:
    """Everything `bridge status` shows, read in one session."""
    cutoff = now - FAILURE_WINDOW
    async with store.read() as session:
        outbox_counts = await session.exec(
            select(col(Outbox.status), sa.func.count()).group_by(col(Outbox.status))
        )
        outbox = dict.fromkeys((s.value for s in OutboxStatus), 0)
        outbox.update((status, int(count)) for status, count in outbox_counts)
        inbound_counts = await session.exec(
            select(col(InboundEmail.status), sa.func.count()).group_by(col(InboundEmail.status))
        )
        inbound = dict.fromkeys((s.value for s in InboundStatus), 0)
        inbound.update((status, int(count)) for status, count in inbound_counts)
        oldest_outbox_row = (
            await session.exec(
                select(col(Outbox.id), col(Outbox.created_at))
                .where(col(Outbox.status).in_(_OUTBOX_WAITING))
                .order_by(col(Outbox.created_at), col(Outbox.id))
                .limit(1)
            )
        ).first()
        oldest_inbound_row = (
            await session.exec(
                select(col(InboundEmail.id), col(InboundEmail.received_at))
                .where(col(InboundEmail.status) == InboundStatus.RECEIVED.value)
                .order_by(col(InboundEmail.received_at), col(InboundEmail.id))
                .limit(1)
            )
        ).first()
        purge_row = (
            await session.exec(
                select(col(AuditEvent.id), col(AuditEvent.action), col(AuditEvent.at))
                .where(col(AuditEvent.action).contains("purge"))
                .order_by(col(AuditEvent.at).desc(), col(AuditEvent.id).desc())
                .limit(1)
            )
        ).first()
        outbox_failed = (
            await session.exec(
                select(sa.func.count(sa.distinct(col(Outbox.id))))
                .select_from(Outbox)
                .join(AuditEvent, col(AuditEvent.outbox_id) == col(Outbox.id))
                .where(col(Outbox.status) == OutboxStatus.FAILED.value)
                .where(col(AuditEvent.action) == OUTBOX_FAILED_ACTION)
                .where(col(AuditEvent.at) >= cutoff)
            )
        ).one()
        inbound_parked = (
            await session.exec(
                select(sa.func.count())
                .select_from(InboundEmail)
                .where(col(InboundEmail.status) == InboundStatus.PARKED.value)
                .where(
                    sa.func.coalesce(col(InboundEmail.processed_at), col(InboundEmail.received_at))
                    >= cutoff
                )
            )
        ).one()
    return Status(
        outbox=outbox,
        inbound=inbound,
        oldest_outbox=_oldest(now, oldest_outbox_row),
        oldest_inbound=_oldest(now, oldest_inbound_row),
        last_purge=(
            None
            if purge_row is None or purge_row[0] is None
            else LastPurge(purge_row[0], purge_row[1], _aware(purge_row[2]))
        ),
        outbox_failed_last_hour=int(outbox_failed),
        inbound_parked_last_hour=int(inbound_parked),
    )


def render(status: Status) -> list[str]:
    """The lines `bridge status` prints."""

    def depths(counts: dict[str, int]) -> str:
        return " ".join(f"{name}={count}" for name, count in counts.items())

    def oldest(what: str, found: Oldest | None) -> str:
        if found is None:
            return f"{what} none"
        return f"{what} id {found.row_id}, {_duration(found.age_seconds)} old"

    purge = status.last_purge
    last_purge = (
        "never"
        if purge is None
        else f"{purge.at.isoformat(timespec='seconds')} ({purge.action}, event {purge.event_id})"
    )
    return [
        f"outbox:  {depths(status.outbox)}",
        f"inbound: {depths(status.inbound)}",
        "oldest waiting: "
        + "; ".join(
            (oldest("outbox", status.oldest_outbox), oldest("inbound", status.oldest_inbound))
        ),
        f"last purge: {last_purge}",
        f"failures in the last hour: outbox {status.outbox_failed_last_hour} failed,"
        f" inbound {status.inbound_parked_last_hour} parked",
    ]


def _oldest(now: datetime, row: tuple[int | None, datetime] | None) -> Oldest | None:
    if row is None or row[0] is None:
        return None
    return Oldest(row[0], max(0.0, (now - _aware(row[1])).total_seconds()))


def _aware(moment: datetime) -> datetime:
    """Timestamps are stored in UTC; SQLite hands them back without a zone."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 120:
        return f"{whole}s"
    if whole < 7200:
        return f"{whole // 60}m"
    if whole < 172800:
        return f"{whole // 3600}h"
    return f"{whole // 86400}d"
