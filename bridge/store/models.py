"""The shared message store: tables, columns and constraints.

This module *is* the public contract with the portal (which may be written in
any language and talks plain SQL). `docs/store.md` explains each table and who
writes it; migrations under `bridge/store/migrations` create exactly this
schema. The module holds declarations only: no sessions, no queries.

Conventions that portals rely on:

* Enumerations are stored as short lower-case text, guarded by CHECK
  constraints (no native PostgreSQL enum types, so adding a value is a plain
  migration).
* Every timestamp is timezone-aware and written in UTC.
* Ids are integers assigned by the database.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

# Stable constraint and index names, so that migrations can refer to them on both backends.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Default for created-at columns; rows written by bridge carry UTC."""
    return datetime.now(UTC)


class NotificationMode(enum.StrEnum):
    SECURE = "secure"
    CONVENIENCE = "convenience"


class ParticipantKind(enum.StrEnum):
    STAFF = "staff"
    CLIENT = "client"
    CONTACT = "contact"


class StaffRole(enum.StrEnum):
    CLINICIAN = "clinician"
    SUPERVISOR = "supervisor"
    CLINICAL_ADMIN = "clinical_admin"
    PRACTICE_ADMIN = "practice_admin"
    SCHEDULER = "scheduler"
    BILLER = "biller"


class Audience(enum.StrEnum):
    ADMINISTRATIVE = "administrative"
    BILLING = "billing"
    CLINICAL = "clinical"


class MessageSource(enum.StrEnum):
    PORTAL = "portal"
    EMAIL = "email"


class OutboxKind(enum.StrEnum):
    NOTIFICATION = "notification"
    INVITATION = "invitation"
    NOTICE = "notice"


class OutboxStatus(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    COALESCED = "coalesced"


class InboundVia(enum.StrEnum):
    SMTP = "smtp"
    LMTP = "lmtp"
    IMAP = "imap"


class InboundStatus(enum.StrEnum):
    RECEIVED = "received"
    FILED = "filed"
    DROPPED = "dropped"
    HELD = "held"
    PARKED = "parked"


_NOW = {"server_default": sa.func.current_timestamp()}
_TRUE = {"server_default": sa.true()}
_FALSE = {"server_default": sa.false()}


def _text_default(value: str) -> dict[str, object]:
    return {"server_default": value}


def _check_in(column: str, values: type[enum.StrEnum]) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{v.value}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=f"{column}_valid")


# --- organizations and people ---------------------------------------------------------


class Organization(SQLModel, table=True):
    __tablename__ = "organizations"
    __table_args__ = (
        _check_in("notification_mode", NotificationMode),
        # Convenience mode can only be switched on together with the explicit
        # acknowledgement that HIPAA compliance can then not be guaranteed.
        sa.CheckConstraint(
            "notification_mode = 'secure' OR convenience_acknowledged_at IS NOT NULL",
            name="convenience_acknowledged",
        ),
        sa.CheckConstraint("trash_retention_days >= 1", name="trash_retention_positive"),
        # SQLite: never hand out an id again (audit events and read markers keep ids).
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    display_name: str = Field(max_length=200)
    notification_mode: str = Field(
        default=NotificationMode.SECURE.value,
        max_length=16,
        sa_column_kwargs=_text_default(NotificationMode.SECURE.value),
    )
    convenience_acknowledged_at: datetime | None = Field(default=None)
    convenience_acknowledged_by: int | None = Field(default=None)
    trash_retention_days: int = Field(default=15, sa_column_kwargs=_text_default("15"))
    portal_base_url: str = Field(max_length=500)
    reply_domain: str = Field(max_length=253)
    created_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)


