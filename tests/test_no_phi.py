"""No PHI in logs or metrics: a full scenario with marker strings everywhere content goes.

The real daemon runs in this process (convenience mode, so content flows into the
notifications), a reply goes through its SMTP listener with an attachment, is filed,
and the clinician is notified. Every log record (message, every `extra` value,
exception text) and the whole Prometheus exposition are then searched for the
markers and for the reply token: none may appear.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parseaddr
from io import StringIO
from pathlib import Path

import aiosmtplib
import pytest
from prometheus_client import generate_latest
from pydantic import SecretStr
from sqlmodel import col, func, select

from bridge import config, logs
from bridge.daemon import Daemon
from bridge.demo import _filed, _parse, _readable, _sent_to, _until, demo_settings, free_port
from bridge.portal import Portal
from bridge.portal.threads import AttachmentIn
from bridge.store.migrate import upgrade
from bridge.store.models import (
    Attachment,
    InboundEmail,
    InboundStatus,
    NotificationMode,
    Outbox,
    OutboxStatus,
    StaffRole,
)

MARK = "mkq7x"  # every marker starts with it; searched case-insensitively
SUBJECT = "Mkq7xSubject lab results"
BODY = "mkq7xbody your thyroid values"
BODY_HTML = "<p>mkq7xhtml <b>values</b></p>"
FOLLOW_UP = "mkq7xfollow come on Tuesday"
CLINICIAN = "Dr. Mkq7xClinician Rivers"
CLINICIAN_ADDRESS = "mkq7xstaff@riverside.example"
ADMIN = "Mkq7xAdmin Person"
CLIENT = "Mkq7xClient Sam"
CLIENT_ADDRESS = "mkq7xclient@client.example"
REPLY = "mkq7xreply Tuesday works for me."
REPLY_HTML = "<p>mkq7xreplyhtml Tuesday works</p>"
PORTAL_FILE = "mkq7xportalfile.pdf"
REPLY_FILE = "mkq7xreplyfile.pdf"
# The token is a key to the thread: it must not reach the logs either.
# The libraries `logs.configure` quiets (their levels are restored after the test).
QUIET = ("mail.log", "aiosmtpd", "aioimaplib", "mailparser", "aiosqlite", "alembic.runtime.plugins")
SECRET = "no-phi-test-token-secret-0123456789abcdef"


class Capture(logging.Handler):
    """Everything a log record carries, as text."""

    _STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        parts = [record.name, record.getMessage()]
        parts += [f"{k}={v!r}" for k, v in vars(record).items() if k not in self._STANDARD]
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
        if record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(record.stack_info)
        self.texts.append(" ".join(parts))


@dataclass
class Logs:
    capture: Capture
    json_lines: StringIO


@pytest.fixture
def captured() -> Iterator[Logs]:
    """bridge's own logging set-up at DEBUG (JSON to a buffer), plus a capturing handler.

    `logs.configure` is what `bridge run` installs; it keeps libraries that log raw
    statements or mail (aiosqlite, aiosmtpd) at WARNING, and that is part of what is tested.
    """
    root = logging.getLogger()
    names = ("", *QUIET)
    before = {name: logging.getLogger(name).level for name in names}
    handlers = list(root.handlers)
    stream = StringIO()
    logs.configure(level="DEBUG", fmt="json", stream=stream)
    handler = Capture()
    root.addHandler(handler)
    yield Logs(handler, stream)
    for extra in set(root.handlers) - set(handlers):
        root.removeHandler(extra)
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


async def test_no_marker_reaches_logs_or_metrics(
    database_url: str, tmp_path: Path, captured: Logs
) -> None:
    settings = demo_settings(tmp_path, free_port())
    settings = settings.model_copy(
        update={
            "log": config.LogSettings(level="DEBUG"),
            "store": settings.store.model_copy(update={"url": database_url}),
            "tokens": config.TokenSettings(secret=SecretStr(SECRET)),
        }
    )
    await upgrade(database_url)
    daemon = Daemon(settings, env={})
    task = asyncio.create_task(daemon.run(), name="daemon")
    try:
        await _until(lambda: _started(daemon), "the daemon to start", task)
        token = await _scenario(daemon, settings, tmp_path, task)
        counts = await _counts(daemon)
    finally:
        daemon.request_stop()
        assert await task == 0

    # The scenario really ran: both notifications to the client, the reply filed with
    # its attachment, the clinician notified.
    assert counts["sent"] >= 3, counts
    assert counts["filed"] == 1, counts
    assert counts["reply_attachments"] == 1, counts
    records = captured.capture.records
    assert len(records) > 10, "the daemon logged (almost) nothing: is capture working?"
    names = {r.name for r in records}
    assert any(n.startswith("bridge.inbound") for n in names), names
    assert any(n.startswith("bridge.outbound") for n in names), names
    json_lines = captured.json_lines.getvalue()
    assert "bridge started" in json_lines

    metrics = generate_latest(daemon.metrics.registry).decode()
    assert "bridge_notifications_sent_total" in metrics
    logged = enumerate(captured.capture.texts)
    haystacks = {"metrics": metrics, "json log": json_lines, **{f"log {i}": t for i, t in logged}}
    for where, text in haystacks.items():
        assert MARK not in text.lower(), f"marker in {where}: {text[:500]}"
        assert token not in text, f"reply token in {where}"
        assert token.lower() not in text.lower(), f"reply token in {where}"


async def _started(daemon: Daemon) -> bool | None:
    return True if daemon.started.is_set() else None


async def _scenario(
    daemon: Daemon, settings: config.Settings, folder: Path, task: asyncio.Task[int]
) -> str:
    """Run the loop with markers everywhere; return the reply token the client replied to."""
    portal = Portal(daemon.store, settings.store.blob_dir)
    org = await portal.create_organization(
        "Riverside Practice", "https://portal.riverside.example", "reply.riverside.example"
    )
    admin = await portal.add_staff(
        org, ADMIN, [StaffRole.PRACTICE_ADMIN], ["mkq7xadmin@riverside.example"]
    )
    clinician = await portal.add_staff(
        org, CLINICIAN, [StaffRole.CLINICIAN], [CLINICIAN_ADDRESS], email_content_consent=True
    )
    client = await portal.add_client(
        org, CLIENT, [CLIENT_ADDRESS], has_portal_account=True, email_content_consent=True
    )
    await portal.assign_clinician(client, clinician)
    await portal.set_notification_mode(org, NotificationMode.CONVENIENCE, acknowledged_by=admin)
    thread = await portal.create_thread(
        org, client, SUBJECT, author_id=clinician, body_text=BODY, body_html=BODY_HTML
    )
    await _until(
        lambda: _sent_to(daemon, folder, client, NotificationMode.CONVENIENCE),
        "the first notification",
        task,
    )
    await portal.post_message(
        thread.thread_id,
        clinician,
        FOLLOW_UP,
        attachments=[AttachmentIn(PORTAL_FILE, "application/pdf", b"%PDF-1.4 mkq7x")],
    )

    async def second() -> Path | None:
        path = await _sent_to(daemon, folder, client, NotificationMode.CONVENIENCE)
        return path if path is not None and FOLLOW_UP in _readable(path) else None

    path = await _until(second, "the notification with the follow-up", task)
    notice = _parse(path)
    reply_to = parseaddr(str(notice["Reply-To"]))[1]
    local = reply_to.split("@", 1)[0]
    token = local.split("+", 1)[1] if "+" in local else local
    assert len(token) >= 16, reply_to

    reply = EmailMessage()
    reply["From"] = f"{CLIENT} <{CLIENT_ADDRESS}>"
    reply["To"] = reply_to
    reply["Subject"] = f"Re: {notice['Subject']}"
    reply["In-Reply-To"] = str(notice["Message-ID"])
    reply.set_content(f"{REPLY}\n")
    reply.add_alternative(REPLY_HTML, subtype="html")
    reply.add_attachment(
        b"%PDF-1.4 reply mkq7x", maintype="application", subtype="pdf", filename=REPLY_FILE
    )
    errors, _ = await aiosmtplib.send(
        reply, hostname="127.0.0.1", port=settings.inbound.smtp.port, start_tls=False
    )
    assert errors == {}, errors
    message = await _until(lambda: _filed(daemon), "the reply to be filed", task)
    assert REPLY in (message.body_text or "")

    async def clinician_notified() -> Path | None:
        found = await _sent_to(daemon, folder, clinician, NotificationMode.CONVENIENCE)
        return found if found is not None and REPLY in _readable(found) else None

    await _until(clinician_notified, "the clinician's notification", task)
    return token


async def _counts(daemon: Daemon) -> dict[str, int]:
    async with daemon.store.read() as session:
        sent = (
            await session.exec(
                select(func.count())
                .select_from(Outbox)
                .where(Outbox.status == OutboxStatus.SENT.value)
            )
        ).one()
        filed = (
            await session.exec(
                select(func.count())
                .select_from(InboundEmail)
                .where(InboundEmail.status == InboundStatus.FILED.value)
            )
        ).one()
        message = await _filed(daemon)
        assert message is not None
        attachments = (
            await session.exec(
                select(func.count())
                .select_from(Attachment)
                .where(col(Attachment.message_id) == message.id)
            )
        ).one()
    return {"sent": int(sent), "filed": int(filed), "reply_attachments": int(attachments)}
