"""`bridge demo`: the whole loop on one machine, in a folder, in under a minute.

A practice with one clinician and one client. A message in secure mode (its
notification carries no content); the practice switches to convenience mode;
a message with content; the client's emailed reply goes through the real SMTP
listener, is filed, and the clinician is notified with content. The real
daemon runs in this process on the embedded default (SQLite, file transport)
inside the folder; every notification stays there as an `.eml` file.

This module is a scripted user of the daemon and the portal API: it checks
what a newcomer would look at, and nothing here is used by the daemon itself.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import TypeVar

import aiosmtplib
from sqlmodel import col, select

from bridge import config
from bridge.daemon import Daemon
from bridge.errors import BridgeError
from bridge.portal import Portal
from bridge.store.migrate import upgrade
from bridge.store.models import (
    InboundEmail,
    InboundStatus,
    Message,
    MessageSource,
    NotificationMode,
    Outbox,
    OutboxStatus,
    StaffRole,
)

T = TypeVar("T")
STEP_TIMEOUT = 30.0

# What the demo writes; the secure notification must contain none of it.
SUBJECT = "Your lab results from Tuesday"
BODY = "Your thyroid values are back and look fine."
CLINICIAN = "Dr. Dana Rivers"
CLIENT = "Sam Client"
CLIENT_ADDRESS = "sam@client.example"
CLIENT_REPLY = "Thank you! Tuesday at 10 works for me."


class DemoError(BridgeError):
    """A step of the demo did not happen in time; the message says which."""


@dataclass(frozen=True)
class Scene:
    org: int
    admin: int
    clinician: int
    client: int


def demo_settings(folder: Path, port: int) -> config.Settings:
    """The embedded default, moved into `folder`, with no batching delay."""
    return config.Settings(
        log=config.LogSettings(level="WARNING"),
        store=config.StoreSettings(
            url=f"sqlite:///{folder / 'bridge.sqlite3'}", blob_dir=folder / "blobs"
        ),
        inbound=config.InboundSettings(smtp=config.InboundSmtpSettings(port=port)),
        outbound=config.OutboundSettings(
            file_dir=folder / "outbox",
            from_address="no-reply@reply.riverside.example",
            coalesce_window_seconds=0.0,
        ),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def run_demo(folder: Path, say: Callable[[str], None] = print) -> int:
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    settings = demo_settings(folder, free_port())
    await upgrade(settings.store.url)
    daemon = Daemon(settings, env={})
    task = asyncio.create_task(daemon.run(), name="daemon")
    try:
        await _until(lambda: _started(daemon), "the daemon to start", task)
        port = settings.inbound.smtp.port
        say(f"1. daemon running in {folder} (SQLite store, SMTP listener on 127.0.0.1:{port})")
        await _scenario(daemon, settings, folder, say, task)
    finally:
        daemon.request_stop()
        await task
    say("done: the whole loop ran; the emails are in " + str(folder / "outbox"))
    return 0


async def _scenario(
    daemon: Daemon,
    settings: config.Settings,
    folder: Path,
    say: Callable[[str], None],
    task: asyncio.Task[int],
) -> None:
    portal = Portal(daemon.store, settings.store.blob_dir)
    scene = await _practice(portal)
    say("2. practice created: one clinician, one client, in secure mode")

    thread = await portal.create_thread(
        scene.org, scene.client, SUBJECT, author_id=scene.clinician, body_text=BODY
    )
    path = await _until(
        lambda: _sent_to(daemon, folder, scene.client, NotificationMode.SECURE),
        "the secure notification",
        task,
    )
    leaks = [s for s in (SUBJECT, BODY, CLINICIAN, CLIENT) if s in _readable(path)]
    if leaks:
        raise DemoError(f"the secure notification {path.name} carries content")
    say(f"3. secure notification {path.relative_to(folder)}: no subject, body or name in it")

    await portal.set_notification_mode(
        scene.org, NotificationMode.CONVENIENCE, acknowledged_by=scene.admin
    )
    say("4. the practice switches to convenience mode (HIPAA risk acknowledged by its admin)")

    await portal.post_message(
        thread.thread_id, scene.clinician, "Could you come on Tuesday at 10 to talk them through?"
    )
    path = await _until(
        lambda: _sent_to(daemon, folder, scene.client, NotificationMode.CONVENIENCE),
        "the convenience notification",
        task,
    )
    notice = _parse(path)
    reply_to = str(notice["Reply-To"])
    say(f"5. convenience notification {path.relative_to(folder)}: carries the message; reply to it")

    reply = EmailMessage()
    reply["From"] = f"{CLIENT} <{CLIENT_ADDRESS}>"
    reply["To"] = reply_to
    reply["Subject"] = f"Re: {notice['Subject']}"
    reply["In-Reply-To"] = str(notice["Message-ID"])
    reply.set_content(f"{CLIENT_REPLY}\n\nOn Monday, {CLINICIAN} wrote:\n> Could you come?\n")
    answer = await aiosmtplib.send(
        reply, hostname="127.0.0.1", port=settings.inbound.smtp.port, start_tls=False
    )
    say(f"6. the client's reply went through the SMTP listener: {answer[1].split()[0]} accepted")

    message = await _until(lambda: _filed(daemon), "the reply to be filed", task)
    if message.body_text != CLIENT_REPLY:
        raise DemoError("the filed reply is not what the client wrote")
    say(
        f"7. filed into thread {message.thread_id} as message {message.id} (quoted history removed)"
    )

    path = await _until(
        lambda: _sent_to(daemon, folder, scene.clinician, NotificationMode.CONVENIENCE),
        "the clinician's notification",
        task,
    )
    if CLIENT_REPLY not in _readable(path):
        raise DemoError("the clinician's notification does not carry the reply")
    say(f"8. the clinician is notified with the reply: {path.relative_to(folder)}")

    sample = daemon.metrics.registry.get_sample_value
    sent = sum(
        sample("bridge_notifications_sent_total", {"mode": mode.value, "kind": "notification"})
        or 0.0
        for mode in NotificationMode
    )
    accepted = sample("bridge_inbound_accepted_total", {"via": "smtp"}) or 0.0
    filed = sample("bridge_inbound_processed_total", {"status": "filed", "reason": "none"})
    say(
        f"9. metrics (/metrics when [health] is on): {sent:.0f} notifications sent,"
        f" {accepted:.0f} reply accepted, {filed or 0:.0f} filed"
    )


async def _practice(portal: Portal) -> Scene:
    org = await portal.create_organization(
        "Riverside Practice", "https://portal.riverside.example", "reply.riverside.example"
    )
    admin = await portal.add_staff(
        org, "Practice Admin", [StaffRole.PRACTICE_ADMIN], ["admin@riverside.example"]
    )
    clinician = await portal.add_staff(
        org,
        CLINICIAN,
        [StaffRole.CLINICIAN],
        ["dana@riverside.example"],
        email_content_consent=True,
    )
    client = await portal.add_client(
        org, CLIENT, [CLIENT_ADDRESS], has_portal_account=True, email_content_consent=True
    )
    await portal.assign_clinician(client, clinician)
    return Scene(org, admin, clinician, client)


async def _sent_to(
    daemon: Daemon, folder: Path, recipient: int, mode: NotificationMode
) -> Path | None:
    async with daemon.store.read() as session:
        row = (
            await session.exec(
                select(Outbox)
                .where(Outbox.recipient_id == recipient)
                .where(Outbox.mode == mode.value)
                .where(Outbox.status == OutboxStatus.SENT.value)
                .order_by(col(Outbox.id).desc())
            )
        ).first()
    if row is None:
        return None
    path = folder / "outbox" / f"{row.id}.eml"
    return path if path.exists() else None


async def _filed(daemon: Daemon) -> Message | None:
    async with daemon.store.read() as session:
        return (
            await session.exec(
                select(Message)
                .join(InboundEmail, col(InboundEmail.id) == col(Message.inbound_email_id))
                .where(InboundEmail.status == InboundStatus.FILED.value)
                .where(Message.source == MessageSource.EMAIL.value)
            )
        ).first()


async def _started(daemon: Daemon) -> bool | None:
    return True if daemon.started.is_set() else None


def _parse(path: Path) -> EmailMessage:
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _readable(path: Path) -> str:
    """Every header and decoded text part of an .eml file, as one string."""
    message = _parse(path)
    parts = [f"{key}: {value}" for key, value in message.items()]
    for part in message.walk():
        if part.get_content_maintype() == "text" and isinstance(part, EmailMessage):
            parts.append(str(part.get_content()))
    return "\n".join(parts)


async def _until(
    probe: Callable[[], Awaitable[T | None]], what: str, daemon: asyncio.Task[int]
) -> T:
    """Poll `probe` until it yields something; fail with `what` after the step timeout."""
    deadline = asyncio.get_running_loop().time() + STEP_TIMEOUT
    while True:
        if daemon.done():
            raise DemoError(f"the daemon stopped while waiting for {what}")
        found = await probe()
        if found is not None:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise DemoError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
