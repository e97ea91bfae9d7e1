"""Benchmark of the outbound sender against Postfix's `smtp-sink`, beside raw aiosmtplib.

In one run, against one `smtp-sink` process (which accepts and discards mail):

* raw: N pre-built secure-looking emails sent with aiosmtplib over C persistent
  connections, as fast as they go;
* bridge: N secure notifications in a full outbox (a mass message to N clients,
  dispatched before the clock starts), sent by a real `Sender` (real renderer,
  `SmtpTransport` with security `none` and concurrency C) until the outbox is empty.

It prints both rates and their ratio (bridge / raw; the target is >= 0.7).
`--json FILE` also writes `outbound_send_ratio`, `bridge_msgs_per_s` and
`raw_msgs_per_s` (of the SQLite store; with `--postgres URL` the PostgreSQL
figures are added under `postgresql`).

Not a test and not run by `make test`: the figures depend on the machine.
Run it as `.venv/bin/python bench/outbound.py [--quick]`; it needs
`/usr/sbin/smtp-sink` (Debian/Ubuntu package `postfix`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import aclosing
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import aiosmtplib
import sqlalchemy as sa
from _scratch import drop_postgres, scratch_postgres
from sqlmodel import col

from bridge.config import OutboundSettings, OutboundSmtpSettings
from bridge.mail.headers import OWN_MAIL_HEADER
from bridge.outbound.dispatcher import dispatch_batch
from bridge.outbound.render import RenderContext
from bridge.outbound.sender import Sender
from bridge.outbound.transport import SmtpTransport
from bridge.portal import Portal
from bridge.store.engine import Store
from bridge.store.migrate import upgrade
from bridge.store.models import Audience, Outbox, OutboxStatus, StaffRole

SMTP_SINK = "/usr/sbin/smtp-sink"
HOST = "127.0.0.1"
FROM_ADDRESS = "notify@bench.example"
REPLY_DOMAIN = "reply.bench.example"
PORTAL_URL = "https://portal.bench.example"
TARGET = 0.7


@dataclass(frozen=True)
class Figures:
    backend: str
    messages: int
    connections: int
    raw_seconds: float
    raw_msgs_per_s: float
    bridge_seconds: float
    bridge_msgs_per_s: float
    ratio: float


# --- smtp-sink -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def start_sink(port: int) -> subprocess.Popen[bytes]:
    """`smtp-sink` on HOST:port, up and accepting connections."""
    command = [SMTP_SINK]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]  # smtp-sink refuses to run as root otherwise
    command += ["-c", f"{HOST}:{port}", "1000"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            sys.exit(f"smtp-sink exited at start (code {process.returncode}): {error.strip()}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    sys.exit("smtp-sink did not start listening within 10 s")


def stop_sink(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- raw aiosmtplib ------------------------------------------------------------------------


def secure_looking(number: int) -> EmailMessage:
    """An email shaped like bridge's secure notification (fixed text, link, headers)."""
    link = f"{PORTAL_URL}/threads/{number + 1}"
    message = EmailMessage()
    message["From"] = FROM_ADDRESS
    message["To"] = f"client{number}@clients.example"
    message["Subject"] = "You have a new secure message"
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = f"<n.{number}.{secrets.token_hex(8)}@{REPLY_DOMAIN}>"
    message["In-Reply-To"] = message["References"] = f"<t.{secrets.token_hex(12)}@{REPLY_DOMAIN}>"
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message[OWN_MAIL_HEADER] = str(number)
    message.set_content(
        f"You have a new secure message.\n\nRead it in the portal:\n{link}\n", charset="utf-8"
    )
    message.add_alternative(
        f'<p>You have a new secure message.</p><p><a href="{link}">Read it in the portal</a></p>',
        subtype="html",
        charset="utf-8",
    )
    return message


async def raw_rate(port: int, messages: int, connections: int) -> float:
    """Seconds aiosmtplib takes to send `messages` pre-built emails over `connections`."""
    built = [secure_looking(n) for n in range(messages)]
    queue: asyncio.Queue[EmailMessage] = asyncio.Queue()
    for message in built:
        queue.put_nowait(message)
    clients = [
        aiosmtplib.SMTP(hostname=HOST, port=port, use_tls=False, start_tls=False, timeout=30)
        for _ in range(connections)
    ]
    await asyncio.gather(*(client.connect() for client in clients))

    async def worker(client: aiosmtplib.SMTP) -> None:
        while True:
            try:
                message = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await client.send_message(message, sender=FROM_ADDRESS, recipients=[str(message["To"])])

    started = time.perf_counter()
    await asyncio.gather(*(worker(client) for client in clients))
    seconds = time.perf_counter() - started
    for client in clients:
        await client.quit()
    return seconds


# --- bridge ---------------------------------------------------------------------------------


async def fill_outbox(store: Store, messages: int) -> None:
    """A practice whose admin sends a mass message to `messages` clients, dispatched."""
    portal = Portal(store)
    org = await portal.create_organization("Bench Practice", PORTAL_URL, REPLY_DOMAIN)
    admin = await portal.add_staff(
        org, "Bench Admin", [StaffRole.PRACTICE_ADMIN], ["admin@bench.example"]
    )
    clients = [
        await portal.add_client(
            org, f"Client {n}", [f"client{n}@clients.example"], has_portal_account=True
        )
        for n in range(messages)
    ]
    await portal.send_mass_message(
        org,
        admin,
        clients,
        "Office hours",
        "The office is closed on Friday.",
        audience=Audience.ADMINISTRATIVE,
    )
    while (
        await dispatch_batch(
            store, now=datetime.now(UTC), coalesce_window=timedelta(seconds=0), limit=1000
        )
    ).messages:
        pass


