"""Email addresses as bridge compares them: one normal form, one equality.

`normalize_address` turns what a person typed (or what an envelope carried)
into the form stored in `email_addresses.normalized` and used for every match
between a sender and a participant. `normalize_domain` does the same for a
bare domain (an organization's reply domain).

The rules are deliberately "addr-spec-ish", not a full RFC 5322 parser: one
address, no display name, no comments, no whitespace. Local parts are folded
to lower case although RFC 5321 lets a server treat them case-sensitively;
no mail system a practice meets does, and two rows differing only by case
would make sender matching ambiguous.

Pure: no I/O, no logging (an address is personal data). Errors never quote
the address they refuse.
"""

from __future__ import annotations

import string
import unicodedata

from bridge.errors import BridgeError

MAX_ADDRESS_LENGTH = 320
MAX_DOMAIN_LENGTH = 253
MAX_LABEL_LENGTH = 63

# RFC 5322 atext, plus the dot of a dot-atom. Non-ASCII is allowed too (RFC 6532).
_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~.")
# The full stop and the three dots IDNA also treats as label separators.
_DOTS = ".\u3002\uff0e\uff61"
_LABEL_CHARS = frozenset(string.ascii_lowercase + string.digits + "-_")


class InvalidAddress(BridgeError):
    """Not something bridge accepts as an email address (or domain)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid address: {reason}")
        self.reason = reason


def normalize_address(address: str) -> str:
    """The normal form of one address: `local@domain`, lower-case, ASCII domain.

    Strips surrounding whitespace and one pair of angle brackets, applies
    Unicode NFC, lower-cases both parts, IDNA-encodes a non-ASCII domain to
    its punycode form and drops a trailing dot of the domain. Idempotent.
    Raises `InvalidAddress` for anything that is not a single bare address.
    """
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if len(text) > MAX_ADDRESS_LENGTH:
        raise InvalidAddress("too_long")
    text = unicodedata.normalize("NFC", text)
    if any(_is_space_or_control(ch) for ch in text):
        raise InvalidAddress("whitespace_or_control")
    local, at, domain = text.rpartition("@")
    if not at:
        raise InvalidAddress("no_at_sign")
    if not local:
        raise InvalidAddress("empty_local_part")
    local = _normalize_local(local)
    normalized = f"{local}@{normalize_domain(domain)}"
    if len(normalized) > MAX_ADDRESS_LENGTH:
        raise InvalidAddress("too_long")
    return normalized


def normalize_domain(domain: str) -> str:
    """The normal form of a domain: lower-case ASCII (punycode), no trailing dot."""
    text = unicodedata.normalize("NFC", domain.strip())
    if any(_is_space_or_control(ch) for ch in text):
        raise InvalidAddress("whitespace_or_control")
    if text.startswith("[") and text.endswith("]") and len(text) > 2:
        return _normalize_literal(text)
    text = text.rstrip(_DOTS)
    if not text:
        raise InvalidAddress("empty_domain")
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError as err:
            raise InvalidAddress("bad_domain") from err
    text = text.lower().rstrip(".")
    if not text or len(text) > MAX_DOMAIN_LENGTH:
        raise InvalidAddress("bad_domain")
    for label in text.split("."):
        if not label or len(label) > MAX_LABEL_LENGTH or not set(label) <= _LABEL_CHARS:
            raise InvalidAddress("bad_domain")
    return text


def addresses_match(a: str, b: str) -> bool:
    """Whether two addresses name the same mailbox; false if either is invalid.

    Invalid input is "no match" rather than an error because the callers are
    matchers fed by untrusted mail: garbage must simply match nobody.
    """
    try:
        return normalize_address(a) == normalize_address(b)
    except InvalidAddress:
        return False


def _normalize_local(local: str) -> str:
    # Lower-casing can produce decomposed sequences (e.g. U+0130), hence NFC again.
    folded = unicodedata.normalize("NFC", local.lower())
    if len(folded) >= 2 and folded.startswith('"') and folded.endswith('"'):
        # Quoted local parts are accepted only in their simplest form: no escapes.
        if any(ch in '"\\' for ch in folded[1:-1]):
            raise InvalidAddress("bad_local_part")
        return folded
    if any(ch.isascii() and ch not in _ATEXT for ch in folded):
        raise InvalidAddress("bad_local_part")
    return folded


def _normalize_literal(literal: str) -> str:
    """A domain literal such as `[192.0.2.1]` or `[IPv6:2001:db8::1]`."""
    inner = literal[1:-1]
    if not inner.isascii() or any(ch in "[]\\" for ch in inner):
        raise InvalidAddress("bad_domain")
    return f"[{inner.lower()}]"


def _is_space_or_control(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp", "Zs"}
