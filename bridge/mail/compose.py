"""Notification emails: frozen values in, a ready-to-send `EmailMessage` out.

Owns the shape of every email bridge sends (docs/outbound.md): the headers of
both modes, the fixed wording of the secure-mode notification and invitation,
the layout of a convenience-mode email (reply marker, carried messages,
attachment links), and the fixed wording of notices, the automatic answers to
an email the inbound side could not accept (one per reason code). Also the two
identifiers the outbound side needs: a notification's `Message-ID` and the
stable per (recipient, thread) root that `In-Reply-To` and `References` point at.

Secure mode and notices are safe by construction: `SecureNotice` and
`RefusalNotice` have no field that could hold a subject, body, name or
attachment name, so `compose_secure` and `compose_notice` cannot leak one.

Pure: no store, no I/O, no logging. It does not decide which messages an email
carries, which mode applies or who receives it (`bridge.outbound.render` and
`bridge.policy` do), and it does not send anything.

Every message is `multipart/alternative` (text, then HTML), UTF-8, with bodies
in quoted-printable or base64 so it is 7-bit clean for any relay. Headers are
RFC 2047-encoded by the standard library (policy `email.policy.SMTP`), except
for a recipient whose local part is not ASCII: that address can only travel
with SMTPUTF8, so such a message gets policy `email.policy.SMTPUTF8` (headers in
raw UTF-8, RFC 6532) and the transport must use SMTPUTF8 (aiosmtplib does so
by itself when an envelope address is not ASCII).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import re
import secrets
import textwrap
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8, Policy
from email.utils import format_datetime
from enum import StrEnum
from typing import Final

from bridge.errors import BridgeError
from bridge.mail.address import InvalidAddress, normalize_address, normalize_domain
from bridge.mail.extract import REPLY_MARKER
from bridge.mail.headers import AUTO_GENERATED, AUTO_SUBMITTED, OWN_MAIL_HEADER
from bridge.mail.sanitize import html_to_text, is_safe_url, sanitize_html

# 7-bit bodies: the standard library then picks quoted-printable or base64,
# whichever is shorter, instead of raw 8-bit that an old relay may mangle.
_POLICY: Final = SMTP.clone(cte_type="7bit")
_POLICY_UTF8: Final = SMTPUTF8.clone(cte_type="7bit")

# RFC 3834: a notice answers an email; everything else is generated on our own.
AUTO_REPLIED: Final = "auto-replied"
# Asks Exchange/Outlook not to answer our email with out-of-office or similar replies.
AUTO_RESPONSE_SUPPRESS: Final = "X-Auto-Response-Suppress"

SECURE_SUBJECT: Final = "You have a new secure message"
INVITATION_SUBJECT: Final = "You are invited to read a secure message"

SECURE_TEXT: Final = """\
Hello,

You have a new secure message waiting for you in your client portal.

To protect your privacy, the message itself is not part of this email.
You can read it, and reply to it, in the portal:

{link}

This email was sent automatically. Please answer in the portal rather than
by replying to this email.
"""

INVITATION_TEXT: Final = """\
Hello,

You have been sent a secure message through a client portal.

To protect your privacy, the message itself is not part of this email.
To read it, first create your portal account; it only takes a minute:

{link}

