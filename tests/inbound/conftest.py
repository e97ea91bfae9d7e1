"""Fixtures for the receivers: a practice built through the portal, reply tokens, listeners.

Tokens are issued the way the renderer issues them (`issue_token`, then a
`reply_tokens` row holding only the hash). Listeners run in the test's own
event loop on port 0 (or a unix socket) with a fixed clock; blocking clients
run in `asyncio.to_thread`. Faults are injected in the database from a
separate plain connection (`DatabaseFaults`), never by touching bridge's code.

Test modules import nothing from here: everything comes through fixtures, so
two `conftest` modules in the tree can never shadow each other.
"""

from __future__ import annotations

import secrets
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlmodel import select

from bridge.inbound.receipt import ReplyRules
from bridge.inbound.smtp import Listener, ListenerOptions
from bridge.policy.tokens import hash_token, issue_token, reply_address
from bridge.portal import Portal
from bridge.store.engine import Store
from bridge.store.models import Audience, InboundEmail, NotificationMode, ReplyToken, StaffRole

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SECRET = b"inbound-tests-secret-0123456789ab"
FORMAT = "reply+{token}"
REPLY_DOMAIN = "replies.example.org"
NOREPLY = "no-reply@practice.example.org"
SENDER = "client@home.example.net"
RULES = ReplyRules(token_secret=SECRET, address_format=FORMAT, noreply_address=NOREPLY)


@dataclass
class Practice:
    """One organization: a client, her clinician, a scheduler, and an administrative thread.

    Also the test settings: `now` is the listeners' clock, `rules` what they check with.
    """

    store: Store
    portal: Portal
    org_id: int
    client_id: int
    clinician_id: int
    scheduler_id: int
    thread_id: int
    now: datetime = T0
    secret: bytes = SECRET
    address_format: str = FORMAT
    reply_domain: str = REPLY_DOMAIN
    noreply: str = NOREPLY
    sender: str = SENDER
    rules: ReplyRules = RULES

    async def token(
        self,
        participant_id: int,
        thread_id: int | None = None,
        *,
        token: str | None = None,
        expires_at: datetime | None = None,
        revoked_at: datetime | None = None,
    ) -> tuple[str, int]:
        """Store a reply token (a fresh random one unless given); returns (token, row id)."""
        value = token if token is not None else issue_token(SECRET).token
        row = ReplyToken(
            token_hash=hash_token(SECRET, value),
            participant_id=participant_id,
            thread_id=self.thread_id if thread_id is None else thread_id,
            created_at=T0 - timedelta(days=1),
            expires_at=expires_at if expires_at is not None else T0 + timedelta(days=30),
            revoked_at=revoked_at,
        )
        async with self.store.transaction() as session:
            session.add(row)
            await session.flush()
            assert row.id is not None
            return value, row.id

    async def address(self, participant_id: int, **kwargs: Any) -> str:
        """A reply address for a freshly stored token (see `token`)."""
        value, _ = await self.token(participant_id, **kwargs)
        return self.address_for(value)

    def address_for(self, token: str, domain: str = REPLY_DOMAIN) -> str:
        return reply_address(FORMAT, token, domain)

    def unknown_address(self) -> str:
        """A well-formed reply address whose token was never stored."""
        return self.address_for(issue_token(secrets.token_bytes(32)).token)

    async def rows(self) -> list[InboundEmail]:
        """Every `inbound_emails` row, oldest first."""
        async with self.store.read() as session:
            return list(await session.exec(select(InboundEmail).order_by(InboundEmail.id)))


