"""Reply tokens: the secret in a reply address, and the verdict on one presented.

A convenience-mode notification is sent from an address such as
``reply+<token>@replies.example.org``. The token is 160 random bits, written
as 32 lower-case base32 characters (``a-z2-7``), so it survives mail systems
that change the case of local parts and needs no quoting in an address.

The store never holds a token, only its keyed hash (HMAC-SHA256 under a secret
from the configuration): a leaked table cannot be turned back into working
reply addresses without that secret. Tokens are looked up *by hash*, so the
comparison happens inside the database index on a value the sender cannot
choose bit by bit; there is no timing oracle on the token itself and no
constant-time comparison is needed here.

This module owns the token format, its hash, the mapping between tokens and
addresses, and the order in which a presented token is judged (unknown,
revoked, expired, wrong thread, no access). It deliberately does not read or
write the store, decide whether a participant still has access to a thread
(the caller passes that in, see `bridge.policy.audience`), check that a
reply's sender is the token's participant (the inbound pipeline does that with
the participant's addresses), or log anything: tokens are credentials.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from bridge.errors import BridgeError

# 20 bytes = 160 bits, comfortably above the 128 bits DESIGN.md requires, and a
# multiple of 5 bytes so base32 needs no padding.
TOKEN_BYTES = 20
TOKEN_LENGTH = TOKEN_BYTES * 8 // 5  # 32 base32 characters

# A keyed hash under a short key is barely keyed; configuration must supply more.
MIN_SECRET_BYTES = 16

FORMAT_PLACEHOLDER = "{token}"

_TOKEN_PATTERN = f"[a-z2-7]{{{TOKEN_LENGTH}}}"
# re.ASCII matters: without it IGNORECASE would let U+212A KELVIN SIGN match "k".
_TOKEN_RE = re.compile(_TOKEN_PATTERN, re.ASCII)

_MALFORMED = "malformed_token"


class InvalidToken(BridgeError):
    """A string that cannot be a reply token. Never carries the string itself."""

    def __init__(self, reason: str = _MALFORMED) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class IssuedToken:
    """A freshly issued token: `token` goes into the address, `token_hash` into the store."""

    token: str = field(repr=False)
    token_hash: str


def normalize_token(token: str) -> str | None:
    """The canonical (lower-case) form of `token`, or None if it is not one.

    Only exactly `TOKEN_LENGTH` ASCII characters of the base32 alphabet, in any
    case, qualify. Non-ASCII input is refused before lower-casing, because
    Unicode lower-casing maps some foreign letters onto ASCII ones.
    """
    if not token.isascii():
        return None
    lowered = token.lower()
    if _TOKEN_RE.fullmatch(lowered) is None:
        return None
    return lowered


def hash_token(secret: bytes, token: str) -> str:
    """The HMAC-SHA256 (hex, 64 characters) of the normalized `token` under `secret`.

    Raises `InvalidToken` if `token` is malformed and `ValueError` if `secret`
    is shorter than `MIN_SECRET_BYTES`.
    """
    _require_secret(secret)
    normalized = normalize_token(token)
    if normalized is None:
        raise InvalidToken()
    return hmac.new(secret, normalized.encode("ascii"), hashlib.sha256).hexdigest()


def issue_token(secret: bytes) -> IssuedToken:
    """A new random token and its keyed hash."""
    raw = secrets.token_bytes(TOKEN_BYTES)
    token = base64.b32encode(raw).decode("ascii").lower()
    return IssuedToken(token=token, token_hash=hash_token(secret, token))


def reply_address(address_format: str, token: str, domain: str) -> str:
    """The reply address for `token`: `address_format` with the token, at `domain`.

    `address_format` is a local part containing ``{token}`` exactly once, such
    as ``"reply+{token}"``. Raises `ValueError` on a bad format or domain and
    `InvalidToken` on a malformed token.
    """
    prefix, suffix = _split_format(address_format)
    normalized = normalize_token(token)
    if normalized is None:
        raise InvalidToken()
    if not domain or "@" in domain or _has_space(domain):
        raise ValueError("reply domain must be a non-empty domain name without '@' or spaces")
    return f"{prefix}{normalized}{suffix}@{domain}"


def token_from_address(address_format: str, address: str, domain: str | None = None) -> str | None:
    """The normalized token in `address`, or None if `address` is not a reply address.

    The local part must match `address_format` exactly, case-insensitively,
    with the token in place of ``{token}``; when `domain` is given, the domain
    must equal it (case-insensitively, a trailing dot ignored). Surrounding
    whitespace and one pair of angle brackets are tolerated. Any `address`
    yields a token or None; only a bad `address_format` (a configuration
    error) raises `ValueError`.
    """
    pattern = _local_part_re(address_format)
    candidate = address.strip()
    if candidate.startswith("<") and candidate.endswith(">"):
        candidate = candidate[1:-1].strip()
    local, at, found_domain = candidate.rpartition("@")
    if not at or not local or not found_domain:
        return None
    if domain is not None and _canonical_domain(found_domain) != _canonical_domain(domain):
        return None
    match = pattern.fullmatch(local)
    if match is None:
        return None
    return normalize_token(match.group("token"))


class TokenVerdict(StrEnum):
    """The judgement on a presented token; values are the reason codes in answers and logs."""

    VALID = "valid"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REVOKED = "revoked"
    NO_ACCESS = "no_access"
    WRONG_THREAD = "wrong_thread"


@dataclass(frozen=True)
class TokenState:
    """What the store knows about a token found by its hash."""

    participant_id: int
    thread_id: int
    expires_at: datetime
    revoked_at: datetime | None


def check_token(
    state: TokenState | None,
    *,
    now: datetime,
    participant_has_access: bool,
    expected_thread_id: int | None = None,
) -> TokenVerdict:
    """Judge a token whose hash lookup gave `state` (None when nothing matched).

    The first failing check wins, in this order: unknown, revoked, expired (a
    token is expired from the instant `expires_at` on), wrong thread (only when
    the caller expects a particular thread), no access. A revoked token stays
    revoked whatever the revocation time. `participant_has_access` is the
    caller's current verdict for the token's participant on the token's thread.

    All datetimes must be timezone-aware; a naive one raises `ValueError`
    rather than being guessed at.
    """
    _require_aware(now, "now")
    if state is None:
        return TokenVerdict.UNKNOWN
    _require_aware(state.expires_at, "expires_at")
    if state.revoked_at is not None:
        _require_aware(state.revoked_at, "revoked_at")
        return TokenVerdict.REVOKED
    if state.expires_at <= now:
        return TokenVerdict.EXPIRED
    if expected_thread_id is not None and state.thread_id != expected_thread_id:
        return TokenVerdict.WRONG_THREAD
    if not participant_has_access:
        return TokenVerdict.NO_ACCESS
    return TokenVerdict.VALID


def expiry(now: datetime, lifetime: timedelta) -> datetime:
    """When a token issued at `now` with `lifetime` expires. Both must make sense."""
    _require_aware(now, "now")
    if lifetime <= timedelta(0):
        raise ValueError("token lifetime must be positive")
    return now + lifetime


def _require_secret(secret: bytes) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"token secret must be at least {MIN_SECRET_BYTES} bytes")


def _require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


def _has_space(text: str) -> bool:
    return any(ch.isspace() for ch in text)


def _split_format(address_format: str) -> tuple[str, str]:
    """The literal text before and after ``{token}``, after validating the format."""
    if address_format.count(FORMAT_PLACEHOLDER) != 1:
        raise ValueError(f"reply address format must contain {FORMAT_PLACEHOLDER} exactly once")
    if "@" in address_format or _has_space(address_format):
        raise ValueError("reply address format is a local part: no '@' and no spaces")
    prefix, _, suffix = address_format.partition(FORMAT_PLACEHOLDER)
    return prefix, suffix


@functools.lru_cache(maxsize=8)
def _local_part_re(address_format: str) -> re.Pattern[str]:
    prefix, suffix = _split_format(address_format)
    return re.compile(
        f"{re.escape(prefix)}(?P<token>{_TOKEN_PATTERN}){re.escape(suffix)}",
        re.IGNORECASE | re.ASCII,
    )


def _canonical_domain(domain: str) -> str:
    return domain.strip().lower().removesuffix(".")
