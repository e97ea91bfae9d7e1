"""`bridge purge [--dry-run]` and `bridge jobs`.

`purge --dry-run` prints, per organization, what a purge would remove now.
`purge` runs the purge at once under the same lease as the daemons' scheduled
purge: when another instance holds it, it says which and exits 1. `jobs` lists
the scheduled jobs with their schedule, the last finished run (by any
instance, from the audit trail), the next run, and who runs one right now.
Output holds ids and counts only.

This module only wires and formats; the work is in `bridge.purge` and
`bridge.scheduler`.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from bridge import purge
from bridge.commands import EXIT_FAILURE, EXIT_OK, Context
from bridge.daemon import open_store
from bridge.scheduler import PURGE_JOB, planned_jobs, schedules
from bridge.store import leases
from bridge.store.leases import HeldLease, LeaseBusyError, LeaseLostError

_COUNT_COLUMNS = ("mailboxes", "threads", "messages", "attachments", "bytes", "inbound_emails")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    run = sub.add_parser(
        "purge",
        parents=[common],
        help="purge trash past its retention now (one instance at a time)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would go, per organization; change nothing",
    )
    run.set_defaults(handler=_purge)
    jobs = sub.add_parser(
        "jobs", parents=[common], help="list the scheduled jobs with their last and next run"
    )
    jobs.set_defaults(handler=_jobs)


def cli_owner() -> str:
    """This command's name in the lease and audit trail; never a daemon's instance id."""
    return f"cli:{socket.gethostname()}:{os.getpid()}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


async def _purge(args: argparse.Namespace, ctx: Context) -> int:
    retention = ctx.settings.retention
    async with open_store(ctx.settings.store) as store:
        if args.dry_run:
            plan = await purge.dry_run(store)
            if not plan:
                print("nothing to purge")
                return EXIT_OK
            rows = [
                [str(org.organization_id), *(str(getattr(org.counts, c)) for c in _COUNT_COLUMNS)]
                for org in plan
            ]
            _table(["organization", *_COUNT_COLUMNS], rows)
            return EXIT_OK
        owner = cli_owner()
        ttl = timedelta(seconds=retention.lease_seconds)
        try:
            async with HeldLease(store, PURGE_JOB, owner, ttl) as lease:
                report = await purge.purge(
                    store,
                    ctx.settings.store.blob_dir,
                    actor=owner,
                    batch_size=retention.batch_size,
                    fence=lease.check,
                    pacing=purge.GENTLE,
                )
        except LeaseBusyError as busy:
            print(
                f"bridge: a purge is running on {busy.holder or 'another instance'}"
                f" (lease until {_when(busy.expires_at)}); nothing done",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        except LeaseLostError:
            print("bridge: the purge lease expired and was taken over; stopped", file=sys.stderr)
            return EXIT_FAILURE
    counts = report.counts
    print(
        ", ".join(f"{c} {getattr(counts, c)}" for c in _COUNT_COLUMNS)
        + f", blob files {report.blobs.blobs} ({report.blobs.bytes} bytes)"
        + f", in {report.batches} batches"
    )
    return EXIT_OK


async def _jobs(args: argparse.Namespace, ctx: Context) -> int:
    retention = ctx.settings.retention
    async with open_store(ctx.settings.store) as store:
        last = await purge.last_runs(store)
        holders = {name: await leases.current(store, name) for name in schedules(retention)}
    now = datetime.now(UTC)
    rows = []
    for job in planned_jobs(retention, last, now):
        holder = holders.get(job.name)
        running = holder.owner if holder is not None and holder.expires_at > now else "-"
        rows.append([job.name, job.schedule, _when(job.last_run), _when(job.next_run), running])
    _table(["job", "schedule", "last run", "next run", "running on"], rows)
    return EXIT_OK
