"""Steps 2-8 of the inbound pipeline: the decision about one analysed email.

`Decider.decide` takes an email as stored and its `Analysis` (the pure
half, `_pipeline_content`) and returns either a `Filing` (everything checked,
file it) or a `SetAside` (drop, hold or park it, with the reason code and,
for a person who can act, whom to tell). The order of the checks and why it
differs from the contract's numbering is explained in `pipeline.py`.

Which held reasons tell someone, decided here where the contract is silent:
`sender_mismatch`, `auth_failed`, `empty_reply` and `attachment_limit` tell
the token's participant at the address on file; `expired` tells them only
when the sender is that participant; `revoked` and `no_access` tell nobody
(the person no longer belongs to the thread); `unknown_recipient` tells the
sender only on the IMAP path (SMTP refused such recipients at RCPT time).

Owns the loop breaker's in-memory rate limiters (per process). Reads the
store through `_pipeline_resolve`; writes nothing; logs nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.config import InboundPipelineSettings
from bridge.inbound._pipeline_content import Analysis
from bridge.inbound._pipeline_file import Filing, NoticeTo, SetAside
from bridge.inbound._pipeline_resolve import (
    Resolution,
    is_duplicate,
    participant_addresses,
    recent_fingerprints,
    resolve,
    unknown_sender_target,
)
from bridge.inbound.receipt import ReplyRules
from bridge.mail.address import InvalidAddress, normalize_address
from bridge.mail.authres import AuthVerdict, authentication_verdict
from bridge.mail.classify import MailKind
from bridge.mail.loops import RateLimiter
from bridge.mail.parse import ParsedMail
from bridge.store.engine import Store
from bridge.store.models import InboundStatus, InboundVia

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# Dropped rows carry the kind of mail as their reason; the classifier's rule goes to the log.
DROP_REASONS = {
    MailKind.AUTO_REPLY: "auto_reply",
    MailKind.BOUNCE: "bounce",
    MailKind.LIST: "list",
    MailKind.OWN: "own_notification",
}
_HELD, _DROPPED, _PARKED = InboundStatus.HELD, InboundStatus.DROPPED, InboundStatus.PARKED


@dataclass(frozen=True)
class StoredEmail:
    """What the steps read of one `inbound_emails` row."""

    id: int
    raw: bytes = field(repr=False)
    via: str
    envelope_sender: str | None = field(repr=False)
    envelope_recipient: str = field(repr=False)
    sha256: str
    message_id_header: str | None = field(repr=False)


class Decider:
    """Decides about analysed emails; one per pipeline (it holds the rate limiters)."""

    def __init__(self, store: Store, settings: InboundPipelineSettings, rules: ReplyRules) -> None:
        self.store = store
        self.settings = settings
        self.rules = rules
        self._senders = RateLimiter(settings.sender_limit_per_hour, HOUR)
        self._threads = RateLimiter(settings.thread_limit_per_hour, HOUR)

    async def decide(
        self, row: StoredEmail, analysis: Analysis, now: datetime
    ) -> SetAside | Filing:
        """Steps 2-8, in the order given in the module docstring."""
        if analysis.malformed is not None:
            return SetAside(_PARKED, "malformed", detail={"rule": analysis.malformed})
        parsed, kind, content = analysis.parsed, analysis.classification, analysis.content
        assert parsed is not None and kind is not None and content is not None
        if kind.kind is not MailKind.HUMAN:
            return SetAside(_DROPPED, DROP_REASONS[kind.kind], detail={"rule": kind.reason})
        sender = sender_of(parsed)
        if not self._senders.allow(_key(sender or row.envelope_sender or ""), now):
            return SetAside(_DROPPED, "loop", detail={"rule": "sender_rate"})
        async with self.store.read() as session:
            token = await resolve(
                session,
                recipient=row.envelope_recipient,
                reply_ids=parsed.reply_ids,
                sender=sender,
                rules=self.rules,
                now=now,
            )
            if not token.valid:
                return await self.refused(session, row, token, sender)
            assert token.participant_id is not None and token.thread_id is not None
            addresses = await participant_addresses(session, token.participant_id)
            if sender is None or sender not in addresses:
                return aside(_HELD, "sender_mismatch", token, notice=True)
            auth = self._authenticate(parsed, sender)
            if auth is not None and not auth.passed:
                return aside(_HELD, "auth_failed", token, notice=True, rule=auth.value)
            if await is_duplicate(
                session,
                row_id=row.id,
                participant_id=token.participant_id,
                thread_id=token.thread_id,
                message_id_header=row.message_id_header,
                sha256=row.sha256,
            ):
                return aside(_DROPPED, "duplicate", token)
            if not self._threads.allow(str(token.thread_id), now):
                return aside(_DROPPED, "loop", token, rule="thread_rate")
            if content.empty:
                return aside(_HELD, "empty_reply", token, notice=True)
            if content.over_limit is not None:
                limit = content.over_limit.value
                return aside(_HELD, "attachment_limit", token, notice=True, rule=limit)
            if content.text.strip() and content.fingerprint in await recent_fingerprints(
                session,
                participant_id=token.participant_id,
                thread_id=token.thread_id,
                since=now - DAY,
            ):
                return aside(_DROPPED, "loop", token, rule="same_body")
        assert token.organization_id is not None
        return Filing(
            token=token,
            participant_id=token.participant_id,
            thread_id=token.thread_id,
            organization_id=token.organization_id,
            message_id_header=row.message_id_header,
            sha256=row.sha256,
            content=content,
            defects=parsed.defects,
            detail={
                "via": row.via,
                "route": token.route,
                "source": content.source,
                "trimmed": content.trimmed,
                "fallback": content.fallback,
                "attachments": len(content.attachments),
                "type_mismatches": content.type_mismatches,
                "defects": parsed.defects,
                "auth": "not_required" if auth is None else auth.value,
            },
        )

    async def refused(
        self, session: AsyncSession, row: StoredEmail, token: Resolution, sender: str | None
    ) -> SetAside:
        """A reply whose token is not valid: held with the token's verdict as reason.

        Only an expired token is worth a notice (the person can answer in the
        portal), and only when the sender is the token's participant. A reply to
        no token at all is `unknown_recipient`; on the IMAP path (no RCPT check
        refused it) the sender is told, at their address.
        """
        if token.participant_id is None or token.thread_id is None:
            notice = None
            if row.via == InboundVia.IMAP.value and sender is not None:
                target = await unknown_sender_target(
                    session, recipient=row.envelope_recipient, sender=sender
                )
                if target is not None:
                    org_id, person = target
                    notice = NoticeTo(org_id, person, None if person is not None else sender)
            org = None if notice is None else notice.organization_id
            return SetAside(
                _HELD,
                "unknown_recipient",
                organization_id=org,
                notice=notice,
                detail={"rule": token.verdict},
            )
        tell = token.verdict == "expired" and sender is not None
        if tell:
            assert sender is not None
            tell = sender in await participant_addresses(session, token.participant_id)
        return aside(_HELD, token.verdict, token, notice=tell)

    def _authenticate(self, parsed: ParsedMail, sender: str) -> AuthVerdict | None:
        """None when not required; else what a trusted Authentication-Results field says."""
        if not self.settings.require_authentication:
            return None
        return authentication_verdict(
            parsed.header_values("Authentication-Results"),
            self.settings.trusted_authserv_ids,
            sender.rpartition("@")[2],
        )


def aside(
    status: InboundStatus,
    reason: str,
    token: Resolution,
    *,
    notice: bool = False,
    rule: str | None = None,
) -> SetAside:
    """An outcome for a reply whose token resolved; the notice goes to the participant."""
    tell = None
    if notice and token.organization_id is not None and token.participant_id is not None:
        tell = NoticeTo(
            token.organization_id, recipient_id=token.participant_id, thread_id=token.thread_id
        )
    return SetAside(
        status,
        reason,
        participant_id=token.participant_id,
        thread_id=token.thread_id,
        organization_id=token.organization_id,
        notice=tell,
        detail={} if rule is None else {"rule": rule},
    )


def classify_sender(row: StoredEmail) -> str | None:
    """The envelope sender as the classifier wants it: `""` is the null sender (stored as
    NULL by the SMTP/LMTP receivers), None unknown (IMAP)."""
    if row.envelope_sender is not None:
        return row.envelope_sender
    return None if row.via == InboundVia.IMAP.value else ""


def sender_of(parsed: ParsedMail | None) -> str | None:
    """The normalised address of the one `From` mailbox; None unless there is exactly one."""
    if parsed is None or parsed.from_fields != 1 or len(parsed.from_addresses) != 1:
        return None
    try:
        return normalize_address(parsed.from_addresses[0])
    except InvalidAddress:
        return None


def _key(address: str) -> str:
    """Rate-limiter key for an address: a hash, so no address sits in memory longer than needed."""
    return hashlib.sha256(address.encode("utf-8", "surrogatepass")).hexdigest()[:32]
