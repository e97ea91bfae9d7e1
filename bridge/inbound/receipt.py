"""Receipt: the two store operations every receiver performs, and their answers.

`check_recipient` decides, during the SMTP/LMTP session, whether an envelope
recipient is a reply address that may still write into its thread, and gives
the SMTP answer for it (the contract table in `docs/inbound.md`).
`store_raw` commits the bytes of an accepted email as `inbound_emails` rows,
one per recipient, before anything is acknowledged.

Both take an open session; the caller owns the transaction (a read session
for `check_recipient`, `store.transaction()` for `store_raw`) and decides what
an exception means (the receivers answer `TEMPORARY`, never a permanent
failure). Neither logs: addresses and tokens are personal data and
credentials, and the receivers log ids and reason codes themselves.

Not here: parsing beyond the `Message-ID` header, checking that the sender is
the token's participant, or filing anything (the pipeline does all of that
later, from the stored row).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import compat32

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.mail.address import InvalidAddress, normalize_address, normalize_domain
from bridge.policy.audience import staff_may_see
from bridge.policy.tokens import (
    TokenState,
    TokenVerdict,
    check_token,
    hash_token,
    token_from_address,
)
from bridge.store.models import (
    Audience,
    InboundEmail,
    InboundVia,
    Mailbox,
    NotificationMode,
    Organization,
    Participant,
    ParticipantKind,
    ParticipantRole,
    ReplyToken,
    StaffRole,
    Thread,
    ThreadClinician,
)


@dataclass(frozen=True)
class ReplyRules:
    """What `check_recipient` needs to judge a recipient (from `tokens.*`, `outbound.*`)."""

    token_secret: bytes = field(repr=False)
    address_format: str
    noreply_address: str


# Column widths of `inbound_emails` (see models.py); longer values are refused, never cut.
MAX_ADDRESS_LENGTH = 320
MAX_MESSAGE_ID_LENGTH = 998
# The Message-ID is looked for in at most this much of the message: a header block
# larger than this is hostile or broken, and the pipeline parses it properly anyway.
HEADER_SCAN_LIMIT = 64 * 1024
# Hashing a large message is done off the event loop.
_INLINE_HASH_LIMIT = 256 * 1024

_PORTAL = "please answer in the portal"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class RecipientVerdict:
    """The answer to one `RCPT TO`.

    `answer` is the complete reply line (`code` first); it never contains the
    address or the token. `reason` is a short code for logs and metrics:
    `valid`, `no_reply_address`, `unknown`, `expired`, `revoked`, `no_access`
    or `temporary`. `token_id` is the `reply_tokens` row when one was found.
    """

    ok: bool
    code: int
    answer: str
    reason: str
    token_id: int | None = None


ACCEPTED = RecipientVerdict(True, 250, "250 2.1.5 OK", "valid")
NO_REPLY = RecipientVerdict(
    False,
    550,
    f"550 5.1.1 This address does not accept replies; {_PORTAL}",
    "no_reply_address",
)
UNKNOWN = RecipientVerdict(False, 550, f"550 5.1.1 Unknown reply address; {_PORTAL}", "unknown")
TEMPORARY = RecipientVerdict(False, 451, "451 4.3.0 Temporary failure, please retry", "temporary")

_EXPIRED_ANSWER = f"550 5.1.1 This reply address has expired; {_PORTAL}"
_INVALID_ANSWER = f"550 5.1.1 This reply address is no longer valid; {_PORTAL}"
_REFUSALS: dict[TokenVerdict, str] = {
    TokenVerdict.UNKNOWN: UNKNOWN.answer,
    TokenVerdict.EXPIRED: _EXPIRED_ANSWER,
    TokenVerdict.REVOKED: _INVALID_ANSWER,
    TokenVerdict.NO_ACCESS: _INVALID_ANSWER,
    # Not produced here (no thread is expected at RCPT time); mapped for completeness.
    TokenVerdict.WRONG_THREAD: _INVALID_ANSWER,
}


async def check_recipient(
    session: AsyncSession,
    address: str,
    *,
    token_secret: bytes,
    address_format: str,
    noreply_address: str,
    now: datetime,
) -> RecipientVerdict:
    """The verdict on envelope recipient `address` at time `now` (timezone-aware).

    Valid means: not the no-reply address; a reply address in `address_format`
    whose domain is the reply domain of the organization that owns the
    token's thread; a token that is neither revoked nor expired; and a
    participant who is active, still holds a mailbox row on the thread and,
    for staff, may see the thread by its audience (assigned clinicians
    included). Store errors propagate; the caller answers `TEMPORARY`.
    """
    if _same_address(address, noreply_address):
        return NO_REPLY
    domain = _domain_of(address)
    token = token_from_address(address_format, address)
    if domain is None or token is None:
        return UNKNOWN
    found = (
        await session.exec(
            select(ReplyToken, Thread.audience, Organization.reply_domain)
            .join(Thread, col(Thread.id) == col(ReplyToken.thread_id))
            .join(Organization, col(Organization.id) == col(Thread.organization_id))
            .where(ReplyToken.token_hash == hash_token(token_secret, token))
        )
    ).first()
    if found is None:
        return UNKNOWN
    row, audience, reply_domain = found
    # A token is valid only at its own organization's reply domain: an address
    # at another domain, even one bridge serves, is not an address we issued.
    if _normal_domain(reply_domain) != domain:
        return UNKNOWN
    assert row.id is not None
    verdict = await token_row_verdict(session, row, Audience(audience), now)
    if verdict is TokenVerdict.VALID:
        return RecipientVerdict(True, ACCEPTED.code, ACCEPTED.answer, ACCEPTED.reason, row.id)
    return RecipientVerdict(False, 550, _REFUSALS[verdict], verdict.value, row.id)


async def store_raw(
    session: AsyncSession,
    raw: bytes,
    *,
    via: InboundVia,
    envelope_sender: str | None,
    envelope_recipients: Sequence[str],
    now: datetime,
) -> list[int]:
    """Insert `raw` as `inbound_emails` rows (status `received`); returns their ids.

    One row per distinct recipient (compared case-insensitively); the result
    has one id per entry of `envelope_recipients`, in order, so a recipient
    given twice maps to the same row. `envelope_sender` is None for the null
    sender. Raises `ValueError` for values the table cannot hold as given (no
    recipient, or an address longer than 320 characters or not valid text):
    receivers refuse those earlier, in the session. Nothing is committed here.
    """
    if not envelope_recipients:
        raise ValueError("at least one envelope recipient is needed")
    for address in (envelope_sender or "", *envelope_recipients):
        if not storable_address(address):
            raise ValueError("an envelope address cannot be stored as given")
    if len(raw) > _INLINE_HASH_LIMIT:
        digest = await asyncio.to_thread(_sha256, raw)
    else:
        digest = _sha256(raw)
    message_id = message_id_of(raw)
    rows: dict[str, InboundEmail] = {}
    for recipient in envelope_recipients:
        key = recipient.casefold()
        if key not in rows:
            rows[key] = InboundEmail(
                raw=raw,
                sha256=digest,
                message_id_header=message_id,
                received_via=via.value,
                envelope_sender=envelope_sender,
                envelope_recipient=recipient,
                received_at=now,
                next_attempt_at=now,
            )
    session.add_all(rows.values())
    await session.flush()
    ids: list[int] = []
    for recipient in envelope_recipients:
        row_id = rows[recipient.casefold()].id
        assert row_id is not None
        ids.append(row_id)
    return ids


def message_id_of(raw: bytes) -> str | None:
    """The first `Message-ID` of the header block of `raw`, unfolded, or None.

    Only the bytes up to the first empty line (and at most `HEADER_SCAN_LIMIT`
    of them) are parsed. A value that is empty, holds control characters, or
    is longer than the column is treated as absent; non-ASCII bytes are read
    as UTF-8 (invalid sequences replaced).
    """
    head = header_block(raw[:HEADER_SCAN_LIMIT])
    parsed = BytesHeaderParser(policy=compat32).parsebytes(head)
    for name, value in parsed.raw_items():
        if name.lower() != "message-id":
            continue
        text = value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
        text = re.sub(r"\r?\n", "", text).strip()
        if not text or _CONTROL.search(text) or len(text) > MAX_MESSAGE_ID_LENGTH:
            return None
        return text
    return None


def header_block(data: bytes) -> bytes:
    """`data` up to (not including) its first empty line: the header block."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            return data
        if data[start:end] in (b"", b"\r"):
            return data[:start]
        start = end + 1
    return data


