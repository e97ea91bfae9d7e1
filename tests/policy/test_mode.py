"""Which notification mode applies: the whole truth table, and secure as the fallback."""

from __future__ import annotations

from itertools import product

import pytest

from bridge.policy.mode import resolve_mode
from bridge.store.models import NotificationMode

FLAGS = [False, True]
CASES = list(product(list(NotificationMode), FLAGS, FLAGS, FLAGS))


@pytest.mark.parametrize(("org_mode", "acknowledged", "consents", "active"), CASES)
def test_content_is_sent_only_when_the_practice_opted_in_acknowledged_and_the_recipient_consents(
    org_mode: NotificationMode, acknowledged: bool, consents: bool, active: bool
) -> None:
    every_condition = (
        org_mode is NotificationMode.CONVENIENCE and acknowledged and consents and active
    )
    want = NotificationMode.CONVENIENCE if every_condition else NotificationMode.SECURE
    got = resolve_mode(
        org_mode, acknowledged=acknowledged, recipient_consents=consents, recipient_active=active
    )
    assert got is want


def test_the_truth_table_has_exactly_one_convenience_row() -> None:
    results = [
        resolve_mode(m, acknowledged=a, recipient_consents=c, recipient_active=r)
        for m, a, c, r in CASES
    ]
    assert len(results) == 2 * 2**3
    assert results.count(NotificationMode.CONVENIENCE) == 1


def test_a_recipient_is_active_unless_told_otherwise() -> None:
    mode = resolve_mode(NotificationMode.CONVENIENCE, acknowledged=True, recipient_consents=True)
    assert mode is NotificationMode.CONVENIENCE


def test_an_inactive_recipient_gets_secure_mode_even_with_every_consent() -> None:
    mode = resolve_mode(
        NotificationMode.CONVENIENCE,
        acknowledged=True,
        recipient_consents=True,
        recipient_active=False,
    )
    assert mode is NotificationMode.SECURE


def test_convenience_without_the_hipaa_acknowledgement_falls_back_to_secure() -> None:
    mode = resolve_mode(NotificationMode.CONVENIENCE, acknowledged=False, recipient_consents=True)
    assert mode is NotificationMode.SECURE


def test_a_secure_practice_stays_secure_whatever_the_recipient_wants() -> None:
    mode = resolve_mode(NotificationMode.SECURE, acknowledged=True, recipient_consents=True)
    assert mode is NotificationMode.SECURE
