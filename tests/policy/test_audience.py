"""The audience rule, checked against the product's own wording for every case.

The expected table below is written from the product sentence, not from
`bridge.policy.audience`, so a slip in either shows up as a disagreement.
"""

from __future__ import annotations

from itertools import chain, combinations

import pytest

from bridge.policy.audience import roles_seeing, staff_may_see
from bridge.store.models import Audience, StaffRole

# "administrative: schedulers, practice admins, assigned clinicians, supervisors,
#  clinical admins; billing: billers, assigned clinicians, supervisors, clinical
#  admins; clinical: assigned clinicians, supervisors, clinical admins"
PRODUCT_RULE: dict[str, set[str]] = {
    "administrative": {
        "scheduler",
        "practice_admin",
        "assigned clinician",
        "supervisor",
        "clinical_admin",
    },
    "billing": {"biller", "assigned clinician", "supervisor", "clinical_admin"},
    "clinical": {"assigned clinician", "supervisor", "clinical_admin"},
}

ALL_ROLES = ["clinician", "supervisor", "clinical_admin", "practice_admin", "scheduler", "biller"]


def expected(audience: str, roles: frozenset[str], assigned: bool) -> bool:
    """Whether the product sentence lets this person see the thread."""
    seers = PRODUCT_RULE[audience]
    if assigned and "clinician" in roles and "assigned clinician" in seers:
        return True
    return any(role in seers for role in roles)


def all_role_sets() -> list[frozenset[str]]:
    subsets = chain.from_iterable(combinations(ALL_ROLES, n) for n in range(len(ALL_ROLES) + 1))
    return [frozenset(s) for s in subsets]


def test_test_vocabulary_matches_the_enums() -> None:
    # The table above uses plain strings on purpose; make sure they still name real values.
    assert set(ALL_ROLES) == {role.value for role in StaffRole}
    assert set(PRODUCT_RULE) == {audience.value for audience in Audience}
    assert len(all_role_sets()) == 2 ** len(StaffRole)


@pytest.mark.parametrize("audience", list(Audience))
@pytest.mark.parametrize("assigned", [False, True])
def test_every_role_combination_sees_exactly_what_the_product_rule_says(
    audience: Audience, assigned: bool
) -> None:
    disagreements = []
    for role_values in all_role_sets():
        roles = {StaffRole(value) for value in role_values}
        actual = staff_may_see(audience, roles, assigned_clinician=assigned)
        if actual != expected(audience.value, role_values, assigned):
            disagreements.append(sorted(role_values))
    assert disagreements == []


@pytest.mark.parametrize("audience", list(Audience))
def test_a_person_without_roles_sees_nothing(audience: Audience) -> None:
    assert not staff_may_see(audience, [], assigned_clinician=False)
    assert not staff_may_see(audience, [], assigned_clinician=True)


@pytest.mark.parametrize("audience", list(Audience))
@pytest.mark.parametrize("other_role", [r for r in StaffRole if r is not StaffRole.CLINICIAN])
def test_an_assignment_without_the_clinician_role_grants_nothing(
    audience: Audience, other_role: StaffRole
) -> None:
    # An assigned person who is no longer a clinician keeps only what the other role gives.
    with_assignment = staff_may_see(audience, [other_role], assigned_clinician=True)
    without_assignment = staff_may_see(audience, [other_role], assigned_clinician=False)
    assert with_assignment == without_assignment


@pytest.mark.parametrize("audience", list(Audience))
def test_an_unassigned_clinician_sees_no_thread(audience: Audience) -> None:
    assert not staff_may_see(audience, [StaffRole.CLINICIAN], assigned_clinician=False)
    assert staff_may_see(audience, [StaffRole.CLINICIAN], assigned_clinician=True)


def test_moving_a_thread_from_administrative_to_clinical_removes_schedulers() -> None:
    scheduler = [StaffRole.SCHEDULER]
    assert staff_may_see(Audience.ADMINISTRATIVE, scheduler, assigned_clinician=False)
    assert not staff_may_see(Audience.CLINICAL, scheduler, assigned_clinician=False)


def test_moving_a_thread_from_administrative_to_clinical_removes_practice_admins() -> None:
    admin = [StaffRole.PRACTICE_ADMIN]
    assert staff_may_see(Audience.ADMINISTRATIVE, admin, assigned_clinician=False)
    assert not staff_may_see(Audience.CLINICAL, admin, assigned_clinician=False)


def test_billers_see_only_billing_threads() -> None:
    seen = {a for a in Audience if staff_may_see(a, [StaffRole.BILLER], assigned_clinician=False)}
    assert seen == {Audience.BILLING}


def test_roles_seeing_lists_the_unassigned_roles_of_the_product_rule() -> None:
    for audience in Audience:
        written = {role for role in PRODUCT_RULE[audience.value] if role != "assigned clinician"}
        assert {role.value for role in roles_seeing(audience)} == written