class Participant(SQLModel, table=True):
    __tablename__ = "participants"
    __table_args__ = (
        _check_in("kind", ParticipantKind),
        # A contact always belongs to a client; nobody else has a client.
        sa.CheckConstraint(
            "(kind = 'contact' AND contact_of_id IS NOT NULL)"
            " OR (kind <> 'contact' AND contact_of_id IS NULL)",
            name="contact_has_client",
        ),
        # SQLite: never hand out an id again (audit events and read markers keep ids).
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(foreign_key="organizations.id", index=True, ondelete="CASCADE")
    kind: str = Field(max_length=16)
    display_name: str = Field(max_length=200)
    active: bool = Field(default=True, sa_column_kwargs=_TRUE)
    has_portal_account: bool = Field(default=False, sa_column_kwargs=_FALSE)
    # Consent to receive message content by email (convenience mode needs it).
    email_content_consent: bool = Field(default=False, sa_column_kwargs=_FALSE)
    # For contacts: the client who copies them in.
    contact_of_id: int | None = Field(
        default=None, foreign_key="participants.id", index=True, ondelete="CASCADE"
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)


class ParticipantRole(SQLModel, table=True):
    """A staff member's roles; one person may hold several."""

    __tablename__ = "participant_roles"
    __table_args__ = (_check_in("role", StaffRole),)

    participant_id: int = Field(foreign_key="participants.id", primary_key=True, ondelete="CASCADE")
    role: str = Field(primary_key=True, max_length=32)


class EmailAddress(SQLModel, table=True):
    """An address of a participant. `normalized` is what matching uses."""

    __tablename__ = "email_addresses"
    __table_args__ = (
        sa.UniqueConstraint("participant_id", "normalized"),
        # At most one primary address per participant.
        sa.Index(
            "ux_email_addresses_primary",
            "participant_id",
            unique=True,
            postgresql_where=sa.text("is_primary"),
            sqlite_where=sa.text("is_primary"),
        ),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    participant_id: int = Field(foreign_key="participants.id", index=True, ondelete="CASCADE")
    address: str = Field(max_length=320)
    normalized: str = Field(max_length=320, index=True)
    is_primary: bool = Field(default=False, sa_column_kwargs=_FALSE)


class NotificationPreference(SQLModel, table=True):
    """Per-staff wishes; a staff member without a row gets the defaults below."""

    __tablename__ = "notification_preferences"

    participant_id: int = Field(foreign_key="participants.id", primary_key=True, ondelete="CASCADE")
    email_enabled: bool = Field(default=True, sa_column_kwargs=_TRUE)
    administrative: bool = Field(default=True, sa_column_kwargs=_TRUE)
    billing: bool = Field(default=True, sa_column_kwargs=_TRUE)
    clinical: bool = Field(default=True, sa_column_kwargs=_TRUE)


class ClientClinician(SQLModel, table=True):
    """Which clinicians are assigned to which client (reach of mass messages)."""

    __tablename__ = "client_clinicians"

    client_id: int = Field(foreign_key="participants.id", primary_key=True, ondelete="CASCADE")
    clinician_id: int = Field(
        foreign_key="participants.id", primary_key=True, index=True, ondelete="CASCADE"
    )


# --- threads, mailboxes, messages ----------------------------------------------------


class MassMessage(SQLModel, table=True):
    """The origin of a mass message; each client gets a private thread of it."""

    __tablename__ = "mass_messages"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(foreign_key="organizations.id", index=True, ondelete="CASCADE")
    author_id: int = Field(foreign_key="participants.id", index=True, ondelete="CASCADE")
    created_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)


class Thread(SQLModel, table=True):
    __tablename__ = "threads"
    __table_args__ = (_check_in("audience", Audience), {"sqlite_autoincrement": True})

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(foreign_key="organizations.id", index=True, ondelete="CASCADE")
    client_id: int = Field(foreign_key="participants.id", index=True, ondelete="CASCADE")
    subject: str = Field(max_length=500)
    topic: str | None = Field(default=None, max_length=200)
    audience: str = Field(
        default=Audience.CLINICAL.value,
        max_length=16,
        sa_column_kwargs=_text_default(Audience.CLINICAL.value),
    )
    mass_message_id: int | None = Field(
        default=None, foreign_key="mass_messages.id", index=True, ondelete="SET NULL"
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)


class ThreadClinician(SQLModel, table=True):
    """Clinicians assigned to a thread; they see it whatever its audience."""

    __tablename__ = "thread_clinicians"

    thread_id: int = Field(foreign_key="threads.id", primary_key=True, ondelete="CASCADE")
    clinician_id: int = Field(
        foreign_key="participants.id", primary_key=True, index=True, ondelete="CASCADE"
    )


class Mailbox(SQLModel, table=True):
    """One participant's hold on one thread: read state, archive, trash.

    Deleting the row is a permanent delete for that participant; the thread's
    content goes once no row references it any more (see docs/store.md).
    """

    __tablename__ = "mailboxes"

    thread_id: int = Field(foreign_key="threads.id", primary_key=True, ondelete="CASCADE")
    participant_id: int = Field(
        foreign_key="participants.id", primary_key=True, index=True, ondelete="CASCADE"
    )
    last_read_message_id: int | None = Field(default=None)
    archived_at: datetime | None = Field(default=None)
    trashed_at: datetime | None = Field(default=None, index=True)
    joined_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)


