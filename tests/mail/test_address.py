"""normalize_address / addresses_match: the one normal form every match uses."""

from __future__ import annotations

import string
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.mail.address import (
    InvalidAddress,
    addresses_match,
    normalize_address,
    normalize_domain,
)

_ASCII_LOCAL = st.text(string.ascii_letters + string.digits + "._+-", min_size=1, max_size=30)
_ASCII_LABEL = st.text(string.ascii_letters + string.digits, min_size=1, max_size=20)
_UNICODE_LETTERS = st.characters(categories=["L", "M", "Nd"])
_UNICODE_LOCAL = st.text(_UNICODE_LETTERS, min_size=1, max_size=20)
_UNICODE_LABEL = st.text(_UNICODE_LETTERS, min_size=1, max_size=12)


def _address(
    local: st.SearchStrategy[str], label: st.SearchStrategy[str]
) -> st.SearchStrategy[str]:
    domain = st.lists(label, min_size=1, max_size=4).map(".".join)
    return st.builds(lambda lo, do: f"{lo}@{do}", local, domain)


@pytest.mark.parametrize(
    ("given_address", "expected"),
    [
        ("Alice@Example.COM", "alice@example.com"),
        ("  <Bob.Smith+tag@example.org>  ", "bob.smith+tag@example.org"),
        ("carol@example.com.", "carol@example.com"),
        ("dora@Bücher.DE", "dora@xn--bcher-kva.de"),
        ("erin@ＥＸＡＭＰＬＥ．com", "erin@example.com"),
        ("Jose\u0301@example.com", "jos\u00e9@example.com"),  # decomposed é becomes composed
        ('"odd@local"@example.com', '"odd@local"@example.com'),
        ("frank@[192.0.2.1]", "frank@[192.0.2.1]"),
    ],
)
def test_normalize_address_gives_the_documented_normal_form(
    given_address: str, expected: str
) -> None:
    assert normalize_address(given_address) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "no-at-sign.example.com",
        "@example.com",
        "alice@",
        "alice@.",
        "alice smith@example.com",
        "alice@exa mple.com",
        "alice\t@example.com",
        "alice@example..com",
        "a@b@example.com",
        "<alice@example.com",
        "alice@exam_ple!.com",
        "Alice <alice@example.com>",
        "alice@\u200bexample.com",
        "x" * 310 + "@example.com",
        "alice@" + "a" * 64 + ".com",
    ],
)
def test_normalize_address_refuses_what_is_not_a_bare_address(bad: str) -> None:
    with pytest.raises(InvalidAddress):
        normalize_address(bad)


def test_invalid_address_error_does_not_repeat_the_address() -> None:
    with pytest.raises(InvalidAddress) as caught:
        normalize_address("secret.person at example.com")
    assert "secret" not in str(caught.value)
    assert caught.value.reason == "whitespace_or_control"


def test_normalize_domain_lowercases_punycodes_and_drops_trailing_dot() -> None:
    assert normalize_domain(" Reply.Bücher.de. ") == "reply.xn--bcher-kva.de"


def test_addresses_match_ignores_case_and_brackets_but_not_other_differences() -> None:
    assert addresses_match("<ALICE@example.com>", "alice@EXAMPLE.com.")
    assert not addresses_match("alice@example.com", "alice2@example.com")
    assert not addresses_match("alice@example.com", "alice@example.org")


def test_addresses_match_is_false_for_invalid_input_instead_of_raising() -> None:
    assert not addresses_match("not an address", "not an address")
    assert not addresses_match("", "alice@example.com")


@given(_address(_ASCII_LOCAL, _ASCII_LABEL) | _address(_UNICODE_LOCAL, _UNICODE_LABEL))
def test_normalize_address_is_idempotent_on_generated_addresses(address: str) -> None:
    try:
        once = normalize_address(address)
    except InvalidAddress:
        return  # some generated Unicode labels are not valid IDNA; refusing them is fine
    assert normalize_address(once) == once
    domain = once.rpartition("@")[2]
    assert domain.isascii()
    assert len(once) <= 320
    assert unicodedata.is_normalized("NFC", once)


@given(st.text(max_size=60))
def test_normalize_address_is_idempotent_on_arbitrary_text(text: str) -> None:
    try:
        once = normalize_address(text)
    except InvalidAddress:
        return
    assert normalize_address(once) == once
    assert not any(ch.isspace() for ch in once)


@given(_address(_ASCII_LOCAL, _ASCII_LABEL), st.data())
def test_normalize_address_is_case_insensitive(address: str, data: st.DataObject) -> None:
    flips = data.draw(st.lists(st.booleans(), min_size=len(address), max_size=len(address)))
    flipped = "".join(
        ch.swapcase() if flip else ch for ch, flip in zip(address, flips, strict=True)
    )
    assert normalize_address(flipped) == normalize_address(address)
    assert addresses_match(flipped, address)
    assert addresses_match(address.upper(), address.lower())


@given(_address(_UNICODE_LOCAL, _UNICODE_LABEL))
def test_addresses_match_is_symmetric_and_reflexive_for_valid_addresses(address: str) -> None:
    try:
        normalize_address(address)
    except InvalidAddress:
        return
    assert addresses_match(address, address)
    assert addresses_match(f"<{address}>", address) == addresses_match(address, f"<{address}>")
