"""Schema migrations of the shared store (alembic), as functions the CLI calls.

The migration scripts in `migrations/versions` are the history of the public
schema. `upgrade` brings a database to the newest revision; `check` tells
whether a database is at that revision and matches the models, without
changing it. Migrations run on synchronous drivers in a worker thread: they
are rare, operator-driven, and alembic's API is synchronous.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel

import bridge.store.models  # noqa: F401  (registers the tables on the metadata)
from bridge.store.engine import async_url, sqlite_path

MIGRATIONS = Path(__file__).with_name("migrations")
_SYNC_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}


def sync_url(url: str | sa.URL, password: str | None = None) -> sa.URL:
    """The synchronous twin of a store URL (same database, blocking driver)."""
    parsed = async_url(url, password)
    return parsed.set(drivername=_SYNC_DRIVERS[parsed.get_backend_name()])


def alembic_config(url: sa.URL) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's config is an INI file: a literal % in a password must be doubled.
    cfg.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return cfg


def upgrade_sync(url: str | sa.URL, revision: str = "head", password: str | None = None) -> None:
    sync = sync_url(url, password)
    path = sqlite_path(sync)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(sync), revision)


async def upgrade(url: str | sa.URL, revision: str = "head", password: str | None = None) -> None:
    await asyncio.to_thread(upgrade_sync, url, revision, password)


@dataclass(frozen=True)
class SchemaStatus:
    current: str | None
    head: str
    differences: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.current == self.head and not self.differences


def check_sync(url: str | sa.URL, password: str | None = None) -> SchemaStatus:
    sync = sync_url(url, password)
    head = ScriptDirectory.from_config(alembic_config(sync)).get_current_head()
    assert head is not None, "the migration history is empty"
    # Connecting would create a missing SQLite file; a check must not change anything.
    path = sqlite_path(sync)
    if path is not None and not path.exists():
        return SchemaStatus(None, head, ())
    engine = sa.create_engine(sync, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            current = ctx.get_current_revision()
            diffs = compare_metadata(ctx, SQLModel.metadata) if current is not None else []
    finally:
        engine.dispose()
    return SchemaStatus(current, head, tuple(_describe(d) for d in diffs))


async def check(url: str | sa.URL, password: str | None = None) -> SchemaStatus:
    return await asyncio.to_thread(check_sync, url, password)


def _describe(diff: object) -> str:
    """One line per difference; alembic gives tuples or lists of tuples."""
    if isinstance(diff, list):
        return "; ".join(_describe(d) for d in diff)
    if isinstance(diff, tuple) and diff:
        parts = [str(diff[0])]
        for item in diff[1:]:
            name = getattr(item, "name", None)
            if name is not None:
                parts.append(str(name))
            elif isinstance(item, str):
                parts.append(item)
        return " ".join(parts)
    return str(diff)
