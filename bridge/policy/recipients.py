"""Who is told about one new message, and how: the dispatcher's recipient rule.

The rule (docs/outbound.md, "Recipients"): the thread's members except the
author, who are active and have an address to write to; staff only if they may
see the thread by its audience (`policy.audience.staff_may_see`) and their
notification preferences want mail about that audience; clients and Cc'd
contacts always. Each recipient gets an invitation instead of a notification
when they have no portal account, and the mode `policy.mode.resolve_mode` gives.

Pure: values in, values out. This module does not load members from the store,
does not resolve preferences rows into a yes/no (the caller does, per audience),
and does not decide about coalescing (that needs the outbox history and belongs
to the dispatcher).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bridge.policy.audience import staff_may_see
from bridge.policy.mode import resolve_mode
from bridge.store.models import (
    Audience,
    NotificationMode,
    OutboxKind,
    ParticipantKind,
    StaffRole,
)


@dataclass(frozen=True)
class Member:
    """One member of a thread (one `mailboxes` row), as the rule needs to see them.

    `assigned_clinician`: the person is one of the thread's assigned clinicians
    (`thread_clinicians`); it only counts together with the clinician role.
    `wants_email`: the staff member's preferences resolved for the thread's
    audience (`email_enabled` and that audience's flag; no row = yes). It is
    consulted for staff only: clients and contacts are always notified.
    `has_address`: the person has an address bridge sends to.
    """

    participant_id: int
    kind: ParticipantKind
    roles: frozenset[StaffRole]
    active: bool
    has_portal_account: bool
    consents: bool
    assigned_clinician: bool
    wants_email: bool
    has_address: bool


@dataclass(frozen=True)
class Recipient:
    """One email to queue: to whom, which kind, which mode."""

    participant_id: int
    kind: OutboxKind
    mode: NotificationMode


class DuplicateMember(ValueError):
    """The same participant was given twice; the caller built its members wrongly."""

    def __init__(self, participant_id: int) -> None:
        super().__init__(f"participant {participant_id} given twice as a member")
        self.participant_id = participant_id


def recipients(
    *,
    audience: Audience,
    org_mode: NotificationMode,
    acknowledged: bool,
    members: Iterable[Member],
    author_id: int,
) -> list[Recipient]:
    """The recipients of a message by `author_id` in a thread of `audience`.

    `org_mode` and `acknowledged` are the organization's notification mode and
    whether its HIPAA-risk acknowledgement is on record. The result is in
    ascending participant id, one entry per notified member.
    """
    seen: set[int] = set()
    chosen: list[Recipient] = []
    for member in members:
        if member.participant_id in seen:
            raise DuplicateMember(member.participant_id)
        seen.add(member.participant_id)
        if not _is_notified(member, audience, author_id):
            continue
        kind = OutboxKind.NOTIFICATION if member.has_portal_account else OutboxKind.INVITATION
        mode = resolve_mode(
            org_mode,
            acknowledged=acknowledged,
            recipient_consents=member.consents,
            recipient_active=member.active,
        )
        chosen.append(Recipient(member.participant_id, kind, mode))
    return sorted(chosen, key=lambda recipient: recipient.participant_id)


def _is_notified(member: Member, audience: Audience, author_id: int) -> bool:
    if member.participant_id == author_id or not member.active or not member.has_address:
        return False
    if member.kind != ParticipantKind.STAFF:
        return True
    # A staff member's mailbox row alone is not enough: a portal may have left one
    # behind after an audience change, and audience decides who sees a thread.
    may_see = staff_may_see(audience, member.roles, assigned_clinician=member.assigned_clinician)
    return may_see and member.wants_email
