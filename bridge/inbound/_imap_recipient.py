"""Who an IMAP message was for: the recipient the receiver stores with it.

IMAP has no envelope, so the receiver reads the recipient from the header
block: the first reply address (`policy.tokens.token_from_address` with
`tokens.address_format`; the domain is left to the pipeline) in
`Delivered-To`, `X-Original-To`, `To` and `Cc`, in that order (an MTA that
rewrites a reply address to a mailbox keeps the original in `X-Original-To`);
else the first `To` address; else `UNKNOWN_RECIPIENT`, `unknown@invalid`
(RFC 6761: `.invalid` can never be a real domain). The pipeline holds what has
no valid token as `unknown_recipient`, so any answer here is safe to store.

Not here: checking the token or the domain, or anything beyond these headers.
"""

from __future__ import annotations

import logging
import re
import traceback
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

from bridge.inbound.receipt import HEADER_SCAN_LIMIT, header_block, storable_address
from bridge.policy.tokens import token_from_address

log = logging.getLogger(__name__)

UNKNOWN_RECIPIENT = "unknown@invalid"
_RECIPIENT_HEADERS = ("delivered-to", "x-original-to", "to", "cc")
_FOLD = re.compile(r"\r?\n(?=[ \t])|\r|\n")


@dataclass(frozen=True)
class Recipient:
    """The address stored as `envelope_recipient`, and where it came from:
    `reply_address`, `first_to` or `none` (then `address` is `UNKNOWN_RECIPIENT`)."""

    address: str
    source: str


def choose_recipient(raw: bytes, address_format: str) -> Recipient:
    """The recipient of an IMAP message (see the module docstring); never raises.

    Only the header block (at most `receipt.HEADER_SCAN_LIMIT` bytes) is parsed.
    An address that the table cannot hold as given (too long, control
    characters) is passed over.
    """
    try:
        return _choose_recipient(raw, address_format)
    except Exception as err:
        # A bug of ours on hostile headers. Storing with the placeholder keeps the message
        # and the mailbox moving (the pipeline holds it); retrying would block both.
        frames = "".join(traceback.format_tb(err.__traceback__)).rstrip()
        log.error("imap recipient lookup failed: %s\n%s", type(err).__qualname__, frames)
        return Recipient(UNKNOWN_RECIPIENT, "none")


def _choose_recipient(raw: bytes, address_format: str) -> Recipient:
    head = header_block(raw[:HEADER_SCAN_LIMIT])
    parsed = BytesHeaderParser(policy=compat32).parsebytes(head)
    values: dict[str, list[str]] = {name: [] for name in _RECIPIENT_HEADERS}
    for name, value in parsed.raw_items():
        key = name.strip().lower()
        if key in values:
            text = str(value).encode("ascii", "surrogateescape").decode("utf-8", "replace")
            values[key].append(_FOLD.sub("", text))
    for name in _RECIPIENT_HEADERS:
        for _, address in getaddresses(values[name]):
            if storable_address(address) and token_from_address(address_format, address):
                return Recipient(address, "reply_address")
    for _, address in getaddresses(values["to"]):
        if "@" in address and storable_address(address):
            return Recipient(address, "first_to")
    return Recipient(UNKNOWN_RECIPIENT, "none")
