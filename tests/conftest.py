"""Fixtures shared by the whole suite: a real store on SQLite and on PostgreSQL.

PostgreSQL tests run when `BRIDGE_TEST_DATABASE_URL` is set (CI sets it) and
skip with a reason otherwise. A URL that is set but unreachable fails the
run: CI must not pass by skipping the production backend.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from bridge.store.engine import Store, async_url
from bridge.store.migrate import upgrade

PG_ENV = "BRIDGE_TEST_DATABASE_URL"


def postgres_url() -> str | None:
    return os.environ.get(PG_ENV) or None


async def reset_postgres(url: str) -> None:
    """Give a test an empty database (the test database is ours to wipe)."""
    engine = create_async_engine(async_url(url))
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("DROP SCHEMA IF EXISTS public CASCADE"))
            await conn.execute(sa.text("CREATE SCHEMA public"))
    except Exception as err:  # pragma: no cover - exercised only when CI is broken
        pytest.fail(f"{PG_ENV} is set but PostgreSQL is unreachable: {err}")
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of each backend, as a plain URL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite3'}"
        return
    url = postgres_url()
    if url is None:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql://postgres@127.0.0.1/test)")
    await reset_postgres(url)
    yield url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A migrated, empty store on each backend."""
    await upgrade(database_url)
    async with Store(database_url) as opened:
        yield opened
