"""The health endpoint driven by real HTTP clients, on port 0, against a real store.

Faults are injected in the peers: a store URL pointing at a closed port or at
a listener that never answers, a relay port nobody listens on, a loop whose
heartbeat stopped (the daemon's own `Liveness` with a test clock), and
clients that send garbage or trickle their headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.config import HealthSettings
from bridge.daemon import Liveness
from bridge.health import HealthListenError, HealthServer
from bridge.metrics import Metrics
from bridge.store.engine import Store
from bridge.store.models import InboundEmail, Organization, Outbox

HOST = "127.0.0.1"
NOW = datetime(2030, 1, 2, 12, 0, tzinfo=UTC)
WAIT_S = 10.0


@dataclass(frozen=True)
class Bind:
    host: str = HOST
    port: int = 0


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        families = text_string_to_metric_families(self.body.decode())
        return {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}


def parse(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("ascii").split("\r\n")
    version, status, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert int(headers["content-length"]) == len(body)
    return Reply(int(status), headers, body)


async def exchange(port: int, raw: bytes) -> Reply:
    """Send `raw`, read until the server closes, parse the response."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), WAIT_S)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return parse(data)


async def get(port: int, path: str) -> Reply:
    return await exchange(
        port, f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: test\r\n\r\n".encode()
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def no_stale_loops() -> Collection[str]:
    return []


Serve = Callable[..., Awaitable[HealthServer]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a `HealthServer` on port 0 (stopped at the end of the test)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(store: Store, **kw: Any) -> HealthServer:
            kw.setdefault("liveness", no_stale_loops)
            kw.setdefault("clock", lambda: NOW)
            metrics = kw.pop("metrics", Metrics())
            liveness = kw.pop("liveness")
            server = HealthServer(Bind(), store, metrics, liveness, **kw)
            return await stack.enter_async_context(server)

        yield start


async def seed_queues(store: Store) -> None:
    """Three outbox rows waiting (oldest 600 s), one sent; two inbound received (oldest 90 s)."""
    async with store.transaction() as session:
        org = Organization(
            display_name="Practice",
            portal_base_url="https://portal.example.org",
            reply_domain="reply.example.org",
        )
        session.add(org)
        await session.flush()
        assert org.id is not None
        for status, age in [("pending", 600), ("pending", 5), ("sending", 1), ("sent", 9000)]:
            session.add(
                Outbox(
                    organization_id=org.id,
                    to_address="someone@example.org",
                    status=status,
                    created_at=NOW - timedelta(seconds=age),
                )
            )
        for status, age in [("received", 90), ("received", 3), ("filed", 9000)]:
            session.add(
                InboundEmail(
                    raw=b"Subject: x\r\n\r\nx\r\n",
                    sha256="0" * 64,
                    received_via="lmtp",
                    envelope_recipient="reply+t@reply.example.org",
                    status=status,
                    received_at=NOW - timedelta(seconds=age),
                )
            )


@contextlib.asynccontextmanager
async def silent_peer() -> AsyncIterator[int]:
    """A TCP listener that accepts connections and never says a word (a hung database)."""
    held: list[asyncio.StreamWriter] = []

    def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in held:
            writer.transport.abort()
        await server.wait_closed()


# --- /metrics ----------------------------------------------------------------------------


async def test_metrics_parse_and_show_the_queue_depths_of_the_store(
    store: Store, serve: Serve
) -> None:
    await seed_queues(store)
    metrics = Metrics()
    metrics.inbound_accepted("lmtp")
    server = await serve(store, metrics=metrics, loop_ages=lambda: {"sender": 2.0})

    reply = await get(server.port, "/metrics")

    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert reply.headers["connection"] == "close"
    samples = reply.samples()
    assert samples["bridge_outbox_depth", frozenset({("status", "pending")})] == 2
    assert samples["bridge_outbox_depth", frozenset({("status", "sending")})] == 1
    assert samples["bridge_outbox_depth", frozenset({("status", "failed")})] == 0
    assert samples["bridge_inbound_depth", frozenset({("status", "received")})] == 2
    assert samples["bridge_outbox_oldest_pending_seconds", frozenset()] == pytest.approx(600)
    assert samples["bridge_inbound_oldest_received_seconds", frozenset()] == pytest.approx(90)
    assert samples["bridge_inbound_accepted_total", frozenset({("via", "lmtp")})] == 1
    assert samples["bridge_loop_heartbeat_age_seconds", frozenset({("loop", "sender")})] == 2
    assert samples["bridge_store_up", frozenset()] == 1


async def test_metrics_follow_the_store_from_one_scrape_to_the_next(
    store: Store, serve: Serve
) -> None:
    server = await serve(store)
    before = (await get(server.port, "/metrics")).samples()
    await seed_queues(store)
    after = (await get(server.port, "/metrics")).samples()
    key = ("bridge_outbox_depth", frozenset({("status", "pending")}))
    assert (before[key], after[key]) == (0, 2)


async def test_a_standard_http_client_can_scrape(store: Store, serve: Serve) -> None:
    server = await serve(store)

    def fetch() -> tuple[int, bytes]:
        with urllib.request.urlopen(
            f"http://{HOST}:{server.port}/metrics?x=1", timeout=WAIT_S
        ) as r:
            return r.status, r.read()

    status, body = await asyncio.to_thread(fetch)
    assert status == 200
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"bridge_notifications_sent", "bridge_e2e_latency_seconds"} <= names


async def test_metrics_are_served_with_store_up_zero_when_the_store_is_unreachable(
    serve: Serve,
) -> None:
    async with Store(f"postgresql://bridge@{HOST}:{closed_port()}/bridge") as down:
        server = await serve(down)
        reply = await get(server.port, "/metrics")
    assert reply.status == 200
    assert reply.samples()["bridge_store_up", frozenset()] == 0


# --- /healthz ----------------------------------------------------------------------------


async def test_healthz_is_200_with_queue_ages_when_all_is_well(store: Store, serve: Serve) -> None:
    await seed_queues(store)

    async def relay_up() -> None:
        return None

    server = await serve(store, relay_check=relay_up)
    reply = await get(server.port, "/healthz")

    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    report = reply.json()
    assert report["status"] == "ok"
    assert report["store"] == {"ok": True}
    assert report["relay"] == {"ok": True}
    assert report["loops"] == {"ok": True, "stale": []}
    assert report["outbox"] == {
        "pending": 2,
        "sending": 1,
        "failed": 0,
        "oldest_pending_seconds": 600.0,
    }
    assert report["inbound"]["oldest_received_seconds"] == 90.0


async def test_healthz_is_503_and_names_the_loop_whose_heartbeat_stopped(
    store: Store, serve: Serve
) -> None:
    clock = [1000.0]
    liveness = Liveness(clock=lambda: clock[0])
    liveness.beat("dispatcher")
    liveness.beat("sender")
    server = await serve(store, liveness=lambda: liveness.stale(max_age=30))
    assert (await get(server.port, "/healthz")).status == 200

    clock[0] += 20
    liveness.beat("dispatcher")
    clock[0] += 20
    reply = await get(server.port, "/healthz")

    assert reply.status == 503
    assert reply.json()["status"] == "failing"
    assert reply.json()["loops"] == {"ok": False, "stale": ["sender"]}
    assert reply.json()["store"] == {"ok": True}


async def test_healthz_is_503_when_the_store_refuses_connections(serve: Serve) -> None:
    async with Store(f"postgresql://bridge@{HOST}:{closed_port()}/bridge") as down:
        server = await serve(down)
        reply = await get(server.port, "/healthz")
    assert reply.status == 503
    report = reply.json()
    assert report["store"]["ok"] is False
    assert report["store"]["error"] == "OperationalError"
    assert report["outbox"] is None
    assert report["loops"]["ok"] is True


async def test_healthz_answers_503_within_the_probe_timeout_when_the_store_hangs(
    serve: Serve,
) -> None:
    async with silent_peer() as port, Store(f"postgresql://bridge@{HOST}:{port}/bridge") as hung:
        server = await serve(hung, probe_timeout=0.3)
        reply = await get(server.port, "/healthz")
    assert reply.status == 503
    assert reply.json()["store"] == {"ok": False, "error": "TimeoutError"}


async def test_healthz_is_503_when_the_relay_cannot_be_reached(store: Store, serve: Serve) -> None:
    relay_port = closed_port()

    async def relay_check() -> None:
        _reader, writer = await asyncio.open_connection(HOST, relay_port)
        writer.close()

    server = await serve(store, relay_check=relay_check)
    reply = await get(server.port, "/healthz")
    assert reply.status == 503
    assert reply.json()["relay"] == {"ok": False, "error": "ConnectionRefusedError"}
    assert reply.json()["store"] == {"ok": True}


async def test_healthz_is_503_when_liveness_itself_fails(store: Store, serve: Serve) -> None:
    def broken() -> Collection[str]:
        raise RuntimeError("boom")

    server = await serve(store, liveness=broken)
    reply = await get(server.port, "/healthz")
    assert reply.status == 503
    assert reply.json()["loops"]["ok"] is False


# --- bad requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (b"DELETE /healthz HTTP/1.0\r\n\r\n", 405),
        (b"HELLO\r\n\r\n", 400),
        (b"GET /metrics\r\n\r\n", 400),
        (b"GET /metrics HTTP/2.0\r\n\r\n", 400),
        (b"get /metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET /m\xc3\xa9trics HTTP/1.1\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n", 431),
        (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n", 431),
        (b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 60 + b"\r\n", 431),
    ],
)
async def test_bad_requests_get_a_clear_status(
    store: Store, serve: Serve, raw: bytes, status: int
) -> None:
    server = await serve(store)
    reply = await exchange(server.port, raw)
    assert reply.status == status
    if status == 405:
        assert reply.headers["allow"] == "GET"
    # The server is still fine afterwards.
    assert (await get(server.port, "/healthz")).status == 200