Once your account is ready, you can read the message and reply to it
securely in the portal. If you were not expecting this email, you can
safely ignore it.
"""

_SECURE_HTML: Final = """\
<!DOCTYPE html>
<html lang="en">
<body>
<p>Hello,</p>
<p>You have a new secure message waiting for you in your client portal.</p>
<p>To protect your privacy, the message itself is not part of this email.
You can read it, and reply to it, in the portal:</p>
<p><a href="{link}">Read the message in the portal</a></p>
<p>If the link does not open, copy this address into your browser:<br>
{link}</p>
<p>This email was sent automatically. Please answer in the portal rather than
by replying to this email.</p>
</body>
</html>
"""

_INVITATION_HTML: Final = """\
<!DOCTYPE html>
<html lang="en">
<body>
<p>Hello,</p>
<p>You have been sent a secure message through a client portal.</p>
<p>To protect your privacy, the message itself is not part of this email.
To read it, first create your portal account; it only takes a minute:</p>
<p><a href="{link}">Create your portal account</a></p>
<p>If the link does not open, copy this address into your browser:<br>
{link}</p>
<p>Once your account is ready, you can read the message and reply to it
securely in the portal. If you were not expecting this email, you can
safely ignore it.</p>
</body>
</html>
"""

NOTICE_SUBJECT: Final = "Your email could not be accepted"


class NoticeReason(StrEnum):
    """Why an email was held (`outbox.reason` of a notice): each one a person can act on."""

    SENDER_MISMATCH = "sender_mismatch"
    EMPTY_REPLY = "empty_reply"
    ATTACHMENT_LIMIT = "attachment_limit"
    UNKNOWN_RECIPIENT = "unknown_recipient"
    AUTH_FAILED = "auth_failed"


# What went wrong and what to do, per reason; the rest of a notice is the same for all.
NOTICE_REASONS: Final[Mapping[NoticeReason, str]] = {
    NoticeReason.SENDER_MISMATCH: (
        "We could not accept your reply because it came from an email address we do not "
        "have on file for you. Please reply from the address we write to, or answer in "
        "the portal."
    ),
    NoticeReason.EMPTY_REPLY: (
        "We could not accept your reply because we found nothing you had written in it. "
        f'When you reply by email, please write your answer above the line "{REPLY_MARKER}", '
        "or answer in the portal."
    ),
    NoticeReason.ATTACHMENT_LIMIT: (
        "We could not accept your reply because its attachments are too many or too large "
        "to be received by email. Please send your reply again with fewer or smaller "
        "attachments, or add the files in the portal."
    ),
    NoticeReason.UNKNOWN_RECIPIENT: (
        "We could not accept your email because the address you wrote to only takes "
        "replies to the emails we send, and we could not tell which conversation yours "
        "belongs to. Please reply to one of our emails, or write in the portal."
    ),
    NoticeReason.AUTH_FAILED: (
        "We could not accept your reply because we could not confirm that it was really "
        "sent by you: your email provider did not vouch for it. Please reply again from "
        "the address we write to, or answer in the portal."
    ),
}

NOTICE_TEXT: Final = """\
Hello,

{what}

Your email was not added to any conversation. You can read your messages,
and answer them, in the portal:

{link}

This email was sent automatically in answer to an email we received.
Please do not reply to it.
"""

_NOTICE_HTML: Final = """\
<!DOCTYPE html>
<html lang="en">
<body>
<p>Hello,</p>
<p>{what}</p>
<p>Your email was not added to any conversation. You can read your messages,
and answer them, in the portal:</p>
<p><a href="{link}">Open the portal</a></p>
<p>If the link does not open, copy this address into your browser:<br>
{link}</p>
<p>This email was sent automatically in answer to an email we received.
Please do not reply to it.</p>
</body>
</html>
"""

_MONTHS: Final = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip

# Characters that may never reach a header: controls (CR and LF above all) and
# lone surrogates; separators other than space become a space.
_HEADER_DROP: Final = frozenset({"Cc", "Cs", "Zl", "Zp"})
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")


class ComposeError(BridgeError):
    """A value cannot go into an email. Carries a reason code, never the value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SecureNotice:
    """A secure-mode notification (or invitation): a link and ids, nothing else."""

    to_address: str
    portal_link: str
    invitation: bool
    message_id: str
    thread_root_id: str
    outbox_id: int
    sent_at: datetime


@dataclass(frozen=True)
class AttachmentLink:
    """An attachment shown as a portal link; the file itself is never attached."""

    name: str
    url: str
    size: int


@dataclass(frozen=True)
class Item:
    """One carried message. `html`, when given, is shown sanitised in the HTML part."""

    author_name: str
    created_at: datetime
    text: str
    html: str | None = None
    attachments: tuple[AttachmentLink, ...] = ()


