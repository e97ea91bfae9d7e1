"""Raw inbound mail -> one frozen value: headers, addresses, body parts, attachments, defects.

Owns step 1 of the inbound pipeline (docs/inbound.md): mail-parser turns the
raw bytes into parts with charsets decoded, `parse_mail` keeps what the later
steps need and makes it safe to hand around and to store (no lone surrogates,
no NUL characters, which PostgreSQL text refuses).

Hostile input: mail-parser parses with `compat32`, which never runs the
`policy.default` header parsers (those recurse once per "(" and raise
`RecursionError` on a `Content-Type` of a few thousand). A message nested too
deeply for the standard parser, or any other failure of the parser itself,
raises `MalformedMail`; malformed MIME that the parser survives only counts
towards `defects`.

Pure (CPU only: callers run large mail in a thread). Does not: classify
(`bridge.mail.classify`), choose or trim the reply text (`bridge.mail.extract`),
judge attachment types or limits (`bridge.mail.attachments`), or log anything
(mail-parser's own logger is kept at WARNING by `bridge.logs`).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, Final

import mailparser
from mailparser.exceptions import MailParserError

from bridge.errors import BridgeError

# In-Reply-To and References are read for at most this many message ids.
MAX_REFERENCE_IDS: Final = 64
_MAX_ID_CHARS: Final = 255  # outbox.message_id_header
_MESSAGE_ID: Final = re.compile(rf"<[^<>\s]{{1,{_MAX_ID_CHARS - 2}}}>")
_FOLD: Final = re.compile(r"\r?\n(?=[ \t])")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_BASE64_JUNK: Final = re.compile(rb"[^A-Za-z0-9+/]")
# Headers that name the mailbox a message was delivered to, most specific first.
_RECIPIENT_HEADERS: Final = ("delivered-to", "x-original-to")


class MalformedMail(BridgeError):
    """The bytes cannot be parsed as an email at all. `reason` is a short code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ParsedAttachment:
    """One attachment as the sender described it: name, declared type, and the bytes."""

    filename: str = field(repr=False)
    declared_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class ParsedMail:
    """What the pipeline reads from one email. Text fields hold content: never log them.

    `message` is the parsed `email.message.Message` (compat32), for the
    classifier, which reads raw header values; treat it as read-only.
    `headers` are (name, unfolded raw value) in message order. `from_addresses`
    are the addr-specs of the first `From` field and `from_fields` how many
    `From` fields there are. `text` and `html` are the first text/plain and
    text/html body parts. `defects` counts what the parser had to repair.
    """

    message: Message = field(repr=False, compare=False)
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    from_addresses: tuple[str, ...] = field(repr=False)
    from_fields: int
    recipients: tuple[str, ...] = field(repr=False)
    message_id: str | None = field(repr=False)
    reply_ids: tuple[str, ...] = field(repr=False)
    text: str | None = field(repr=False)
    html: str | None = field(repr=False)
    attachments: tuple[ParsedAttachment, ...]
    defects: int

    def header_values(self, name: str) -> tuple[str, ...]:
        """Every raw value of header `name` (any case), in message order."""
        wanted = name.lower()
        return tuple(value for key, value in self.headers if key.lower() == wanted)


def parse_mail(raw: bytes) -> ParsedMail:
    """Parse `raw`; raises `MalformedMail` when it cannot be parsed at all."""
    try:
        parsed = mailparser.parse_from_bytes(raw)
    except (MailParserError, RecursionError) as err:
        raise MalformedMail("too_deep" if _too_deep(err) else "unparseable") from err
    message: Message | None = parsed.message
    if message is None:
        raise MalformedMail("unparseable")
    headers = tuple(
        (str(name), clean_text(_FOLD.sub("", str(value)).strip()))
        for name, value in message.raw_items()
    )
    attachments, repaired = _attachments(parsed.attachments)
    return ParsedMail(
        message=message,
        headers=headers,
        from_addresses=_addresses(parsed.from_),
        from_fields=sum(1 for name, _ in headers if name.lower() == "from"),
        recipients=_recipients(headers, parsed),
        message_id=_first_id(headers, "message-id"),
        reply_ids=_reply_ids(headers),
        text=_first_text(parsed.text_plain),
        html=_first_text(parsed.text_html),
        attachments=attachments,
        defects=_count_defects(parsed.defects) + repaired,
    )


