"""Benchmark of inbound mail: the SMTP listener's accept rate and the pipeline's filing rate.

Part 1 (issue 4): messages per second the `Listener` accepts (durable commit to a
SQLite store included), beside a no-op aiosmtpd handler, both driven by
Postfix's `smtp-source` (8 sessions, 5 KB messages) in the same run; the target
is `inbound_accept_ratio` >= 0.6. Skipped with a message if `smtp-source` is
missing (Debian package: postfix).

Part 2: filing rate (`Pipeline.run_once` until every stored reply is filed) on
a mix of short plain-text and ~60 KB HTML replies, beside mail-parser's
parse-only rate on the same bytes; the target is `filing_vs_parse_ratio` >= 0.5.

Not a test and not run by `make test`: the figures depend on the machine, so
nothing here asserts a speed. Run it as `.venv/bin/python bench/inbound.py
[--quick] [--json FILE]`. Only counts and rates are printed, never addresses,
tokens or content.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import mailparser
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession
from sqlmodel import col, func, select

from bridge.config import InboundPipelineSettings
from bridge.inbound.pipeline import Pipeline
from bridge.inbound.receipt import ReplyRules, store_raw
from bridge.inbound.smtp import Listener, ListenerOptions
from bridge.policy.tokens import hash_token, issue_token, reply_address
from bridge.portal import Portal
from bridge.store.engine import Store
from bridge.store.migrate import upgrade
from bridge.store.models import (
    Audience,
    InboundEmail,
    InboundStatus,
    InboundVia,
    NotificationMode,
    ReplyToken,
    StaffRole,
)

SMTP_SOURCE = "/usr/sbin/smtp-source"
SESSIONS = 8
MESSAGE_BYTES = 5120
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SECRET = b"inbound-bench-secret-0123456789ab"
FORMAT = "reply+{token}"
REPLY_DOMAIN = "replies.example.org"
NOREPLY = "no-reply@practice.example.org"
SENDER = "client@home.example.net"
RULES = ReplyRules(token_secret=SECRET, address_format=FORMAT, noreply_address=NOREPLY)
HTML_TARGET_BYTES = 60_000
WORDS = [
    "appointment", "tuesday", "thanks", "please", "confirm", "the", "form", "invoice",
    "insurance", "we", "will", "call", "you", "about", "your", "results", "next", "week",
]  # fmt: skip


@dataclass(frozen=True)
class Practice:
    """A practice in convenience mode and one valid reply address of its client."""

    store: Store
    address: str


async def open_store(folder: Path) -> Store:
    url = f"sqlite:///{folder / 'store.sqlite3'}"
    await upgrade(url)
    store = Store(url)
    await store.__aenter__()
    return store


async def make_practice(store: Store) -> Practice:
    """The practice of tests/inbound/conftest.py: a client, clinicians, a thread, a token."""
    portal = Portal(store)
    org = await portal.create_organization(
        "Practice", "https://portal.example.org", REPLY_DOMAIN, now=T0
    )
    clinician = await portal.add_staff(
        org, "Clinician", [StaffRole.CLINICIAN], ["clinician@practice.example.org"], now=T0
    )
    client = await portal.add_client(org, "Client", [SENDER], now=T0)
    await portal.assign_clinician(client, clinician)
    thread = await portal.create_thread(
        org,
        client,
        "Appointment",
        audience=Audience.ADMINISTRATIVE,
        author_id=clinician,
        body_text="Shall we move Tuesday?",
        now=T0,
    )
    admin = await portal.add_staff(
        org, "Admin", [StaffRole.PRACTICE_ADMIN], ["admin@practice.example.org"], now=T0
    )
    await portal.set_notification_mode(
        org, NotificationMode.CONVENIENCE, acknowledged_by=admin, now=T0
    )
    token = issue_token(SECRET).token
    row = ReplyToken(
        token_hash=hash_token(SECRET, token),
        participant_id=client,
        thread_id=thread.thread_id,
        created_at=T0 - timedelta(days=1),
        expires_at=T0 + timedelta(days=30),
    )
    async with store.transaction() as session:
        session.add(row)
    return Practice(store, reply_address(FORMAT, token, REPLY_DOMAIN))


async def count_rows(store: Store, status: InboundStatus | None = None) -> int:
    query = select(func.count()).select_from(InboundEmail)
    if status is not None:
        query = query.where(col(InboundEmail.status) == status)
    async with store.read() as session:
        return int((await session.exec(query)).one())


# Part 1: the listener beside a no-op aiosmtpd server.

ACCEPT_KEYS = ("inbound_accept_ratio", "listener_msgs_per_s", "noop_msgs_per_s")


class NoopHandler:
    """Accepts every recipient and every message, keeps nothing."""

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        return "250 OK"


async def drive(port: int, recipient: str, messages: int) -> float:
    """Run smtp-source against 127.0.0.1:port; returns messages per second."""
    command = [
        *(SMTP_SOURCE, "-s", str(SESSIONS), "-l", str(MESSAGE_BYTES), "-m", str(messages)),
        *("-M", "client.example", "-f", "sender@client.example", "-t", recipient),
        f"127.0.0.1:{port}",
    ]
    start = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    await process.communicate()
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        # Its complaint is not shown: it may quote the recipient, whose token is a credential.
        raise RuntimeError(f"smtp-source failed with exit status {process.returncode}")
    return messages / elapsed


async def noop_rate(messages: int) -> float:
    loop = asyncio.get_running_loop()
    handler = NoopHandler()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="noop.test", loop=loop), "127.0.0.1", 0
    )
    try:
        return await drive(server.sockets[0].getsockname()[1], "rcpt@noop.example", messages)
    finally:
        server.close()
        await server.wait_closed()


async def listener_rate(messages: int) -> float:
    folder = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    store = await open_store(folder)
    try:
        practice = await make_practice(store)
        options = ListenerOptions(host="127.0.0.1", port=0, hostname="bridge.test")
        async with Listener(store, options, RULES, clock=lambda: T0, stop_grace=5) as listener:
            assert listener.port is not None
            rate = await drive(listener.port, practice.address, messages)
        stored = await count_rows(store)
        if stored != messages:
            raise RuntimeError(f"the store holds {stored} rows, expected {messages}")
        return rate
    finally:
        await store.__aexit__(None, None, None)
        shutil.rmtree(folder, ignore_errors=True)


async def accept_part(messages: int) -> dict[str, float]:
    noop = await noop_rate(messages)
    ours = await listener_rate(messages)
    return {
        "inbound_accept_ratio": round(ours / noop, 3),
        "listener_msgs_per_s": round(ours, 1),
        "noop_msgs_per_s": round(noop, 1),
    }


# Part 2: filing beside parse-only.


def sentence(rng: random.Random, words: int = 12) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + "."


ATTRIBUTION = "On Sun, Mar 1, 2026 at 9:00 AM Practice <no-reply@practice.example.org> wrote:"


def plain_body(rng: random.Random, index: int) -> str:
    history = "\n".join(f"> {sentence(rng)}" for _ in range(rng.randint(3, 20)))
    return f"Reply {index}: {sentence(rng)}\n\nClient\n\n{ATTRIBUTION}\n{history}\n"


def html_body(rng: random.Random, index: int) -> str:
    """A Gmail-shaped HTML reply whose quoted history fills it to ~60 KB."""
    opening = f'<html><body><div dir="ltr"><div>Reply {index}: {sentence(rng)}</div></div><br>'
    history: list[str] = []
    size = len(opening)
    while size < HTML_TARGET_BYTES:
        paragraph = f"<p>{sentence(rng, 30)}<br>{sentence(rng, 20)}</p>"
        history.append(paragraph)
        size += len(paragraph)
    quote = (
        f'<div class="gmail_quote"><div class="gmail_attr">{ATTRIBUTION}<br></div>'
        '<blockquote class="gmail_quote" style="margin:0 0 0 .8ex;border-left:1px #ccc solid">'
    )
    return f"{opening}{quote}{''.join(history)}</blockquote></div></body></html>"


def build_replies(address: str, count: int, seed: int = 2024) -> list[bytes]:
    """Half plain text, half ~60 KB HTML; each with its own Message-ID and answer."""
    rng = random.Random(seed)
    replies: list[bytes] = []
    for index in range(count):
        msg = EmailMessage()
        msg["From"] = f"Client <{SENDER}>"
        msg["To"] = address
        msg["Subject"] = "Re: Appointment"
        msg["Message-ID"] = f"<bench-{index}@home.example.net>"
        if index % 2:
            msg.set_content(html_body(rng, index), subtype="html")
        else:
            msg.set_content(plain_body(rng, index))
        replies.append(msg.as_bytes())
    return replies


async def filing_rate(replies: list[bytes], store: Store, folder: Path) -> float:
    settings = InboundPipelineSettings(
        batch_size=100, sender_limit_per_hour=10**9, thread_limit_per_hour=10**9
    )
    pipeline = Pipeline(
        store, settings, RULES, blob_dir=folder / "blobs", instance="bench", clock=lambda: T0
    )
    start = time.perf_counter()
    while await pipeline.run_once():
        pass
    elapsed = time.perf_counter() - start
    filed = await count_rows(store, InboundStatus.FILED)
    if filed != len(replies):
        raise RuntimeError(f"{filed} of {len(replies)} replies were filed")
    return len(replies) / elapsed


def parse_rate(replies: list[bytes]) -> float:
    mailparser.parse_from_bytes(replies[0])  # warm lazily built state, as filing had
    start = time.perf_counter()
    for raw in replies:
        mailparser.parse_from_bytes(raw)
    return len(replies) / (time.perf_counter() - start)


async def filing_part(count: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    store = await open_store(folder)
    try:
        practice = await make_practice(store)
        replies = build_replies(practice.address, count)
        for raw in replies:  # untimed: what the receivers did before
            async with store.transaction() as session:
                await store_raw(
                    session,
                    raw,
                    via=InboundVia.SMTP,
                    envelope_sender=SENDER,
                    envelope_recipients=[practice.address],
                    now=T0,
                )
        filing = await filing_rate(replies, store, folder)
    finally:
        await store.__aexit__(None, None, None)
        shutil.rmtree(folder, ignore_errors=True)
    parse = parse_rate(replies)
    return {
        "filing_vs_parse_ratio": round(filing / parse, 3),
        "filing_msgs_per_s": round(filing, 1),
        "parse_msgs_per_s": round(parse, 1),
    }


def print_table(figures: dict[str, float | None]) -> None:
    rows = [
        ("listener accept (msg/s)", "listener_msgs_per_s"),
        ("no-op aiosmtpd (msg/s)", "noop_msgs_per_s"),
        ("inbound_accept_ratio (>= 0.6)", "inbound_accept_ratio"),
        ("pipeline filing (msg/s)", "filing_msgs_per_s"),
        ("mail-parser parse (msg/s)", "parse_msgs_per_s"),
        ("filing_vs_parse_ratio (>= 0.5)", "filing_vs_parse_ratio"),
    ]
    for label, key in rows:
        value = figures.get(key)
        shown = "skipped" if value is None else f"{value:.3f}" if "ratio" in key else f"{value:.1f}"
        print(f"{label:<34}{shown:>10}")


async def run(messages: int, replies: int, *, accept: bool) -> dict[str, float | None]:
    figures: dict[str, float | None] = dict.fromkeys(ACCEPT_KEYS)
    if accept:
        figures.update(await accept_part(messages))
    figures.update(await filing_part(replies))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="500 messages, 200 replies")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    # The listener and the pipeline log one INFO line per message; keep the table readable.
    logging.basicConfig(level=logging.WARNING)
    messages, replies = (500, 200) if args.quick else (5000, 1000)
    accept = shutil.which(SMTP_SOURCE) is not None
    if not accept:
        print(f"{SMTP_SOURCE} not found (Debian package: postfix): part 1 skipped", file=sys.stderr)
    figures = asyncio.run(run(messages, replies, accept=accept))
    print_table(figures)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
