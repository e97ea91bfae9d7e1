"""Connecting to the shared store, and the one way to write to it.

`Store` owns the async engine and hands out sessions through two context
managers: `transaction()` for every write (on SQLite it starts with
`BEGIN IMMEDIATE`, so a writer takes the lock before it reads and a portal
process writing the same file cannot make it lose an update) and `read()` for
read-only work. It is given a URL, never the whole config.

It does not create tables: the schema comes from the migrations (`migrate.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.errors import BridgeError

# How long a SQLite writer waits for another process's lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}


class StoreUrlError(BridgeError):
    """The store URL names a backend bridge does not support."""

    def __init__(self, backend: str) -> None:
        super().__init__(f"unsupported store backend {backend!r} (use sqlite or postgresql)")
        self.backend = backend


def async_url(url: str | sa.URL, password: str | None = None) -> sa.URL:
    """Map a plain `sqlite:` or `postgresql:` URL onto bridge's async driver.

    A password given separately (from a secret file or credential) replaces
    the one in the URL, so the URL in the config can stay free of secrets.
    """
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend not in _ASYNC_DRIVERS:
        raise StoreUrlError(backend)
    parsed = parsed.set(drivername=_ASYNC_DRIVERS[backend])
    if password is not None:
        parsed = parsed.set(password=password)
    return parsed


def sqlite_path(url: sa.URL) -> Path | None:
    """The database file of a SQLite URL (None for in-memory or other backends)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


class Store:
    """The shared store, opened: an engine plus the transaction discipline."""

    def __init__(self, url: str | sa.URL, *, password: str | None = None, echo: bool = False):
        self.url = async_url(url, password)
        self.dialect = self.url.get_backend_name()
        path = sqlite_path(self.url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(
            self.url,
            echo=echo,
            pool_pre_ping=self.dialect == "postgresql",
            # Bound parameters can be message content; keep them out of error texts and logs.
            hide_parameters=True,
        )
        if self.dialect == "sqlite":
            _install_sqlite_discipline(self.engine)
        self._reader = self.engine.execution_options(bridge_begin="DEFERRED")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.dispose()

    async def dispose(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction: committed on normal exit, rolled back on error."""
        async with AsyncSession(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only session; never takes SQLite's write lock."""
        async with AsyncSession(self._reader, expire_on_commit=False) as session, session.begin():
            yield session

    async def ping(self) -> None:
        """Raise if the store cannot be reached."""
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))


def _install_sqlite_discipline(engine: AsyncEngine) -> None:
    """WAL, busy timeout, foreign keys, and explicit BEGIN [IMMEDIATE].

    pysqlite's own transaction handling issues a deferred BEGIN lazily before
    the first write; two processes that both read and then write then fail
    with "database is locked" or lose an update. Taking over BEGIN fixes both.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        # FULL, not WAL's usual NORMAL: an SMTP 250 promises the commit survives power loss.
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        # Deleted content is overwritten, so a purged message is not left in free pages.
        cursor.execute("PRAGMA secure_delete = ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get("bridge_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")
