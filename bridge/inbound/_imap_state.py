"""Where the IMAP receiver is in a mailbox: the `imap_state` row, and the commit that
stores a message and moves `last_uid` past it.

`store_message` is the receiver's only write for a message: under a row lock on
the mailbox's `imap_state` (PostgreSQL `FOR UPDATE`; SQLite's `BEGIN
IMMEDIATE` serialises writers anyway) it checks that the UIDVALIDITY is still
the one the connection sees and that the UID is above `last_uid`, then inserts
the `inbound_emails` row (`receipt.store_raw`) and sets `last_uid` to the UID,
in one transaction. So a UID is stored at most once per UIDVALIDITY, by any
number of instances sharing the store, and `last_uid` never passes a message
that was not stored.

Not here: IMAP, choosing the recipient, or logging mail events (the receiver
in `bridge.inbound.imap` does those).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.config import InboundImapSettings
from bridge.inbound._imap_wire import ImapError
from bridge.inbound.receipt import store_raw
from bridge.store.engine import Store
from bridge.store.models import ImapState, InboundVia

log = logging.getLogger(__name__)

# `imap_state.account` is text(255).
_ACCOUNT_LENGTH = 255


class ImapStateChanged(ImapError):
    """`imap_state` no longer matches the connection (another instance saw a new
    UIDVALIDITY, or the row was removed); reconnecting sorts it out."""

    def __init__(self) -> None:
        super().__init__("state_changed")


def account_key(settings: InboundImapSettings) -> str:
    """The `imap_state.account` of a mailbox: ``user@host:port/mailbox``; shortened
    with a hash of the whole when longer than the column."""
    key = f"{settings.username}@{settings.host}:{settings.port}/{settings.mailbox}"
    if len(key) <= _ACCOUNT_LENGTH:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{key[: _ACCOUNT_LENGTH - len(digest) - 1]}#{digest}"


async def prepare_state(store: Store, account: str, uidvalidity: int, now: datetime) -> None:
    """Create the mailbox's `imap_state` row, or start over (`last_uid` 0) when its
    UIDVALIDITY is not the one the server now reports."""
    async with store.transaction() as session:
        state = await _locked_state(session, account)
        if state is None:
            session.add(
                ImapState(account=account, uidvalidity=uidvalidity, last_uid=0, updated_at=now)
            )
            log.info("imap state created", extra={"uidvalidity": uidvalidity})
        elif state.uidvalidity != uidvalidity:
            log.warning(
                "imap uidvalidity changed, reading the mailbox from the start",
                extra={
                    "old_uidvalidity": state.uidvalidity,
                    "uidvalidity": uidvalidity,
                    "old_last_uid": state.last_uid,
                },
            )
            state.uidvalidity = uidvalidity
            state.last_uid = 0
            state.updated_at = now


async def stored_up_to(store: Store, account: str, uidvalidity: int) -> int:
    """`last_uid`: every message of the mailbox with a UID up to it is stored."""
    async with store.read() as session:
        state = await session.get(ImapState, account)
    if state is None or state.uidvalidity != uidvalidity:
        raise ImapStateChanged()
    return state.last_uid


async def store_message(
    store: Store,
    account: str,
    uidvalidity: int,
    uid: int,
    raw: bytes,
    *,
    recipient: str,
    now: datetime,
) -> int | None:
    """Store `raw` and set `last_uid` to `uid`, in one transaction; returns the new
    `inbound_emails` id, or None when the UID was stored already (by another
    instance). Raises `ImapStateChanged` when the state moved to another
    UIDVALIDITY or is gone."""
    async with store.transaction() as session:
        state = await _locked_state(session, account)
        if state is None or state.uidvalidity != uidvalidity:
            raise ImapStateChanged()
        if uid <= state.last_uid:
            return None
        (row_id,) = await store_raw(
            session,
            raw,
            via=InboundVia.IMAP,
            envelope_sender=None,
            envelope_recipients=[recipient],
            now=now,
        )
        state.last_uid = uid
        state.updated_at = now
    return row_id


async def _locked_state(session: AsyncSession, account: str) -> ImapState | None:
    query = select(ImapState).where(col(ImapState.account) == account).with_for_update()
    return (await session.exec(query)).first()