@dataclass(frozen=True)
class ConvenienceNotice:
    """A convenience-mode email. `subject` is the thread's; the email says `Re: {subject}`."""

    to_address: str
    reply_to: str
    subject: str
    items: tuple[Item, ...]
    portal_link: str
    invitation: bool
    practice_name: str
    message_id: str
    thread_root_id: str
    outbox_id: int
    sent_at: datetime


@dataclass(frozen=True)
class RefusalNotice:
    """A notice: the fixed wording for `reason` and a link, nothing else.

    `thread_root_id`, when given, threads the notice with the emails the person
    already has about the conversation; there is none for an unknown sender.
    """

    to_address: str
    reason: NoticeReason
    portal_link: str
    message_id: str
    thread_root_id: str | None
    outbox_id: int
    sent_at: datetime


def new_message_id(outbox_id: int, domain: str) -> str:
    """A fresh `Message-ID` for the email of outbox row `outbox_id`."""
    return f"<n.{outbox_id}.{secrets.token_hex(8)}@{_id_domain(domain)}>"


def thread_root_id(secret: bytes, thread_id: int, participant_id: int, domain: str) -> str:
    """The stable message id that every email to one participant about one thread answers.

    An HMAC, so the id reveals neither the thread nor the person, yet the same
    pair always gets the same root and mail clients group the emails together.
    """
    data = f"thread:{thread_id}:{participant_id}".encode("ascii")
    digest = hmac.new(secret, data, hashlib.sha256).hexdigest()[:24]
    return f"<t.{digest}@{_id_domain(domain)}>"


def compose_secure(n: SecureNotice, *, from_address: str) -> EmailMessage:
    """The secure notification: fixed wording and the portal link, nothing from the store."""
    link = _checked_link(n.portal_link)
    msg = _envelope_headers(
        to_address=n.to_address,
        from_address=from_address,
        from_name=None,
        subject=INVITATION_SUBJECT if n.invitation else SECURE_SUBJECT,
        message_id=n.message_id,
        root_id=n.thread_root_id,
        outbox_id=n.outbox_id,
        sent_at=n.sent_at,
    )
    text = (INVITATION_TEXT if n.invitation else SECURE_TEXT).format(link=link)
    page = (_INVITATION_HTML if n.invitation else _SECURE_HTML).format(link=html.escape(link))
    _set_bodies(msg, text, page)
    return msg


def compose_notice(n: RefusalNotice, *, from_address: str) -> EmailMessage:
    """A notice: why an email was not accepted and what to do, and the portal link."""
    link = _checked_link(n.portal_link)
    what = NOTICE_REASONS[NoticeReason(n.reason)]
    msg = _envelope_headers(
        to_address=n.to_address,
        from_address=from_address,
        from_name=None,
        subject=NOTICE_SUBJECT,
        message_id=n.message_id,
        root_id=n.thread_root_id,
        outbox_id=n.outbox_id,
        sent_at=n.sent_at,
        auto_submitted=AUTO_REPLIED,
    )
    # Wrapped at spaces only: the reply marker ("-- Reply above ...") must stay whole.
    wrapped = textwrap.fill(what, width=72, break_on_hyphens=False, break_long_words=False)
    text = NOTICE_TEXT.format(what=wrapped, link=link)
    page = _NOTICE_HTML.format(what=html.escape(what), link=html.escape(link))
    _set_bodies(msg, text, page)
    return msg


def compose_convenience(n: ConvenienceNotice, *, from_address: str) -> EmailMessage:
    """The convenience email: the carried messages, with a reply marker on top."""
    link = _checked_link(n.portal_link)
    for item in n.items:
        for attachment in item.attachments:
            _checked_link(attachment.url)
    subject = _header_text(n.subject)
    msg = _envelope_headers(
        to_address=n.to_address,
        from_address=from_address,
        from_name=_header_text(n.practice_name) or None,
        subject=f"Re: {subject}" if subject else "Re: your conversation",
        message_id=n.message_id,
        root_id=n.thread_root_id,
        outbox_id=n.outbox_id,
        sent_at=n.sent_at,
    )
    msg["Reply-To"] = _recipient_address(n.reply_to)[0]
    _set_bodies(msg, _convenience_text(n, link), _convenience_html(n, link))
    return msg


