"""Peers for the outbound tests: an SMTP sink that can be told to fail, and seeded rows.

The sink is aiosmtpd's `SMTP` protocol served by `loop.create_server` in the
test's own event loop (as the daemon serves its listener), not the threaded
`Controller`. Faults are injected here, in the peer:

* `sink.script("451 4.3.0 try later", "250 OK")`: answers to the next DATA
  commands, in order (then "250 OK" again); `DROP` closes the connection
  instead of answering;
* `sink.script_rcpt(address, "550 5.1.1 no such user")`: answers to RCPT for
  one address;
* `await sink.stop()` / `await sink.start()`: the relay goes down (listener
  closed, open connections cut) and comes back on the same port.

A delivery is recorded only when the sink answers 250 to DATA, so "the
relay received it" means exactly what it means for a real relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, TLSSetupException

from bridge.config import OutboundSmtpSettings
from bridge.portal import Portal
from bridge.store.engine import Store
from bridge.store.models import Outbox

DROP = "DROP"
SINK_HOST = "127.0.0.1"
WAIT_S = 10.0

AUTH_USER = "bridge-relay"
AUTH_PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Delivery:
    """One email the sink accepted with 250."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    helo: str | None = None  # the name the client gave in EHLO/HELO

    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def header(self, name: str) -> str | None:
        value = self.message()[name]
        return None if value is None else str(value)


class SinkHandler:
    """aiosmtpd handler hooks; state lives on the `Sink`."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        answers = self.sink.rcpt_answers.get(address)
        answer = answers.popleft() if answers else "250 OK"
        if answer == DROP:
            return self.sink.drop(server)
        if answer.startswith("250"):
            envelope.rcpt_tos.append(address)
        return answer

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        answer = self.sink.data_answers.popleft() if self.sink.data_answers else "250 OK"
        if answer == DROP:
            return self.sink.drop(server)
        if answer.startswith("250"):
            assert isinstance(envelope.original_content, bytes)
            await self.sink.accept(
                Delivery(
                    mail_from=str(envelope.mail_from),
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    data=envelope.original_content,
                    helo=session.host_name,
                )
            )
        else:
            self.sink.refused += 1
        return answer

    async def handle_exception(self, error: Exception) -> str:
        # A client that gives up on our certificate is a peer's choice, counted;
        # anything else is kept for the test to see (the fixtures fail on it) and
        # answered as a temporary failure: a sink bug must not look like a refusal.
        if isinstance(error, TLSSetupException):
            self.sink.tls_failures += 1
        else:
            self.sink.errors.append(error)
        return "451 4.3.0 sink error"


class _SinkSMTP(SMTP):
    """aiosmtpd's protocol, counting connections for the pool tests."""

    def __init__(self, sink: Sink, **options: Any) -> None:
        self._sink = sink
        super().__init__(sink.handler, **options)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # STARTTLS calls this again for the same connection
            self._sink.connections_made += 1
            self._sink.live.add(self)
            self._sink.peak_live = max(self._sink.peak_live, len(self._sink.live))
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._sink.live.discard(self)
        super().connection_lost(error)


