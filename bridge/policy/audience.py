"""Who among the staff may see a thread, by its audience.

The rule from the product: administrative threads are seen by schedulers,
practice admins, assigned clinicians, supervisors and clinical admins; billing
threads by billers, assigned clinicians, supervisors and clinical admins;
clinical threads by assigned clinicians, supervisors and clinical admins.
"Seeing" a thread includes being notified of it and replying to it.

Pure: values in, a verdict out. Clients and their contacts are not staff; what
they see is decided by thread membership, not by audience.
"""

from __future__ import annotations

from collections.abc import Iterable

from bridge.store.models import Audience, StaffRole

# Roles that see every thread of an audience, assigned or not.
_ROLES_BY_AUDIENCE: dict[Audience, frozenset[StaffRole]] = {
    Audience.ADMINISTRATIVE: frozenset(
        {
            StaffRole.SCHEDULER,
            StaffRole.PRACTICE_ADMIN,
            StaffRole.SUPERVISOR,
            StaffRole.CLINICAL_ADMIN,
        }
    ),
    Audience.BILLING: frozenset({StaffRole.BILLER, StaffRole.SUPERVISOR, StaffRole.CLINICAL_ADMIN}),
    Audience.CLINICAL: frozenset({StaffRole.SUPERVISOR, StaffRole.CLINICAL_ADMIN}),
}


def roles_seeing(audience: Audience) -> frozenset[StaffRole]:
    """The roles that see every thread of `audience` (assigned clinicians aside)."""
    return _ROLES_BY_AUDIENCE[audience]


def staff_may_see(
    audience: Audience, roles: Iterable[StaffRole], *, assigned_clinician: bool
) -> bool:
    """Whether a staff member with `roles` may see a thread of `audience`.

    `assigned_clinician` is true when the person is one of the thread's
    assigned clinicians *and* holds the clinician role; an assignment alone
    grants nothing to someone who is no longer a clinician.
    """
    held = frozenset(roles)
    if assigned_clinician and StaffRole.CLINICIAN in held:
        return True
    return not held.isdisjoint(_ROLES_BY_AUDIENCE[audience])
