"""The recipient rule: generated member sets, each property checked on its own.

Every property is stated from the contract's wording (docs/outbound.md,
"Recipients" and "Kind and mode"), then a few hand-written threads pin the
cases a reader would ask about first.
"""

from __future__ import annotations

from itertools import product

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.policy.audience import staff_may_see
from bridge.policy.mode import resolve_mode
from bridge.policy.recipients import DuplicateMember, Member, Recipient, recipients
from bridge.store.models import (
    Audience,
    NotificationMode,
    OutboxKind,
    ParticipantKind,
    StaffRole,
)


def members(participant_id: st.SearchStrategy[int]) -> st.SearchStrategy[Member]:
    return st.builds(
        Member,
        participant_id=participant_id,
        kind=st.sampled_from(list(ParticipantKind)),
        roles=st.frozensets(st.sampled_from(list(StaffRole))),
        active=st.booleans(),
        has_portal_account=st.booleans(),
        consents=st.booleans(),
        assigned_clinician=st.booleans(),
        wants_email=st.booleans(),
        has_address=st.booleans(),
    )


member_lists = st.lists(
    members(st.integers(1, 60)), unique_by=lambda m: m.participant_id, max_size=12
)


@st.composite
def cases(draw: st.DrawFn) -> tuple[Audience, NotificationMode, bool, list[Member], int]:
    chosen = draw(member_lists)
    # The author is usually a member, sometimes not (a filed reply from a removed member).
    ids = [m.participant_id for m in chosen]
    author_is_member = bool(ids) and draw(st.booleans())
    author = draw(st.sampled_from(ids)) if author_is_member else draw(st.integers(1, 60))
    return (
        draw(st.sampled_from(list(Audience))),
        draw(st.sampled_from(list(NotificationMode))),
        draw(st.booleans()),
        chosen,
        author,
    )


Case = tuple[Audience, NotificationMode, bool, list[Member], int]


def run(case: Case) -> dict[int, Recipient]:
    audience, org_mode, acknowledged, members, author = case
    chosen = recipients(
        audience=audience,
        org_mode=org_mode,
        acknowledged=acknowledged,
        members=members,
        author_id=author,
    )
    by_id = {r.participant_id: r for r in chosen}
    assert len(by_id) == len(chosen), "a recipient was listed twice"
    return by_id


@given(cases())
def test_the_author_is_never_a_recipient(case: Case) -> None:
    assert case[4] not in run(case)


@given(cases())
def test_only_members_are_recipients(case: Case) -> None:
    assert set(run(case)) <= {m.participant_id for m in case[3]}


@given(cases())
def test_inactive_members_and_members_without_an_address_are_never_recipients(
    case: Case,
) -> None:
    chosen = run(case)
    for member in case[3]:
        if not member.active or not member.has_address:
            assert member.participant_id not in chosen


@given(cases())
def test_staff_who_may_not_see_the_thread_by_audience_are_never_recipients(case: Case) -> None:
    audience, chosen = case[0], run(case)
    for member in case[3]:
        if member.kind is ParticipantKind.STAFF and not staff_may_see(
            audience, member.roles, assigned_clinician=member.assigned_clinician
        ):
            assert member.participant_id not in chosen


@given(cases())
def test_staff_whose_preferences_decline_the_audience_are_never_recipients(case: Case) -> None:
    chosen = run(case)
    for member in case[3]:
        if member.kind is ParticipantKind.STAFF and not member.wants_email:
            assert member.participant_id not in chosen


@given(cases())
def test_every_eligible_member_is_a_recipient(case: Case) -> None:
    audience, _, _, members, author = case
    chosen = run(case)
    for member in members:
        reachable = member.active and member.has_address and member.participant_id != author
        if member.kind is ParticipantKind.STAFF:
            wanted = member.wants_email and staff_may_see(
                audience, member.roles, assigned_clinician=member.assigned_clinician
            )
        else:
            wanted = True  # clients and Cc'd contacts always, whatever a preference says
        assert (member.participant_id in chosen) == (reachable and wanted)


@given(cases())
def test_members_without_a_portal_account_get_an_invitation(case: Case) -> None:
    chosen = run(case)
    for member in case[3]:
        if member.participant_id in chosen:
            want = OutboxKind.NOTIFICATION if member.has_portal_account else OutboxKind.INVITATION
            assert chosen[member.participant_id].kind is want


@given(cases())
def test_the_mode_is_what_resolve_mode_says_for_each_recipient(case: Case) -> None:
    _, org_mode, acknowledged, members, _ = case
    chosen = run(case)
    for member in members:
        if member.participant_id in chosen:
            want = resolve_mode(
                org_mode,
                acknowledged=acknowledged,
                recipient_consents=member.consents,
                recipient_active=member.active,
            )
            assert chosen[member.participant_id].mode is want


