"""initial schema (the store contract of bridge 0.1)

Revision ID: 0001
Revises:
Create Date: 2026-11-22 02:20:23.790682
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=True),
        sa.Column("thread_id", sa.Integer(), nullable=True),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("participant_id", sa.Integer(), nullable=True),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.Column("inbound_email_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON(), server_default="{}", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_events_action"), ["action"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_events_at"), ["at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_audit_events_organization_id"), ["organization_id"], unique=False
        )

    op.create_table(
        "imap_state",
        sa.Column("account", sa.String(length=255), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("account", name=op.f("pk_imap_state")),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "organizations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column(
            "notification_mode", sa.String(length=16), server_default="secure", nullable=False
        ),
        sa.Column("convenience_acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("convenience_acknowledged_by", sa.Integer(), nullable=True),
        sa.Column("trash_retention_days", sa.Integer(), server_default="15", nullable=False),
        sa.Column("portal_base_url", sa.String(length=500), nullable=False),
        sa.Column("reply_domain", sa.String(length=253), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "notification_mode = 'secure' OR convenience_acknowledged_at IS NOT NULL",
            name=op.f("ck_organizations_convenience_acknowledged"),
        ),
        sa.CheckConstraint(
            "notification_mode IN ('secure', 'convenience')",
            name=op.f("ck_organizations_notification_mode_valid"),
        ),
        sa.CheckConstraint(
            "trash_retention_days >= 1", name=op.f("ck_organizations_trash_retention_positive")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "participants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("has_portal_account", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("email_content_consent", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("contact_of_id", sa.Integer(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "(kind = 'contact' AND contact_of_id IS NOT NULL) OR (kind <> 'contact' AND contact_of_id IS NULL)",
            name=op.f("ck_participants_contact_has_client"),
        ),
        sa.CheckConstraint(
            "kind IN ('staff', 'client', 'contact')", name=op.f("ck_participants_kind_valid")
        ),
        sa.ForeignKeyConstraint(
            ["contact_of_id"],
            ["participants.id"],
            name=op.f("fk_participants_contact_of_id_participants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_participants_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_participants")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("participants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_participants_contact_of_id"), ["contact_of_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_participants_organization_id"), ["organization_id"], unique=False
        )

    op.create_table(
        "client_clinicians",
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("clinician_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["participants.id"],
            name=op.f("fk_client_clinicians_client_id_participants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["clinician_id"],
            ["participants.id"],
            name=op.f("fk_client_clinicians_clinician_id_participants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("client_id", "clinician_id", name=op.f("pk_client_clinicians")),
    )
    with op.batch_alter_table("client_clinicians", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_client_clinicians_clinician_id"), ["clinician_id"], unique=False
        )

    op.create_table(
        "email_addresses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("participant_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("normalized", sa.String(length=320), nullable=False),
        sa.Column("is_primary", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.ForeignKeyConstraint(
            ["participant_id"],
            ["participants.id"],
            name=op.f("fk_email_addresses_participant_id_participants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_addresses")),
        sa.UniqueConstraint(
            "participant_id",
            "normalized",
            name=op.f("uq_email_addresses_participant_id_normalized"),
        ),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("email_addresses", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_email_addresses_normalized"), ["normalized"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_email_addresses_participant_id"), ["participant_id"], unique=False
        )
        batch_op.create_index(
            "ux_email_addresses_primary",
            ["participant_id"],
            unique=True,
            postgresql_where=sa.text("is_primary"),
            sqlite_where=sa.text("is_primary"),
        )

    op.create_table(
        "mass_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("author_id", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["author_id"],
            ["participants.id"],
            name=op.f("fk_mass_messages_author_id_participants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_mass_messages_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mass_messages")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("mass_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mass_messages_author_id"), ["author_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_mass_messages_organization_id"), ["organization_id"], unique=False
        )

    op.create_table(
        "notification_preferences",
        sa.Column("participant_id", sa.Integer(), nullable=False),
        sa.Column("email_enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("administrative", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("billing", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("clinical", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.ForeignKeyConstraint(
            ["participant_id"],
            ["participants.id"],
            name=op.f("fk_notification_preferences_participant_id_participants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("participant_id", name=op.f("pk_notification_preferences")),
    )
    op.create_table(
        "participant_roles",
        sa.Column("participant_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.CheckConstraint(
            "role IN ('clinician', 'supervisor', 'clinical_admin', 'practice_admin', 'scheduler', 'biller')",
            name=op.f("ck_participant_roles_role_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["participant_id"],
            ["participants.id"],
            name=op.f("fk_participant_roles_participant_id_participants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("participant_id", "role", name=op.f("pk_participant_roles")),
    )
    op.create_table(
        "threads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=500), nullable=False),
        sa.Column("topic", sa.String(length=200), nullable=True),
        sa.Column("audience", sa.String(length=16), server_default="clinical", nullable=False),
        sa.Column("mass_message_id", sa.Integer(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "audience IN ('administrative', 'billing', 'clinical')",
            name=op.f("ck_threads_audience_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["participants.id"],
            name=op.f("fk_threads_client_id_participants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["mass_message_id"],
            ["mass_messages.id"],
            name=op.f("fk_threads_mass_message_id_mass_messages"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_threads_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_threads")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("threads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_threads_client_id"), ["client_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_threads_mass_message_id"), ["mass_message_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_threads_organization_id"), ["organization_id"], unique=False
        )

    op.create_table(
        "inbound_emails",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("message_id_header", sa.String(length=998), nullable=True),
        sa.Column("received_via", sa.String(length=8), nullable=False),
        sa.Column("envelope_sender", sa.String(length=320), nullable=True),
        sa.Column("envelope_recipient", sa.String(length=320), nullable=False),
        sa.Column("participant_id", sa.Integer(), nullable=True),
        sa.Column("thread_id", sa.Integer(), nullable=True),
        sa.Column("defects", sa.Integer(), server_default="0", nullable=False),
        sa.Column("status", sa.String(length=16), server_default="received", nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "received_via IN ('smtp', 'lmtp', 'imap')",
            name=op.f("ck_inbound_emails_received_via_valid"),
        ),
        sa.CheckConstraint(
            "status IN ('received', 'filed', 'dropped', 'held', 'parked')",
            name=op.f("ck_inbound_emails_status_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["participant_id"],
            ["participants.id"],
            name=op.f("fk_inbound_emails_participant_id_participants"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.id"],
            name=op.f("fk_inbound_emails_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_emails")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("inbound_emails", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inbound_emails_message_id_header"), ["message_id_header"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_inbound_emails_participant_id"), ["participant_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_inbound_emails_sha256"), ["sha256"], unique=False)
        batch_op.create_index(
            "ix_inbound_emails_status", ["status", "next_attempt_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_inbound_emails_thread_id"), ["thread_id"], unique=False
        )

    op.create_table(
        "mailboxes",
        sa.Column("thread_id", sa.Integer(), nullable=False),
        sa.Column("participant_id", sa.Integer(), nullable=False),
        sa.Column("last_read_message_id", sa.Integer(), nullable=True),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trashed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "joined_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["participant_id"],
            ["participants.id"],
            name=op.f("fk_mailboxes_participant_id_participants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.id"],
            name=op.f("fk_mailboxes_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("thread_id", "participant_id", name=op.f("pk_mailboxes")),
    )
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_mailboxes_participant_id"), ["participant_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_mailboxes_trashed_at"), ["trashed_at"], unique=False)

    op.create_table(
        "reply_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("participant_id", sa.Integer(), nullable=False),
        sa.Column("thread_id", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["participant_id"],
            ["participants.id"],
            name=op.f("fk_reply_tokens_participant_id_participants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.id"],
            name=op.f("fk_reply_tokens_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reply_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_reply_tokens_token_hash")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("reply_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_reply_tokens_expires_at"), ["expires_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_reply_tokens_participant_id"), ["participant_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_reply_tokens_thread_id"), ["thread_id"], unique=False)

    op.create_table(
        "thread_clinicians",
        sa.Column("thread_id", sa.Integer(), nullable=False),
        sa.Column("clinician_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["clinician_id"],
            ["participants.id"],
            name=op.f("fk_thread_clinicians_clinician_id_participants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.id"],
            name=op.f("fk_thread_clinicians_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("thread_id", "clinician_id", name=op.f("pk_thread_clinicians")),
    )
    with op.batch_alter_table("thread_clinicians", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_thread_clinicians_clinician_id"), ["clinician_id"], unique=False
        )

    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("thread_id", sa.Integer(), nullable=False),
        sa.Column("author_id", sa.Integer(), nullable=False),
        sa.Column("body_text", sa.Text(), nullable=False),
        sa.Column("body_html", sa.Text(), nullable=True),
        sa.Column("source", sa.String(length=16), server_default="portal", nullable=False),
        sa.Column("inbound_email_id", sa.Integer(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("source IN ('portal', 'email')", name=op.f("ck_messages_source_valid")),
        sa.ForeignKeyConstraint(
            ["author_id"], ["participants.id"], name=op.f("fk_messages_author_id_participants")
        ),
        sa.ForeignKeyConstraint(
            ["inbound_email_id"],
            ["inbound_emails.id"],
            name=op.f("fk_messages_inbound_email_id_inbound_emails"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.id"],
            name=op.f("fk_messages_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_messages_author_id"), ["author_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_messages_thread_id"), ["thread_id"], unique=False)
        batch_op.create_index(
            "ix_messages_undispatched",
            ["id"],
            unique=False,
            postgresql_where=sa.text("dispatched_at IS NULL"),
            sqlite_where=sa.text("dispatched_at IS NULL"),
        )
        batch_op.create_index(
            "ux_messages_inbound_email_id",
            ["inbound_email_id"],
            unique=True,
            postgresql_where=sa.text("inbound_email_id IS NOT NULL"),
            sqlite_where=sa.text("inbound_email_id IS NOT NULL"),
        )

    op.create_table(
        "attachments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.CheckConstraint("size >= 0", name=op.f("ck_attachments_size_not_negative")),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_attachments_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attachments")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("attachments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_attachments_message_id"), ["message_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_attachments_sha256"), ["sha256"], unique=False)

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), server_default="notification", nullable=False),
        sa.Column("mode", sa.String(length=16), server_default="secure", nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("recipient_id", sa.Integer(), nullable=True),
        sa.Column("to_address", sa.String(length=320), nullable=True),
        sa.Column("thread_id", sa.Integer(), nullable=True),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("smtp_code", sa.Integer(), nullable=True),
        sa.Column("smtp_answer", sa.String(length=1000), nullable=True),
        sa.Column("message_id_header", sa.String(length=255), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "kind IN ('notification', 'invitation', 'notice')", name=op.f("ck_outbox_kind_valid")
        ),
        sa.CheckConstraint("mode IN ('secure', 'convenience')", name=op.f("ck_outbox_mode_valid")),
        sa.CheckConstraint(
            "status IN ('pending', 'sending', 'sent', 'failed', 'coalesced')",
            name=op.f("ck_outbox_status_valid"),
        ),
        sa.CheckConstraint(
            "recipient_id IS NOT NULL OR to_address IS NOT NULL",
            name=op.f("ck_outbox_has_destination"),
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_outbox_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_outbox_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["recipient_id"],
            ["participants.id"],
            name=op.f("fk_outbox_recipient_id_participants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.id"],
            name=op.f("fk_outbox_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_due", ["status", "next_attempt_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_outbox_message_id"), ["message_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_outbox_message_id_header"), ["message_id_header"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_outbox_organization_id"), ["organization_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_outbox_recipient_id"), ["recipient_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_outbox_thread_id"), ["thread_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_thread_id"))
        batch_op.drop_index(batch_op.f("ix_outbox_recipient_id"))
        batch_op.drop_index(batch_op.f("ix_outbox_organization_id"))
        batch_op.drop_index(batch_op.f("ix_outbox_message_id_header"))
        batch_op.drop_index(batch_op.f("ix_outbox_message_id"))
        batch_op.drop_index("ix_outbox_due")

    op.drop_table("outbox")
    with op.batch_alter_table("attachments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_attachments_sha256"))
        batch_op.drop_index(batch_op.f("ix_attachments_message_id"))

    op.drop_table("attachments")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(
            "ux_messages_inbound_email_id",
            postgresql_where=sa.text("inbound_email_id IS NOT NULL"),
            sqlite_where=sa.text("inbound_email_id IS NOT NULL"),
        )
        batch_op.drop_index(
            "ix_messages_undispatched",
            postgresql_where=sa.text("dispatched_at IS NULL"),
            sqlite_where=sa.text("dispatched_at IS NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_messages_thread_id"))
        batch_op.drop_index(batch_op.f("ix_messages_author_id"))

    op.drop_table("messages")
    with op.batch_alter_table("thread_clinicians", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_thread_clinicians_clinician_id"))

    op.drop_table("thread_clinicians")
    with op.batch_alter_table("reply_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reply_tokens_thread_id"))
        batch_op.drop_index(batch_op.f("ix_reply_tokens_participant_id"))
        batch_op.drop_index(batch_op.f("ix_reply_tokens_expires_at"))

    op.drop_table("reply_tokens")
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mailboxes_trashed_at"))
        batch_op.drop_index(batch_op.f("ix_mailboxes_participant_id"))

    op.drop_table("mailboxes")
    with op.batch_alter_table("inbound_emails", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbound_emails_thread_id"))
        batch_op.drop_index("ix_inbound_emails_status")
        batch_op.drop_index(batch_op.f("ix_inbound_emails_sha256"))
        batch_op.drop_index(batch_op.f("ix_inbound_emails_participant_id"))
        batch_op.drop_index(batch_op.f("ix_inbound_emails_message_id_header"))

    op.drop_table("inbound_emails")
    with op.batch_alter_table("threads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_threads_organization_id"))
        batch_op.drop_index(batch_op.f("ix_threads_mass_message_id"))
        batch_op.drop_index(batch_op.f("ix_threads_client_id"))

    op.drop_table("threads")
    op.drop_table("participant_roles")
    op.drop_table("notification_preferences")
    with op.batch_alter_table("mass_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mass_messages_organization_id"))
        batch_op.drop_index(batch_op.f("ix_mass_messages_author_id"))

    op.drop_table("mass_messages")
    with op.batch_alter_table("email_addresses", schema=None) as batch_op:
        batch_op.drop_index(
            "ux_email_addresses_primary",
            postgresql_where=sa.text("is_primary"),
            sqlite_where=sa.text("is_primary"),
        )
        batch_op.drop_index(batch_op.f("ix_email_addresses_participant_id"))
        batch_op.drop_index(batch_op.f("ix_email_addresses_normalized"))

    op.drop_table("email_addresses")
    with op.batch_alter_table("client_clinicians", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_client_clinicians_clinician_id"))

    op.drop_table("client_clinicians")
    with op.batch_alter_table("participants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_participants_organization_id"))
        batch_op.drop_index(batch_op.f("ix_participants_contact_of_id"))

    op.drop_table("participants")
    op.drop_table("organizations")
    op.drop_table("leases")
    op.drop_table("imap_state")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_events_organization_id"))
        batch_op.drop_index(batch_op.f("ix_audit_events_at"))
        batch_op.drop_index(batch_op.f("ix_audit_events_action"))

    op.drop_table("audit_events")
