"""The IMAP receiver: fetch replies from the practice's mailbox, commit them, then move them.

`ImapReceiver` keeps one connection to `inbound.imap` (implicit TLS, STARTTLS
or plain; LOGIN; SELECT `mailbox`; `processed_folder` created when missing).
Each pass over the mailbox:

1. reads `imap_state.last_uid` (the highest UID already stored) and lists the
   mailbox's UIDs (`UID SEARCH ALL`);
2. moves the messages at or below `last_uid` to `processed_folder`: they were
   committed by an earlier pass whose MOVE never happened (a crash, a lost
   connection, a refused MOVE; a refused MOVE is logged and retried on the next
   pass, and holds back no new mail);
3. for every UID above `last_uid`, ascending, in small batches: `UID FETCH
   BODY.PEEK[]`, and in one transaction `receipt.store_raw` (the bytes exactly
   as FETCH returned them) together with `last_uid = uid`; after the commit,
   `UID MOVE` to `processed_folder` (UID COPY, \\Deleted and UID EXPUNGE when
   the server has no MOVE).

Between passes it IDLEs (when the server offers IDLE and `idle` is on) until
the server reports new mail, `wake()` is called, or 25 minutes pass (RFC 2177:
re-issue IDLE before the server's 30-minute limit); otherwise it waits
`poll_interval_seconds`. Any failure of the connection or the store ends the
connection; it reconnects after an exponential back-off with jitter.

**Nothing is lost** (DESIGN invariant 1): a message leaves the mailbox only by
the MOVE, and the MOVE comes after the commit of its row, or (step 2) for UIDs
that `last_uid` says were committed. UIDs grow with every message added, so a
message still in the mailbox with a UID at or below `last_uid` was stored by a
pass that saw it; a message whose body cannot be fetched while it is still
there stops the pass (the receiver retries; later UIDs wait behind it rather
than letting `last_uid` pass it).

**Nothing is stored twice** while UIDVALIDITY stays the same: the row and
`last_uid` are committed together under a row lock on `imap_state`, and a UID
at or below `last_uid` is never fetched again, by this instance or another one
sharing the store. A crash between commit and MOVE leaves the message in the
mailbox; the next pass moves it without storing it again (step 2).

**When UIDVALIDITY changes** (the mailbox was recreated or restored), the old
UIDs mean nothing: `last_uid` goes back to 0 and everything in the mailbox is
read again. That cannot file anything twice: the mailbox holds only mail not
yet moved to `processed_folder`, which is unstored mail, plus at most the few
messages of an interrupted MOVE; those get a second row with the same sha256
and Message-ID, which the pipeline drops as `duplicate` (DESIGN invariant 2).

**Recipient**: the first reply address in `Delivered-To`, `X-Original-To`,
`To`, `Cc`, else the first `To`, else `unknown@invalid` (`_imap_recipient`); the
message is stored in every case. `envelope_sender` is NULL: IMAP has no `MAIL
FROM` (the final MDA's `Return-Path` header, when present, carries it).

Logging: ids, UIDs and counts; never addresses, subjects, the user name or the
host's answers.

Parts: `_imap_client` (the connection, on aioimaplib), `_imap_wire` (its
answers, typed), `_imap_state` (the store side: `imap_state` and the commit),
`_imap_recipient` (the recipient lookup).

Not here: parsing beyond the recipient headers, classifying or filing (the
pipeline), or reading the configuration file (the daemon passes the settings).
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import sqlalchemy.exc

from bridge.config import InboundImapSettings
from bridge.inbound._imap_client import MAX_UID_SET, Endpoint, ImapClient
from bridge.inbound._imap_recipient import UNKNOWN_RECIPIENT, Recipient, choose_recipient
from bridge.inbound._imap_state import (
    ImapStateChanged,
    account_key,
    prepare_state,
    store_message,
    stored_up_to,
)
from bridge.inbound._imap_wire import ImapCommandFailed, ImapError, ImapProtocolError, quote
from bridge.policy.tokens import token_from_address
from bridge.store.engine import Store
from bridge.store.models import InboundVia

__all__ = [
    "UNKNOWN_RECIPIENT",
    "Backoff",
    "ImapReceiver",
    "ImapStateChanged",
    "Recipient",
    "account_key",
    "choose_recipient",
]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# RFC 2177: servers may end an IDLE after 30 minutes of silence; re-issue it well before.
IDLE_RENEW_SECONDS = 25 * 60.0
# The loop beats at least this often (the daemon's watchdog reads the beats).
HEARTBEAT_SECONDS = 10.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: `initial` doubled per consecutive failure up to `maximum`,
    each scaled by a random factor in [0.5, 1) so that instances do not reconnect
    in step after an outage."""

    initial: float = 1.0
    maximum: float = 300.0

    def delay(self, failures: int, jitter: float) -> float:
        base = min(self.maximum, self.initial * 2.0 ** min(max(failures - 1, 0), 32))
        return base * (0.5 + 0.5 * jitter)


