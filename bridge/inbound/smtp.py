"""The SMTP/LMTP receiver: refuse unknown recipients, commit the bytes, then answer.

`InboundHandler` is an aiosmtpd handler. At `RCPT` it asks
`receipt.check_recipient` (in a read transaction) and answers with its verdict,
so bad reply addresses are refused during the session and nothing is bounced
later. At the end of `DATA` it commits the message with `receipt.store_raw`,
one row per accepted recipient in one transaction, and only then answers `250`
(LMTP: one line per recipient). Any failure of ours is `451 4.3.0`.

`Listener` runs aiosmtpd's `SMTP` or `LMTP` protocol on `loop.create_server`
(or `create_unix_server`) in the daemon's loop, as an async context manager.
Its sessions differ from aiosmtpd's in a few answers: an unexpected exception
is `451` rather than a permanent `500`; size refusals carry enhanced codes
(`552 5.3.4`), once per recipient for LMTP; AUTH is neither offered nor
accepted. `stop(grace)` stops accepting, lets sessions in `DATA` finish within
`grace` seconds, says `421` to the others and closes them.

Logging: one INFO line per accepted message (inbound ids, counts) and per
refused recipient (reason and SMTP code); never an address, token or content.
aiosmtpd logs command lines (addresses, tokens) and peers on `mail.log` at
INFO/DEBUG; the listener installs a filter there that drops those records and
masks peers in its warnings. (aiosmtpd's `mail.debug` logger belongs to its
sample handlers and PROXY support, neither of which runs here.)

Not here: parsing, classifying or filing mail (the pipeline), or reading the
configuration file (the daemon builds `ListenerOptions`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, AnyStr, Literal, Self

import sqlalchemy.exc
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, TLSSetupException
from aiosmtpd.smtp import Session as SmtpSession

from bridge.config import InboundSmtpSettings
from bridge.errors import BridgeError
from bridge.inbound.receipt import (
    TEMPORARY,
    ReplyRules,
    check_recipient,
    storable_address,
    store_raw,
)
from bridge.metrics import Metrics
from bridge.store.engine import Store
from bridge.store.models import InboundVia

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# RFC 5321 4.5.3.1.8: a server must accept at least 100 recipients; it need not accept more.
MAX_RECIPIENTS = 100
# After `grace` has run out, how long to wait for aborted sessions to wind down.
_ABORT_WAIT = 5.0

_TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
_BAD_SENDER = "553 5.1.7 The sender address cannot be accepted"
_SHUTTING_DOWN = b"421 4.3.2 Service shutting down, please retry later\r\n"
_MAIL_OK = "250 2.1.0 OK"
_TOO_BIG = "552 5.3.4 Message too big for system"
# aiosmtpd's own fixed answers, given the enhanced status codes of RFC 3463.
_REWORDED = {
    "552 Error: Too much mail data": _TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": _TOO_BIG,
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
}
# Final answers to DATA that aiosmtpd gives itself; LMTP owes one per recipient (RFC 2033).
_DATA_REFUSALS = frozenset({_TOO_BIG, "500 Line too long (see RFC5321 4.5.3.1.6)"})


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ListenerError(BridgeError):
    """The listener cannot run with these options (a configuration problem)."""


@dataclass(frozen=True)
class ListenerOptions:
    """Where and how to listen (`inbound.smtp.*`). `port=0` picks a free port."""

    protocol: Literal["smtp", "lmtp"] = "smtp"
    host: str = "127.0.0.1"
    port: int = 2525
    unix_socket: Path | None = None
    max_message_size: int = 26_214_400
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    require_starttls: bool = False
    # The name in the greeting and EHLO answer; None: this machine's FQDN.
    hostname: str | None = None

    @classmethod
    def from_settings(cls, smtp: InboundSmtpSettings, *, hostname: str | None = None) -> Self:
        return cls(
            protocol=smtp.protocol,
            host=smtp.host,
            port=smtp.port,
            unix_socket=smtp.unix_socket,
            max_message_size=smtp.max_message_size,
            tls_cert_file=smtp.tls_cert_file,
            tls_key_file=smtp.tls_key_file,
            require_starttls=smtp.require_starttls,
            hostname=hostname,
        )


class InboundHandler:
    """aiosmtpd handler: recipients checked at RCPT, bytes committed before 250.

    Rows hold exactly the bytes the client sent (dot-unstuffed): no `Received`,
    `X-Peer` or `X-MailFrom` header is added; the envelope has its own columns.
    """

    def __init__(
        self,
        store: Store,
        rules: ReplyRules,
        *,
        via: InboundVia,
        clock: Clock = _utcnow,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._rules = rules
        self._via = via
        self._clock = clock
        self._metrics = metrics

    async def handle_EHLO(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # With a hook, aiosmtpd leaves recording the client's name to us. AUTH is
        # dropped from the list: nobody logs in to deliver replies.
        session.host_name = hostname
        return [line for line in responses if not line[4:].upper().startswith("AUTH")]

    async def handle_MAIL(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        # Refused here because the store could not hold it as given: accepting it
        # would turn into a 451 at DATA time, retried by the sender for days.
        if address != "<>" and not storable_address(address):
            log.info("inbound sender refused", extra={"reason": "bad_sender", "smtp_code": 553})
            if self._metrics is not None:
                self._metrics.inbound_refused("bad_sender")
            return _BAD_SENDER
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return _MAIL_OK

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return _TOO_MANY_RECIPIENTS
        try:
            async with self._store.read() as db:
                verdict = await check_recipient(
                    db,
                    address,
                    token_secret=self._rules.token_secret,
                    address_format=self._rules.address_format,
                    noreply_address=self._rules.noreply_address,
                    now=self._clock(),
                )
        except Exception as err:  # one command; any failure of ours is temporary
            _log_failure("recipient check", err)
            return TEMPORARY.answer
        if verdict.ok:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        else:
            log.info(
                "inbound recipient refused",
                extra={"reason": verdict.reason, "smtp_code": verdict.code},
            )
            if self._metrics is not None:
                self._metrics.inbound_refused(verdict.reason)
        return verdict.answer

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        recipients = list(envelope.rcpt_tos)
        try:
            raw = envelope.original_content
            if raw is None:
                raise TypeError("aiosmtpd gave no message content")
            sender = envelope.mail_from
            async with self._store.transaction() as db:
                ids = await store_raw(
                    db,
                    raw,
                    via=self._via,
                    envelope_sender=None if sender in (None, "", "<>") else sender,
                    envelope_recipients=recipients,
                    now=self._clock(),
                )
        except Exception as err:  # one message; nothing was acknowledged, so nothing is lost
            _log_failure("store", err)
            return self._answer([TEMPORARY.answer] * max(1, len(recipients)))
        log.info(
            "inbound message accepted",
            extra={
                "via": self._via.value,
                "inbound_ids": ",".join(str(i) for i in dict.fromkeys(ids)),
                "recipients": len(recipients),
                "bytes": len(raw),
            },
        )
        if self._metrics is not None:
            self._metrics.inbound_accepted(self._via.value)
        return self._answer([f"250 2.0.0 Queued as {row_id}" for row_id in ids])

    def _answer(self, lines: list[str]) -> str:
        """SMTP answers the transaction once; LMTP once per accepted recipient."""
        if self._via is InboundVia.LMTP:
            return "\r\n".join(lines)
        return lines[0]


class _SmtpSession(SMTP):
    """One SMTP connection, with bridge's answers and a stop that lets DATA finish."""

    per_recipient_answers = False

    def __init__(self, handler: InboundHandler, *, listener: Listener, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._listener = listener
        self.in_data = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._listener._track(self)

    def connection_lost(self, error: Exception | None) -> None:
        # aiosmtpd's handler task; the listener awaits it when stopping.
        task: asyncio.Task[None] | None = getattr(self, "_handler_coroutine", None)
        try:
            super().connection_lost(error)
        finally:
            self._listener._forget(self, task)

    async def handle_exception(self, error: Exception) -> str:
        _log_failure("session", error)  # aiosmtpd's own answer would be a permanent 500
        return TEMPORARY.answer

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            await super().push(self._bridge_answer(status))
        else:
            await super().push(status)

    async def smtp_DATA(self, arg: str) -> None:
        self.in_data = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self.in_data = False
        if self._listener.stopping:
            self.shut_down()

    def shut_down(self) -> None:
        """Say 421 and close (an idle session, or one whose DATA has been answered)."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(_SHUTTING_DOWN)
            transport.close()

    def abort(self) -> None:
        """Drop the connection now (the grace period is over)."""
        transport = self.transport
        if isinstance(transport, asyncio.Transport):
            transport.abort()

    def _bridge_answer(self, status: str) -> str:
        status = _REWORDED.get(status, status)
        if self.per_recipient_answers and status in _DATA_REFUSALS and self.envelope is not None:
            # aiosmtpd answers these itself, once; LMTP clients wait for one per recipient.
            status = "\r\n".join([status] * max(1, len(self.envelope.rcpt_tos)))
        return status


class _LmtpSession(_SmtpSession, LMTP):
    """The same over LMTP: LHLO instead of HELO/EHLO, one answer per recipient."""

    per_recipient_answers = True


class Listener:
    """The SMTP or LMTP server, running in the current event loop.

    `async with Listener(...) as listener:` starts it; leaving the block stops
    it with the `stop_grace` given here. `port` is the bound TCP port (useful
    with `port=0`).
    """

    def __init__(
        self,
        store: Store,
        options: ListenerOptions,
        rules: ReplyRules,
        *,
        clock: Clock = _utcnow,
        stop_grace: float = 30.0,
        metrics: Metrics | None = None,
    ) -> None:
        if (options.tls_cert_file is None) != (options.tls_key_file is None):
            raise ListenerError("STARTTLS needs both a certificate and a key file")
        if options.require_starttls and options.tls_cert_file is None:
            raise ListenerError("require_starttls needs a certificate and a key file")
        if options.require_starttls and options.protocol == "lmtp":
            # aiosmtpd lets only EHLO, NOOP, STARTTLS and QUIT through before STARTTLS,
            # so an LMTP client could never send LHLO.
            raise ListenerError("require_starttls is not supported with LMTP")
        self._options = options
        self._via = InboundVia(options.protocol)
        self._handler = InboundHandler(store, rules, via=self._via, clock=clock, metrics=metrics)
        self._stop_grace = stop_grace
        self._server: asyncio.Server | None = None
        self._sessions: set[_SmtpSession] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._drained = asyncio.Event()
        self._stopping = False

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    @property
    def port(self) -> int | None:
        """The TCP port of the first listening socket (None on a unix socket)."""
        if self._server is None or self._options.unix_socket is not None:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(self._stop_grace)

    async def start(self) -> None:
        if self._server is not None:
            raise ListenerError("the listener is already started")
        options = self._options
        loop = asyncio.get_running_loop()
        # getfqdn may ask DNS; done once here, not for every connection.
        hostname = options.hostname or await asyncio.to_thread(socket.getfqdn)
        tls = _tls_context(options)
        cls = _LmtpSession if self._via is InboundVia.LMTP else _SmtpSession
        ident = "bridge LMTP" if self._via is InboundVia.LMTP else "bridge ESMTP"

        def new_session() -> _SmtpSession:
            return cls(
                self._handler,
                listener=self,
                data_size_limit=options.max_message_size,
                enable_SMTPUTF8=True,
                hostname=hostname,
                ident=ident,
                tls_context=tls,
                require_starttls=options.require_starttls,
                auth_exclude_mechanism=("LOGIN", "PLAIN"),
                loop=loop,
            )

        _quiet_aiosmtpd()
        if options.unix_socket is not None:
            self._server = await loop.create_unix_server(new_session, path=options.unix_socket)
        else:
            self._server = await loop.create_server(new_session, options.host, options.port)
        log.info(
            "inbound listener started",
            extra={
                "protocol": self._via.value,
                "port": self.port,
                "unix_socket": options.unix_socket,
                "starttls": tls is not None,
            },
        )

    async def stop(self, grace: float) -> None:
        """Stop accepting; give sessions in DATA `grace` seconds; close the rest."""
        server = self._server
        if server is None or self._stopping:
            return
        self._stopping = True
        server.close()
        if self._options.unix_socket is not None:
            self._options.unix_socket.unlink(missing_ok=True)
        in_data = sum(1 for session in self._sessions if session.in_data)
        log.info(
            "inbound listener stopping", extra={"sessions": len(self._sessions), "in_data": in_data}
        )
        for session in list(self._sessions):
            if not session.in_data:
                session.shut_down()
        if not self._sessions:
            self._drained.set()
        try:
            await asyncio.wait_for(self._drained.wait(), grace)
        except TimeoutError:
            log.warning("inbound sessions aborted", extra={"sessions": len(self._sessions)})
            for session in list(self._sessions):
                session.abort()
            try:
                await asyncio.wait_for(self._drained.wait(), _ABORT_WAIT)
            except TimeoutError:
                log.warning(
                    "inbound sessions did not close", extra={"sessions": len(self._sessions)}
                )
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=_ABORT_WAIT)
        await server.wait_closed()
        log.info("inbound listener stopped", extra={"protocol": self._via.value})

    def _track(self, session: _SmtpSession) -> None:
        self._sessions.add(session)
        if self._stopping:
            session.shut_down()

    def _forget(self, session: _SmtpSession, task: asyncio.Task[None] | None) -> None:
        self._sessions.discard(session)
        if task is not None and not task.done():
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._stopping and not self._sessions:
            self._drained.set()


class _WithoutPeers(logging.Filter):
    """For aiosmtpd's `mail.log`: drop INFO/DEBUG (command lines carry addresses and
    tokens, DATA lines carry content) and mask peer addresses in what remains."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        if isinstance(record.args, tuple):
            record.args = tuple("[peer]" if isinstance(a, tuple) else a for a in record.args)
        return True


_AIOSMTPD_FILTER = _WithoutPeers()


def _quiet_aiosmtpd() -> None:
    # Idempotent (the same filter object); left installed, as other listeners may run.
    logging.getLogger("mail.log").addFilter(_AIOSMTPD_FILTER)


def _tls_context(options: ListenerOptions) -> ssl.SSLContext | None:
    if options.tls_cert_file is None or options.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(options.tls_cert_file, options.tls_key_file)
    return context


def _log_failure(stage: str, error: BaseException) -> None:
    """Log a failure answered with 451: exception types and frames, never messages
    (driver errors quote SQL parameters, which may hold addresses or content)."""
    cause = error.__cause__ or error.__context__
    kinds = type(error).__qualname__ + ("" if cause is None else f" <- {type(cause).__qualname__}")
    if isinstance(error, sqlalchemy.exc.SQLAlchemyError | OSError | TLSSetupException):
        # The store is down or refusing, or a client failed its TLS handshake: expected
        # now and then, and not a bug of ours.
        log.warning("inbound %s failed, answered 451: %s", stage, kinds)
        return
    frames = "".join(traceback.format_tb(error.__traceback__)).rstrip()
    log.error("inbound %s failed, answered 451: %s\n%s", stage, kinds, frames)
