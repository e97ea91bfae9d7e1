"""Processes that share one SQLite file lose no update when they follow the discipline.

The daemon and a portal are separate OS processes writing the same file. Each
worker here does what real code does: read a value in Python, then write a
value computed from it. With `BEGIN IMMEDIATE` (what `Store.transaction()`
issues, and what docs/store.md asks of portals) the read already holds the
write lock, so no increment is lost and nobody sees "database is locked". The
companion tests run the same read-then-write with deferred transactions and
show that it then loses an update or fails.

Workers are real processes (spawn context, so no state is shared by forking);
they meet at multiprocessing barriers, never at sleeps.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import sqlite3
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bridge.store.engine import Store
from bridge.store.migrate import upgrade

INCREMENTS = 200
WAIT_S = 60  # upper bound for any one worker; the whole file runs in a few seconds

_ctx = multiprocessing.get_context("spawn")

_READ = "SELECT trash_retention_days FROM organizations WHERE id = 1"
_WRITE = "UPDATE organizations SET trash_retention_days = :new WHERE id = 1"


# --- workers (run in child processes) -----------------------------------------------------


def _report(results: Any, work: Callable[[], str]) -> None:
    try:
        outcome = work()
    except sqlite3.OperationalError as err:
        outcome = "locked" if "database is locked" in str(err) else f"error: {err!r}"
    except BaseException as err:
        outcome = f"error: {err!r}"
    results.put(outcome)


def _daemon_worker(path: str, start: Barrier, results: Any) -> None:
    """The daemon's way: `Store.transaction()`, read then write in Python."""

    async def increments() -> str:
        async with Store(f"sqlite:///{path}") as store:
            await store.ping()
            await asyncio.to_thread(start.wait)
            for _ in range(INCREMENTS):
                async with store.transaction() as session:
                    conn = await session.connection()
                    old = (await conn.execute(sa.text(_READ))).scalar_one()
                    await conn.execute(sa.text(_WRITE), {"new": old + 1})
        return "ok"

    _report(results, lambda: asyncio.run(increments()))


def _portal_worker(path: str, start: Barrier, results: Any) -> None:
    """A portal's way, as docs/store.md describes it: plain sqlite3, BEGIN IMMEDIATE."""

    def increments() -> str:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA foreign_keys = ON")
            start.wait()
            for _ in range(INCREMENTS):
                conn.execute("BEGIN IMMEDIATE")
                (old,) = conn.execute(_READ).fetchone()
                conn.execute(_WRITE, {"new": old + 1})
                conn.execute("COMMIT")
        finally:
            conn.close()
        return "ok"

    _report(results, increments)


def _deferred_worker(path: str, explicit_begin: bool, read_done: Barrier, results: Any) -> None:
    """One read-then-write in a deferred transaction; both workers read before either writes.

    With `explicit_begin` the read and the write share one `BEGIN` (DEFERRED); without
    it, pysqlite's default applies: the SELECT runs outside any transaction and a
    deferred BEGIN is issued just before the UPDATE.
    """

    def increment() -> str:
        conn = sqlite3.connect(path, isolation_level=None if explicit_begin else "")
        try:
            # WAL and a generous busy timeout, as a careful portal would set: not enough.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA busy_timeout = 10000")
            if explicit_begin:
                conn.execute("BEGIN")
            (old,) = conn.execute(_READ).fetchone()
            read_done.wait()
            try:
                conn.execute(_WRITE, {"new": old + 1})
                if explicit_begin:
                    conn.execute("COMMIT")
                else:
                    conn.commit()
            except sqlite3.OperationalError:
                conn.rollback()
                raise
        finally:
            conn.close()
        return "ok"

    _report(results, increment)


# --- the parent's side ----------------------------------------------------------------------


def run_workers(jobs: list[tuple[Callable[..., None], tuple[Any, ...]]]) -> list[str]:
    """Start one process per job and collect each one's outcome."""
    results = _ctx.Queue()
    processes = [_ctx.Process(target=fn, args=(*args, results)) for fn, args in jobs]
    for p in processes:
        p.start()
    try:
        outcomes = [results.get(timeout=WAIT_S) for _ in processes]
    except queue.Empty:
        pytest.fail(f"a worker did not finish within {WAIT_S}s")
    finally:
        for p in processes:
            p.join(timeout=WAIT_S)
            if p.is_alive():
                p.kill()
                p.join()
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    return outcomes


def counter(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(_READ).fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
async def shared_file(tmp_path: Path) -> Path:
    """A migrated SQLite file, in WAL mode, with organization 1 as the shared counter."""
    path = tmp_path / "shared.sqlite3"
    url = f"sqlite:///{path}"
    await upgrade(url)
    async with Store(url) as store, store.transaction() as session:
        await session.execute(
            sa.text(
                "INSERT INTO organizations (id, display_name, portal_base_url, reply_domain)"
                " VALUES (1, 'Practice', 'https://portal.example', 'reply.example')"
            )
        )
    return path


# --- tests ------------------------------------------------------------------------------------


@pytest.mark.timeout(2 * WAIT_S)
def test_daemon_and_portal_processes_incrementing_one_row_lose_no_update(
    shared_file: Path,
) -> None:
    before = counter(shared_file)
    start = _ctx.Barrier(3, timeout=WAIT_S)
    path = str(shared_file)

    outcomes = run_workers(
        [
            (_daemon_worker, (path, start)),
            (_daemon_worker, (path, start)),
            (_portal_worker, (path, start)),
        ]
    )

    assert outcomes == ["ok", "ok", "ok"]
    assert counter(shared_file) == before + 3 * INCREMENTS


def run_two_deferred_increments(path: Path, *, explicit_begin: bool) -> tuple[list[str], int]:
    """Both workers read the counter, meet, then both write; returns outcomes and net change."""
    before = counter(path)
    read_done = _ctx.Barrier(2, timeout=WAIT_S)
    job = (_deferred_worker, (str(path), explicit_begin, read_done))
    outcomes = run_workers([job, job])
    return sorted(outcomes), counter(path) - before


@pytest.mark.timeout(2 * WAIT_S)
def test_pysqlite_default_transactions_silently_lose_an_update(shared_file: Path) -> None:
    outcomes, applied = run_two_deferred_increments(shared_file, explicit_begin=False)

    # Both report success, yet only one increment is in the file.
    assert outcomes == ["ok", "ok"]
    assert applied == 1


@pytest.mark.timeout(2 * WAIT_S)
def test_explicit_deferred_transactions_fail_as_locked_when_the_read_turns_into_a_write(
    shared_file: Path,
) -> None:
    outcomes, applied = run_two_deferred_increments(shared_file, explicit_begin=True)

    # The busy timeout cannot help: SQLite refuses at once to upgrade a stale read.
    assert outcomes == ["locked", "ok"]
    assert applied == 1
