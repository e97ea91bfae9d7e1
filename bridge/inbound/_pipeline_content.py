"""The pure half of the inbound pipeline: raw bytes -> what would be filed.

`analyse` runs steps 1, 2 (classification), 6, 7 and 8 (without the store)
of docs/inbound.md on one email and returns an `Analysis`; it is a pure
function of its arguments, so the pipeline runs it in a worker thread and
`bridge parse` runs it with no store at all.

Decisions made here where the contract is silent:

* The reply text comes from the first text/plain part when it has any
  non-blank text, else from the first text/html part (`extract_reply_html`,
  which renders it with the project's protected HTML renderer). Later text
  parts are forwarded or attached content, not what the person typed.
* `body_html` is the sanitised HTML part only when extraction removed nothing
  from it: there is no safe way to cut the quoted history out of HTML, and
  filing it with the history would undo step 6. Otherwise it is None and the
  extracted text is the message.
* A `fallback` extraction (trimming left nothing: only quoted history, a
  signature, a mobile footer, or our own notification below the reply
  marker) means the writer wrote nothing: its text is empty, so the reply is
  `empty_reply` rather than filing the history back into the thread. The
  contract's "otherwise the full text is filed" would file exactly that.
* A reply with attachments and no text is filed (a photo sent without words);
  only a reply with neither is `empty_reply`.
* Attachment types come from the bytes (`sniff_type`); the name given by the
  sender is made safe and kept, and a name that claims another type is
  counted (`type_mismatches`), not refused.

Does not: touch the store, decide the row's status (the pipeline does, in
the documented order), or log anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.mail.attachments import (
    AttachmentLimits,
    LimitExceeded,
    check_limits,
    sniff_type,
    type_mismatch,
)
from bridge.mail.classify import Classification, classify
from bridge.mail.extract import Extracted, extract_reply, extract_reply_html
from bridge.mail.filenames import safe_filename
from bridge.mail.loops import body_fingerprint
from bridge.mail.parse import MalformedMail, ParsedMail, clean_text, parse_mail
from bridge.mail.sanitize import sanitize_html


@dataclass(frozen=True)
class PreparedAttachment:
    """An attachment ready to store: safe name, type from its bytes, the bytes."""

    filename: str = field(repr=False)
    content_type: str
    data: bytes = field(repr=False)
    type_mismatch: bool = False

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class ReplyContent:
    """What would be filed: text, optional sanitised HTML, attachments, and how it was found."""

    text: str = field(repr=False)
    html: str | None = field(repr=False)
    source: str  # "text", "html" or "none": which body part the text came from
    trimmed: bool
    fallback: bool
    attachments: tuple[PreparedAttachment, ...]
    over_limit: LimitExceeded | None

    @property
    def empty(self) -> bool:
        return not self.text.strip() and not self.attachments

    @property
    def fingerprint(self) -> str:
        return body_fingerprint(self.text)

    @property
    def type_mismatches(self) -> int:
        return sum(item.type_mismatch for item in self.attachments)


@dataclass(frozen=True)
class Analysis:
    """One email, parsed and judged without the store; `malformed` is set instead when
    the bytes could not be parsed (then the other fields are None)."""

    parsed: ParsedMail | None
    classification: Classification | None
    content: ReplyContent | None
    malformed: str | None = None


def analyse(raw: bytes, envelope_sender: str | None, limits: AttachmentLimits) -> Analysis:
    """Parse, classify and prepare `raw`; never raises for what the bytes contain.

    `envelope_sender` is as `classify` wants it: `""` for the null sender,
    None when unknown (IMAP). Markup nested so deeply that a step recurses
    out of the stack counts as malformed too.
    """
    try:
        parsed = parse_mail(raw)
        classification = classify(parsed.message, envelope_sender)
        content = reply_content(parsed, limits)
    except MalformedMail as err:
        return Analysis(None, None, None, malformed=err.reason)
    except RecursionError:
        return Analysis(None, None, None, malformed="too_deep")
    return Analysis(parsed, classification, content)


def reply_content(parsed: ParsedMail, limits: AttachmentLimits) -> ReplyContent:
    """Steps 6-8 on a parsed email: the text, the HTML, the attachments, the limits."""
    extracted, source = _extract(parsed)
    html: str | None = None
    if _untouched(extracted) and parsed.html is not None and parsed.html.strip():
        from_html = extracted if source == "html" else extract_reply_html(parsed.html)
        if _untouched(from_html):
            html = clean_text(sanitize_html(parsed.html))
    attachments = tuple(_prepare(item.filename, item.data) for item in parsed.attachments)
    return ReplyContent(
        # A fallback is the whole body because the writer's own part was empty.
        text="" if extracted.fallback else clean_text(extracted.text),
        html=html,
        source=source,
        trimmed=extracted.trimmed,
        fallback=extracted.fallback,
        attachments=attachments,
        over_limit=check_limits([item.size for item in attachments], limits),
    )


def _extract(parsed: ParsedMail) -> tuple[Extracted, str]:
    if parsed.text is not None and parsed.text.strip():
        return extract_reply(parsed.text), "text"
    if parsed.html is not None and parsed.html.strip():
        return extract_reply_html(parsed.html), "html"
    return Extracted(text="", trimmed=False, fallback=False), "none"


def _untouched(extracted: Extracted) -> bool:
    return not extracted.trimmed and not extracted.fallback


def _prepare(filename: str, data: bytes) -> PreparedAttachment:
    name = safe_filename(filename)
    kind = sniff_type(data, name)
    return PreparedAttachment(
        filename=name, content_type=kind, data=data, type_mismatch=type_mismatch(kind, name)
    )
