"""The inbound pipeline against a real store (SQLite and PostgreSQL): what gets filed, where,
and what is set aside with which reason and notice.

Emails are stored the way the receivers store them (`receipt.store_raw`) and
the pipeline is driven one batch at a time with a fixed clock. The practice
comes from the `practice` fixture (tests/inbound/conftest.py); `Harness` below
is shared with the other `test_pipeline_*` modules.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlmodel import col, select

from bridge import config
from bridge.config import InboundPipelineSettings
from bridge.inbound.pipeline import Pipeline, PipelineError
from bridge.inbound.receipt import ReplyRules, store_raw
from bridge.outbound.dispatcher import dispatch_batch
from bridge.store.blobs import blob_path
from bridge.store.engine import Store
from bridge.store.models import (
    Attachment,
    AuditEvent,
    InboundEmail,
    InboundVia,
    Mailbox,
    Message,
    Outbox,
    OutboxKind,
)

if TYPE_CHECKING:
    from conftest import Practice

ATTRIBUTION = "On Sun, Mar 1, 2026 at 9:00 AM Practice <no-reply@practice.example.org> wrote:"
BODY = "Tuesday at ten works for me."
INSTANCE = "test-pipeline"


def reply(
    to: str,
    *,
    sender: str = "client@home.example.net",
    text: str | None = BODY,
    html: str | None = None,
    message_id: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    attachments: Iterable[tuple[str, str, bytes]] = (),
) -> bytes:
    """A reply email as a mail client writes it; attachments are (name, declared type, bytes)."""
    msg = EmailMessage()
    msg["From"] = f"Client <{sender}>"
    msg["To"] = to
    msg["Subject"] = "Re: A new message"
    msg["Message-ID"] = message_id or make_msgid(domain="home.example.net")
    for name, value in headers:
        msg[name] = value
    if text is not None:
        msg.set_content(text)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    elif html is not None:
        msg.set_content(html, subtype="html")
    for name, declared, data in attachments:
        maintype, _, subtype = declared.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


@dataclass
class Harness:
    """A practice, a pipeline over its store, and helpers to feed and inspect it."""

    practice: Practice
    blob_dir: Path
    settings: InboundPipelineSettings
    now: datetime
    pipelines: list[Pipeline] = field(default_factory=list)

    @property
    def store(self) -> Any:
        return self.practice.store

    def pipeline(self, store: Any = None, *, instance: str = INSTANCE, **options: Any) -> Pipeline:
        rules = ReplyRules(
            token_secret=self.practice.secret,
            address_format=self.practice.address_format,
            noreply_address=self.practice.noreply,
        )
        built = Pipeline(
            store or self.store,
            self.settings,
            rules,
            blob_dir=self.blob_dir,
            instance=instance,
            clock=lambda: self.now,
            **options,
        )
        self.pipelines.append(built)
        return built

    async def deliver(
        self,
        raw: bytes,
        recipient: str,
        *,
        via: InboundVia = InboundVia.SMTP,
        envelope_sender: str | None = "client@home.example.net",
    ) -> int:
        async with self.store.transaction() as session:
            (row_id,) = await store_raw(
                session,
                raw,
                via=via,
                envelope_sender=envelope_sender,
                envelope_recipients=[recipient],
                now=self.now,
            )
        return row_id

    async def run(self, pipeline: Pipeline | None = None) -> None:
        """Batches until nothing is due now."""
        worker = pipeline or (self.pipelines[0] if self.pipelines else self.pipeline())
        while await worker.run_once():
            pass

    async def row(self, row_id: int) -> InboundEmail:
        async with self.store.read() as session:
            found = await session.get(InboundEmail, row_id)
        assert found is not None
        return found

    async def all(self, model: Any, *where: Any) -> list[Any]:
        async with self.store.read() as session:
            return list(await session.exec(select(model).where(*where).order_by(model.id)))

    async def messages(self) -> list[Message]:
        return await self.all(Message, col(Message.source) == "email")

    async def notices(self) -> list[Outbox]:
        return await self.all(Outbox, col(Outbox.kind) == OutboxKind.NOTICE.value)

    async def audits(self, action: str) -> list[AuditEvent]:
        return await self.all(AuditEvent, col(AuditEvent.action) == action)


def harness_for(practice: Practice, tmp_path: Path, **settings: Any) -> Harness:
    return Harness(practice, tmp_path / "blobs", InboundPipelineSettings(**settings), practice.now)


@pytest.fixture
def harness(practice: Practice, tmp_path: Path) -> Harness:
    return harness_for(practice, tmp_path)


async def client_reply(harness: Harness, raw: bytes | None = None, **kwargs: Any) -> int:
    """Deliver `raw` (default: a fresh reply) to a fresh token address of the client."""
    address = await harness.practice.address(harness.practice.client_id)
    return await harness.deliver(raw if raw is not None else reply(address, **kwargs), address)


# --- filing ----------------------------------------------------------------------------


async def test_a_valid_reply_is_filed_by_its_author_and_the_others_are_then_notified(
    harness: Harness,
) -> None:
    practice = harness.practice
    row_id = await client_reply(harness)

    await harness.run()

    row = await harness.row(row_id)
    assert (row.status, row.reason, row.attempts) == ("filed", None, 1)
    assert (row.participant_id, row.thread_id) == (practice.client_id, practice.thread_id)
    [message] = await harness.messages()
    assert (message.thread_id, message.author_id, message.inbound_email_id) == (
        practice.thread_id,
        practice.client_id,
        row_id,
    )
    assert message.body_text == BODY
    assert message.dispatched_at is None
    async with harness.store.read() as session:
        box = await session.get(Mailbox, (practice.thread_id, practice.client_id))
    assert box is not None and box.last_read_message_id == message.id
    [event] = await harness.audits("inbound_filed")
    assert (event.message_id, event.inbound_email_id) == (message.id, row_id)
    assert BODY not in str(event.detail) and "client@" not in str(event.detail)

    await dispatch_batch(harness.store, now=harness.now, coalesce_window=timedelta(0))

    told = await harness.all(Outbox, col(Outbox.message_id) == message.id)
    assert {r.recipient_id for r in told} == {practice.clinician_id, practice.scheduler_id}


async def test_quoted_history_is_not_filed(harness: Harness) -> None:
    text = f"Thanks, see you then!\n\n{ATTRIBUTION}\n> Shall we move Tuesday?\n"
    await client_reply(harness, text=text)

    await harness.run()

    [message] = await harness.messages()
    assert message.body_text == "Thanks, see you then!"
    assert message.body_html is None


async def test_an_html_only_reply_is_sanitised_and_converted_to_text(harness: Harness) -> None:
    html = (
        "<html><body><p>Yes <b>please</b>, Tuesday.</p>"
        "<script>alert(1)</script><img src='https://tracker.example/p.gif'>"
        "<a href='javascript:alert(2)'>click</a></body></html>"
    )
    await client_reply(harness, text=None, html=html)

    await harness.run()

    [message] = await harness.messages()
    assert "Yes please, Tuesday." in message.body_text
    assert message.body_html is not None and "<b>please</b>" in message.body_html
    for bad in ("script", "alert", "<img", "tracker", "javascript"):
        assert bad not in message.body_html


async def test_the_history_of_an_html_reply_is_dropped_with_its_markup(harness: Harness) -> None:
    html = (
        "<div>Works for me.</div><div class='gmail_quote'>"
        f"<div>{ATTRIBUTION}</div><blockquote>Shall we move Tuesday?</blockquote></div>"
    )
    await client_reply(harness, text=None, html=html)

    await harness.run()

    [message] = await harness.messages()
    assert message.body_text == "Works for me."
    assert message.body_html is None


async def test_a_reply_with_only_quoted_history_is_held_as_empty_and_the_person_told(
    harness: Harness,
) -> None:
    row_id = await client_reply(harness, text=f"{ATTRIBUTION}\n> Shall we move Tuesday?\n")

    await harness.run()

    row = await harness.row(row_id)
    assert (row.status, row.reason) == ("held", "empty_reply")
    assert await harness.messages() == []
    [notice] = await harness.notices()
    assert (notice.reason, notice.recipient_id) == ("empty_reply", harness.practice.client_id)


# --- attachments ---------------------------------------------------------------------------

PDF = b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40


async def test_attachments_are_stored_by_content_with_safe_names(harness: Harness) -> None:
    # The first declares the wrong type, the second's name claims the wrong one.
    files = [("../../etc/passwd", "image/png", PDF), ("scan.pdf", "application/pdf", PNG)]
    await client_reply(harness, attachments=files)

    await harness.run()

    [message] = await harness.messages()
    stored = await harness.all(Attachment, col(Attachment.message_id) == message.id)
    assert [(a.filename, a.content_type, a.size) for a in stored] == [
        ("passwd", "application/pdf", len(PDF)),
        ("scan.pdf", "image/png", len(PNG)),
    ]
    for item, data in zip(stored, (PDF, PNG), strict=True):
        assert blob_path(harness.blob_dir, item.sha256).read_bytes() == data
    [event] = await harness.audits("inbound_filed")
    assert event.detail["attachments"] == 2 and event.detail["type_mismatches"] == 1


@pytest.mark.parametrize(
    ("limits", "files"),
    [
        ({"max_attachments": 1}, [("a.pdf", "application/pdf", PDF)] * 2),
        ({"max_attachment_bytes": 100}, [("a.pdf", "application/pdf", PDF + b"x" * 100)]),
        ({"max_total_attachment_bytes": 80}, [("a.pdf", "application/pdf", PDF)] * 2),
    ],
)
async def test_attachments_over_a_limit_are_held_and_nothing_is_stored(
    practice: Practice, tmp_path: Path, limits: dict[str, int], files: list[tuple[str, str, bytes]]
) -> None:
    harness = harness_for(practice, tmp_path, **limits)
    row_id = await client_reply(harness, attachments=files)

    await harness.run()

    row = await harness.row(row_id)
    assert (row.status, row.reason) == ("held", "attachment_limit")
    assert await harness.messages() == []
    assert not harness.blob_dir.exists()
    assert [n.reason for n in await harness.notices()] == ["attachment_limit"]


async def test_a_photo_sent_without_words_is_filed(harness: Harness) -> None:
    await client_reply(harness, text="", attachments=[("photo.png", "image/png", PNG)])

    await harness.run()

    [message] = await harness.messages()
    assert message.body_text == ""


# --- logs and wiring -----------------------------------------------------------------------


async def test_logs_carry_ids_and_codes_but_no_content_addresses_or_tokens(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    practice = harness.practice
    token, _ = await practice.token(practice.client_id)
    address = practice.address_for(token)
    files = [("Secret Diagnosis.pdf", "application/pdf", PDF)]
    await harness.deliver(reply(address, attachments=files), address)
    await harness.deliver(reply(address, sender="mallory@evil.example"), address)

    await harness.run()

    private = (BODY, "Re: A new message", "client@home", "mallory", "evil.example", "Diagnosis")
    # Third-party loggers that log content at DEBUG are kept at WARNING by bridge.logs.
    ours = [r for r in caplog.records if r.name.startswith("bridge") or r.levelno >= logging.INFO]
    assert any(getattr(r, "inbound_id", None) for r in ours)
    for record in ours:
        text = record.getMessage() + " " + str(vars(record))
        for value in (*private, token):
            assert value not in text, record.name


def test_a_pipeline_needs_a_token_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bridge.toml"
    cfg.write_text('[tokens]\nsecret = "pipeline-tests-secret-0123456789"\n')
    with_key = config.load(cfg, env={})
    store = Store(f"sqlite:///{tmp_path / 'x.sqlite3'}")

    built = Pipeline.from_settings(store, with_key, instance="i")

    assert built.rules.token_secret == b"pipeline-tests-secret-0123456789"
    assert built.rules.noreply_address == with_key.outbound.from_address
    assert built.blob_dir == with_key.store.blob_dir
    given = Pipeline.from_settings(
        store, config.load(None, env={}), instance="i", token_secret=b"k" * 16
    )
    assert given.rules.token_secret == b"k" * 16
    with pytest.raises(PipelineError):
        Pipeline.from_settings(store, config.load(None, env={}), instance="i")