@pytest.fixture
async def practice(store: Store) -> Practice:
    portal = Portal(store)
    org = await portal.create_organization(
        "Practice", "https://portal.example.org", REPLY_DOMAIN, now=T0
    )
    clinician = await portal.add_staff(
        org, "Clinician", [StaffRole.CLINICIAN], ["clinician@practice.example.org"], now=T0
    )
    scheduler = await portal.add_staff(
        org, "Scheduler", [StaffRole.SCHEDULER], ["scheduler@practice.example.org"], now=T0
    )
    client = await portal.add_client(org, "Client", [SENDER], now=T0)
    await portal.assign_clinician(client, clinician)
    thread = await portal.create_thread(
        org,
        client,
        "Appointment",
        audience=Audience.ADMINISTRATIVE,
        author_id=clinician,
        body_text="Shall we move Tuesday?",
        now=T0,
    )
    # Reply addresses exist only in convenience mode; the admin who acknowledges it joins
    # after the thread was opened, so the thread's members are the ones above.
    admin = await portal.add_staff(
        org, "Admin", [StaffRole.PRACTICE_ADMIN], ["admin@practice.example.org"], now=T0
    )
    await portal.set_notification_mode(
        org, NotificationMode.CONVENIENCE, acknowledged_by=admin, now=T0
    )
    return Practice(store, portal, org, client, clinician, scheduler, thread.thread_id)


StartListener = Callable[..., Awaitable[Listener]]


@pytest.fixture
async def start_listener(store: Store) -> AsyncIterator[StartListener]:
    """Start a listener on port 0 (options as keywords); all are stopped at teardown."""
    started: list[Listener] = []

    async def start(*, rules: ReplyRules = RULES, **options: Any) -> Listener:
        """`rules` default to the practice's; `options` are `ListenerOptions` fields."""
        options = {"host": "127.0.0.1", "port": 0, "hostname": "bridge.test", **options}
        listener = Listener(store, ListenerOptions(**options), rules, clock=lambda: T0)
        await listener.start()
        started.append(listener)
        return listener

    yield start
    for listener in reversed(started):
        await listener.stop(grace=5)


@pytest.fixture
async def smtp_listener(start_listener: StartListener) -> Listener:
    return await start_listener()


@pytest.fixture
async def lmtp_listener(start_listener: StartListener) -> Listener:
    return await start_listener(protocol="lmtp")


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory with a short path: unix socket paths are limited to about 100 bytes."""
    path = Path(tempfile.mkdtemp(prefix="bridge-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost/127.0.0.1 and its key (via openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("STARTTLS tests need the openssl command (Debian package: openssl)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = [
        *("openssl", "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=localhost"),
        *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
    ]
    subprocess.run(
        [*command, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True
    )
    return cert, key


class DatabaseFaults:
    """Breaks and mends the store's database from a separate, plain connection."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def run(self, *statements: str) -> None:
        if self.store.dialect == "sqlite":
            conn = sqlite3.connect(str(self.store.url.database), isolation_level=None)
            try:
                for statement in statements:
                    conn.execute(statement)
            finally:
                conn.close()
            return
        url = self.store.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.encode())

    def refuse_inbound_inserts(self) -> None:
        """The database starts refusing every new `inbound_emails` row."""
        if self.store.dialect == "sqlite":
            self.run(
                "CREATE TRIGGER inbound_fault BEFORE INSERT ON inbound_emails "
                "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
            )
            return
        self.run(
            "CREATE FUNCTION inbound_fault() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'injected fault'; END $$",
            "CREATE TRIGGER inbound_fault BEFORE INSERT ON inbound_emails "
            "FOR EACH ROW EXECUTE FUNCTION inbound_fault()",
        )

    def accept_inbound_inserts(self) -> None:
        if self.store.dialect == "sqlite":
            self.run("DROP TRIGGER inbound_fault")
        else:
            self.run("DROP TRIGGER inbound_fault ON inbound_emails")

    def cut_off_database(self) -> None:
        """PostgreSQL: end every session on the database and refuse new ones (an outage)."""
        name = self.store.url.database
        self._maintenance(
            f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false',
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
        )

    def reconnect_database(self) -> None:
        self._maintenance(f'ALTER DATABASE "{self.store.url.database}" WITH ALLOW_CONNECTIONS true')

    def _maintenance(self, *statements: str) -> None:
        url = self.store.url.set(drivername="postgresql", database="postgres")
        with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.encode())

    def hide_reply_tokens(self) -> None:
        """Token look-ups fail: the table is not where bridge expects it."""
        self.run("ALTER TABLE reply_tokens RENAME TO reply_tokens_hidden")

    def restore_reply_tokens(self) -> None:
        self.run("ALTER TABLE reply_tokens_hidden RENAME TO reply_tokens")


@pytest.fixture
def faults(store: Store) -> DatabaseFaults:
    return DatabaseFaults(store)
