"""A typed IMAP client for the receiver: the few commands it needs, on aioimaplib.

aioimaplib parses the protocol (`_imap_wire` gives its answers types); this
module runs the commands the receiver needs and fixes what it cannot live with:

* A lost connection does not fail the commands in flight (they wait for their
  timeout, IDLE forever). Every command here races the connection's end and a
  timeout, and raises `ImapConnectionLost` or `ImapTimeout`.
* There is no STARTTLS. `connect` sends the command and upgrades the transport
  with `loop.start_tls`, then asks for the capabilities again (RFC 3501 6.2.1:
  what the server said before TLS is not to be trusted).
* An untagged EXISTS (new mail) that no pending command claims is dropped, so
  mail announced during a pass would go unnoticed until the next one.
  `_Protocol` reports every EXISTS (`ImapClient.changed`).
* `IMAP4_SSL` takes no connection-lost callback, so implicit TLS is `IMAP4`
  with an SSL context (what `IMAP4_SSL` does, plus the callback).
* Responses are parsed one frame per line (recursively), so a response of many
  hundreds of lines overflows the stack. Callers keep every UID set small
  (`MAX_UID_SET`), which bounds the FETCH, MOVE and EXPUNGE answers.
* aioimaplib logs command lines (the user name) and whole responses (message
  content) at DEBUG and INFO; a filter drops its records below WARNING. Its
  exceptions raised inside the protocol reach asyncio's logger with their text
  (a command with its arguments); a filter there withholds that text.

Any error but a refusal (NO/BAD) leaves the connection unusable: the caller
closes it and connects again.

Not here: what to fetch or when, the store, or logging of mail events (the
receiver in `bridge.inbound.imap` owns all of that).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aioimaplib

from bridge.inbound._imap_wire import (
    EXISTS,
    FETCH_SIZE,
    FETCH_START,
    FETCH_UID,
    SEARCH_HITS,
    UIDVALIDITY,
    ImapConnectionLost,
    ImapError,
    ImapProtocolError,
    ImapTimeout,
    Reply,
    parse_bodies,
    quote,
    uid_set,
)

Security = Literal["tls", "starttls", "none"]

# The most UIDs in one FETCH, MOVE, COPY, STORE or EXPUNGE (see the module docstring).
MAX_UID_SET = 50
# How long closing waits for the server's goodbye and the socket to close.
_CLOSE_WAIT = 2.0

_T = TypeVar("_T")


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect."""

    host: str
    port: int
    security: Security
    verify_certificates: bool = True
    timeout: float = 60.0


def tls_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not verify:
        # The operator chose this (inbound.imap.verify_certificates = false).
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _Protocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]  # untyped library
    """aioimaplib's protocol, telling `on_exists` about every untagged EXISTS.

    aioimaplib drops untagged responses that no pending command claims, and an
    EXISTS (new mail) sent at the end of a SEARCH, FETCH or MOVE is one of them.
    The server announces each new message once; missed, an IDLE started next
    would wait for the next message. `_untagged_response` is aioimaplib's
    (private) handler of every untagged line outside literals; the IDLE tests
    notice if a new version of the library stops calling it.
    """

    def __init__(self, loop: Any, conn_lost_cb: Any, on_exists: Callable[[], None]) -> None:
        super().__init__(loop, conn_lost_cb)
        self._on_exists = on_exists

    def _untagged_response(self, line: bytes) -> Any:
        if EXISTS.fullmatch(line.removeprefix(b"* ")):
            self._on_exists()
        return super()._untagged_response(line)