# -- headers ----------------------------------------------------------------------------


def _envelope_headers(
    *,
    to_address: str,
    from_address: str,
    from_name: str | None,
    subject: str,
    message_id: str,
    root_id: str | None,
    outbox_id: int,
    sent_at: datetime,
    auto_submitted: str = AUTO_GENERATED,
) -> EmailMessage:
    to, needs_utf8 = _recipient_address(to_address)
    msg = EmailMessage(policy=_POLICY_UTF8 if needs_utf8 else _POLICY)
    sender = _recipient_address(from_address)[0]
    msg["From"] = Address(
        display_name=from_name or "", username=sender.username, domain=sender.domain
    )
    msg["To"] = to
    msg["Subject"] = subject if _plain_ascii(subject) else _EncodedSubject(subject)
    msg["Date"] = format_datetime(_aware(sent_at).astimezone(UTC))
    msg["Message-ID"] = message_id
    if root_id is not None:
        msg["In-Reply-To"] = root_id
        msg["References"] = root_id
    msg[AUTO_SUBMITTED] = auto_submitted
    msg[AUTO_RESPONSE_SUPPRESS] = "All"
    msg[OWN_MAIL_HEADER] = str(outbox_id)
    return msg


def _recipient_address(address: str) -> tuple[Address, bool]:
    """`address` as a header value, and whether it needs SMTPUTF8 (non-ASCII local part).

    The domain is written in its ASCII (punycode) form, which every relay accepts.
    """
    try:
        normalize_address(address)  # validation only: one bare address, no controls
        local, _, domain = address.strip().removeprefix("<").removesuffix(">").rpartition("@")
        ascii_domain = normalize_domain(domain)
    except InvalidAddress as err:
        raise ComposeError("bad_address") from err
    return Address(username=local, domain=ascii_domain), not local.isascii()


def _id_domain(domain: str) -> str:
    try:
        return normalize_domain(domain)
    except InvalidAddress as err:
        raise ComposeError("bad_domain") from err


def _header_text(value: str) -> str:
    """`value` on one line: no controls, no line breaks, single spaces."""
    kept = "".join(" " if unicodedata.category(ch) in _HEADER_DROP else ch for ch in value)
    return " ".join(kept.split())


def _plain_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable() and "=?" not in text


class _EncodedSubject(str):
    """A Subject written entirely as RFC 2047 encoded words.

    The standard library encodes only the non-ASCII words of a header and leaves
    text such as ``=?utf-8?q?x?=`` as it is, which every reader then decodes: a
    subject from the store would not arrive as written. Encoding the whole value
    makes any subject, in any language, round-trip exactly. The policy accepts
    such an object as a ready header: it has a `name` and folds itself.
    """

    name = "Subject"

    def fold(self, *, policy: Policy) -> str:
        encoded = Header(
            str(self), "utf-8", maxlinelen=policy.max_line_length or 78, header_name=self.name
        ).encode(linesep=policy.linesep)
        return f"{self.name}: {encoded}{policy.linesep}"


def _checked_link(url: str) -> str:
    # Only web links: a store value such as "javascript:..." must never become a link.
    if not url.lower().startswith(("https://", "http://")) or not is_safe_url(url):
        raise ComposeError("unsafe_link")
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in url):
        raise ComposeError("unsafe_link")
    return url


# -- bodies -----------------------------------------------------------------------------


def _set_bodies(msg: EmailMessage, text: str, page: str) -> None:
    # A lone surrogate (from a `surrogateescape` decode upstream) cannot be encoded as UTF-8.
    msg.set_content(_LONE_SURROGATE.sub("\ufffd", text), subtype="plain", charset="utf-8")
    msg.add_alternative(_LONE_SURROGATE.sub("\ufffd", page), subtype="html", charset="utf-8")
    for part in msg.iter_parts():
        # The standard library repeats MIME-Version on parts; it belongs on top only.
        del part["MIME-Version"]