class ImapReceiver:
    """Fetch, commit, then move: the inbound IMAP mailbox drained into `inbound_emails`.

    As an async context manager it runs in a background task; `stop()` (or leaving
    the block) ends it after the message in flight, cancelling after `stop_grace`.
    `run(stop)` is the loop itself, for callers that own the task. `wake()` ends
    an IDLE, a poll wait or a reconnect pause early.
    """

    def __init__(
        self,
        store: Store,
        settings: InboundImapSettings,
        *,
        address_format: str,
        clock: Clock = _utcnow,
        beat: Callable[[str], None] | None = None,
        name: str = "inbound-imap",
        batch_size: int = 25,
        batch_bytes: int = 32 * 1024 * 1024,
        timeout: float = 60.0,
        backoff: Backoff | None = None,
        idle_renew_seconds: float = IDLE_RENEW_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        stop_grace: float = 10.0,
    ) -> None:
        if not settings.host or not settings.username or settings.password is None:
            raise ValueError("inbound.imap needs host, username and password")
        if settings.mailbox == settings.processed_folder:
            raise ValueError("inbound.imap.processed_folder must differ from mailbox")
        for value in (settings.username, settings.mailbox, settings.processed_folder):
            quote(value)  # ValueError now rather than on every connection
        token_from_address(address_format, "check@example.org")  # ValueError on a bad format
        if not 1 <= batch_size <= MAX_UID_SET:
            raise ValueError(f"batch_size must be between 1 and {MAX_UID_SET}")
        self.name = name
        self.account = account_key(settings)
        self.failures = 0
        self._store = store
        self._settings = settings
        self._password = settings.password.get_secret_value()
        self._address_format = address_format
        self._clock = clock
        self._beat = beat
        self._batch_size = batch_size
        self._batch_bytes = batch_bytes
        self._backoff = backoff or Backoff()
        self._idle_renew = idle_renew_seconds
        self._heartbeat_every = heartbeat_seconds
        self._stop_grace = stop_grace
        self._endpoint = Endpoint(
            host=settings.host,
            port=settings.port,
            security=settings.security,
            verify_certificates=settings.verify_certificates,
            timeout=timeout,
        )
        self._random = random.Random()  # noqa: S311 - jitter, not a secret
        self._woken = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._stopping.clear()
        self._task = asyncio.create_task(self.run(self._stopping), name=self.name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop, and wait until stopped (see `run`)."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            await task

    def wake(self) -> None:
        """Look at the mailbox now (ends an IDLE, a poll wait or a reconnect pause)."""
        self._woken.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, drain, wait for mail, repeat; reconnect after any failure.

        Once `stop` is set, the connection gets `stop_grace` seconds to finish the
        message in flight and log out; then it is cancelled. Cancelling is safe at
        any point: a message whose commit did not finish is still in the mailbox,
        and one committed but not moved is moved by the next pass.
        """
        while not stop.is_set():
            self._heartbeat()
            self._woken.clear()
            try:
                await self._stoppable(self._connection(stop), stop)
            except Exception as err:  # one connection: whatever failed, start a new one
                if stop.is_set():
                    return
                self.failures += 1
                delay = self._backoff.delay(self.failures, self._random.random())
                _log_failure(err, self.failures, delay)
                await self._pause(stop, delay)

    async def _stoppable(self, work: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=self._stop_grace)
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if not task.cancelled():
            task.result()

    # -- one connection ----------------------------------------------------------------

    async def _connection(self, stop: asyncio.Event) -> None:
        settings = self._settings
        client = await ImapClient.connect(self._endpoint)
        finished = False
        try:
            await client.login(settings.username, self._password)
            if await client.ensure_mailbox(settings.processed_folder):
                log.info("imap processed folder created")
            idling = settings.idle and client.can("IDLE")
            log.info(
                "imap connected",
                extra={
                    "idle": idling,
                    "move": client.can("MOVE"),
                    "uidplus": client.can("UIDPLUS"),
                },
            )
            uidvalidity: int | None = None
            while not stop.is_set():
                self._woken.clear()
                # SELECT again on every pass: it is how a poll sees new mail (RFC 3501
                # 6.3.1), and a mailbox recreated under an open session (a new
                # UIDVALIDITY) may never be announced to it, not even by IDLE.
                current = await client.select(settings.mailbox)
                client.changed.clear()  # the SELECT's own EXISTS: what this pass will see
                if current != uidvalidity:
                    await prepare_state(self._store, self.account, current, self._clock())
                    uidvalidity = current
                await self._drain(client, uidvalidity, stop)
                self.failures = 0
                if stop.is_set():
                    break
                if client.changed.is_set():
                    continue  # mail arrived during the pass
                if idling:
                    await client.idle(
                        [stop, self._woken],
                        renew_after=self._idle_renew,
                        beat=self._heartbeat,
                        beat_every=self._heartbeat_every,
                    )
                else:
                    await self._pause(
                        stop, settings.poll_interval_seconds, client.lost, client.changed
                    )
            finished = True
        finally:
            await client.close(logout=finished)

    async def _drain(self, client: ImapClient, uidvalidity: int, stop: asyncio.Event) -> None:
        """One pass over the mailbox (steps 1-3 of the module docstring)."""
        last_uid = await stored_up_to(self._store, self.account, uidvalidity)
        present = await client.uids()
        await self._settle(client, [uid for uid in present if uid <= last_uid], "stored_earlier")
        for chunk in _chunks([uid for uid in present if uid > last_uid], self._batch_size):
            if stop.is_set():
                return
            sizes = await client.sizes(chunk)
            for group in _groups(chunk, sizes, self._batch_bytes):
                self._heartbeat()
                await self._take(client, group, uidvalidity)

    async def _take(self, client: ImapClient, uids: Sequence[int], uidvalidity: int) -> None:
        """Fetch `uids`, commit each (ascending), then move the committed ones."""
        bodies = await client.bodies(uids)
        taken: list[int] = []
        for uid in uids:
            raw = bodies.get(uid)
            if raw is None:
                if await client.uids(f"UID {uid}"):
                    # Never skipped: a later UID committed would make this one look stored.
                    raise ImapProtocolError("FETCH gave no body for a message in the mailbox")
                continue  # expunged meanwhile (by someone else): nothing to store
            await self._commit(uid, raw, uidvalidity)
            taken.append(uid)
        await self._settle(client, taken, "stored")

    async def _settle(self, client: ImapClient, uids: Sequence[int], reason: str) -> None:
        """Move committed messages to `processed_folder`. A refusal (NO/BAD) is logged
        and left for the next pass: the messages are stored, and new mail must not
        wait behind a processed folder that is full or read-only."""
        for part in _chunks(uids, MAX_UID_SET):
            try:
                await client.move(part, self._settings.processed_folder)
            except ImapCommandFailed as err:
                log.warning(
                    "imap move refused, retried on the next pass: %s",
                    err,
                    extra={"count": len(part), "reason": reason},
                )
                return
            if reason == "stored_earlier":
                log.info("imap stored messages moved", extra={"count": len(part)})

    async def _commit(self, uid: int, raw: bytes, uidvalidity: int) -> None:
        recipient = choose_recipient(raw, self._address_format)
        row_id = await store_message(
            self._store,
            self.account,
            uidvalidity,
            uid,
            raw,
            recipient=recipient.address,
            now=self._clock(),
        )
        if row_id is None:
            log.info("imap message already stored", extra={"uid": uid})
            return
        log.info(
            "inbound message accepted",
            extra={
                "via": InboundVia.IMAP.value,
                "inbound_ids": str(row_id),
                "uid": uid,
                "recipient": recipient.source,
                "bytes": len(raw),
            },
        )

    # -- waiting ------------------------------------------------------------------------

    async def _pause(self, stop: asyncio.Event, seconds: float, *also: asyncio.Event) -> None:
        """Wait `seconds`, beating; end early on `stop`, `wake()` or any of `also`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        events = (stop, self._woken, *also)
        while not any(event.is_set() for event in events):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            waiters = [asyncio.ensure_future(event.wait()) for event in events]
            try:
                await asyncio.wait(
                    waiters,
                    timeout=min(remaining, self._heartbeat_every),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()
            self._heartbeat()

    def _heartbeat(self) -> None:
        if self._beat is not None:
            self._beat(self.name)


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _groups(uids: Sequence[int], sizes: dict[int, int], budget: int) -> Iterator[list[int]]:
    """`uids` in order, cut so that each group's announced size stays within `budget`
    (a larger message goes alone). A UID without a size counts as empty."""
    group: list[int] = []
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if group and total + size > budget:
            yield group
            group, total = [], 0
        group.append(uid)
        total += size
    if group:
        yield group


def _log_failure(error: BaseException, failures: int, delay: float) -> None:
    """Log a failed connection: reason codes and exception types, never messages of
    foreign exceptions (driver errors quote SQL parameters; server errors can quote
    names). Expected failures are warnings; anything else is a bug, with frames."""
    extra = {"failures": failures, "retry_in": round(delay, 1)}
    cause = error.__cause__ or error.__context__
    kinds = type(error).__qualname__ + ("" if cause is None else f" <- {type(cause).__qualname__}")
    if isinstance(error, ImapError):
        log.warning("imap connection failed: %s (%s)", error, kinds, extra=extra)
        return
    if isinstance(error, OSError | TimeoutError | sqlalchemy.exc.SQLAlchemyError):
        log.warning("imap connection failed: %s", kinds, extra=extra)
        return
    frames = "".join(traceback.format_tb(error.__traceback__)).rstrip()
    log.error("imap connection failed: %s\n%s", kinds, frames, extra=extra)
