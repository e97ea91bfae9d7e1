"""Authentication-Results (RFC 8601): did a trusted mail server vouch for the sender?

Owns reading the `Authentication-Results` header fields that the practice's
own MTA (or its DKIM/DMARC milter) adds, and the verdict the inbound pipeline
needs when `inbound.pipeline.require_authentication` is on (docs/inbound.md,
step 4): the `From` domain passed DMARC, or carries a passing DKIM signature
of an aligned domain, according to a server whose authserv-id is configured.

Only the top-most field with a trusted authserv-id counts. An MTA prepends its
field above everything the sender wrote, and RFC 8601 section 5 asks it to
remove fields claiming its own authserv-id that arrive from outside; if it did
not, a forged field would still sit below the genuine one. Fields naming other
servers are the sender's words and are ignored.

Pure and total: strings in, values out, no recursion (comments are skipped by
a counter, so a field of 5000 "(" costs a linear scan). Does not: verify a
signature, look up DNS, know public suffixes (DKIM alignment is "same domain
or a parent of it", which is relaxed alignment without the public-suffix
list), or log anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

# A field longer than this is not one an MTA wrote; it is read no further.
MAX_FIELD_CHARS: Final = 16 * 1024
# At most this many fields are looked at, from the top.
MAX_FIELDS: Final = 50

_SPECIALS: Final = frozenset("=;/")


@dataclass(frozen=True)
class MethodResult:
    """One `method=result` statement and its properties (`header.d` -> `example.org`)."""

    method: str
    result: str
    properties: tuple[tuple[str, str], ...] = ()

    def prop(self, name: str) -> str | None:
        for key, value in self.properties:
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class AuthResults:
    """One parsed field: who wrote it and what it says; names and results lower case."""

    authserv_id: str
    results: tuple[MethodResult, ...]


class AuthVerdict(StrEnum):
    """What a trusted server said about the `From` domain; values are audit codes."""

    DMARC_PASS = "dmarc_pass"  # noqa: S105 (a verdict code, not a password)
    DKIM_PASS = "dkim_pass"  # noqa: S105
    NOT_PASSED = "not_passed"
    NO_TRUSTED_RESULT = "no_trusted_result"

    @property
    def passed(self) -> bool:
        return self in (AuthVerdict.DMARC_PASS, AuthVerdict.DKIM_PASS)


def parse_authentication_results(value: str) -> AuthResults | None:
    """One `Authentication-Results` field value, or None when it is not one.

    `authserv-id [version] ; method[/version]=result [reason=...] [ptype.prop=value ...] ; ...`
    with comments anywhere; a field saying `; none` has no results. Statements
    that do not parse are skipped, the rest kept.
    """
    if len(value) > MAX_FIELD_CHARS:
        return None
    tokens = _tokens(value)
    segments: list[list[str]] = [[]]
    for piece in tokens:
        if piece == ";":
            segments.append([])
        else:
            segments[-1].append(piece)
    head = segments[0]
    if not head or head[0] in _SPECIALS:
        return None
    results: list[MethodResult] = []
    for segment in segments[1:]:
        parsed = _statement(segment)
        if parsed is not None:
            results.append(parsed)
    return AuthResults(authserv_id=head[0].lower(), results=tuple(results))


def authentication_verdict(
    fields: Iterable[str], trusted_ids: Iterable[str], from_domain: str
) -> AuthVerdict:
    """The verdict of the top-most field written by a trusted authserv-id.

    `fields` are the header values in message order (top first); `from_domain`
    is the normalised domain of the `From` address. DMARC `pass` (for this
    domain, when the field names `header.from`) wins; else a DKIM `pass` whose
    `header.d` (or the domain of `header.i`) is the From domain or a parent of it.
    """
    trusted = {ident.strip().lower() for ident in trusted_ids if ident.strip()}
    domain = from_domain.strip().lower().rstrip(".")
    for count, value in enumerate(fields):
        if count >= MAX_FIELDS:
            break
        parsed = parse_authentication_results(value)
        if parsed is None or parsed.authserv_id not in trusted:
            continue
        return _judge(parsed, domain)
    return AuthVerdict.NO_TRUSTED_RESULT


def _judge(parsed: AuthResults, domain: str) -> AuthVerdict:
    for result in parsed.results:
        if result.method == "dmarc" and result.result == "pass":
            named = result.prop("header.from")
            if named is None or _domain_of(named) == domain:
                return AuthVerdict.DMARC_PASS
    for result in parsed.results:
        if result.method == "dkim" and result.result == "pass":
            signer = result.prop("header.d") or _domain_of(result.prop("header.i") or "")
            if signer and _aligned(signer, domain):
                return AuthVerdict.DKIM_PASS
    return AuthVerdict.NOT_PASSED


def _aligned(signer: str, domain: str) -> bool:
    signer = signer.lower().rstrip(".")
    # A one-label signer ("org") would align with every domain under it.
    if "." not in signer or not domain:
        return False
    return domain == signer or domain.endswith("." + signer)


def _domain_of(value: str) -> str:
    return value.rpartition("@")[2].strip().lower().rstrip(".")


def _statement(tokens: list[str]) -> MethodResult | None:
    """`method [/ version] = result` then `name = value` pairs; None if malformed."""
    if len(tokens) < 3 or tokens[0] in _SPECIALS:
        return None
    method, rest = tokens[0].lower(), tokens[1:]
    if rest[0] == "/":
        rest = rest[2:]  # the method version is of no interest
    if len(rest) < 2 or rest[0] != "=" or rest[1] in _SPECIALS:
        return None
    result, rest = rest[1].lower(), rest[2:]
    properties: list[tuple[str, str]] = []
    while len(rest) >= 3 and rest[1] == "=":
        name, value, rest = rest[0].lower(), rest[2], rest[3:]
        if name != "reason" and name not in _SPECIALS and value not in _SPECIALS:
            properties.append((name, value))
    return MethodResult(method=method, result=result, properties=tuple(properties))


def _tokens(value: str) -> list[str]:
    """Words, quoted strings (unquoted) and the specials `= ; /`, comments skipped.

    One pass with a depth counter: nested comments, escapes and an unclosed
    comment (which comments out the rest) cost linear time.
    """
    tokens: list[str] = []
    word: list[str] = []
    depth = 0
    quoted = escaped = False

    def flush() -> None:
        if word:
            tokens.append("".join(word))
            word.clear()

    for char in value:
        if escaped:
            escaped = False
            if not depth:
                word.append(char)
        elif char == "\\" and (depth or quoted):
            escaped = True
        elif depth:
            depth += {"(": 1, ")": -1}.get(char, 0)
        elif quoted:
            if char == '"':
                quoted = False
                tokens.append("".join(word))
                word.clear()
            else:
                word.append(char)
        elif char == '"':
            flush()
            quoted = True
        elif char == "(":
            flush()
            depth = 1
        elif char in _SPECIALS:
            flush()
            tokens.append(char)
        elif char.isspace():
            flush()
        else:
            word.append(char)
    flush()
    return tokens
