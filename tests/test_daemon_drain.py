"""SIGTERM during a stream of inbound mail: exit 0, and every message that got 250 is filed.

A real `bridge run` process (SQLite store, SMTP listener on a free port) receives
replies from several concurrent SMTP clients; SIGTERM arrives mid-stream. Every
message the daemon answered with 250 was promised to be kept: after the process
exits 0, a second run finishes the pipeline and each of those messages must be
filed exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from sqlmodel import col, func, select

from bridge.policy.tokens import hash_token, issue_token, reply_address
from bridge.portal import Portal
from bridge.store.engine import Store
from bridge.store.models import (
    InboundEmail,
    InboundStatus,
    Message,
    NotificationMode,
    ReplyToken,
    StaffRole,
)

SECRET = "drain-test-token-secret-0123456789abcdef"
FORMAT = "reply+{token}"
DOMAIN = "reply.drain.example"
CLIENT_ADDRESS = "client@home.example"
WORKERS = 4
SIGTERM_AFTER = 12  # accepted messages before the signal
STREAM_LIMIT = 400  # never send more than this in total


def bridge_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bridge.cli", *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Notify:
    """The datagram socket systemd would listen on, at a short path."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="bd", dir="/tmp")
        self.path = os.path.join(self.dir, "n")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def wait_for(self, needle: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            seen.append(data)
            if needle in data.splitlines():
                return
        raise AssertionError(f"no {needle!r} within {timeout}s; got {seen}")

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


@pytest.fixture
def notify() -> Iterator[Notify]:
    sock = Notify()
    yield sock
    sock.close()


def write_config(path: Path, db: Path, port: int, outbox: Path) -> None:
    path.write_text(
        f'[log]\nlevel = "INFO"\n\n[store]\nurl = "sqlite:///{db}"\n\n'
        f'[tokens]\nsecret = "{SECRET}"\naddress_format = "{FORMAT}"\n\n'
        f'[outbound]\nfile_dir = "{outbox}"\nfrom_address = "no-reply@{DOMAIN}"\n\n'
        f"[inbound.smtp]\nport = {port}\n"
    )


def start(cfg: Path, notify: Notify) -> subprocess.Popen[str]:
    env = {**os.environ, "NOTIFY_SOCKET": notify.path}
    env.pop("WATCHDOG_PID", None)
    env.pop("WATCHDOG_USEC", None)
    return subprocess.Popen(
        bridge_cmd("-c", str(cfg), "run"), env=env, stderr=subprocess.PIPE, text=True
    )


async def practice_with_reply_address(url: str) -> str:
    """A convenience-mode practice, a thread, and a stored token for the client's replies."""
    async with Store(url) as store:
        portal = Portal(store)
        org = await portal.create_organization("Practice", "https://portal.drain.example", DOMAIN)
        clinician = await portal.add_staff(
            org, "Clinician", [StaffRole.CLINICIAN], ["clinician@practice.example"]
        )
        client = await portal.add_client(org, "Client", [CLIENT_ADDRESS])
        await portal.assign_clinician(client, clinician)
        thread = await portal.create_thread(
            org, client, "Appointment", author_id=clinician, body_text="Tuesday?"
        )
        admin = await portal.add_staff(
            org, "Admin", [StaffRole.PRACTICE_ADMIN], ["admin@practice.example"]
        )
        await portal.set_notification_mode(org, NotificationMode.CONVENIENCE, acknowledged_by=admin)
        token = issue_token(SECRET.encode()).token
        now = datetime.now(UTC)
        async with store.transaction() as session:
            session.add(
                ReplyToken(
                    token_hash=hash_token(SECRET.encode(), token),
                    participant_id=client,
                    thread_id=thread.thread_id,
                    created_at=now - timedelta(minutes=1),
                    expires_at=now + timedelta(days=30),
                )
            )
    return reply_address(FORMAT, token, DOMAIN)


def reply(to: str, n: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"Client <{CLIENT_ADDRESS}>"
    message["To"] = to
    message["Subject"] = f"Re: Appointment ({n})"
    message["Message-ID"] = f"<drain-{n}@home.example>"
    message.set_content(f"Reply number {n}: Tuesday works.\n")
    return message


async def stream(to: str, port: int, proc: subprocess.Popen[str]) -> tuple[set[str], int]:
    """Send replies from several clients until the daemon stops taking them.

    Returns the Message-IDs that got 250, and how many were sent after SIGTERM.
    """
    accepted: set[str] = set()
    counter = iter(range(STREAM_LIMIT))
    signalled = asyncio.Event()
    after_signal = 0

    async def worker() -> None:
        nonlocal after_signal
        failures = 0
        for n in counter:
            message = reply(to, n)
            try:
                errors, _ = await aiosmtplib.send(
                    message, hostname="127.0.0.1", port=port, start_tls=False, timeout=10
                )
            except (aiosmtplib.SMTPException, OSError):
                failures += 1
                if signalled.is_set() and failures >= 3:
                    return
                await asyncio.sleep(0.05)
                continue
            assert errors == {}, errors
            accepted.add(str(message["Message-ID"]))
            if signalled.is_set():
                after_signal += 1
            elif len(accepted) >= SIGTERM_AFTER:
                signalled.set()
                proc.send_signal(signal.SIGTERM)

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    assert signalled.is_set(), "the stream ended before SIGTERM was sent"
    return accepted, after_signal


async def filed_counts(url: str) -> tuple[dict[str, int], int, int]:
    """Per Message-ID: filed messages; plus rows still `received` and rows in total."""
    async with Store(url) as store, store.read() as session:
        rows = (
            await session.exec(
                select(InboundEmail.message_id_header, func.count(col(Message.id)))
                .join(Message, col(Message.inbound_email_id) == col(InboundEmail.id))
                .where(InboundEmail.status == InboundStatus.FILED.value)
                .group_by(InboundEmail.message_id_header)
            )
        ).all()
        pending = (
            await session.exec(
                select(func.count())
                .select_from(InboundEmail)
                .where(InboundEmail.status == InboundStatus.RECEIVED.value)
            )
        ).one()
        total = (await session.exec(select(func.count()).select_from(InboundEmail))).one()
    return {str(mid): int(n) for mid, n in rows}, int(pending), int(total)


async def test_sigterm_mid_stream_exits_zero_and_files_every_accepted_message(
    tmp_path: Path, notify: Notify
) -> None:
    db = tmp_path / "store.sqlite3"
    url = f"sqlite:///{db}"
    port = free_port()
    cfg = tmp_path / "bridge.toml"
    write_config(cfg, db, port, tmp_path / "outbox")
    done = await asyncio.to_thread(
        subprocess.run, bridge_cmd("-c", str(cfg), "db", "upgrade"), capture_output=True
    )
    assert done.returncode == 0, done.stderr
    to = await practice_with_reply_address(url)

    proc = start(cfg, notify)
    try:
        notify.wait_for("READY=1")
        accepted, after_signal = await stream(to, port, proc)
        print("AFTER", after_signal, len(accepted))
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert SIGTERM_AFTER <= len(accepted) < STREAM_LIMIT, "the daemon never stopped accepting"

    # Finish the pipeline with a second run, then stop it the same way.
    proc = start(cfg, notify)
    try:
        notify.wait_for("READY=1")
        deadline = time.monotonic() + 60
        while True:
            filed, pending, total = await filed_counts(url)
            if pending == 0:
                break
            assert time.monotonic() < deadline, f"{pending} still received"
            await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr

    assert total >= len(accepted)
    missing = sorted(accepted - set(filed))
    assert not missing, f"accepted with 250 but not filed: {missing}"
    twice = {mid: n for mid, n in filed.items() if n != 1}
    assert not twice, f"filed more than once: {twice}"
