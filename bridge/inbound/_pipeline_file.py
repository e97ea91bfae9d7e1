"""The last write of the inbound pipeline: file the reply, or set the row aside.

`file_reply` is step 9 of docs/inbound.md. Attachment bytes go to the blob
folder first; then one transaction locks the thread row (`FOR UPDATE`, as a
portal's post does, so audience changes and posts to the thread happen one
after the other), takes the inbound row only if it is still ours, judges the
token again (time has passed since RCPT, access may have gone), looks for a
duplicate again (a twin row may have been filed since: both twins lock the
same thread, so the second sees the first), then inserts the message
(`source = email`, author = the participant, `inbound_email_id`), its
attachments, marks the author's mailbox read up to it, sets the row `filed`
and writes the audit event. The dispatcher notifies the others later, as for
any message (`dispatched_at` stays NULL).

`set_aside` ends a row `dropped`, `held` or `parked` in one transaction with,
for `held` rows a person can act on, the notice (`_pipeline_notice`), and for
`held`/`parked` rows an audit event. Audit details are ids, codes and counts.

Does not decide anything: the outcome is given (`pipeline.py` decides).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.inbound._pipeline_claim import AUDIT_PARKED, Job, finish
from bridge.inbound._pipeline_content import ReplyContent
from bridge.inbound._pipeline_notice import add_notice
from bridge.inbound._pipeline_resolve import Resolution, is_duplicate, token_verdict
from bridge.store.blobs import write_blob
from bridge.store.engine import Store
from bridge.store.models import (
    Attachment,
    AuditEvent,
    InboundEmail,
    InboundStatus,
    Mailbox,
    Message,
    MessageSource,
    Thread,
)

AUDIT_FILED = "inbound_filed"
AUDIT_HELD = "inbound_held"

Detail = Mapping[str, int | str | bool | None]


@dataclass(frozen=True)
class NoticeTo:
    """Whom a notice goes to: a participant, or (unknown sender) a bare address."""

    organization_id: int
    recipient_id: int | None = None
    to_address: str | None = field(default=None, repr=False)
    thread_id: int | None = None


@dataclass(frozen=True)
class SetAside:
    """A row that is not filed: its status, reason code, what was resolved, whom to tell."""

    status: InboundStatus
    reason: str
    participant_id: int | None = None
    thread_id: int | None = None
    organization_id: int | None = None
    notice: NoticeTo | None = None
    detail: Detail = field(default_factory=dict)


@dataclass(frozen=True)
class Filing:
    """A reply cleared by every step before 9, ready to file."""

    token: Resolution
    participant_id: int
    thread_id: int
    organization_id: int
    message_id_header: str | None
    sha256: str
    content: ReplyContent
    defects: int
    detail: Detail = field(default_factory=dict)


class FileResult(StrEnum):
    FILED = "filed"
    DUPLICATE = "duplicate"  # a twin was filed first
    REFUSED = "refused"  # the token is no longer valid
    LOST = "lost"  # the lease went to another instance; the row is theirs now


@dataclass(frozen=True)
class Filed:
    result: FileResult
    message_id: int | None = None
    token: Resolution | None = None


async def file_reply(
    store: Store, job: Job, filing: Filing, *, instance: str, now: datetime, blob_dir: Path
) -> Filed:
    """Step 9. A unique violation on `inbound_email_id` (another worker filed this very
    row) is `DUPLICATE`; any other error propagates (the caller retries later)."""
    hashes = [await write_blob(blob_dir, item.data) for item in filing.content.attachments]
    try:
        async with store.transaction() as session:
            return await _file_in(session, job, filing, hashes, instance=instance, now=now)
    except IntegrityError:
        async with store.read() as session:
            query = select(Message.id).where(col(Message.inbound_email_id) == job.id)
            if (await session.exec(query)).first() is not None:
                return Filed(FileResult.DUPLICATE)
        raise


async def _file_in(
    session: AsyncSession,
    job: Job,
    filing: Filing,
    hashes: list[str],
    *,
    instance: str,
    now: datetime,
) -> Filed:
    thread = select(Thread.id).where(col(Thread.id) == filing.thread_id).with_for_update()
    if (await session.exec(thread)).first() is None:
        return Filed(FileResult.REFUSED, token=Resolution(verdict="unknown"))
    mine = (
        select(InboundEmail.id)
        .where(col(InboundEmail.id) == job.id)
        .where(col(InboundEmail.status) == InboundStatus.RECEIVED.value)
        .where(col(InboundEmail.lease_owner) == instance)
        .with_for_update()
    )
    if (await session.exec(mine)).first() is None:
        return Filed(FileResult.LOST)
    assert filing.token.token_id is not None
    again = await token_verdict(session, filing.token.token_id, now, route=filing.token.route)
    if not again.valid:
        return Filed(FileResult.REFUSED, token=again)
    if await is_duplicate(
        session,
        row_id=job.id,
        participant_id=filing.participant_id,
        thread_id=filing.thread_id,
        message_id_header=filing.message_id_header,
        sha256=filing.sha256,
    ):
        return Filed(FileResult.DUPLICATE)
    content = filing.content
    message = Message(
        thread_id=filing.thread_id,
        author_id=filing.participant_id,
        body_text=content.text,
        body_html=content.html,
        source=MessageSource.EMAIL.value,
        inbound_email_id=job.id,
        created_at=now,
    )
    session.add(message)
    await session.flush()
    assert message.id is not None
    session.add_all(
        Attachment(
            message_id=message.id,
            filename=item.filename,
            content_type=item.content_type,
            size=item.size,
            sha256=sha256,
        )
        for item, sha256 in zip(content.attachments, hashes, strict=True)
    )
    box = await session.get(Mailbox, (filing.thread_id, filing.participant_id))
    if box is not None:  # access was judged just now, under the thread lock: it exists
        box.last_read_message_id = message.id
    await finish(
        session,
        job,
        instance=instance,
        status=InboundStatus.FILED,
        reason=None,
        now=now,
        participant_id=filing.participant_id,
        thread_id=filing.thread_id,
        defects=filing.defects,
    )
    session.add(
        AuditEvent(
            at=now,
            actor=instance,
            action=AUDIT_FILED,
            organization_id=filing.organization_id,
            thread_id=filing.thread_id,
            message_id=message.id,
            participant_id=filing.participant_id,
            inbound_email_id=job.id,
            detail=dict(filing.detail),
        )
    )
    await session.flush()
    return Filed(FileResult.FILED, message_id=message.id)


async def set_aside(
    store: Store,
    job: Job,
    outcome: SetAside,
    *,
    instance: str,
    now: datetime,
    defects: int | None,
) -> tuple[bool, int | None]:
    """End the row as `outcome` says; returns (whether the row was still ours to end,
    the notice's outbox id or None)."""
    async with store.transaction() as session:
        ours = await finish(
            session,
            job,
            instance=instance,
            status=outcome.status,
            reason=outcome.reason,
            now=now,
            participant_id=outcome.participant_id,
            thread_id=outcome.thread_id,
            defects=defects,
        )
        if not ours:
            return False, None
        notice_id = None
        if outcome.notice is not None and outcome.status is InboundStatus.HELD:
            target = outcome.notice
            notice_id = await add_notice(
                session,
                organization_id=target.organization_id,
                reason=outcome.reason,
                now=now,
                recipient_id=target.recipient_id,
                to_address=target.to_address,
                thread_id=target.thread_id,
                postgres=store.dialect == "postgresql",
            )
        if outcome.status in (InboundStatus.HELD, InboundStatus.PARKED):
            detail: dict[str, int | str | bool | None] = {"reason": outcome.reason}
            detail.update(outcome.detail)
            detail["notice"] = notice_id is not None
            session.add(
                AuditEvent(
                    at=now,
                    actor=instance,
                    action=AUDIT_HELD if outcome.status is InboundStatus.HELD else AUDIT_PARKED,
                    organization_id=outcome.organization_id,
                    thread_id=outcome.thread_id,
                    participant_id=outcome.participant_id,
                    outbox_id=notice_id,
                    inbound_email_id=job.id,
                    detail=detail,
                )
            )
        return True, notice_id
