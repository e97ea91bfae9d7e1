"""Rendering one claimed outbox row: load what it needs from the store, then compose.

Owns the store side of docs/outbound.md's renderer: which rows a notification
may read, which messages a convenience email carries, issuing its reply token
(only the hash is stored), and the `Message-ID` saved on the row. The email
itself is built by the pure `bridge.mail.compose`.

A secure row reads nothing but ids, the recipient's address and access flags,
and the organization's portal URL, reply domain and mode columns: column by
column, so no subject, body or name is even loaded.

A notice row (`kind = notice`, an automatic answer to an email the inbound
side held) reads the organization's portal URL and reply domain, and either
the participant's primary address and access flags or the row's bare
`to_address`; it carries the fixed wording of its `reason`, whatever the mode.

Two checks beyond the contract, both of which can only make an email say less:

* the mode is resolved again at render time (`policy.mode.resolve_mode`); a
  convenience row whose practice went back to secure mode, or whose recipient
  withdrew consent or was deactivated, is sent as a secure notification and its
  `mode` is set to `secure`, so the record says what was sent;
* a recipient who is no longer active or no longer holds a mailbox row on the
  thread (lost access since dispatch) gets nothing: `RenderError(no_access)`.

This module does not claim rows, send, retry, commit or log: the caller (the
sender) owns the transaction and decides what a `RenderError` does to the row.

Envelope: the sender may take it from the message with `envelope()` (the `From`
and the one `To` address), which is also what `aiosmtplib.send_message` derives
by itself from these headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.headerregistry import AddressHeader
from email.message import EmailMessage
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.config import OutboundSettings, TokenSettings
from bridge.errors import BridgeError
from bridge.mail.compose import (
    AttachmentLink,
    ComposeError,
    ConvenienceNotice,
    Item,
    NoticeReason,
    RefusalNotice,
    SecureNotice,
    compose_convenience,
    compose_notice,
    compose_secure,
    new_message_id,
    thread_root_id,
)
from bridge.policy.mode import resolve_mode
from bridge.policy.tokens import expiry, issue_token, reply_address
from bridge.store.models import (
    Attachment,
    EmailAddress,
    Mailbox,
    Message,
    NotificationMode,
    Organization,
    Outbox,
    OutboxKind,
    OutboxStatus,
    Participant,
    ReplyToken,
    Thread,
)


class RenderFailure(StrEnum):
    """Why a row cannot become an email. None of these gets better by retrying."""

    NO_ADDRESS = "no_address"  # the recipient has no email address
    BAD_ADDRESS = "bad_address"  # the stored address (or from_address) is unusable
    THREAD_GONE = "thread_gone"  # no thread on the row, or the thread was purged
    NO_ACCESS = "no_access"  # recipient inactive or without a mailbox row on the thread
    NOTHING_NEW = "nothing_new"  # a convenience row with no message left to carry
    BAD_DOMAIN = "bad_domain"  # the organization's reply domain is unusable
    UNSAFE_LINK = "unsafe_link"  # the organization's portal URL is not http(s)
    UNSUPPORTED_KIND = "unsupported_kind"  # an outbox kind this code does not know
    UNKNOWN_REASON = "unknown_reason"  # a notice whose reason code has no wording
    ORGANIZATION_GONE = "organization_gone"  # the row's organization no longer exists


class RenderError(BridgeError):
    """A row that cannot be rendered; carries the reason code and the outbox id only."""

    def __init__(self, reason: RenderFailure, *, outbox_id: int | None) -> None:
        super().__init__(f"{reason.value} (outbox {outbox_id})")
        self.reason = reason
        self.outbox_id = outbox_id


@dataclass(frozen=True)
class RenderContext:
    """The settings rendering needs (from `outbound.*` and `tokens.*`)."""

    from_address: str
    token_secret: bytes
    token_lifetime: timedelta
    address_format: str

    @classmethod
    def from_settings(
        cls, outbound: OutboundSettings, tokens: TokenSettings, *, token_secret: bytes
    ) -> RenderContext:
        """The context from `[outbound]` and `[tokens]`; the key as the daemon resolved it."""
        return cls(
            from_address=outbound.from_address,
            token_secret=token_secret,
            token_lifetime=timedelta(days=tokens.lifetime_days),
            address_format=tokens.address_format,
        )


@dataclass(frozen=True)
class _Basics:
    """What both modes load: ids, the address, access flags, organization columns."""

    outbox_id: int
    thread_id: int
    recipient_id: int
    address: str
    portal_base_url: str
    reply_domain: str
    mode: NotificationMode
    invitation: bool


async def render(
    session: AsyncSession, row: Outbox, ctx: RenderContext, *, now: datetime
) -> EmailMessage:
    """The email for `row` (which must belong to `session`), sent at `now`.

    Sets `row.message_id_header` (and `row.mode` when downgraded to secure);
    for convenience rows adds a `ReplyToken` row. Does not commit. Raises
    `RenderError` when the row cannot become an email.
    """
    if row.kind == OutboxKind.NOTICE.value:
        return await _render_notice(session, row, ctx, now)
    basics = await _load_basics(session, row)
    try:
        root = thread_root_id(
            ctx.token_secret, basics.thread_id, basics.recipient_id, basics.reply_domain
        )
        message_id = new_message_id(basics.outbox_id, basics.reply_domain)
        if basics.mode == NotificationMode.CONVENIENCE:
            issued = issue_token(ctx.token_secret)
            notice = await _convenience_notice(
                session, row, basics, ctx, issued.token, message_id, root, now
            )
            email = compose_convenience(notice, from_address=ctx.from_address)
            # Stored only once the email exists: a row that fails leaves no token behind.
            session.add(
                ReplyToken(
                    token_hash=issued.token_hash,
                    participant_id=basics.recipient_id,
                    thread_id=basics.thread_id,
                    created_at=now,
                    expires_at=expiry(now, ctx.token_lifetime),
                )
            )
        else:
            secure = SecureNotice(
                to_address=basics.address,
                portal_link=_portal_link(basics),
                invitation=basics.invitation,
                message_id=message_id,
                thread_root_id=root,
                outbox_id=basics.outbox_id,
                sent_at=now,
            )
            email = compose_secure(secure, from_address=ctx.from_address)
    except ComposeError as err:
        raise RenderError(RenderFailure(err.reason), outbox_id=row.id) from err
    if row.mode != basics.mode.value:
        row.mode = basics.mode.value
    row.message_id_header = message_id
    session.add(row)
    return email


def envelope(message: EmailMessage) -> tuple[str, list[str]]:
    """The SMTP envelope of a rendered email: (sender, [the one recipient])."""
    sender = message["From"]
    recipient = message["To"]
    if not isinstance(sender, AddressHeader) or not isinstance(recipient, AddressHeader):
        raise ValueError("not an email built by bridge.mail.compose (no From/To)")
    return sender.addresses[0].addr_spec, [a.addr_spec for a in recipient.addresses]


# -- notices ----------------------------------------------------------------------------


async def _render_notice(
    session: AsyncSession, row: Outbox, ctx: RenderContext, now: datetime
) -> EmailMessage:
    """A notice: fixed wording for the row's reason, a portal link, nothing from a message.

    A participant gets it at their primary address (never at the address the
    held email came from) with the thread's link while they still hold the
    thread; a bare `to_address` (an unknown sender) gets the portal's front page.
    """
    if row.id is None:
        raise ValueError("render needs a stored outbox row (with an id)")
    try:
        reason = NoticeReason(row.reason or "")
    except ValueError:
        raise RenderError(RenderFailure.UNKNOWN_REASON, outbox_id=row.id) from None
    org = (
        await session.exec(
            select(Organization.portal_base_url, Organization.reply_domain).where(
                Organization.id == row.organization_id
            )
        )
    ).first()
    if org is None:
        raise RenderError(RenderFailure.ORGANIZATION_GONE, outbox_id=row.id)
    portal_base_url, reply_domain = org
    link = portal_base_url.rstrip("/")
    root = None
    if row.recipient_id is not None:
        address, holds_thread = await _notice_recipient(session, row, row.recipient_id)
        if holds_thread and row.thread_id is not None:
            link = f"{link}/threads/{row.thread_id}"
            root = thread_root_id(ctx.token_secret, row.thread_id, row.recipient_id, reply_domain)
    elif row.to_address:
        address = row.to_address
    else:
        raise RenderError(RenderFailure.NO_ADDRESS, outbox_id=row.id)
    try:
        message_id = new_message_id(row.id, reply_domain)
        email = compose_notice(
            RefusalNotice(
                to_address=address,
                reason=reason,
                portal_link=link,
                message_id=message_id,
                thread_root_id=root,
                outbox_id=row.id,
                sent_at=now,
            ),
            from_address=ctx.from_address,
        )
    except ComposeError as err:
        raise RenderError(RenderFailure(err.reason), outbox_id=row.id) from err
    row.message_id_header = message_id
    session.add(row)
    return email


async def _notice_recipient(
    session: AsyncSession, row: Outbox, participant_id: int
) -> tuple[str, bool]:
    """The participant's primary address, and whether they still hold the row's thread."""
    active = (
        await session.exec(select(Participant.active).where(Participant.id == participant_id))
    ).first()
    if not active:
        raise RenderError(RenderFailure.NO_ACCESS, outbox_id=row.id)
    address = await _primary_address(session, participant_id)
    if address is None:
        raise RenderError(RenderFailure.NO_ADDRESS, outbox_id=row.id)
    holds = None
    if row.thread_id is not None:
        holds = (
            await session.exec(
                select(Mailbox.participant_id).where(
                    Mailbox.thread_id == row.thread_id,
                    Mailbox.participant_id == participant_id,
                )
            )
        ).first()
    return address, holds is not None


# -- loading ----------------------------------------------------------------------------


async def _load_basics(session: AsyncSession, row: Outbox) -> _Basics:
    if row.id is None:
        raise ValueError("render needs a stored outbox row (with an id)")
    if row.kind not in (OutboxKind.NOTIFICATION.value, OutboxKind.INVITATION.value):
        raise RenderError(RenderFailure.UNSUPPORTED_KIND, outbox_id=row.id)
    if row.thread_id is None:
        raise RenderError(RenderFailure.THREAD_GONE, outbox_id=row.id)
    if row.recipient_id is None:
        # A notification is always for a participant who holds the thread; a bare
        # `to_address` is only ever used by notices.
        raise RenderError(RenderFailure.NO_ACCESS, outbox_id=row.id)
    org = (
        await session.exec(
            select(
                Organization.portal_base_url,
                Organization.reply_domain,
                Organization.notification_mode,
                Organization.convenience_acknowledged_at,
            )
            .join(Thread, col(Thread.organization_id) == col(Organization.id))
            .where(Thread.id == row.thread_id, Organization.id == row.organization_id)
        )
    ).first()
    if org is None:
        raise RenderError(RenderFailure.THREAD_GONE, outbox_id=row.id)
    portal_base_url, reply_domain, org_mode, acknowledged_at = org

    person = (
        await session.exec(
            select(Participant.active, Participant.email_content_consent)
            .join(
                Mailbox,
                sa.and_(
                    col(Mailbox.participant_id) == col(Participant.id),
                    col(Mailbox.thread_id) == row.thread_id,
                ),
            )
            .where(Participant.id == row.recipient_id)
        )
    ).first()
    if person is None or not person[0]:
        raise RenderError(RenderFailure.NO_ACCESS, outbox_id=row.id)
    active, consents = person

    address = await _primary_address(session, row.recipient_id)
    if address is None:
        raise RenderError(RenderFailure.NO_ADDRESS, outbox_id=row.id)

    mode = NotificationMode.SECURE
    if row.mode == NotificationMode.CONVENIENCE.value:
        mode = resolve_mode(
            NotificationMode(org_mode),
            acknowledged=acknowledged_at is not None,
            recipient_consents=consents,
            recipient_active=active,
        )
    return _Basics(
        outbox_id=row.id,
        thread_id=row.thread_id,
        recipient_id=row.recipient_id,
        address=address,
        portal_base_url=portal_base_url,
        reply_domain=reply_domain,
        mode=mode,
        invitation=row.kind == OutboxKind.INVITATION.value,
    )


async def _primary_address(session: AsyncSession, participant_id: int) -> str | None:
    """The participant's primary address (else their oldest one), or None without any."""
    query = (
        select(EmailAddress.address)
        .where(EmailAddress.participant_id == participant_id)
        .order_by(col(EmailAddress.is_primary).desc(), col(EmailAddress.id))
        .limit(1)
    )
    return (await session.exec(query)).first()