def clean_text(text: str) -> str:
    """`text` without lone surrogates (U+FFFD instead) and NUL characters."""
    return _SURROGATE.sub("\ufffd", text).replace("\x00", "")


def _too_deep(err: BaseException) -> bool:
    return isinstance(err, RecursionError) or isinstance(err.__cause__, RecursionError)


def _first_text(parts: list[str]) -> str | None:
    return clean_text(str(parts[0])) if parts else None


def _addresses(pairs: Any) -> tuple[str, ...]:
    """Addr-specs from mail-parser's [(display name, address), ...] (anything else: none)."""
    if not isinstance(pairs, list):
        return ()
    found = [str(pair[1]).strip() for pair in pairs if isinstance(pair, tuple) and len(pair) == 2]
    return tuple(clean_text(address) for address in found if address)


def _recipients(headers: tuple[tuple[str, str], ...], parsed: Any) -> tuple[str, ...]:
    """Delivered-To, X-Original-To, then the To and Cc addresses, in that order."""
    found: list[str] = []
    for name in _RECIPIENT_HEADERS:
        found.extend(value.strip().strip("<>") for key, value in headers if key.lower() == name)
    found.extend(_addresses(parsed.to))
    found.extend(_addresses(parsed.cc))
    return tuple(address for address in found if address)


def _first_id(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            match = _MESSAGE_ID.search(value)
            return match.group(0) if match else None
    return None


def _reply_ids(headers: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """Message ids of In-Reply-To, then the newest of References, without repeats."""
    found: list[str] = []
    for name in ("in-reply-to", "references"):
        for key, value in headers:
            if key.lower() == name:
                ids = _MESSAGE_ID.findall(value)
                # References grow at the end: the newest ids are the last ones.
                found.extend(ids if name == "in-reply-to" else reversed(ids))
    return tuple(dict.fromkeys(found))[:MAX_REFERENCE_IDS]


def _count_defects(defects: Any) -> int:
    """mail-parser reports defects as [{category: [description, ...]}, ...]."""
    count = 0
    for entry in defects if isinstance(defects, list) else ():
        if isinstance(entry, dict):
            count += sum(len(items) if isinstance(items, list) else 1 for items in entry.values())
    return count


def _attachments(found: Any) -> tuple[tuple[ParsedAttachment, ...], int]:
    """The attachments with their bytes, and how many needed a lenient base64 decode."""
    result: list[ParsedAttachment] = []
    repaired = 0
    for item in found if isinstance(found, list) else ():
        payload = item.get("payload") or ""
        if item.get("binary"):
            data, lenient = _base64(payload)
            repaired += lenient
        elif isinstance(payload, bytes):
            data = payload
        else:
            data = str(payload).encode("utf-8", "surrogateescape")
        result.append(
            ParsedAttachment(
                filename=clean_text(str(item.get("filename") or "")),
                declared_type=clean_text(str(item.get("mail_content_type") or "")).lower(),
                data=data,
            )
        )
    return tuple(result), repaired


def _base64(payload: str | bytes) -> tuple[bytes, bool]:
    """Decode base64 as mail clients do: strictly if possible, else ignoring junk and
    a dangling final character. The flag says the lenient path was needed."""
    encoded = payload.encode("ascii", "ignore") if isinstance(payload, str) else payload
    try:
        return base64.b64decode(encoded), False
    except (binascii.Error, ValueError):
        pass
    compact = _BASE64_JUNK.sub(b"", encoded)
    if len(compact) % 4 == 1:  # one dangling character cannot encode a byte
        compact = compact[:-1]
    return base64.b64decode(compact + b"=" * (-len(compact) % 4)), True