class Message(SQLModel, table=True):
    __tablename__ = "messages"
    __table_args__ = (
        _check_in("source", MessageSource),
        # The dispatcher's work queue: messages the daemon has not yet looked at.
        sa.Index(
            "ix_messages_undispatched",
            "id",
            postgresql_where=sa.text("dispatched_at IS NULL"),
            sqlite_where=sa.text("dispatched_at IS NULL"),
        ),
        # One inbound email files at most one message (DESIGN invariant 2).
        sa.Index(
            "ux_messages_inbound_email_id",
            "inbound_email_id",
            unique=True,
            postgresql_where=sa.text("inbound_email_id IS NOT NULL"),
            sqlite_where=sa.text("inbound_email_id IS NOT NULL"),
        ),
        # SQLite: never hand out an id again (audit events and read markers keep ids).
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    thread_id: int = Field(foreign_key="threads.id", index=True, ondelete="CASCADE")
    # No cascade: deleting a person must not silently delete what they wrote in other
    # people's threads. Deactivate people instead; threads go through the purge.
    author_id: int = Field(foreign_key="participants.id", index=True)
    body_text: str = Field(sa_type=sa.Text)
    body_html: str | None = Field(default=None, sa_type=sa.Text)
    source: str = Field(
        default=MessageSource.PORTAL.value,
        max_length=16,
        sa_column_kwargs=_text_default(MessageSource.PORTAL.value),
    )
    inbound_email_id: int | None = Field(
        default=None, foreign_key="inbound_emails.id", ondelete="SET NULL"
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)
    dispatched_at: datetime | None = Field(default=None)


class Attachment(SQLModel, table=True):
    """Metadata; the bytes live in the blob folder at `sha256[:2]/sha256[2:4]/sha256`."""

    __tablename__ = "attachments"
    __table_args__ = (
        sa.CheckConstraint("size >= 0", name="size_not_negative"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="messages.id", index=True, ondelete="CASCADE")
    filename: str = Field(max_length=255)
    content_type: str = Field(max_length=255)
    size: int
    sha256: str = Field(max_length=64, index=True)


# --- the daemon's own tables ------------------------------------------------------------


class ReplyToken(SQLModel, table=True):
    """A reply address secret: only its keyed hash is stored."""

    __tablename__ = "reply_tokens"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True)
    participant_id: int = Field(foreign_key="participants.id", index=True, ondelete="CASCADE")
    thread_id: int = Field(foreign_key="threads.id", index=True, ondelete="CASCADE")
    created_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)
    expires_at: datetime = Field(index=True)
    revoked_at: datetime | None = Field(default=None)