@given(cases())
def test_recipients_come_in_ascending_participant_id(case: Case) -> None:
    audience, org_mode, acknowledged, members, author = case
    chosen = recipients(
        audience=audience,
        org_mode=org_mode,
        acknowledged=acknowledged,
        members=members,
        author_id=author,
    )
    ids = [r.participant_id for r in chosen]
    assert ids == sorted(ids)


# --- hand-written threads ---------------------------------------------------------------


def person(
    pid: int,
    kind: ParticipantKind,
    *roles: StaffRole,
    assigned: bool = False,
    active: bool = True,
    account: bool = True,
    consents: bool = False,
    wants: bool = True,
    address: bool = True,
) -> Member:
    return Member(
        participant_id=pid,
        kind=kind,
        roles=frozenset(roles),
        active=active,
        has_portal_account=account,
        consents=consents,
        assigned_clinician=assigned,
        wants_email=wants,
        has_address=address,
    )


STAFF, CLIENT, CONTACT = ParticipantKind.STAFF, ParticipantKind.CLIENT, ParticipantKind.CONTACT
CLINICAL_THREAD = [
    person(1, CLIENT, account=False),
    person(2, CONTACT, consents=True),
    person(3, STAFF, StaffRole.CLINICIAN, assigned=True),
    person(4, STAFF, StaffRole.CLINICIAN),  # a clinician, but not this thread's
    person(5, STAFF, StaffRole.SUPERVISOR),
    person(6, STAFF, StaffRole.SCHEDULER),  # a stale mailbox row
    person(7, STAFF, StaffRole.CLINICAL_ADMIN, wants=False),
    person(8, STAFF, StaffRole.SUPERVISOR, active=False),
    person(9, STAFF, StaffRole.SUPERVISOR, address=False),
]


def ids_for(author: int, audience: Audience = Audience.CLINICAL) -> list[int]:
    chosen = recipients(
        audience=audience,
        org_mode=NotificationMode.SECURE,
        acknowledged=False,
        members=CLINICAL_THREAD,
        author_id=author,
    )
    return [r.participant_id for r in chosen]


def test_a_client_message_in_a_clinical_thread_reaches_contact_clinician_and_supervisor() -> None:
    assert ids_for(author=1) == [2, 3, 5]


def test_a_clinician_reply_reaches_the_client_the_contact_and_the_supervisor() -> None:
    assert ids_for(author=3) == [1, 2, 5]


def test_an_administrative_thread_also_reaches_the_scheduler() -> None:
    assert ids_for(author=1, audience=Audience.ADMINISTRATIVE) == [2, 3, 5, 6]


def test_the_client_without_an_account_is_invited_and_everyone_else_notified() -> None:
    chosen = recipients(
        audience=Audience.CLINICAL,
        org_mode=NotificationMode.SECURE,
        acknowledged=False,
        members=CLINICAL_THREAD,
        author_id=3,
    )
    assert [r.kind for r in chosen] == [
        OutboxKind.INVITATION,
        OutboxKind.NOTIFICATION,
        OutboxKind.NOTIFICATION,
    ]


@pytest.mark.parametrize(
    ("org_mode", "acknowledged"), list(product(NotificationMode, [False, True]))
)
def test_only_the_consenting_contact_of_an_acknowledged_convenience_practice_gets_content(
    org_mode: NotificationMode, acknowledged: bool
) -> None:
    chosen = recipients(
        audience=Audience.CLINICAL,
        org_mode=org_mode,
        acknowledged=acknowledged,
        members=CLINICAL_THREAD,
        author_id=3,
    )
    convenience = {r.participant_id for r in chosen if r.mode is NotificationMode.CONVENIENCE}
    opted_in = org_mode is NotificationMode.CONVENIENCE and acknowledged
    assert convenience == ({2} if opted_in else set())


def test_a_client_is_notified_even_if_a_preference_flag_says_no() -> None:
    client = person(1, CLIENT, wants=False)
    chosen = recipients(
        audience=Audience.BILLING,
        org_mode=NotificationMode.SECURE,
        acknowledged=False,
        members=[client],
        author_id=99,
    )
    assert [r.participant_id for r in chosen] == [1]


def test_an_assignment_without_the_clinician_role_grants_nothing() -> None:
    former = person(3, STAFF, StaffRole.BILLER, assigned=True)
    chosen = recipients(
        audience=Audience.CLINICAL,
        org_mode=NotificationMode.SECURE,
        acknowledged=False,
        members=[former],
        author_id=1,
    )
    assert chosen == []


def test_a_member_given_twice_is_refused() -> None:
    twice = [person(1, CLIENT), person(1, CLIENT)]
    with pytest.raises(DuplicateMember) as caught:
        recipients(
            audience=Audience.CLINICAL,
            org_mode=NotificationMode.SECURE,
            acknowledged=False,
            members=twice,
            author_id=2,
        )
    assert caught.value.participant_id == 1
