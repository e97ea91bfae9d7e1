"""inbound resolution, notices to addresses, imap state

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 02:17:30.771916
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
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
    with op.batch_alter_table("inbound_emails", schema=None) as batch_op:
        batch_op.add_column(sa.Column("participant_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("thread_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("defects", sa.Integer(), server_default="0", nullable=False))
        batch_op.create_index(
            batch_op.f("ix_inbound_emails_participant_id"), ["participant_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_inbound_emails_thread_id"), ["thread_id"], unique=False
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_inbound_emails_thread_id_threads"),
            "threads",
            ["thread_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_inbound_emails_participant_id_participants"),
            "participants",
            ["participant_id"],
            ["id"],
            ondelete="SET NULL",
        )

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(
            "ux_messages_inbound_email_id",
            ["inbound_email_id"],
            unique=True,
            postgresql_where=sa.text("inbound_email_id IS NOT NULL"),
            sqlite_where=sa.text("inbound_email_id IS NOT NULL"),
        )

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("to_address", sa.String(length=320), nullable=True))
        batch_op.alter_column("recipient_id", existing_type=sa.INTEGER(), nullable=True)
        batch_op.create_check_constraint(
            op.f("ck_outbox_has_destination"), "recipient_id IS NOT NULL OR to_address IS NOT NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_outbox_has_destination"), type_="check")
        batch_op.alter_column("recipient_id", existing_type=sa.INTEGER(), nullable=False)
        batch_op.drop_column("to_address")

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(
            "ux_messages_inbound_email_id",
            postgresql_where=sa.text("inbound_email_id IS NOT NULL"),
            sqlite_where=sa.text("inbound_email_id IS NOT NULL"),
        )

    with op.batch_alter_table("inbound_emails", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_inbound_emails_participant_id_participants"), type_="foreignkey"
        )
        batch_op.drop_constraint(
            batch_op.f("fk_inbound_emails_thread_id_threads"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_inbound_emails_thread_id"))
        batch_op.drop_index(batch_op.f("ix_inbound_emails_participant_id"))
        batch_op.drop_column("defects")
        batch_op.drop_column("thread_id")
        batch_op.drop_column("participant_id")

    op.drop_table("imap_state")
