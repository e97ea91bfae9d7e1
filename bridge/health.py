"""The health and metrics endpoint: a tiny HTTP/1.1 server on the daemon's own loop.

`HealthServer` is an async context manager serving two resources, GET only,
one request per connection (`Connection: close`):

* `/metrics`: every metric of `bridge.metrics` in Prometheus text format; the
  queue gauges are read from the store first, within a short timeout (when
  that fails the last values are served and `bridge_store_up` is 0);
* `/healthz`: JSON with the store (reachable within a timeout), the loops
  (none stale), the relay (when a check is given) and the queues' depths and
  oldest ages; HTTP 200 when every check passes, 503 otherwise.

Anything else gets 400, 404, 405, 408 or 431. The request line and headers
are read with size limits and one deadline, so a slow or hostile client holds
a connection for at most `request_timeout` seconds. There is no
authentication: the endpoint belongs on loopback (`[health] host`). Answers
carry ids, counts, codes and loop names, never content.

This module does not decide what is healthy beyond those checks (the daemon
chooses the liveness threshold) and does not know how the relay is probed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol, Self

from bridge.errors import BridgeError
from bridge.metrics import CONTENT_TYPE, Metrics, QueueSnapshot, refresh_gauges
from bridge.store.engine import Store

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 16
MAX_LINE_BYTES = 4096
MAX_HEADER_LINES = 50
_CLOSE_TIMEOUT_S = 1.0

# The loop names whose heartbeat is too old; empty when all are alive.
StaleLoops = Callable[[], Collection[str]]
# Seconds since each loop's last heartbeat (for the gauge).
LoopAges = Callable[[], Mapping[str, float]]
# Returns when the relay is reachable, raises otherwise.
RelayCheck = Callable[[], Awaitable[object]]

_METHOD = re.compile(r"[A-Z]{1,16}")
_TARGET = re.compile(r"/[\x21-\x7e]*")
_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class Bind(Protocol):
    """Where to listen; `bridge.config.HealthSettings` is one. Port 0 picks a free port."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class HealthListenError(BridgeError):
    """The endpoint cannot listen; the message is one line for the operator."""