async def test_a_slow_loris_client_is_dropped_after_the_request_timeout(
    store: Store, serve: Serve
) -> None:
    server = await serve(store, request_timeout=0.5)
    reader, writer = await asyncio.open_connection(HOST, server.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")

    async def trickle() -> None:
        # A header line every 0.1 s: each read succeeds, the request never ends.
        with contextlib.suppress(ConnectionError):
            for n in range(300):
                writer.write(f"X-{n}: y\r\n".encode())
                await writer.drain()
                await asyncio.sleep(0.1)

    trickling = asyncio.create_task(trickle())
    try:
        data = await asyncio.wait_for(reader.read(), WAIT_S)
    finally:
        trickling.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    # 408, not 431: the deadline struck before the 50-header limit (reached after 5 s).
    assert parse(data).status == 408


async def test_a_client_that_connects_and_says_nothing_does_not_block_others(
    store: Store, serve: Serve
) -> None:
    server = await serve(store, request_timeout=30)
    _idle_reader, idle_writer = await asyncio.open_connection(HOST, server.port)
    try:
        assert (await get(server.port, "/healthz")).status == 200
    finally:
        idle_writer.close()


async def test_connections_beyond_the_limit_are_closed_at_once(store: Store, serve: Serve) -> None:
    server = await serve(store, max_connections=1, request_timeout=30)
    _idle_reader, idle_writer = await asyncio.open_connection(HOST, server.port)
    await asyncio.sleep(0.05)
    try:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        with contextlib.suppress(ConnectionError):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), WAIT_S) == b""
        writer.close()
    finally:
        idle_writer.close()


async def test_leaving_the_context_closes_open_connections_and_the_port(store: Store) -> None:
    async with HealthServer(Bind(), store, Metrics(), no_stale_loops, request_timeout=60) as server:
        port = server.port
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET /metrics HTTP/1.1\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
    assert await asyncio.wait_for(reader.read(), WAIT_S) == b""
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(HOST, port)


async def test_a_port_in_use_is_one_clear_error(store: Store) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(HealthListenError, match=rf"cannot listen on 127\.0\.0\.1:{port}"):
            async with HealthServer(Bind(port=port), store, Metrics(), no_stale_loops):
                pass


async def test_the_daemon_settings_object_configures_the_server(store: Store) -> None:
    port = closed_port()
    settings = HealthSettings(enabled=True, host=HOST, port=port)
    async with HealthServer(settings, store, Metrics(), no_stale_loops) as server:
        assert server.port == port
        assert (await get(port, "/healthz")).status == 200
