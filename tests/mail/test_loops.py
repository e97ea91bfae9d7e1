"""The sliding-window rate limiter and the body fingerprint, with time injected."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.mail.loops import RateLimiter, body_fingerprint

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def test_allows_up_to_the_limit_then_refuses() -> None:
    limiter = RateLimiter(3, MINUTE)
    assert [limiter.allow("k", T0) for _ in range(5)] == [True, True, True, False, False]


def test_window_slides_rather_than_resetting_at_fixed_boundaries() -> None:
    limiter = RateLimiter(2, MINUTE)
    assert limiter.allow("k", T0)
    assert limiter.allow("k", T0 + timedelta(seconds=40))
    assert not limiter.allow("k", T0 + timedelta(seconds=59))
    # The first event has left the window; the second has not.
    assert limiter.allow("k", T0 + timedelta(seconds=61))
    assert not limiter.allow("k", T0 + timedelta(seconds=70))
    assert limiter.allow("k", T0 + timedelta(seconds=101))


def test_an_event_exactly_one_window_old_no_longer_counts() -> None:
    limiter = RateLimiter(1, MINUTE)
    assert limiter.allow("k", T0)
    assert not limiter.allow("k", T0 + MINUTE - timedelta(microseconds=1))
    assert limiter.allow("k", T0 + MINUTE)


def test_refused_events_are_not_recorded() -> None:
    limiter = RateLimiter(1, MINUTE)
    assert limiter.allow("k", T0)
    for second in range(1, 60):
        assert not limiter.allow("k", T0 + timedelta(seconds=second))
    # Had the refusals been recorded, the key would still be blocked here.
    assert limiter.allow("k", T0 + MINUTE)


def test_keys_are_counted_separately() -> None:
    limiter = RateLimiter(1, MINUTE)
    assert limiter.allow("a", T0)
    assert limiter.allow("b", T0)
    assert not limiter.allow("a", T0)
    assert not limiter.allow("b", T0)


def test_limit_zero_refuses_everything_and_holds_nothing() -> None:
    limiter = RateLimiter(0, MINUTE)
    assert not limiter.allow("k", T0)
    assert len(limiter) == 0


@pytest.mark.parametrize(("limit", "window"), [(-1, MINUTE), (1, timedelta(0)), (1, -MINUTE)])
def test_nonsensical_settings_are_refused(limit: int, window: timedelta) -> None:
    with pytest.raises(ValueError):
        RateLimiter(limit, window)


def test_keys_that_went_quiet_are_pruned() -> None:
    limiter = RateLimiter(5, MINUTE)
    for n in range(10_000):
        limiter.allow(f"sender-{n}", T0)
    assert len(limiter) == 10_000
    later = T0 + 2 * MINUTE
    limiter.allow("fresh", later)
    assert len(limiter) == 1


def test_memory_stays_bounded_under_a_stream_of_new_keys() -> None:
    # One new key per second for six hours: only the keys of about two windows remain.
    limiter = RateLimiter(3, MINUTE)
    peak = 0
    for second in range(6 * 60 * 60):
        limiter.allow(f"k{second}", T0 + timedelta(seconds=second))
        peak = max(peak, len(limiter))
    assert peak <= 2 * 60 + 1


def test_an_active_key_survives_pruning_with_its_count() -> None:
    limiter = RateLimiter(2, MINUTE)
    limiter.allow("quiet", T0)
    limiter.allow("busy", T0 + timedelta(seconds=50))
    limiter.allow("busy", T0 + timedelta(seconds=55))
    # The sweep at 70 s drops "quiet" but must keep both recent events of "busy".
    assert limiter.allow("other", T0 + timedelta(seconds=70))
    assert len(limiter) == 2
    assert not limiter.allow("busy", T0 + timedelta(seconds=80))


def test_per_key_memory_is_bounded_by_the_limit() -> None:
    limiter = RateLimiter(3, timedelta(days=365))
    for n in range(1000):
        limiter.allow("k", T0 + timedelta(seconds=n))
    assert len(limiter._events["k"]) == 3


def test_a_clock_stepping_back_neither_crashes_nor_loosens_the_limit() -> None:
    limiter = RateLimiter(1, MINUTE)
    assert limiter.allow("k", T0)
    assert not limiter.allow("k", T0 - timedelta(hours=1))
    assert not limiter.allow("k", T0 + timedelta(seconds=30))


def test_a_clock_stepping_back_does_not_suspend_pruning() -> None:
    limiter = RateLimiter(1, MINUTE)
    limiter.allow("before-the-step", T0 + timedelta(hours=1))
    # The clock steps back an hour; new keys keep arriving, one per second.
    peak = 0
    for second in range(30 * 60):
        limiter.allow(f"k{second}", T0 + timedelta(seconds=second))
        peak = max(peak, len(limiter))
    assert peak <= 2 * 60 + 2


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 600)), max_size=200))
def test_never_more_than_limit_allowed_in_any_window(events: list[tuple[str, int]]) -> None:
    limit, window = 3, timedelta(seconds=60)
    limiter = RateLimiter(limit, window)
    allowed: dict[str, list[int]] = {}
    for key, second in sorted(events, key=lambda e: e[1]):
        if limiter.allow(key, T0 + timedelta(seconds=second)):
            allowed.setdefault(key, []).append(second)
    for seconds in allowed.values():
        for start in seconds:
            assert sum(start <= s < start + 60 for s in seconds) <= limit


# -- body_fingerprint ------------------------------------------------------------------


def test_fingerprint_is_a_sha256_hex_digest() -> None:
    digest = body_fingerprint("hello")
    assert len(digest) == 64
    assert int(digest, 16) >= 0


def test_fingerprint_ignores_whitespace_and_case() -> None:
    assert body_fingerprint("I am away  until\r\nMonday.\n") == body_fingerprint(
        "  i AM away until monday. "
    )


def test_fingerprint_ignores_unicode_normal_form_and_folds_case_fully() -> None:
    assert body_fingerprint("Cafe\u0301") == body_fingerprint("café")
    assert body_fingerprint("STRASSE") == body_fingerprint("straße")


def test_fingerprint_tells_different_bodies_apart() -> None:
    assert body_fingerprint("see you monday") != body_fingerprint("see you tuesday")
    assert body_fingerprint("ab") != body_fingerprint("a b")


def test_fingerprint_accepts_lone_surrogates() -> None:
    assert len(body_fingerprint("caf\udce9")) == 64


@given(st.text(), st.sampled_from([" ", "\n", "\t", "\r\n", "  "]))
def test_fingerprint_is_stable_under_rewrapping(text: str, separator: str) -> None:
    assert body_fingerprint(text) == body_fingerprint(separator.join(text.split()))