def _portal_link(basics: _Basics) -> str:
    base = basics.portal_base_url.rstrip("/")
    if basics.invitation:
        return f"{base}/invitation"
    return f"{base}/threads/{basics.thread_id}"


async def _convenience_notice(
    session: AsyncSession,
    row: Outbox,
    basics: _Basics,
    ctx: RenderContext,
    token: str,
    message_id: str,
    root: str,
    now: datetime,
) -> ConvenienceNotice:
    items = await _carried_items(session, row, basics)
    if not items:
        raise RenderError(RenderFailure.NOTHING_NEW, outbox_id=basics.outbox_id)
    subject, practice = (
        await session.exec(
            select(Thread.subject, Organization.display_name)
            .join(Organization, col(Organization.id) == col(Thread.organization_id))
            .where(Thread.id == basics.thread_id)
        )
    ).one()
    return ConvenienceNotice(
        to_address=basics.address,
        reply_to=reply_address(ctx.address_format, token, basics.reply_domain),
        subject=subject,
        items=items,
        portal_link=_portal_link(basics),
        invitation=basics.invitation,
        practice_name=practice,
        message_id=message_id,
        thread_root_id=root,
        outbox_id=basics.outbox_id,
        sent_at=now,
    )


async def _carried_items(session: AsyncSession, row: Outbox, basics: _Basics) -> tuple[Item, ...]:
    """The messages a convenience email carries (docs/outbound.md), oldest first.

    Not the recipient's own; newer than the previous *sent* convenience row for
    (recipient, thread), or than the recipient's read mark when there is none;
    up to the row's own message (no upper bound when the row names none).
    """
    previous = (
        await session.exec(
            select(sa.func.max(Outbox.message_id)).where(
                Outbox.recipient_id == basics.recipient_id,
                Outbox.thread_id == basics.thread_id,
                Outbox.status == OutboxStatus.SENT.value,
                Outbox.mode == NotificationMode.CONVENIENCE.value,
                col(Outbox.kind) != OutboxKind.NOTICE.value,
                Outbox.id != basics.outbox_id,
            )
        )
    ).one()
    if previous is None:
        previous = (
            await session.exec(
                select(Mailbox.last_read_message_id).where(
                    Mailbox.thread_id == basics.thread_id,
                    Mailbox.participant_id == basics.recipient_id,
                )
            )
        ).first()
    query = (
        select(Message)
        .where(
            Message.thread_id == basics.thread_id,
            Message.author_id != basics.recipient_id,
            col(Message.id) > (previous or 0),
        )
        .order_by(col(Message.id))
    )
    if row.message_id is not None:
        query = query.where(col(Message.id) <= row.message_id)
    messages = list(await session.exec(query))
    if not messages:
        return ()
    ids = [m.id for m in messages]
    names = dict(
        (
            await session.exec(
                select(Participant.id, Participant.display_name).where(
                    col(Participant.id).in_({m.author_id for m in messages})
                )
            )
        ).all()
    )
    files: dict[int, list[AttachmentLink]] = {}
    base = basics.portal_base_url.rstrip("/")
    for attachment in await session.exec(
        select(Attachment).where(col(Attachment.message_id).in_(ids)).order_by(col(Attachment.id))
    ):
        files.setdefault(attachment.message_id, []).append(
            AttachmentLink(
                name=attachment.filename,
                url=f"{base}/threads/{basics.thread_id}/attachments/{attachment.id}",
                size=attachment.size,
            )
        )
    return tuple(
        Item(
            author_name=names.get(m.author_id, ""),
            created_at=_utc(m.created_at),
            text=m.body_text,
            html=m.body_html,
            attachments=tuple(files.get(m.id or 0, ())),
        )
        for m in messages
    )


def _utc(moment: datetime) -> datetime:
    """SQLite hands back naive UTC; PostgreSQL aware datetimes."""
    return moment.replace(tzinfo=UTC) if moment.utcoffset() is None else moment