@dataclass
class Sink:
    """A scripted SMTP relay on 127.0.0.1 (see the module docstring)."""

    tls_context: ssl.SSLContext | None = None
    implicit_tls: bool = False
    require_starttls: bool = False
    auth: bool = False
    port: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    data_answers: deque[str] = field(default_factory=deque)
    rcpt_answers: dict[str, deque[str]] = field(default_factory=dict)
    refused: int = 0
    dropped: int = 0
    tls_failures: int = 0
    errors: list[Exception] = field(default_factory=list)
    connections_made: int = 0
    peak_live: int = 0
    live: set[SMTP] = field(default_factory=set)
    on_delivery: Callable[[Delivery], None] | None = None

    def __post_init__(self) -> None:
        self.handler = SinkHandler(self)
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol,
            SINK_HOST,
            self.port,
            ssl=self.tls_context if self.implicit_tls else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """The relay goes down: no new connections, and the open ones are cut."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for protocol in list(self.live):
            if protocol.transport is not None:
                protocol.transport.abort()
        await self.wait_until(lambda: not self.live, "the sink's connections to close")

    def _protocol(self) -> SMTP:
        options: dict[str, Any] = {
            "hostname": "sink.test",
            "loop": asyncio.get_running_loop(),
            "timeout": 30,
        }
        if self.tls_context is not None and not self.implicit_tls:
            options["tls_context"] = self.tls_context
            options["require_starttls"] = self.require_starttls
        if self.auth:
            options["authenticator"] = _authenticator
            options["auth_required"] = True
        return _SinkSMTP(self, **options)

    # --- faults -------------------------------------------------------------------------

    def script(self, *answers: str) -> None:
        """Answers to the next DATA commands, in order; afterwards 250 again."""
        self.data_answers.extend(answers)

    def script_rcpt(self, address: str, *answers: str) -> None:
        self.rcpt_answers.setdefault(address, deque()).extend(answers)

    def drop(self, server: SMTP) -> str:
        """Cut the connection without an answer (the returned text is never sent)."""
        self.dropped += 1
        assert server.transport is not None
        server.transport.abort()
        return "421 4.4.2 connection dropped"

    # --- observing ----------------------------------------------------------------------

    async def accept(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        if self.on_delivery is not None:
            self.on_delivery(delivery)
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, count: int, within: float = WAIT_S) -> list[Delivery]:
        """Wait (bounded) until the sink holds at least `count` deliveries."""
        await self.wait_until(
            lambda: len(self.deliveries) >= count, f"{count} deliveries", within=within
        )
        return self.deliveries

    async def wait_until(
        self, condition: Callable[[], bool], what: str, within: float = WAIT_S
    ) -> None:
        # Connections close without a notification; poll those at a short interval.
        deadline = asyncio.get_running_loop().time() + within
        while not condition():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                pytest.fail(f"timed out after {within}s waiting for {what}")
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=min(left, 0.05))

    def notification_ids(self) -> list[str]:
        """The `X-Bridge-Notification` header of every delivery, in arrival order."""
        return [d.header("X-Bridge-Notification") or "" for d in self.deliveries]

    def settings(self, **overrides: Any) -> OutboundSmtpSettings:
        """`outbound.smtp` pointing at this sink."""
        values: dict[str, Any] = {
            "host": SINK_HOST,
            "port": self.port,
            "security": "none",
            "concurrency": 4,
            "timeout_seconds": 5.0,
        }
        values.update(overrides)
        return OutboundSmtpSettings.model_validate(values)


def _authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == AUTH_USER.encode()
        and auth_data.password == AUTH_PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def trusting_client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts exactly this certificate."""
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.cert))


# --- seeded outbox rows -------------------------------------------------------------------


@dataclass
class Seed:
    """An organization with clients, and outbox rows for them, written through the portal API.

    Outbox rows are inserted directly (they are the sender's input; the
    dispatcher has its own tests).
    """

    store: Store
    org: int = 0
    clients: list[int] = field(default_factory=list)

    async def people(self, count: int, at: datetime) -> list[int]:
        portal = Portal(self.store)
        if not self.org:
            self.org = await portal.create_organization(
                "Seed Practice", "https://portal.example.org", "reply.example.org", now=at
            )
        for _ in range(count):
            number = len(self.clients)
            self.clients.append(
                await portal.add_client(
                    self.org, f"Client {number}", [f"client{number}@example.net"], now=at
                )
            )
        return self.clients[-count:]

    async def rows(self, recipients: list[int], at: datetime, **values: Any) -> list[int]:
        """One pending row per entry of `recipients`, created and due at `at`."""
        async with self.store.transaction() as session:
            added = [
                Outbox(
                    organization_id=self.org,
                    recipient_id=recipient,
                    created_at=at,
                    next_attempt_at=at,
                    **values,
                )
                for recipient in recipients
            ]
            session.add_all(added)
            await session.flush()
            return [row.id for row in added if row.id is not None]
