"""Which outbox rows a batch of new messages gets: the no-flood rules, decided in memory.

Pure: values in (the batch, its threads, their members, the outbox `History`
the dispatcher loaded), new `Outbox` rows out; no store, no I/O. Who is
notified and in which mode is `bridge.policy.recipients`; this module adds
docs/outbound.md's "No floods" rules on top:

* *secure*: a recipient not yet done reading what an earlier email told them
  about gets a `coalesced` row instead of another email;
* *convenience*: a message joins the pending (unclaimed) carrier of its
  (recipient, thread), raising the carrier's `message_id`; otherwise it starts
  a carrier due `coalesce_window` after it was written.

Rows are never dropped: a row that adds no email is written as `coalesced`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bridge.policy.recipients import Member, Recipient, recipients
from bridge.store.models import Audience, NotificationMode, Outbox, OutboxStatus

Key = tuple[int, int]  # (recipient id, thread id)


@dataclass(frozen=True)
class NewMessage:
    """An undispatched message, as far as deciding needs it."""

    id: int
    thread_id: int
    author_id: int
    created_at: datetime


@dataclass(frozen=True)
class ThreadInfo:
    """A thread with its organization's mode columns."""

    id: int
    organization_id: int
    audience: Audience
    org_mode: NotificationMode
    acknowledged: bool


@dataclass
class History:
    """The outbox as far as it matters for the batch's threads, kept current as rows are added."""

    # Highest message id a pending, sending or sent row told the recipient about.
    told_up_to: dict[Key, int] = field(default_factory=dict)
    # The pending (unclaimed) convenience row new messages join.
    carriers: dict[Key, Outbox] = field(default_factory=dict)
    # The recipient's read mark on the thread (None: nothing read).
    last_read: dict[Key, int | None] = field(default_factory=dict)


def plan(
    batch: Sequence[NewMessage],
    threads: dict[int, ThreadInfo],
    members: dict[int, list[Member]],
    history: History,
    at: datetime,
    window: timedelta,
) -> list[Outbox]:
    """The outbox rows for `batch`, in message order; updates `history` as it goes."""
    rows: list[Outbox] = []
    for message in sorted(batch, key=lambda m: m.id):
        thread = threads[message.thread_id]
        chosen = recipients(
            audience=thread.audience,
            org_mode=thread.org_mode,
            acknowledged=thread.acknowledged,
            members=members.get(thread.id, ()),
            author_id=message.author_id,
        )
        rows.extend(_row_for(message, thread, r, history, at, window) for r in chosen)
    return rows


def _row_for(
    message: NewMessage,
    thread: ThreadInfo,
    recipient: Recipient,
    history: History,
    at: datetime,
    window: timedelta,
) -> Outbox:
    key = (recipient.participant_id, thread.id)
    row = Outbox(
        kind=recipient.kind.value,
        mode=recipient.mode.value,
        status=OutboxStatus.PENDING.value,
        organization_id=thread.organization_id,
        recipient_id=recipient.participant_id,
        thread_id=thread.id,
        message_id=message.id,
        next_attempt_at=at,
        created_at=at,
    )
    if recipient.mode is NotificationMode.CONVENIENCE:
        carrier = history.carriers.get(key)
        if carrier is not None:
            # Never lower the carrier: on PostgreSQL a later message of the thread
            # may have been dispatched first by another instance.
            carrier.message_id = max(carrier.message_id or 0, message.id)
            row.status = OutboxStatus.COALESCED.value
        else:
            row.next_attempt_at = message.created_at + window
            history.carriers[key] = carrier = row
        _told(history, key, carrier.message_id or message.id)
        return row
    told = history.told_up_to.get(key)
    read = history.last_read.get(key)
    if told is not None and (read is None or told > read):
        # They have not read what an earlier email told them about.
        row.status = OutboxStatus.COALESCED.value
    else:
        _told(history, key, message.id)
    return row


def _told(history: History, key: Key, message_id: int) -> None:
    history.told_up_to[key] = max(history.told_up_to.get(key, 0), message_id)
