"""The IMAP wire, typed: responses, arguments, UID sets and the errors of a session.

aioimaplib hands back untyped `Response(result, lines)` tuples whose lines are
bytes, except literals (bytearray). `Reply` fixes the types; the parsers here
read what the receiver needs from its lines. Arguments are quoted here, because
aioimaplib sends them as given.

Error messages carry command names and status words, never arguments or
server text (server text can quote a mailbox name or a user name).

Not here: the connection (`_imap_client`) or what the receiver does with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.errors import BridgeError

UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]", re.IGNORECASE)
EXISTS = re.compile(rb"\d+ EXISTS", re.IGNORECASE)
SEARCH_HITS = re.compile(rb"[0-9 ]*")
FETCH_START = re.compile(rb"\d+ FETCH \(", re.IGNORECASE)
FETCH_UID = re.compile(rb"[( ]UID (\d+)", re.IGNORECASE)
FETCH_SIZE = re.compile(rb"RFC822\.SIZE (\d+)", re.IGNORECASE)
_BODY_LITERAL = re.compile(rb"BODY\[\] \{(\d+)\}$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ImapError(BridgeError):
    """The IMAP session failed; the receiver reconnects. `reason` is a short code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class ImapConnectionLost(ImapError):
    def __init__(self, detail: str = "") -> None:
        super().__init__("connection_lost", detail)


class ImapTimeout(ImapError):
    def __init__(self, command: str) -> None:
        super().__init__("timeout", command)


class ImapCommandFailed(ImapError):
    """The server answered NO or BAD (`result`) to `command`."""

    def __init__(self, command: str, result: str) -> None:
        super().__init__("command_failed", f"{command} {result}")
        self.command = command
        self.result = result


class ImapProtocolError(ImapError):
    """The server's answer could not be understood, or lacks something required."""

    def __init__(self, detail: str) -> None:
        super().__init__("protocol", detail)


@dataclass(frozen=True)
class Reply:
    """A tagged response: `result` is OK, NO or BAD; `lines` the untagged lines and
    literals in order, then the text of the tagged line."""

    result: str
    lines: tuple[bytes, ...]

    @classmethod
    def of(cls, response: Any) -> Reply:
        lines = tuple(bytes(line) for line in response.lines)
        return cls(str(response.result), lines)

    def expect_ok(self, command: str) -> Reply:
        if self.result != "OK":
            raise ImapCommandFailed(command, self.result[:8])
        return self


def quote(text: str) -> str:
    """`text` as an IMAP quoted string. Only printable ASCII is accepted (names that
    need modified UTF-7 or literals are not supported); `ValueError` otherwise."""
    if not text.isascii() or _CONTROL.search(text):
        raise ValueError("only printable ASCII is supported in IMAP names")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def uid_set(uids: Iterable[int]) -> str:
    """A compact IMAP sequence set: ``1:3,7,9:10``."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("an empty UID set")
    parts: list[str] = []
    start = end = ordered[0]
    for uid in ordered[1:]:
        if uid == end + 1:
            end = uid
            continue
        parts.append(str(start) if start == end else f"{start}:{end}")
        start = end = uid
    parts.append(str(start) if start == end else f"{start}:{end}")
    return ",".join(parts)


def parse_bodies(lines: Sequence[bytes]) -> dict[int, bytes]:
    """The `BODY[]` literal of each untagged FETCH response in `lines`, by UID.

    A response starts with ``n FETCH (``; its `BODY[]` literal is the item after
    the line that announces it (``BODY[] {size}``), and must have that size. The
    UID may come before or after the literal. Responses without both are
    skipped (unsolicited flag updates, or a server that sent something else).
    """
    bodies: dict[int, bytes] = {}
    index = 0
    while index < len(lines):
        if not FETCH_START.match(lines[index]):
            index += 1
            continue
        text, body = [lines[index]], None
        announced = _BODY_LITERAL.search(lines[index])
        index += 1
        if announced and index < len(lines) and len(lines[index]) == int(announced.group(1)):
            body = lines[index]
            index += 1
            while index < len(lines) and not FETCH_START.match(lines[index]):
                text.append(lines[index])
                index += 1
        uid = FETCH_UID.search(b" ".join(text))
        if uid and body is not None:
            bodies[int(uid.group(1))] = body
    return bodies
