"""Benchmark of the trash purge, with inbound SMTP acceptance measured beside it.

For each backend (SQLite, and PostgreSQL when a URL is given) it builds a fresh
store with N trashed messages (default 1,000,000; `--quick` 50,000), ten per
thread, one in ten with an attachment whose blob file exists, plus live
threads a tenth as many that must survive. It then starts the inbound SMTP
listener (`bridge.inbound.smtp.Listener`) in this process's event loop, like
the daemon, and a client thread that sends one small reply after another with
aiosmtplib, each on a new connection, to a valid reply address. Acceptance
latency (connect to QUIT, after the 250 for DATA) is sampled first with the
store idle, then while the purge runs in the same loop. It prints rows purged
per second and both p99s (the target: p99 during the purge at most 2x idle).
`--json FILE` writes the figures.

Not a test and not run by `make test`. Run it as
`.venv/bin/python bench/purge.py [--quick] [--pg-url postgresql://...]`
(the PostgreSQL URL may also come from `BRIDGE_BENCH_DATABASE_URL` or
`BRIDGE_TEST_DATABASE_URL`; a scratch database is created next to it and
dropped afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import sqlalchemy as sa
from _scratch import drop_postgres, scratch_postgres

from bridge.inbound.smtp import Listener, ListenerOptions, ReplyRules
from bridge.policy.tokens import issue_token, reply_address
from bridge.portal import Portal
from bridge.purge import Pacing, purge
from bridge.store.blobs import blob_path
from bridge.store.engine import Store
from bridge.store.migrate import upgrade
from bridge.store.models import NotificationMode, ReplyToken, StaffRole

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SECRET = b"bench-secret-0123456789abcdef012345"
FORMAT = "reply+{token}"
DOMAIN = "replies.bench.example"
NOREPLY = "no-reply@bench.example"
PER_THREAD = 10


@dataclass(frozen=True)
class Figures:
    backend: str
    messages: int
    attachments_seeded: int
    rows_deleted: int
    purge_seconds: float
    messages_per_s: float
    rows_per_s: float
    batches: int
    idle_samples: int
    idle_p50_ms: float
    idle_p99_ms: float
    purge_samples: int
    purge_p50_ms: float
    purge_p99_ms: float
    p99_ratio: float


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000


# --- building the store ------------------------------------------------------------------


def _sequence(dialect: str, n: int) -> str:
    """SQL yielding column `i` = 1..n, as a FROM item."""
    if dialect == "postgresql":
        return f"generate_series(1, {int(n)}) AS seq(i)"
    return (
        f"(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {int(n)})"
        " SELECT i FROM s) AS seq"
    )


def _stamp(dialect: str) -> str:
    return (
        "TIMESTAMPTZ '2026-03-01 09:00:00+00'"
        if dialect == "postgresql"
        else "'2026-03-01 09:00:00'"
    )


def _sha(dialect: str, column: str) -> str:
    if dialect == "postgresql":
        return f"lpad(to_hex({column}), 64, '0')"
    return f"printf('%064x', {column})"


async def seed(store: Store, blob_dir: Path, messages: int) -> tuple[str, int]:
    """The practice, the trashed and the live threads, and one valid reply address."""
    portal = Portal(store)
    org = await portal.create_organization("Bench", "https://bench.example", DOMAIN, now=T0)
    staff = await portal.add_staff(
        org,
        "Staff",
        [StaffRole.CLINICIAN, StaffRole.PRACTICE_ADMIN],
        ["staff@bench.example"],
        now=T0,
    )
    # Replies by email are accepted only in convenience mode.
    await portal.set_notification_mode(
        org, NotificationMode.CONVENIENCE, acknowledged_by=staff, now=T0
    )
    client = await portal.add_client(org, "Client", ["client@home.example"], now=T0)
    live = await portal.create_thread(
        org, client, "live", clinician_ids=[staff], author_id=staff, body_text="hi", now=T0
    )
    issued = issue_token(SECRET)
    async with store.transaction() as session:
        session.add(
            ReplyToken(
                token_hash=issued.token_hash,
                participant_id=client,
                thread_id=live.thread_id,
                expires_at=datetime.now(UTC) + timedelta(days=365),
            )
        )
    dialect, at = store.dialect, _stamp(store.dialect)
    threads = max(1, messages // PER_THREAD)
    statements = [
        # Trashed threads, then live ones (a tenth as many) that the purge must leave alone.
        f"INSERT INTO threads (organization_id, client_id, subject, audience, created_at)"
        f" SELECT {org}, {client}, 'trashed', 'clinical', {at} FROM {_sequence(dialect, threads)}",
        f"INSERT INTO threads (organization_id, client_id, subject, audience, created_at)"
        f" SELECT {org}, {client}, 'kept', 'clinical', {at}"
        f" FROM {_sequence(dialect, max(1, threads // 10))}",
        f"INSERT INTO messages (thread_id, author_id, body_text, source, created_at)"
        f" SELECT t.id, {staff}, 'a message body of some length, as clinical mail has',"
        f" 'portal', {at} FROM threads t, {_sequence(dialect, PER_THREAD)}"
        f" WHERE t.subject IN ('trashed', 'kept')",
        f"INSERT INTO attachments (message_id, filename, content_type, size, sha256)"
        f" SELECT id, 'file.pdf', 'application/pdf', 2048, {_sha(dialect, 'id')}"
        f" FROM messages WHERE id % 10 = 0",
    ]
    for person in (client, staff):
        statements.append(
            f"INSERT INTO mailboxes (thread_id, participant_id, trashed_at, joined_at)"
            f" SELECT id, {person}, CASE WHEN subject = 'trashed' THEN {at} END, {at}"
            f" FROM threads WHERE subject IN ('trashed', 'kept')"
        )
    async with store.transaction() as session:
        connection = await session.connection()
        for statement in statements:
            await connection.execute(sa.text(statement))
        shas = list(await connection.scalars(sa.text("SELECT sha256 FROM attachments")))
    # Fresh statistics, as autovacuum would have them for tables this size.
    async with store.engine.begin() as connection:
        await connection.execute(sa.text("ANALYZE"))
    await asyncio.to_thread(_write_blobs, blob_dir, shas)
    return reply_address(FORMAT, issued.token, DOMAIN), len(shas)


def _write_blobs(blob_dir: Path, shas: list[str]) -> None:
    old = time.time() - 7200
    payload = os.urandom(2048)
    for sha in shas:
        path = blob_path(blob_dir, sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
        os.utime(path, (old, old))


# --- measuring ------------------------------------------------------------------------------


class Driver:
    """Sends replies one after another from a separate process, as an MTA would.

    A process of its own, so that its work does not compete with the daemon's
    event loop for this interpreter's lock. `time.monotonic` is system-wide on
    Linux, so its samples line up with this process's phases.
    """

    def __init__(self, port: int, recipient: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._results: multiprocessing.Queue[tuple[list[tuple[float, float]], int]] = (
            context.Queue()
        )
        self._process = context.Process(
            target=drive, args=(port, recipient, self._stop, self._results), daemon=True
        )
        self.samples: list[tuple[float, float]] = []  # (start, latency), monotonic seconds
        self.errors = 0

    def start(self) -> None:
        self._process.start()

    def stop(self) -> None:
        self._stop.set()
        self.samples, self.errors = self._results.get(timeout=120)
        self._process.join()

    def between(self, start: float, end: float) -> list[float]:
        return [latency for at, latency in self.samples if start <= at < end]


def drive(port: int, recipient: str, stop: Any, results: Any) -> None:
    samples: list[tuple[float, float]] = []
    errors = asyncio.run(_send_until(port, recipient, stop, samples))
    results.put((samples, errors))


async def _send_until(
    port: int, recipient: str, stop: Any, samples: list[tuple[float, float]]
) -> int:
    errors = n = 0
    while not stop.is_set():
        n += 1
        message = EmailMessage()
        message["From"] = "client@home.example"
        message["To"] = recipient
        message["Subject"] = "Re: your message"
        message["Message-ID"] = f"<bench.{n}.{secrets.token_hex(6)}@home.example>"
        message.set_content("Thank you, Tuesday works for me.\n")
        started = time.monotonic()
        try:
            await aiosmtplib.send(
                message,
                hostname="127.0.0.1",
                port=port,
                sender="client@home.example",
                recipients=[recipient],
                timeout=60,
            )
        except aiosmtplib.SMTPException as err:
            errors += 1
            if errors == 1:
                print(f"first failed send: {err}", flush=True)
            continue
        samples.append((started, time.monotonic() - started))
    return errors


async def measure(backend: str, url: str, args: argparse.Namespace, work: Path) -> Figures:
    blob_dir = work / f"blobs-{backend}"
    await upgrade(url)
    async with Store(url) as store:
        print(f"[{backend}] seeding {args.messages:,} trashed messages ...", flush=True)
        recipient, attachments = await seed(store, blob_dir, args.messages)
        rules = ReplyRules(token_secret=SECRET, address_format=FORMAT, noreply_address=NOREPLY)
        options = ListenerOptions(host="127.0.0.1", port=0, hostname="bench.test")
        async with Listener(store, options, rules, stop_grace=5) as listener:
            assert listener.port is not None
            driver = Driver(listener.port, recipient)
            driver.start()
            idle_start = time.monotonic()
            print(f"[{backend}] idle latency for {args.idle_seconds:g} s ...", flush=True)
            await asyncio.sleep(args.idle_seconds)
            print(f"[{backend}] purging ...", flush=True)
            purge_start = time.monotonic()
            report = await purge(
                store,
                blob_dir,
                actor="bench",
                batch_size=args.batch_size,
                now=T0 + timedelta(days=30),
                pacing=Pacing(args.pause, args.ratio),
                blob_grace=timedelta(0),
            )
            purge_end = time.monotonic()
            await asyncio.to_thread(driver.stop)
    idle = driver.between(idle_start, purge_start)
    during = driver.between(purge_start, purge_end)
    counts = report.counts
    rows = (
        counts.mailboxes + counts.threads + counts.messages + counts.attachments
        + counts.inbound_emails
    )  # fmt: skip
    seconds = purge_end - purge_start
    idle_p99, purge_p99 = percentile(idle, 0.99), percentile(during, 0.99)
    if driver.errors:
        print(f"[{backend}] {driver.errors} sends failed", flush=True)
    return Figures(
        backend=backend,
        messages=counts.messages,
        attachments_seeded=attachments,
        rows_deleted=rows,
        purge_seconds=round(seconds, 2),
        messages_per_s=round(counts.messages / seconds),
        rows_per_s=round(rows / seconds),
        batches=report.batches,
        idle_samples=len(idle),
        idle_p50_ms=round(percentile(idle, 0.5), 2),
        idle_p99_ms=round(idle_p99, 2),
        purge_samples=len(during),
        purge_p50_ms=round(percentile(during, 0.5), 2),
        purge_p99_ms=round(purge_p99, 2),
        p99_ratio=round(purge_p99 / idle_p99, 2),
    )


async def main_async(args: argparse.Namespace) -> list[Figures]:
    work = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    results = []
    try:
        if "sqlite" in args.backends:
            url = f"sqlite:///{work / 'store.sqlite3'}"
            results.append(await measure("sqlite", url, args, work))
        if "postgresql" in args.backends:
            if not args.pg_url:
                print("[postgresql] skipped: no --pg-url (or BRIDGE_BENCH_DATABASE_URL)")
            else:
                url, admin = scratch_postgres(args.pg_url)
                try:
                    results.append(await measure("postgresql", url, args, work))
                finally:
                    drop_postgres(url, admin)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def print_table(results: list[Figures]) -> None:
    header = (
        "backend", "messages", "seconds", "msgs/s", "rows/s", "batches",
        "idle p50", "idle p99", "purge p50", "purge p99", "p99 ratio",
    )  # fmt: skip
    rows = [
        (
            f.backend,
            f"{f.messages:,}",
            f"{f.purge_seconds:.1f}",
            f"{f.messages_per_s:,}",
            f"{f.rows_per_s:,}",
            str(f.batches),
            f"{f.idle_p50_ms:.1f} ms",
            f"{f.idle_p99_ms:.1f} ms",
            f"{f.purge_p50_ms:.1f} ms",
            f"{f.purge_p99_ms:.1f} ms",
            f"{f.p99_ratio:.2f}x",
        )
        for f in results
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="50,000 messages")
    parser.add_argument(
        "--backends", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BRIDGE_BENCH_DATABASE_URL")
        or os.environ.get("BRIDGE_TEST_DATABASE_URL"),
    )
    parser.add_argument("--batch-size", type=int, default=1000, help="retention.batch_size")
    parser.add_argument("--pause", type=float, default=0.01, help="seconds between batches")
    parser.add_argument(
        "--ratio", type=float, default=1.0, help="plus this many times each batch's duration"
    )
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.messages = 50_000
    results = asyncio.run(main_async(args))
    print()
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps([asdict(f) for f in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