def _convenience_text(n: ConvenienceNotice, link: str) -> str:
    lines = [REPLY_MARKER, "", _intro(n), ""]
    for item in n.items:
        lines += ["-" * 40, f"{_header_text(item.author_name)} wrote on {_date(item.created_at)}:"]
        lines += ["", _item_text(item).strip("\n")]
        if item.attachments:
            lines += ["", "Attachments (open them in the portal):"]
            lines += [
                f"- {_header_text(a.name)} ({_size(a.size)}): {a.url}" for a in item.attachments
            ]
        lines.append("")
    lines += ["-" * 40, "", _portal_prompt(n), link, "", _FOOTER]
    return "\n".join(lines) + "\n"


def _convenience_html(n: ConvenienceNotice, link: str) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<body>",
        f"<p>{e(REPLY_MARKER)}</p>",
        f"<p>{e(_intro(n))}</p>",
    ]
    for item in n.items:
        parts += [
            "<hr>",
            f"<p><strong>{e(_header_text(item.author_name))}</strong>"
            f" wrote on {e(_date(item.created_at))}:</p>",
            f"<div>{_item_html(item)}</div>",
        ]
        if item.attachments:
            parts.append("<p>Attachments (open them in the portal):</p>")
            parts.append("<ul>")
            parts += [
                f'<li><a href="{e(a.url)}">{e(_header_text(a.name))}</a> ({e(_size(a.size))})</li>'
                for a in item.attachments
            ]
            parts.append("</ul>")
    parts += [
        "<hr>",
        f'<p>{e(_portal_prompt(n))}<br>\n<a href="{e(link)}">{e(link)}</a></p>',
        f"<p>{e(_FOOTER)}</p>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def _intro(n: ConvenienceNotice) -> str:
    count = len(n.items)
    what = "a new message" if count == 1 else f"{count} new messages"
    practice = _header_text(n.practice_name) or "your practice"
    subject = _header_text(n.subject)
    about = f" in the conversation \u201c{subject}\u201d" if subject else ""
    return f"You have {what} from {practice}{about}."


def _portal_prompt(n: ConvenienceNotice) -> str:
    if n.invitation:
        return "To see the whole conversation, create your portal account:"
    return "Read the whole conversation in the portal:"


_FOOTER: Final = (
    "You receive messages by email because you agreed to it. To answer, reply to this "
    "email and write your answer above the line at the top. This email was sent "
    "automatically."
)


def _item_text(item: Item) -> str:
    if item.text.strip() or not item.html:
        return item.text.replace("\r\n", "\n").replace("\r", "\n")
    return html_to_text(sanitize_html(item.html))


def _item_html(item: Item) -> str:
    if item.html:
        # Sanitised again here although the store should hold clean HTML: defence in depth.
        cleaned = sanitize_html(item.html)
        if cleaned.strip():
            return cleaned
    return _text_as_html(item.text)


def _text_as_html(text: str) -> str:
    """Plain text as escaped paragraphs; single line breaks become `<br>`."""
    normalized = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    paragraphs = [p for p in normalized.split("\n\n") if p.strip()]
    return "\n".join(
        "<p>" + "<br>\n".join(html.escape(line) for line in p.split("\n")) + "</p>"
        for p in paragraphs
    )


def _date(moment: datetime) -> str:
    """A date every reader can parse, in UTC: the practice's time zone is not known here."""
    utc = _aware(moment).astimezone(UTC)
    return f"{utc.day} {_MONTHS[utc.month - 1]} {utc.year}, {utc:%H:%M} UTC"


def _size(size: int) -> str:
    if size < 1024:
        return "1 byte" if size == 1 else f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.0f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def _aware(moment: datetime) -> datetime:
    """Naive datetimes are UTC by the store's convention (SQLite drops the zone)."""
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=UTC)
