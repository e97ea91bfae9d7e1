"""Store reads of the inbound pipeline: whose reply, to which thread, seen before?

Owns steps 3-5 of docs/inbound.md as queries, each on the caller's session:

* `resolve` finds the reply token. From the envelope recipient through
  `receipt.check_recipient` (the very check made at RCPT time, so the reply
  domain, the no-reply address and access are judged the same way), else
  through an `In-Reply-To`/`References` id that bridge gave a convenience
  notification to one of the sender's participants, and then that
  participant's newest valid token for the thread. Secure notifications are
  not a way in: no reply to them is ever filed.
* `token_verdict` judges one token row again (at filing time, under the
  thread lock), with the same access rule as RCPT time.
* `participant_addresses`, `is_duplicate`, `recent_fingerprints` and
  `unknown_sender_target` answer the other questions of steps 4, 5 and the
  loop breaker, and whom a notice about an unknown recipient goes to.

Reads only; never logs (addresses and tokens are personal data).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.inbound.receipt import ReplyRules, check_recipient, token_row_verdict
from bridge.mail.address import InvalidAddress, normalize_domain
from bridge.mail.loops import body_fingerprint
from bridge.policy.tokens import TokenVerdict
from bridge.store.models import (
    Audience,
    EmailAddress,
    InboundEmail,
    InboundStatus,
    Message,
    MessageSource,
    NotificationMode,
    Organization,
    Outbox,
    OutboxKind,
    Participant,
    ReplyToken,
    Thread,
)

# How many earlier emailed messages of one person in one thread the fingerprint check reads.
_RECENT_LIMIT = 200
# How many candidate notifications and tokens the References fallback looks at.
_CANDIDATES = 5


@dataclass(frozen=True)
class Resolution:
    """The token behind a reply and the verdict on it.

    `verdict` is a `TokenVerdict` value or `no_reply_address`; `route` says how
    the token was found: `address` (envelope recipient), `references` or `none`.
    """

    verdict: str
    token_id: int | None = None
    participant_id: int | None = None
    thread_id: int | None = None
    organization_id: int | None = None
    route: str = "none"

    @property
    def valid(self) -> bool:
        return self.verdict == TokenVerdict.VALID.value


async def resolve(
    session: AsyncSession,
    *,
    recipient: str,
    reply_ids: Sequence[str],
    sender: str | None,
    rules: ReplyRules,
    now: datetime,
) -> Resolution:
    """The token for a reply sent to `recipient` by normalised address `sender`."""
    answer = await check_recipient(
        session,
        recipient,
        token_secret=rules.token_secret,
        address_format=rules.address_format,
        noreply_address=rules.noreply_address,
        now=now,
    )
    if answer.token_id is not None:
        return await token_verdict(session, answer.token_id, now, route="address")
    if sender is not None and reply_ids:
        found = await _by_references(session, reply_ids, sender, now)
        if found is not None:
            return found
    return Resolution(verdict=answer.reason if answer.reason == "no_reply_address" else "unknown")


async def token_verdict(
    session: AsyncSession, token_id: int, now: datetime, *, route: str = "address"
) -> Resolution:
    """The verdict on token row `token_id` at `now`, access included."""
    found = (
        await session.exec(
            select(ReplyToken, Thread.audience, Thread.organization_id)
            .join(Thread, col(Thread.id) == col(ReplyToken.thread_id))
            .where(col(ReplyToken.id) == token_id)
        )
    ).first()
    if found is None:
        return Resolution(verdict=TokenVerdict.UNKNOWN.value)
    token, audience, organization_id = found
    verdict = await token_row_verdict(session, token, Audience(audience), now)
    return Resolution(
        verdict=verdict.value,
        token_id=token_id,
        participant_id=token.participant_id,
        thread_id=token.thread_id,
        organization_id=organization_id,
        route=route,
    )


async def _by_references(
    session: AsyncSession, reply_ids: Sequence[str], sender: str, now: datetime
) -> Resolution | None:
    people = select(EmailAddress.participant_id).where(col(EmailAddress.normalized) == sender)
    notified = (
        select(Outbox.recipient_id, Outbox.thread_id)
        .where(col(Outbox.message_id_header).in_(list(reply_ids)))
        .where(col(Outbox.recipient_id).in_(people))
        .where(col(Outbox.thread_id).is_not(None))
        .where(col(Outbox.kind) == OutboxKind.NOTIFICATION.value)
        .where(col(Outbox.mode) == NotificationMode.CONVENIENCE.value)
        .order_by(col(Outbox.id).desc())
        .limit(_CANDIDATES)
    )
    first_refusal: Resolution | None = None
    for participant_id, thread_id in list(await session.exec(notified)):
        tokens = (
            select(ReplyToken.id)
            .where(col(ReplyToken.participant_id) == participant_id)
            .where(col(ReplyToken.thread_id) == thread_id)
            .order_by(col(ReplyToken.id).desc())
            .limit(_CANDIDATES)
        )
        for token_id in list(await session.exec(tokens)):
            assert token_id is not None
            judged = await token_verdict(session, token_id, now, route="references")
            if judged.valid:
                return judged
            first_refusal = first_refusal or judged
    return first_refusal


async def participant_addresses(session: AsyncSession, participant_id: int) -> frozenset[str]:
    """The normalised addresses on file for a participant."""
    query = select(EmailAddress.normalized).where(
        col(EmailAddress.participant_id) == participant_id
    )
    return frozenset(await session.exec(query))


async def is_duplicate(
    session: AsyncSession,
    *,
    row_id: int,
    participant_id: int,
    thread_id: int,
    message_id_header: str | None,
    sha256: str,
) -> bool:
    """Whether another row for this (participant, thread) with the same Message-ID or the
    same raw bytes is already filed."""
    same = col(InboundEmail.sha256) == sha256
    if message_id_header is not None:
        same = same | (col(InboundEmail.message_id_header) == message_id_header)
    query = (
        select(InboundEmail.id)
        .where(col(InboundEmail.status) == InboundStatus.FILED.value)
        .where(col(InboundEmail.id) != row_id)
        .where(col(InboundEmail.participant_id) == participant_id)
        .where(col(InboundEmail.thread_id) == thread_id)
        .where(same)
        .limit(1)
    )
    return (await session.exec(query)).first() is not None


async def recent_fingerprints(
    session: AsyncSession, *, participant_id: int, thread_id: int, since: datetime
) -> set[str]:
    """Fingerprints of what this person filed by email into this thread since `since`.

    Read from the messages themselves, so the check holds across instances
    and restarts without storing a hash of anyone's words anywhere else.
    """
    query = (
        select(Message.body_text)
        .where(col(Message.author_id) == participant_id)
        .where(col(Message.thread_id) == thread_id)
        .where(col(Message.source) == MessageSource.EMAIL.value)
        .where(col(Message.created_at) >= since)
        .order_by(col(Message.id).desc())
        .limit(_RECENT_LIMIT)
    )
    return {body_fingerprint(text) for text in await session.exec(query)}


async def unknown_sender_target(
    session: AsyncSession, *, recipient: str, sender: str
) -> tuple[int, int | None] | None:
    """Where a notice about an unknown recipient goes: (organization, participant or None).

    The organization is the one whose reply domain the recipient is at, else
    the only organization in the store; with neither, nobody is told. The
    participant is the organization's one active participant with the
    sender's address, if there is exactly one.
    """
    orgs = list(await session.exec(select(Organization.id, Organization.reply_domain)))
    domain = _domain(recipient)
    matching = [org_id for org_id, reply_domain in orgs if _domain("@" + reply_domain) == domain]
    if len(matching) != 1 and len(orgs) != 1:
        return None
    org_id = matching[0] if len(matching) == 1 else orgs[0][0]
    assert org_id is not None
    people = list(
        await session.exec(
            select(Participant.id)
            .join(EmailAddress, col(EmailAddress.participant_id) == col(Participant.id))
            .where(col(Participant.organization_id) == org_id)
            .where(col(Participant.active) == sa.true())
            .where(col(EmailAddress.normalized) == sender)
            .distinct()
        )
    )
    return org_id, people[0] if len(people) == 1 else None


def _domain(address: str) -> str | None:
    try:
        return normalize_domain(address.strip().strip("<>").rpartition("@")[2])
    except (InvalidAddress, ValueError):
        return None