def storable_address(address: str) -> bool:
    """Whether an envelope address fits its column as given: at most 320 characters,
    valid UTF-8 (aiosmtpd keeps invalid bytes as surrogates), no control characters."""
    if len(address) > MAX_ADDRESS_LENGTH:
        return False
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return _CONTROL.search(address) is None


async def token_row_verdict(
    session: AsyncSession, row: ReplyToken, audience: Audience, now: datetime
) -> TokenVerdict:
    """The verdict on a stored token at `now`, the participant's access included.

    Access is only read from the store when the token itself is still good.
    """
    state = TokenState(
        participant_id=row.participant_id,
        thread_id=row.thread_id,
        expires_at=_aware(row.expires_at),
        revoked_at=None if row.revoked_at is None else _aware(row.revoked_at),
    )
    verdict = check_token(state, now=now, participant_has_access=True)
    if verdict is TokenVerdict.VALID and not await may_reply_by_email(
        session, row.participant_id, row.thread_id, audience
    ):
        verdict = check_token(state, now=now, participant_has_access=False)
    return verdict


async def may_reply_by_email(
    session: AsyncSession, participant_id: int, thread_id: int, audience: Audience
) -> bool:
    """Whether the participant may still write into the thread by email.

    The practice must still allow replies by email (convenience mode): switching
    back to secure mode ends every reply address at once, also when a portal
    flips the mode with plain SQL and revokes nothing. Then the person must be
    active, hold a mailbox row on the thread and, for staff, see it by audience.
    """
    mode = (
        await session.exec(
            select(Organization.notification_mode)
            .join(Thread, col(Thread.organization_id) == col(Organization.id))
            .where(col(Thread.id) == thread_id)
        )
    ).first()
    if mode != NotificationMode.CONVENIENCE.value:
        return False
    person = await session.get(Participant, participant_id)
    if person is None or not person.active:
        return False
    if await session.get(Mailbox, (thread_id, participant_id)) is None:
        return False
    if person.kind != ParticipantKind.STAFF.value:
        return True
    held = await session.exec(
        select(ParticipantRole.role).where(ParticipantRole.participant_id == participant_id)
    )
    known = {role.value for role in StaffRole}
    roles = [StaffRole(role) for role in held if role in known]
    assigned = await session.exec(
        select(sa.literal(1))
        .select_from(ThreadClinician)
        .where(ThreadClinician.thread_id == thread_id)
        .where(ThreadClinician.clinician_id == participant_id)
    )
    return staff_may_see(audience, roles, assigned_clinician=assigned.first() is not None)


def _same_address(a: str, b: str) -> bool:
    try:
        return normalize_address(a) == normalize_address(b)
    except (InvalidAddress, ValueError):
        return False


def _domain_of(address: str) -> str | None:
    """The normalized domain of `address`, or None when it has none worth comparing."""
    _, at, domain = address.strip().strip("<>").rpartition("@")
    return _normal_domain(domain) if at else None


def _normal_domain(domain: str) -> str | None:
    try:
        return normalize_domain(domain)
    except (InvalidAddress, ValueError):
        return None


def _aware(moment: datetime) -> datetime:
    """Timestamps are stored in UTC; SQLite hands them back without a zone."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()