class _Refused(Exception):
    """A request answered with an error status before routing."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())

    def encode(self) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS[self.status]}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + self.body


def _plain(status: int, headers: tuple[tuple[str, str], ...] = ()) -> _Response:
    return _Response(status, f"{_REASONS[status]}\n".encode("ascii"), headers=headers)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class HealthServer:
    """`/healthz` and `/metrics` on `settings.host:settings.port` while entered."""

    def __init__(
        self,
        settings: Bind,
        store: Store,
        metrics: Metrics,
        liveness: StaleLoops,
        relay_check: RelayCheck | None = None,
        *,
        loop_ages: LoopAges | None = None,
        clock: Callable[[], datetime] = _utcnow,
        request_timeout: float = REQUEST_TIMEOUT_S,
        probe_timeout: float = PROBE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.host = settings.host
        self._requested_port = settings.port
        self.store = store
        self.metrics = metrics
        self._liveness = liveness
        self._relay_check = relay_check
        self._loop_ages = loop_ages
        self._clock = clock
        self._request_timeout = request_timeout
        self._probe_timeout = probe_timeout
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._was_healthy: bool | None = None
        self._store_up: bool | None = None

    @property
    def port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the health endpoint is not listening")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> Self:
        try:
            self._server = await asyncio.start_server(
                self._accept, self.host, self._requested_port, limit=MAX_LINE_BYTES
            )
        except OSError as err:
            raise HealthListenError(
                f"health endpoint cannot listen on {self.host}:{self._requested_port}: "
                f"{err.strerror or err}"
            ) from err
        log.info("health endpoint listening", extra={"host": self.host, "port": self.port})
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Python 3.11's wait_closed() does not wait for open connections; end them here.
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    # --- one connection ---------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A new connection. The task is ours (not the stream protocol's), so shutdown can
        cancel it cleanly."""
        if self._server is None or len(self._connections) >= self._max_connections:
            writer.transport.abort()
            return
        task = asyncio.create_task(self._serve(reader, writer), name="health-request")
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            response = await self._answer(reader)
            if response is not None:
                writer.write(response.encode())
                async with asyncio.timeout(self._request_timeout):
                    await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading; nothing to tell it
        except Exception:
            log.exception("health request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> _Response | None:
        """The response to the request on `reader`; None when the client left first."""
        try:
            async with asyncio.timeout(self._request_timeout):
                method, path = await _read_request(reader)
        except TimeoutError:
            log.debug("health request timed out")
            return _plain(408)
        except _Refused as refused:
            return _plain(refused.status)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        route = {"/metrics": self._metrics, "/healthz": self._healthz}.get(path)
        if route is None:
            return _plain(404)
        if method != "GET":
            return _plain(405, headers=(("Allow", "GET"),))
        return await route()

    # --- resources --------------------------------------------------------------------

    async def _metrics(self) -> _Response:
        await self._refresh()
        self._set_loop_ages()
        return _Response(200, self.metrics.exposition(), CONTENT_TYPE)

    async def _healthz(self) -> _Response:
        store, relay = await asyncio.gather(self._check_store(), self._check_relay())
        snapshot = await self._refresh() if store["ok"] else None
        self._set_loop_ages()
        loops = self._check_loops()
        checks: dict[str, dict[str, object]] = {"store": store, "loops": loops}
        if relay is not None:
            checks["relay"] = relay
        healthy = all(check["ok"] for check in checks.values())
        if healthy != self._was_healthy:
            failing = ",".join(name for name, check in checks.items() if not check["ok"])
            log.log(
                logging.INFO if healthy else logging.WARNING,
                "health ok" if healthy else "health failing",
                extra={"failing": failing or "-"},
            )
            self._was_healthy = healthy
        report = {"status": "ok" if healthy else "failing", **checks, **_queues(snapshot)}
        body = json.dumps(report, sort_keys=True).encode() + b"\n"
        return _Response(200 if healthy else 503, body, "application/json")

    # --- checks -----------------------------------------------------------------------

    async def _refresh(self) -> QueueSnapshot | None:
        try:
            async with asyncio.timeout(self._probe_timeout):
                snapshot = await refresh_gauges(self.store, self.metrics, self._clock())
        except Exception as err:
            if self._store_up is not False:
                log.warning("queue gauges not refreshed", extra={"error": type(err).__name__})
            self._set_store_up(False)
            return None
        self._set_store_up(True)
        return snapshot

    def _set_store_up(self, up: bool) -> None:
        # One line per change, not one per scrape.
        if up and self._store_up is False:
            log.info("queue gauges refreshed again")
        self._store_up = up
        self.metrics.set_store_up(up)

    async def _check_store(self) -> dict[str, object]:
        return await self._probe(self.store.ping)

    async def _check_relay(self) -> dict[str, object] | None:
        if self._relay_check is None:
            return None
        return await self._probe(self._relay_check)

    async def _probe(self, check: Callable[[], Awaitable[object]]) -> dict[str, object]:
        try:
            async with asyncio.timeout(self._probe_timeout):
                await check()
        except Exception as err:
            # The type only: driver messages can carry host names and other detail.
            return {"ok": False, "error": type(err).__name__}
        return {"ok": True}

    def _check_loops(self) -> dict[str, object]:
        try:
            stale = sorted(self._liveness())
        except Exception as err:
            return {"ok": False, "error": type(err).__name__, "stale": []}
        return {"ok": not stale, "stale": stale}

    def _set_loop_ages(self) -> None:
        if self._loop_ages is None:
            return
        try:
            self.metrics.set_loop_ages(self._loop_ages())
        except Exception:
            log.exception("loop ages not available")


def _queues(snapshot: QueueSnapshot | None) -> dict[str, object]:
    if snapshot is None:
        return {"outbox": None, "inbound": None}
    return {
        "outbox": {
            **snapshot.outbox,
            "oldest_pending_seconds": round(snapshot.outbox_oldest_pending_seconds, 3),
        },
        "inbound": {
            **snapshot.inbound,
            "oldest_received_seconds": round(snapshot.inbound_oldest_received_seconds, 3),
        },
    }


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str]:
    """Method and path (query dropped) of one request; raises `_Refused` when malformed.

    The body, if any, is not read: neither resource takes one.
    """
    request_line = _decode(await _read_line(reader))
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise _Refused(400)
    method, target, version = parts
    if (
        not _METHOD.fullmatch(method)
        or not _TARGET.fullmatch(target)
        or version not in ("HTTP/1.0", "HTTP/1.1")
    ):
        raise _Refused(400)
    for _ in range(MAX_HEADER_LINES):
        line = await _read_line(reader)
        if not line:
            return method, target.split("?", 1)[0]
        name, colon, _value = line.partition(b":")
        # A name must be a token, directly followed by the colon (no folding, no space).
        if not colon or not _HEADER_NAME.fullmatch(name):
            raise _Refused(400)
    raise _Refused(431)


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """One CRLF- (or LF-) terminated line, without the terminator."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as err:
        raise _Refused(431) from err
    return line.rstrip(b"\r\n")


def _decode(line: bytes) -> str:
    try:
        return line.decode("ascii")
    except UnicodeDecodeError as err:
        raise _Refused(400) from err
