"""A sender in its own process, for the crash test; and the small renderer the tests use.

`plain_render` is a real renderer for tests that are about claiming and
retrying, not about what an email says: it reads the recipient's address and
writes a short fixed email that carries the outbox id (`X-Bridge-Notification`)
so the sink can count duplicates.

Run as a script, it builds a `Store`, an `SmtpTransport` and a `Sender` from
its arguments and runs rounds itself (the sender's own loop is not started)
until no row is `pending` or `sending` (exit 0), or until its deadline (exit 3):

    python sender_runner.py DATABASE_URL SMTP_PORT INSTANCE [--concurrency N]
        [--lease-seconds S] [--clock-offset-seconds S] [--deadline-seconds S]

`--clock-offset-seconds` moves this process's clock forward, so a restarted
instance sees the leases of the killed one as expired without waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sys
import time
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.config import OutboundSmtpSettings
from bridge.mail.headers import OWN_MAIL_HEADER
from bridge.outbound.render import RenderError, RenderFailure
from bridge.outbound.sender import Sender
from bridge.outbound.transport import SmtpTransport
from bridge.store.engine import Store
from bridge.store.models import EmailAddress, Outbox, OutboxStatus

FROM_ADDRESS = "bridge@example.org"
TEST_DOMAIN = "example.org"


async def plain_render(session: AsyncSession, row: Outbox, now: datetime) -> EmailMessage:
    """A fixed short email to the row's recipient; `RenderError(no_address)` without one."""
    address = (
        await session.exec(
            select(EmailAddress.address)
            .where(EmailAddress.participant_id == row.recipient_id)
            .order_by(col(EmailAddress.is_primary).desc(), col(EmailAddress.id))
            .limit(1)
        )
    ).first()
    if address is None:
        raise RenderError(RenderFailure.NO_ADDRESS, outbox_id=row.id)
    message = EmailMessage()
    message["From"] = FROM_ADDRESS
    message["To"] = address
    message["Subject"] = "You have a new secure message"
    message["Date"] = format_datetime(now)
    message["Message-ID"] = f"<n.{row.id}.{secrets.token_hex(8)}@{TEST_DOMAIN}>"
    message[OWN_MAIL_HEADER] = str(row.id)
    message.set_content("A new message is waiting for you in the portal.\n")
    row.message_id_header = message["Message-ID"]
    return message


async def unfinished(store: Store) -> int:
    """Rows still to send: pending or sending."""
    waiting = (OutboxStatus.PENDING.value, OutboxStatus.SENDING.value)
    async with store.read() as session:
        count = select(sa.func.count()).select_from(Outbox).where(col(Outbox.status).in_(waiting))
        return int((await session.exec(count)).one())


async def run(args: argparse.Namespace) -> int:
    offset = timedelta(seconds=args.clock_offset_seconds)

    def clock() -> datetime:
        return datetime.now(UTC) + offset

    settings = OutboundSmtpSettings(
        host="127.0.0.1",
        port=args.smtp_port,
        security="none",
        concurrency=args.concurrency,
        timeout_seconds=10.0,
    )
    deadline = time.monotonic() + args.deadline_seconds
    async with (
        Store(args.database_url) as store,
        aclosing(
            Sender(
                store,
                SmtpTransport(settings),
                plain_render,
                instance=args.instance,
                envelope_sender=FROM_ADDRESS,
                hourly_cap=1_000_000,
                concurrency=args.concurrency,
                batch_size=args.concurrency * 2,
                lease=timedelta(seconds=args.lease_seconds),
                clock=clock,
            )
        ) as sender,
    ):
        while await unfinished(store):
            if time.monotonic() > deadline:
                return 3
            await sender.run_once()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("database_url")
    parser.add_argument("smtp_port", type=int)
    parser.add_argument("instance")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lease-seconds", type=float, default=300.0)
    parser.add_argument("--clock-offset-seconds", type=float, default=0.0)
    parser.add_argument("--deadline-seconds", type=float, default=20.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
