"""What the operator can see and do with the outbox from the command line.

Owns three small operations for `bridge queue ...`: list rows (ids, states,
codes, times: never an address, a subject or content), put a failed or
pending row back in line now, and send a fixed test email through a
transport to check the relay settings.

It does not send queued rows (the sender does) and prints nothing: the CLI
formats what these functions return.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from sqlmodel import col, select

from bridge.errors import BridgeError
from bridge.mail.compose import AUTO_RESPONSE_SUPPRESS
from bridge.mail.headers import AUTO_GENERATED, AUTO_SUBMITTED, OWN_MAIL_HEADER
from bridge.outbound.transport import SendResult, Transport
from bridge.store.engine import Store
from bridge.store.models import AuditEvent, Outbox, OutboxStatus

AUDIT_RETRIED = "outbox_retried"
TEST_SUBJECT = "bridge test email"
TEST_BODY = (
    "This is a test email sent by the bridge command line to check the outbound\n"
    "relay settings. It carries no practice data. No reply is needed.\n"
)

# The rows `retry` puts back in line: failed ones, and pending ones waiting for backoff.
_RETRYABLE = (OutboxStatus.FAILED.value, OutboxStatus.PENDING.value)


class UnknownStatusError(BridgeError):
    """`status` is not one of the outbox states."""

    def __init__(self, status: str) -> None:
        allowed = ", ".join(s.value for s in OutboxStatus)
        super().__init__(f"unknown outbox status {status!r} (use one of {allowed})")
        self.status = status


@dataclass(frozen=True)
class QueueRow:
    """One outbox row as the operator sees it: ids, states, codes and times only."""

    id: int
    kind: str
    mode: str
    status: str
    attempts: int
    next_attempt_at: datetime
    smtp_code: int | None
    created_at: datetime


async def list_rows(store: Store, status: str | None = None, limit: int = 50) -> list[QueueRow]:
    """The newest `limit` rows (all, or those in `status`), newest first."""
    if status is not None and status not in {s.value for s in OutboxStatus}:
        raise UnknownStatusError(status)
    query = select(Outbox)
    if status is not None:
        query = query.where(col(Outbox.status) == status)
    query = query.order_by(col(Outbox.id).desc()).limit(max(limit, 0))
    async with store.read() as session:
        return [
            QueueRow(
                id=row.id or 0,
                kind=row.kind,
                mode=row.mode,
                status=row.status,
                attempts=row.attempts,
                next_attempt_at=row.next_attempt_at,
                smtp_code=row.smtp_code,
                created_at=row.created_at,
            )
            for row in await session.exec(query)
        ]


async def retry(store: Store, outbox_id: int, now: datetime, *, actor: str = "cli") -> bool:
    """Put a `failed` or `pending` row back in line, due `now`; False if there is none.

    `attempts` is kept (it counts real delivery attempts), and so is the last
    SMTP answer until the next attempt replaces it. The retry horizon still
    counts from `created_at`: a row older than it gets one more attempt, and
    is failed again if that one is deferred. The change is audited.
    """
    async with store.transaction() as session:
        query = (
            select(Outbox)
            .where(col(Outbox.id) == outbox_id, col(Outbox.status).in_(_RETRYABLE))
            .with_for_update()
        )
        row = (await session.exec(query)).first()
        if row is None:
            return False
        previous = row.status
        row.status, row.next_attempt_at = OutboxStatus.PENDING.value, now
        row.lease_owner = row.lease_expires_at = None
        session.add(
            AuditEvent(
                at=now,
                actor=actor,
                action=AUDIT_RETRIED,
                organization_id=row.organization_id,
                thread_id=row.thread_id,
                message_id=row.message_id,
                participant_id=row.recipient_id,
                outbox_id=outbox_id,
                detail={"previous_status": previous},
            )
        )
    return True


def build_test_message(from_address: str, to_address: str, now: datetime) -> EmailMessage:
    """The fixed test email: nothing in it comes from the store."""
    message = EmailMessage()
    message["From"] = from_address
    message["To"] = to_address
    message["Subject"] = TEST_SUBJECT
    message["Date"] = format_datetime(now.astimezone(UTC))
    message["Message-ID"] = make_msgid("bridge-test", domain=from_address.rpartition("@")[2])
    message[AUTO_SUBMITTED] = AUTO_GENERATED
    message[AUTO_RESPONSE_SUPPRESS] = "All"
    # Marked as our own mail, so that a test sent to our own inbound address is dropped.
    message[OWN_MAIL_HEADER] = "test"
    message.set_content(TEST_BODY)
    return message


async def send_test(
    transport: Transport, from_address: str, to_address: str, now: datetime
) -> SendResult:
    """Send the test email; raises `TransientSendError`/`PermanentSendError` like any send."""
    name = f"test-{now.astimezone(UTC):%Y%m%dT%H%M%S}"
    message = build_test_message(from_address, to_address, now)
    return await transport.send(message, sender=from_address, recipient=to_address, name=name)