class _Imap4(aioimaplib.IMAP4):  # type: ignore[misc]  # untyped library
    """`IMAP4` on `_Protocol`."""

    def __init__(self, *, on_exists: Callable[[], None], **options: Any) -> None:
        self._on_exists = on_exists
        super().__init__(**options)

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Callable[[Exception | None], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        running = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = _Protocol(running, conn_lost_cb, self._on_exists)
        self._client_task = running.create_task(
            running.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )


class ImapClient:
    """One connection. Build it with `connect`; close it with `close`.

    `changed` is set whenever the server announces new mail (an untagged EXISTS,
    whatever command it came with); the caller clears it when it looks.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._lost = asyncio.Event()
        self.changed = asyncio.Event()
        self.capabilities: frozenset[str] = frozenset()
        implicit = tls_context(endpoint.verify_certificates) if endpoint.security == "tls" else None
        self._imap: Any = _Imap4(
            host=endpoint.host,
            port=endpoint.port,
            timeout=endpoint.timeout,
            conn_lost_cb=self._on_lost,
            ssl_context=implicit,
            on_exists=self.changed.set,
        )
        self._protocol: Any = self._imap.protocol

    def _on_lost(self, _error: Exception | None) -> None:
        self._lost.set()

    @classmethod
    async def connect(cls, endpoint: Endpoint) -> ImapClient:
        """Open the connection, wait for the greeting, secure it as configured."""
        _quiet_aioimaplib()
        client = cls(endpoint)
        imap = client._imap
        try:
            # aioimaplib asks for the capabilities itself after the greeting.
            await client._call(imap.wait_hello_from_server(), "greeting", limit=None)
            client._take_capabilities()
            if endpoint.security == "starttls":
                await client._starttls()
                await client.refresh_capabilities()
        except BaseException:
            await client.close(logout=False)
            raise
        return client

    @property
    def lost(self) -> asyncio.Event:
        """Set once the connection has ended."""
        return self._lost

    def can(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    async def refresh_capabilities(self) -> None:
        await self._call(self._protocol.capability(), "CAPABILITY")
        self._take_capabilities()

    def _take_capabilities(self) -> None:
        self.capabilities = frozenset(str(c).upper() for c in self._protocol.capabilities)

    async def login(self, username: str, password: str) -> None:
        if self.can("LOGINDISABLED"):
            raise ImapProtocolError("the server refuses LOGIN on this connection")
        reply = await self._reply(self._protocol.login(quote(username), password), "LOGIN")
        reply.expect_ok("LOGIN")
        # Servers may offer more once logged in (RFC 3501 7.2.1); ask again.
        await self.refresh_capabilities()

    async def select(self, mailbox: str) -> int:
        """SELECT `mailbox`; returns its UIDVALIDITY."""
        reply = await self._reply(self._protocol.select(quote(mailbox)), "SELECT")
        for line in reply.expect_ok("SELECT").lines:
            found = UIDVALIDITY.search(line)
            if found:
                return int(found.group(1))
        raise ImapProtocolError("SELECT gave no UIDVALIDITY")

    async def ensure_mailbox(self, mailbox: str) -> bool:
        """Create `mailbox` unless it exists; returns True when it was created."""
        listed = await self._reply(
            self._protocol.simple_command("LIST", '""', quote(mailbox)), "LIST"
        )
        if len(listed.expect_ok("LIST").lines) > 1:
            return False
        created = await self._reply(
            self._protocol.simple_command("CREATE", quote(mailbox)), "CREATE"
        )
        created.expect_ok("CREATE")
        return True

    async def uids(self, criteria: str = "ALL") -> list[int]:
        """UID SEARCH: the UIDs of the selected mailbox matching `criteria`, ascending."""
        command = self._protocol.search(*criteria.split(), by_uid=True, charset=None)
        reply = (await self._reply(command, "UID SEARCH")).expect_ok("UID SEARCH")
        found: set[int] = set()
        for line in reply.lines[:-1]:
            if SEARCH_HITS.fullmatch(line):
                found.update(int(uid) for uid in line.split())
        return sorted(found)

    async def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """UID FETCH RFC822.SIZE: octets per UID (UIDs that no longer exist are absent)."""
        reply = await self._fetch(uids, "(UID RFC822.SIZE)")
        sizes: dict[int, int] = {}
        for line in reply.lines[:-1]:
            uid, size = FETCH_UID.search(line), FETCH_SIZE.search(line)
            if FETCH_START.match(line) and uid and size:
                sizes[int(uid.group(1))] = int(size.group(1))
        return sizes

    async def bodies(self, uids: Sequence[int]) -> dict[int, bytes]:
        """UID FETCH BODY.PEEK[]: the messages' bytes exactly as the server sent them,
        without setting \\Seen (UIDs that no longer exist are absent)."""
        reply = await self._fetch(uids, "(UID BODY.PEEK[])")
        return parse_bodies(reply.lines[:-1])

    async def move(self, uids: Sequence[int], mailbox: str) -> None:
        """Move the messages to `mailbox`: UID MOVE (RFC 6851) when offered, else UID
        COPY, flag \\Deleted and expunge (UID EXPUNGE with UIDPLUS, else EXPUNGE)."""
        if not uids:
            return
        if len(uids) > MAX_UID_SET:
            raise ValueError("too many UIDs for one command")
        target, numbers = quote(mailbox), uid_set(uids)
        protocol = self._protocol
        if self.can("MOVE"):
            reply = await self._reply(protocol.move(numbers, target, by_uid=True), "UID MOVE")
            reply.expect_ok("UID MOVE")
            return
        copy = await self._reply(protocol.copy(numbers, target, by_uid=True), "UID COPY")
        copy.expect_ok("UID COPY")
        flag = protocol.store(numbers, "+FLAGS.SILENT", "(\\Deleted)", by_uid=True)
        (await self._reply(flag, "UID STORE")).expect_ok("UID STORE")
        if self.can("UIDPLUS"):
            expunge = protocol.expunge(numbers, by_uid=True)
        else:
            # Without UIDPLUS, EXPUNGE removes every \Deleted message of the mailbox; the
            # mailbox belongs to bridge, so anything flagged there is meant to go anyway.
            expunge = protocol.expunge()
        (await self._reply(expunge, "EXPUNGE")).expect_ok("EXPUNGE")

    async def idle(
        self,
        interrupt: Sequence[asyncio.Event],
        *,
        renew_after: float,
        beat: Callable[[], None],
        beat_every: float,
    ) -> None:
        """IDLE (RFC 2177) until `changed` or an `interrupt` event is set, or
        `renew_after` seconds pass; then DONE. `beat` runs every `beat_every` seconds.

        Mail announced before IDLE began (`changed` already set) ends it at once.
        """
        if not self.can("IDLE"):
            raise ImapProtocolError("the server does not offer IDLE")
        protocol = self._protocol
        queue: asyncio.Queue[list[bytes]] = protocol.idle_queue
        while not queue.empty():
            queue.get_nowait()  # pushes of an earlier IDLE, seen through `changed`
        loop = asyncio.get_running_loop()
        events = (*interrupt, self.changed)
        command = asyncio.ensure_future(protocol.idle())
        started = asyncio.ensure_future(protocol.wait_for_idle_response())
        try:
            await self._call(
                asyncio.wait({command, started}, return_when=asyncio.FIRST_COMPLETED), "IDLE"
            )
            if command.done():
                (await self._reply(command, "IDLE")).expect_ok("IDLE")
                raise ImapProtocolError("IDLE ended before it began")
            deadline = loop.time() + renew_after
            while not any(event.is_set() for event in events):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await self._wait_push(queue, events, min(remaining, beat_every))
                beat()
            protocol.idle_done()
            (await self._reply(command, "IDLE")).expect_ok("IDLE")
        finally:
            started.cancel()
            if not command.done():
                command.cancel()

    async def close(self, *, logout: bool = True) -> None:
        """LOGOUT when asked and still possible, then close the socket."""
        if logout and not self._lost.is_set():
            with contextlib.suppress(ImapError, aioimaplib.AioImapException, OSError):
                await self._call(self._protocol.logout(), "LOGOUT", limit=_CLOSE_WAIT)
        transport = self._protocol.transport
        if transport is not None and not transport.is_closing():
            transport.close()
        if transport is not None:
            try:
                await asyncio.wait_for(self._lost.wait(), _CLOSE_WAIT)
            except TimeoutError:
                transport.abort()
        # The connection attempt itself, if it never finished (the socket was refused).
        attempt: asyncio.Task[Any] = self._imap._client_task
        if not attempt.done():
            attempt.cancel()
        await asyncio.gather(attempt, return_exceptions=True)

    # -- plumbing --------------------------------------------------------------------

    async def _starttls(self) -> None:
        if not self.can("STARTTLS"):
            raise ImapProtocolError("the server does not offer STARTTLS")
        protocol = self._protocol
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        (await self._reply(protocol.execute(command), "STARTTLS")).expect_ok("STARTTLS")
        if protocol.incomplete_line:
            # Plain text sent after the OK would be read as if it came over TLS.
            raise ImapProtocolError("data after STARTTLS")
        loop = asyncio.get_running_loop()
        secured = await self._call(
            loop.start_tls(
                protocol.transport,
                protocol,
                tls_context(self._endpoint.verify_certificates),
                server_hostname=self._endpoint.host,
                ssl_handshake_timeout=self._endpoint.timeout,
            ),
            "STARTTLS handshake",
            limit=None,
        )
        if secured is None:
            raise ImapConnectionLost("during the TLS handshake")
        protocol.transport = secured

    async def _fetch(self, uids: Sequence[int], items: str) -> Reply:
        if len(uids) > MAX_UID_SET:
            raise ValueError("too many UIDs for one command")
        # The timeout of a FETCH restarts with every piece of data (large messages are slow).
        command = self._protocol.fetch(
            uid_set(uids), items, by_uid=True, timeout=self._endpoint.timeout
        )
        return (await self._reply(command, "UID FETCH", limit=None)).expect_ok("UID FETCH")

    async def _reply(
        self,
        command: Awaitable[Any],
        name: str,
        *,
        limit: float | Literal["endpoint"] | None = "endpoint",
    ) -> Reply:
        return Reply.of(await self._call(command, name, limit=limit))

    async def _call(
        self,
        awaitable: Awaitable[_T],
        name: str,
        *,
        limit: float | Literal["endpoint"] | None = "endpoint",
    ) -> _T:
        """Await `awaitable`, unless the connection ends or `limit` seconds (the
        endpoint's timeout; None: no limit beyond aioimaplib's own) pass first."""
        seconds = self._endpoint.timeout if limit == "endpoint" else limit
        work = asyncio.ensure_future(awaitable)
        if self._lost.is_set() and not work.done():
            work.cancel()
            raise ImapConnectionLost(name)
        ended = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait(
                {work, ended}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ended.cancel()
            if not work.done():
                work.cancel()
        if work in done:
            try:
                return work.result()
            except aioimaplib.CommandTimeout as err:
                raise ImapTimeout(name) from err
            except aioimaplib.AioImapException as err:
                raise ImapProtocolError(f"{name}: {type(err).__name__}") from err
        if ended in done:
            raise ImapConnectionLost(name)
        raise ImapTimeout(name)

    async def _wait_push(
        self, queue: asyncio.Queue[list[bytes]], interrupt: Sequence[asyncio.Event], seconds: float
    ) -> list[bytes]:
        """The lines of the next push during IDLE, or [] when `seconds` pass or an event
        is set. A BYE, or the connection's end, raises `ImapConnectionLost`."""
        getter = asyncio.ensure_future(queue.get())
        waiters = [asyncio.ensure_future(event.wait()) for event in (*interrupt, self._lost)]
        try:
            await asyncio.wait(
                {getter, *waiters}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
            if not getter.done():
                getter.cancel()  # a cancelled get() takes nothing off the queue
        lines = (
            [bytes(line) for line in getter.result()]
            if getter.done() and not getter.cancelled()
            else []
        )
        if self._lost.is_set() or any(line.upper().startswith(b"BYE") for line in lines):
            raise ImapConnectionLost("IDLE")
        return lines


class _DropBelowWarning(logging.Filter):
    """For aioimaplib's logger: its DEBUG and INFO records carry command lines and
    server responses (user names, message content)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


class _WithoutImapErrorText(logging.Filter):
    """For asyncio's logger: an aioimaplib exception raised inside the protocol is
    logged by asyncio with its text, which can quote a command with its arguments
    (LOGIN's among them). Keep the record, drop the text."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, aioimaplib.AioImapException):
            record.msg = f"{record.getMessage()} ({type(error).__qualname__}, text withheld)"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


_AIOIMAPLIB_FILTER = _DropBelowWarning()
_ASYNCIO_FILTER = _WithoutImapErrorText()


def _quiet_aioimaplib() -> None:
    # Idempotent (the same filter objects); left installed, as other connections may run.
    logging.getLogger("aioimaplib.aioimaplib").addFilter(_AIOIMAPLIB_FILTER)
    logging.getLogger("asyncio").addFilter(_ASYNCIO_FILTER)