async def count_rows(store: Store, status: OutboxStatus) -> int:
    async with store.read() as session:
        query = sa.select(sa.func.count()).select_from(Outbox)
        query = query.where(col(Outbox.status) == status.value)
        return int(await session.scalar(query) or 0)


async def bridge_rate(url: str, port: int, args: argparse.Namespace) -> float:
    """Seconds a real `Sender` takes to empty an outbox of `args.messages` rows."""
    await upgrade(url)
    async with Store(url) as store:
        await fill_outbox(store, args.messages)
        pending = await count_rows(store, OutboxStatus.PENDING)
        if pending != args.messages:
            sys.exit(f"expected {args.messages} pending outbox rows, found {pending}")
        context = RenderContext(
            from_address=FROM_ADDRESS,
            token_secret=secrets.token_bytes(32),
            token_lifetime=timedelta(days=30),
            address_format="reply+{token}",
        )
        smtp = OutboundSmtpSettings(
            host=HOST,
            port=port,
            security="none",
            concurrency=args.connections,
            timeout_seconds=30.0,
            helo_hostname="bench.example",
        )
        sender = Sender.from_settings(
            store,
            _outbound(args),
            context,
            instance="bench",
            transport=SmtpTransport(smtp),
        )
        async with aclosing(sender):
            started = time.perf_counter()
            while await sender.run_once():
                pass
            seconds = time.perf_counter() - started
        sent = await count_rows(store, OutboxStatus.SENT)
        if sent != args.messages:
            sys.exit(f"the sender sent {sent} of {args.messages} rows")
    return seconds


def _outbound(args: argparse.Namespace) -> OutboundSettings:
    return OutboundSettings(
        transport="smtp",
        from_address=FROM_ADDRESS,
        hourly_cap=args.messages + 1,
        batch_size=args.batch_size,
        smtp=OutboundSmtpSettings(concurrency=args.connections),
    )


# --- running ---------------------------------------------------------------------------------


async def measure(backend: str, url: str, port: int, args: argparse.Namespace) -> Figures:
    raw = await raw_rate(port, args.messages, args.connections)
    ours = await bridge_rate(url, port, args)
    raw_rate_s, ours_rate_s = args.messages / raw, args.messages / ours
    return Figures(
        backend=backend,
        messages=args.messages,
        connections=args.connections,
        raw_seconds=round(raw, 3),
        raw_msgs_per_s=round(raw_rate_s, 1),
        bridge_seconds=round(ours, 3),
        bridge_msgs_per_s=round(ours_rate_s, 1),
        ratio=round(ours_rate_s / raw_rate_s, 3),
    )


async def main_async(args: argparse.Namespace, port: int) -> list[Figures]:
    work = Path(tempfile.mkdtemp(prefix="bridge-bench-outbound-"))
    results = []
    try:
        url = f"sqlite:///{work / 'store.sqlite3'}"
        results.append(await measure("sqlite", url, port, args))
        if args.postgres:
            pg_url, admin = scratch_postgres(args.postgres, "bridge_bench_outbound")
            try:
                results.append(await measure("postgresql", pg_url, port, args))
            finally:
                drop_postgres(pg_url, admin)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def print_table(results: list[Figures]) -> None:
    header = (
        "backend", "messages", "conns", "raw s", "raw msgs/s",
        "bridge s", "bridge msgs/s", "ratio", "target",
    )  # fmt: skip
    rows = [
        (
            f.backend,
            f"{f.messages:,}",
            str(f.connections),
            f"{f.raw_seconds:.2f}",
            f"{f.raw_msgs_per_s:,.0f}",
            f"{f.bridge_seconds:.2f}",
            f"{f.bridge_msgs_per_s:,.0f}",
            f"{f.ratio:.2f}",
            "ok" if f.ratio >= TARGET else f"< {TARGET}",
        )
        for f in results
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="500 messages")
    parser.add_argument("--connections", type=int, default=4, help="C: SMTP connections")
    parser.add_argument("--batch-size", type=int, default=50, help="outbound.batch_size")
    parser.add_argument("--postgres", metavar="URL", help="also measure on PostgreSQL")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.messages = 500
    if not Path(SMTP_SINK).is_file() or not os.access(SMTP_SINK, os.X_OK):
        sys.exit(
            f"{SMTP_SINK} (Postfix's smtp-sink) is missing: install the postfix package "
            "(apt-get install postfix) to run this benchmark"
        )
    port = free_port()
    sink = start_sink(port)
    try:
        results = asyncio.run(main_async(args, port))
    finally:
        stop_sink(sink)
    print_table(results)
    if args.json:
        first = results[0]
        figures: dict[str, object] = {
            "outbound_send_ratio": first.ratio,
            "bridge_msgs_per_s": first.bridge_msgs_per_s,
            "raw_msgs_per_s": first.raw_msgs_per_s,
            "backend": first.backend,
            "messages": first.messages,
            "connections": first.connections,
        }
        for extra in results[1:]:
            figures[extra.backend] = asdict(extra)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
