"""Reply tokens: format, entropy, keyed hash, address mapping and the verdict order."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from itertools import product

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import BridgeError
from bridge.policy.tokens import (
    TOKEN_BYTES,
    InvalidToken,
    IssuedToken,
    TokenState,
    TokenVerdict,
    check_token,
    expiry,
    hash_token,
    issue_token,
    normalize_token,
    reply_address,
    token_from_address,
)

SECRET = b"0123456789abcdef-test-secret"
OTHER_SECRET = b"fedcba9876543210-other-secret"
FORMAT = "reply+{token}"
DOMAIN = "replies.example.org"
BASE32 = set(string.ascii_lowercase + "234567")

# Written independently of the module: 20 random bytes, base32, lower case, no padding.
tokens = st.binary(min_size=20, max_size=20).map(
    lambda raw: base64.b32encode(raw).decode("ascii").lower()
)


def recase(text: str, upper: list[bool]) -> str:
    """`text` with the characters at the True positions of `upper` upper-cased."""
    flags = upper + [False] * (len(text) - len(upper))
    return "".join(ch.upper() if up else ch for ch, up in zip(text, flags, strict=False))


def is_valid_token(value: str) -> bool:
    return len(value) == 32 and set(value) <= BASE32


# --- issuing ---------------------------------------------------------------------------


def test_a_token_carries_at_least_128_random_bits() -> None:
    assert TOKEN_BYTES * 8 >= 128
    token = issue_token(SECRET).token
    # Every one of the TOKEN_BYTES random bytes is encoded in the token, none dropped.
    assert len(base64.b32decode(token.upper())) == TOKEN_BYTES


def test_a_token_is_exactly_the_encoding_of_token_bytes_fresh_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The randomness source is the only peer here; record what was asked of it.
    requested: list[int] = []
    fixed = bytes(range(1, TOKEN_BYTES + 1))

    def fake_token_bytes(n: int) -> bytes:
        requested.append(n)
        return fixed

    monkeypatch.setattr(secrets, "token_bytes", fake_token_bytes)
    issued = issue_token(SECRET)
    assert requested == [TOKEN_BYTES]
    assert issued.token == base64.b32encode(fixed).decode("ascii").lower()


def test_a_thousand_issued_tokens_are_distinct_32_character_base32_strings() -> None:
    issued = [issue_token(SECRET) for _ in range(1000)]
    assert all(is_valid_token(t.token) for t in issued)
    assert len({t.token for t in issued}) == 1000
    assert len({t.token_hash for t in issued}) == 1000


def test_issued_tokens_use_the_whole_alphabet_evenly() -> None:
    # 32,000 characters over 32 symbols: about 1,000 each, standard deviation about 31.
    # A generator that skipped symbols or favoured some would land far outside 700..1300.
    counts = Counter("".join(issue_token(SECRET).token for _ in range(1000)))
    assert set(counts) == BASE32
    assert all(700 < n < 1300 for n in counts.values())


def test_an_issued_token_comes_with_the_hash_of_itself() -> None:
    issued = issue_token(SECRET)
    assert issued.token_hash == hash_token(SECRET, issued.token)


def test_an_issued_token_does_not_show_in_its_repr() -> None:
    # Values get logged by accident; the token is a credential and must not follow them.
    issued = issue_token(SECRET)
    assert issued.token not in repr(issued)
    assert issued.token_hash in repr(issued)


# --- hashing ---------------------------------------------------------------------------


@given(tokens)
def test_the_hash_is_hmac_sha256_of_the_lower_case_token(token: str) -> None:
    want = hmac.new(SECRET, token.encode("ascii"), hashlib.sha256).hexdigest()
    assert hash_token(SECRET, token) == want
    assert len(want) == 64


@given(tokens)
def test_the_hash_is_deterministic_and_ignores_the_case_of_the_token(token: str) -> None:
    assert hash_token(SECRET, token) == hash_token(SECRET, token)
    assert hash_token(SECRET, token.upper()) == hash_token(SECRET, token)


@given(tokens)
def test_the_hash_is_keyed_by_the_secret(token: str) -> None:
    assert hash_token(SECRET, token) != hash_token(OTHER_SECRET, token)


@given(tokens)
def test_the_hash_does_not_contain_the_token(token: str) -> None:
    assert token not in hash_token(SECRET, token)


@pytest.mark.parametrize(
    "malformed",
    [
        "",
        "a" * 31,
        "a" * 33,
        "a" * 31 + "1",  # 0, 1, 8 and 9 are not base32
        "a" * 31 + "8",
        "a" * 31 + "=",
        "a" * 31 + "\u212a",  # KELVIN SIGN, which Unicode lower-cases to "k"
        " " + "a" * 32,
    ],
)
def test_hashing_a_malformed_token_raises_invalid_token_without_echoing_it(
    malformed: str,
) -> None:
    with pytest.raises(InvalidToken) as caught:
        hash_token(SECRET, malformed)
    assert isinstance(caught.value, BridgeError)
    assert caught.value.reason == "malformed_token"
    assert malformed.strip() == "" or malformed not in str(caught.value)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        hash_token(b"short", "a" * 32)
    with pytest.raises(ValueError, match="secret"):
        issue_token(b"")


@given(st.text())
def test_normalize_token_turns_any_text_into_a_valid_token_or_none(text: str) -> None:
    result = normalize_token(text)
    assert result is None or (is_valid_token(result) and result == text.lower())


# --- addresses -------------------------------------------------------------------------


def test_the_reply_address_is_the_format_with_the_token_at_the_domain() -> None:
    token = "abcdefghijklmnopqrstuvwxyz234567"
    assert reply_address(FORMAT, token, DOMAIN) == f"reply+{token}@{DOMAIN}"
    assert reply_address(FORMAT, token.upper(), DOMAIN) == f"reply+{token}@{DOMAIN}"
    assert reply_address("r-{token}-x", token, DOMAIN) == f"r-{token}-x@{DOMAIN}"


@pytest.mark.parametrize(
    "bad_format", ["reply", "{token}{token}", "reply+{token}@x", "re ply{token}"]
)
def test_a_format_without_exactly_one_token_or_with_an_at_sign_is_refused(bad_format: str) -> None:
    with pytest.raises(ValueError, match="format"):
        reply_address(bad_format, "a" * 32, DOMAIN)
    with pytest.raises(ValueError, match="format"):
        token_from_address(bad_format, f"reply+{'a' * 32}@{DOMAIN}")


@pytest.mark.parametrize("bad_domain", ["", "a@b.org", "replies example.org"])
def test_a_reply_address_needs_a_plain_domain(bad_domain: str) -> None:
    with pytest.raises(ValueError, match="domain"):
        reply_address(FORMAT, "a" * 32, bad_domain)


def test_a_reply_address_is_not_built_from_a_malformed_token() -> None:
    with pytest.raises(InvalidToken):
        reply_address(FORMAT, "a" * 31, DOMAIN)


@given(tokens, st.lists(st.booleans(), max_size=60))
def test_a_token_survives_the_round_trip_through_its_address_in_any_case(
    token: str, upper: list[bool]
) -> None:
    address = recase(reply_address(FORMAT, token, DOMAIN), upper)
    assert token_from_address(FORMAT, address, DOMAIN) == token
    assert token_from_address(FORMAT, address) == token


def test_issued_tokens_survive_the_round_trip_through_their_address() -> None:
    for _ in range(200):
        issued = issue_token(SECRET)
        address = reply_address(FORMAT, issued.token, DOMAIN).upper()
        found = token_from_address(FORMAT, address, DOMAIN)
        assert found == issued.token
        assert hash_token(SECRET, found) == issued.token_hash


@pytest.mark.parametrize(
    "wrapped",
    [
        "<{a}>",
        "  {a}\t",
        " < {a} > ",
        "{a}.",
    ],
)
def test_angle_brackets_whitespace_and_a_trailing_dot_are_tolerated(wrapped: str) -> None:
    token = "a" * 16 + "7" * 16
    address = wrapped.format(a=f"reply+{token}@{DOMAIN}")
    assert token_from_address(FORMAT, address, DOMAIN) == token


def test_the_expected_domain_may_carry_a_trailing_dot_and_any_case() -> None:
    token = "b" * 32
    assert token_from_address(FORMAT, f"reply+{token}@{DOMAIN}", "REPLIES.Example.ORG.") == token


@pytest.mark.parametrize(
    "address",
    [
        "reply+{t}@example.org",  # another domain
        "reply+{t}@evil.replies.example.org",  # a subdomain is another domain
        "reply+{t}@replies.example.org.evil",
        "reply+{t}@",  # no domain at all
        "reply+{t}",
        "answer+{t}@replies.example.org",  # wrong prefix
        "reply-{t}@replies.example.org",
        "{t}@replies.example.org",  # prefix missing
        "xreply+{t}@replies.example.org",  # token inside a longer local part
        "reply+{t}x@replies.example.org",
        "reply+{t}+tag@replies.example.org",
        "reply+a{t}@replies.example.org",  # 33 characters
        "reply+{t31}@replies.example.org",  # 31 characters
        "reply+{t0}@replies.example.org",  # "0" is not base32
        "reply+{tk}@replies.example.org",  # KELVIN SIGN must not pass for "k"
        '"reply+{t}"@replies.example.org',  # quoted local part
        "<reply+{t}@replies.example.org",  # unbalanced bracket
        "Someone <reply+{t}@replies.example.org>",  # a header, not an address
        "reply+{t}\n@replies.example.org",
    ],
)
def test_anything_but_a_reply_address_at_our_domain_yields_no_token(address: str) -> None:
    token = "c" * 32
    text = address.format(t=token, t31=token[:31], t0=token[:31] + "0", tk=token[:31] + "\u212a")
    assert token_from_address(FORMAT, text, DOMAIN) is None


def test_without_an_expected_domain_any_domain_is_accepted() -> None:
    token = "d" * 32
    assert token_from_address(FORMAT, f"reply+{token}@elsewhere.test") == token
    assert token_from_address(FORMAT, f"reply+{token}@elsewhere.test", DOMAIN) is None


@given(st.text())
def test_arbitrary_text_yields_none_or_a_valid_token(text: str) -> None:
    for domain in (None, DOMAIN):
        result = token_from_address(FORMAT, text, domain)
        assert result is None or is_valid_token(result)


@given(st.text(), st.text())
def test_text_around_the_format_yields_none_or_the_token_in_it(local: str, host: str) -> None:
    address = f"reply+{local}@{host}"
    result = token_from_address(FORMAT, address)
    assert result is None or (is_valid_token(result) and result == local.lower())


# --- verdicts --------------------------------------------------------------------------

NOW = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
LIFETIME = timedelta(days=30)
THREAD = 7
OTHER_THREAD = 8
BOOLS = [False, True]


def state(*, expires_at: datetime | None = None, revoked_at: datetime | None = None) -> TokenState:
    return TokenState(
        participant_id=3,
        thread_id=THREAD,
        expires_at=expires_at if expires_at is not None else NOW + LIFETIME,
        revoked_at=revoked_at,
    )


def test_a_token_nobody_issued_is_unknown_whatever_else_holds() -> None:
    assert check_token(None, now=NOW, participant_has_access=True) is TokenVerdict.UNKNOWN
    verdict = check_token(None, now=NOW, participant_has_access=False, expected_thread_id=1)
    assert verdict is TokenVerdict.UNKNOWN


def test_a_live_token_of_a_participant_with_access_is_valid() -> None:
    assert check_token(state(), now=NOW, participant_has_access=True) is TokenVerdict.VALID
    verdict = check_token(state(), now=NOW, participant_has_access=True, expected_thread_id=THREAD)
    assert verdict is TokenVerdict.VALID


def test_a_token_expires_exactly_at_its_expiry_instant() -> None:
    issued_at = NOW
    token = state(expires_at=expiry(issued_at, LIFETIME))
    just_before = issued_at + LIFETIME - timedelta(microseconds=1)
    at_expiry = issued_at + LIFETIME
    assert check_token(token, now=just_before, participant_has_access=True) is TokenVerdict.VALID
    assert check_token(token, now=at_expiry, participant_has_access=True) is TokenVerdict.EXPIRED


def test_expiry_compares_instants_across_time_zones() -> None:
    # 14:00 at UTC+2 is 12:00 UTC: the token is expired at NOW, not two hours later.
    plus_two = timezone(timedelta(hours=2))
    token = state(expires_at=datetime(2030, 5, 1, 14, 0, tzinfo=plus_two))
    assert check_token(token, now=NOW, participant_has_access=True) is TokenVerdict.EXPIRED


def test_revoked_beats_expired() -> None:
    token = state(expires_at=NOW - timedelta(days=1), revoked_at=NOW - timedelta(days=2))
    assert check_token(token, now=NOW, participant_has_access=True) is TokenVerdict.REVOKED


def test_a_revoked_token_stays_revoked_even_with_access_restored() -> None:
    token = state(revoked_at=NOW - timedelta(seconds=1))
    assert check_token(token, now=NOW, participant_has_access=True) is TokenVerdict.REVOKED


def test_a_token_presented_for_another_thread_is_refused() -> None:
    verdict = check_token(
        state(), now=NOW, participant_has_access=True, expected_thread_id=OTHER_THREAD
    )
    assert verdict is TokenVerdict.WRONG_THREAD


def test_expired_beats_wrong_thread_and_wrong_thread_beats_no_access() -> None:
    expired = state(expires_at=NOW)
    verdict = check_token(
        expired, now=NOW, participant_has_access=False, expected_thread_id=OTHER_THREAD
    )
    assert verdict is TokenVerdict.EXPIRED
    verdict = check_token(
        state(), now=NOW, participant_has_access=False, expected_thread_id=OTHER_THREAD
    )
    assert verdict is TokenVerdict.WRONG_THREAD


def test_a_participant_who_lost_access_cannot_use_a_live_token() -> None:
    verdict = check_token(state(), now=NOW, participant_has_access=False)
    assert verdict is TokenVerdict.NO_ACCESS


@pytest.mark.parametrize(
    ("known", "revoked", "expired", "thread", "access"),
    list(product(BOOLS, BOOLS, BOOLS, [None, THREAD, OTHER_THREAD], BOOLS)),
)
def test_the_first_failing_check_decides_in_the_documented_order(
    known: bool, revoked: bool, expired: bool, thread: int | None, access: bool
) -> None:
    checks = [
        (not known, TokenVerdict.UNKNOWN),
        (revoked, TokenVerdict.REVOKED),
        (expired, TokenVerdict.EXPIRED),
        (thread == OTHER_THREAD, TokenVerdict.WRONG_THREAD),
        (not access, TokenVerdict.NO_ACCESS),
    ]
    want = next((verdict for failed, verdict in checks if failed), TokenVerdict.VALID)
    token = (
        state(
            expires_at=NOW - timedelta(hours=1) if expired else NOW + timedelta(hours=1),
            revoked_at=NOW - timedelta(hours=2) if revoked else None,
        )
        if known
        else None
    )
    got = check_token(token, now=NOW, participant_has_access=access, expected_thread_id=thread)
    assert got is want


def test_verdicts_are_the_reason_codes_used_in_answers_and_logs() -> None:
    assert {v.value for v in TokenVerdict} == {
        "valid",
        "unknown",
        "expired",
        "revoked",
        "no_access",
        "wrong_thread",
    }


def test_a_naive_clock_is_refused_rather_than_guessed_at() -> None:
    naive = datetime(2030, 5, 1, 12, 0)  # naive on purpose
    with pytest.raises(ValueError, match="now"):
        check_token(state(), now=naive, participant_has_access=True)
    with pytest.raises(ValueError, match="now"):
        check_token(None, now=naive, participant_has_access=True)
    with pytest.raises(ValueError, match="now"):
        expiry(naive, LIFETIME)


def test_a_naive_stored_timestamp_is_refused_rather_than_guessed_at() -> None:
    naive = datetime(2030, 6, 1, 12, 0)  # naive on purpose
    with pytest.raises(ValueError, match="expires_at"):
        check_token(state(expires_at=naive), now=NOW, participant_has_access=True)
    with pytest.raises(ValueError, match="revoked_at"):
        check_token(state(revoked_at=naive), now=NOW, participant_has_access=True)


def test_expiry_is_now_plus_a_positive_lifetime() -> None:
    assert expiry(NOW, LIFETIME) == datetime(2030, 5, 31, 12, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="lifetime"):
        expiry(NOW, timedelta(0))
    with pytest.raises(ValueError, match="lifetime"):
        expiry(NOW, -LIFETIME)


def test_issued_token_is_a_frozen_value() -> None:
    issued = issue_token(SECRET)
    with pytest.raises(AttributeError):
        issued.token = "x"  # type: ignore[misc]
    assert isinstance(issued, IssuedToken)
