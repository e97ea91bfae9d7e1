"""Fixtures shared by the whole suite: a real store on SQLite and on PostgreSQL.

PostgreSQL tests run when `BRIDGE_TEST_DATABASE_URL` is set (CI sets it) and
skip with a reason otherwise. A URL that is set but unreachable fails the
run: CI must not pass by skipping the production backend. Each pytest run
creates its own database next to the one named in the URL and drops it at the
end, so two runs on one server never wipe each other's tables.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import settings as hypothesis_settings

from bridge.store.engine import Store
from bridge.store.migrate import upgrade

PG_ENV = "BRIDGE_TEST_DATABASE_URL"

# Speed is measured in bench/, never in tests: no per-example deadline, which a loaded
# CI machine would otherwise turn into flaky failures.
hypothesis_settings.register_profile("bridge", deadline=None)
hypothesis_settings.load_profile("bridge")


def _libpq(url: sa.URL) -> str:
    """A URL psycopg understands (no SQLAlchemy driver suffix)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_run_url() -> Iterator[str | None]:
    """A fresh database for this pytest run, or None when PostgreSQL is not configured."""
    base = os.environ.get(PG_ENV)
    if not base:
        yield None
        return
    admin = sa.make_url(base)
    name = f"bridge_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        with psycopg.connect(_libpq(admin), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as err:
        pytest.fail(f"{PG_ENV} is set but PostgreSQL is unreachable: {err}")
    yield _libpq(admin.set(database=name))
    with psycopg.connect(_libpq(admin), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reset_postgres(url: str) -> None:
    """Give a test an empty database."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_run_url: str | None
) -> str:
    """An empty database of each backend, as a plain URL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite3'}"
    if postgres_run_url is None:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql://postgres@127.0.0.1/test)")
    reset_postgres(postgres_run_url)
    return postgres_run_url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A migrated, empty store on each backend."""
    await upgrade(database_url)
    async with Store(database_url) as opened:
        yield opened