class Outbox(SQLModel, table=True):
    """One email to send: one row per (message, recipient) for notifications."""

    __tablename__ = "outbox"
    __table_args__ = (
        _check_in("kind", OutboxKind),
        _check_in("mode", NotificationMode),
        _check_in("status", OutboxStatus),
        sa.Index("ix_outbox_due", "status", "next_attempt_at"),
        sa.CheckConstraint(
            "recipient_id IS NOT NULL OR to_address IS NOT NULL", name="has_destination"
        ),
        # SQLite: never hand out an id again (audit events and read markers keep ids).
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(
        default=OutboxKind.NOTIFICATION.value,
        max_length=16,
        sa_column_kwargs=_text_default(OutboxKind.NOTIFICATION.value),
    )
    mode: str = Field(
        default=NotificationMode.SECURE.value,
        max_length=16,
        sa_column_kwargs=_text_default(NotificationMode.SECURE.value),
    )
    status: str = Field(
        default=OutboxStatus.PENDING.value,
        max_length=16,
        sa_column_kwargs=_text_default(OutboxStatus.PENDING.value),
    )
    organization_id: int = Field(foreign_key="organizations.id", index=True, ondelete="CASCADE")
    # The participant the email is for; NULL only for a notice to an address that belongs to
    # no participant (an unknown sender on the IMAP path), which then sets `to_address`.
    recipient_id: int | None = Field(
        default=None, foreign_key="participants.id", index=True, ondelete="CASCADE"
    )
    to_address: str | None = Field(default=None, max_length=320)
    thread_id: int | None = Field(
        default=None, foreign_key="threads.id", index=True, ondelete="CASCADE"
    )
    message_id: int | None = Field(
        default=None, foreign_key="messages.id", index=True, ondelete="CASCADE"
    )
    # A short machine reason for notices ("sender_mismatch", ...); never free text.
    reason: str | None = Field(default=None, max_length=64)
    attempts: int = Field(default=0, sa_column_kwargs=_text_default("0"))
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: datetime | None = Field(default=None)
    smtp_code: int | None = Field(default=None)
    smtp_answer: str | None = Field(default=None, max_length=1000)
    message_id_header: str | None = Field(default=None, max_length=255, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)
    sent_at: datetime | None = Field(default=None)


class InboundEmail(SQLModel, table=True):
    """An email as received, committed before it is acknowledged."""

    __tablename__ = "inbound_emails"
    __table_args__ = (
        _check_in("received_via", InboundVia),
        _check_in("status", InboundStatus),
        sa.Index("ix_inbound_emails_status", "status", "next_attempt_at"),
        # SQLite: never hand out an id again (audit events and read markers keep ids).
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    raw: bytes = Field(sa_type=sa.LargeBinary)
    sha256: str = Field(max_length=64, index=True)
    message_id_header: str | None = Field(default=None, max_length=998, index=True)
    received_via: str = Field(max_length=8)
    envelope_sender: str | None = Field(default=None, max_length=320)
    envelope_recipient: str = Field(max_length=320)
    # Resolved by the pipeline: whose reply it is, to which thread.
    participant_id: int | None = Field(
        default=None, foreign_key="participants.id", index=True, ondelete="SET NULL"
    )
    # The raw mail goes with its thread when the thread is purged (nothing retrievable).
    thread_id: int | None = Field(
        default=None, foreign_key="threads.id", index=True, ondelete="CASCADE"
    )
    defects: int = Field(default=0, sa_column_kwargs=_text_default("0"))
    status: str = Field(
        default=InboundStatus.RECEIVED.value,
        max_length=16,
        sa_column_kwargs=_text_default(InboundStatus.RECEIVED.value),
    )
    reason: str | None = Field(default=None, max_length=64)
    attempts: int = Field(default=0, sa_column_kwargs=_text_default("0"))
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: datetime | None = Field(default=None)
    received_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)
    processed_at: datetime | None = Field(default=None)


class AuditEvent(SQLModel, table=True):
    """Who did what to which ids, when. Ids, hashes and counts; never content."""

    __tablename__ = "audit_events"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True, sa_column_kwargs=_NOW)
    actor: str = Field(max_length=128)
    action: str = Field(max_length=64, index=True)
    organization_id: int | None = Field(default=None, index=True)
    thread_id: int | None = Field(default=None)
    message_id: int | None = Field(default=None)
    participant_id: int | None = Field(default=None)
    outbox_id: int | None = Field(default=None)
    inbound_email_id: int | None = Field(default=None)
    detail: dict[str, int | str | bool | None] = Field(
        default_factory=dict, sa_type=sa.JSON, sa_column_kwargs={"server_default": "{}"}
    )


class Lease(SQLModel, table=True):
    """A named lease held by one daemon instance (e.g. the purge job)."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=64)
    owner: str = Field(max_length=128)
    expires_at: datetime = Field()


class ImapState(SQLModel, table=True):
    """Where the IMAP receiver is in a mailbox: UIDVALIDITY and the last UID stored."""

    __tablename__ = "imap_state"

    # host/user/mailbox of the practice's inbound mailbox (not a person's address).
    account: str = Field(primary_key=True, max_length=255)
    uidvalidity: int = Field(sa_type=sa.BigInteger)
    last_uid: int = Field(default=0, sa_type=sa.BigInteger)
    updated_at: datetime = Field(default_factory=utcnow, sa_column_kwargs=_NOW)
