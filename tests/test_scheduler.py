"""The scheduler: jobs from settings, short real intervals, leases between instances."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from bridge.config import JobSchedule, RetentionSettings
from bridge.portal import Portal
from bridge.purge import AUDIT_HOUSEKEEPING, AUDIT_RUN, Pacing
from bridge.scheduler import (
    HOUSEKEEPING_JOB,
    PURGE_JOB,
    Scheduler,
    describe,
    next_run,
    planned_jobs,
    trigger_for,
)
from bridge.store import leases
from bridge.store.engine import Store
from bridge.store.models import AuditEvent, StaffRole

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def every(purge: float, housekeeping: float = 3600.0, **more: object) -> RetentionSettings:
    return RetentionSettings.model_validate(
        {
            "purge": JobSchedule(every_seconds=purge),
            "housekeeping": JobSchedule(every_seconds=housekeeping),
            **more,
        }
    )


async def events(store: Store, action: str) -> list[AuditEvent]:
    async with store.read() as session:
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        return list(await session.exec(query))


async def wait_for(condition: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Poll the store until `condition` holds (the scheduler runs in this loop)."""
    async with asyncio.timeout(within):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.05)


# --- schedules --------------------------------------------------------------------------


def test_an_interval_wins_over_the_daily_time() -> None:
    schedule = JobSchedule(every_seconds=300.0, daily_at="03:30")
    assert describe(schedule) == "every 300 s"
    assert next_run(schedule, T0, T0) == T0 + timedelta(seconds=300)
    assert next_run(schedule, None, T0) is None
    # Overdue (the daemon was down): due now.
    assert next_run(schedule, T0, T0 + timedelta(hours=1)) == T0 + timedelta(hours=1)


def test_a_daily_job_runs_at_its_time_in_utc() -> None:
    schedule = JobSchedule(every_seconds=0.0, daily_at="03:30")
    assert describe(schedule) == "daily at 03:30 UTC"
    assert next_run(schedule, None, T0) == datetime(2026, 3, 2, 3, 30, tzinfo=UTC)
    early = datetime(2026, 3, 1, 1, 0, tzinfo=UTC)
    assert next_run(schedule, None, early) == datetime(2026, 3, 1, 3, 30, tzinfo=UTC)
    assert trigger_for(schedule).get_next_fire_time(None, early) == datetime(
        2026, 3, 1, 3, 30, tzinfo=UTC
    )


def test_planned_jobs_take_their_last_run_from_the_audit_actions() -> None:
    retention = RetentionSettings()
    jobs = planned_jobs(retention, {AUDIT_HOUSEKEEPING: T0}, T0 + timedelta(seconds=10))
    assert [(j.name, j.schedule, j.last_run) for j in jobs] == [
        (PURGE_JOB, "daily at 03:30 UTC", None),
        (HOUSEKEEPING_JOB, "every 300 s", T0),
    ]
    assert jobs[0].next_run == datetime(2026, 3, 2, 3, 30, tzinfo=UTC)
    assert jobs[1].next_run == T0 + timedelta(seconds=300)


# --- running ----------------------------------------------------------------------------


async def test_jobs_run_on_their_interval_and_report_last_and_next_run(
    store: Store, tmp_path: Path
) -> None:
    beats: list[str] = []
    scheduler = Scheduler(
        store,
        every(0.3, 0.5),
        blob_dir=tmp_path / "blobs",
        instance="one",
        beat=beats.append,
        beat_every=0.1,
    )
    async with scheduler:
        jobs = {job.name: job for job in scheduler.jobs()}
        assert set(jobs) == {PURGE_JOB, HOUSEKEEPING_JOB}
        assert jobs[PURGE_JOB].schedule == "every 0.3 s" and jobs[PURGE_JOB].last_run is None
        assert jobs[PURGE_JOB].next_run is not None

        async def ran_twice() -> bool:
            return len(await events(store, AUDIT_RUN)) >= 2 and bool(
                await events(store, AUDIT_HOUSEKEEPING)
            )

        await wait_for(ran_twice)
        jobs = {job.name: job for job in scheduler.jobs()}
    assert scheduler.last[PURGE_JOB].outcome == "done"
    assert jobs[PURGE_JOB].last_run is not None and jobs[PURGE_JOB].next_run is not None
    assert jobs[PURGE_JOB].next_run > jobs[PURGE_JOB].last_run
    assert {e.actor for e in await events(store, AUDIT_RUN)} == {"one"}
    assert len(beats) >= 3 and set(beats) == {"scheduler"}
    # The leases were released after each run.
    assert await leases.current(store, PURGE_JOB) is None


async def test_jobs_are_coalesced_and_never_run_twice_at_once(store: Store, tmp_path: Path) -> None:
    async with Scheduler(store, every(0.3), blob_dir=tmp_path, instance="one") as scheduler:
        assert scheduler._scheduler is not None
        for name in (PURGE_JOB, HOUSEKEEPING_JOB):
            job = scheduler._scheduler.get_job(name)
            assert job.coalesce is True and job.max_instances == 1
            assert job.misfire_grace_time is None


async def test_a_run_is_skipped_while_another_instance_holds_the_lease(
    store: Store, tmp_path: Path
) -> None:
    assert await leases.acquire(store, PURGE_JOB, "elsewhere", timedelta(minutes=10))
    scheduler = Scheduler(store, every(3600.0), blob_dir=tmp_path, instance="one")
    async with scheduler:
        run = await scheduler.run_now(PURGE_JOB)
        assert run.outcome == "skipped"
        assert await events(store, AUDIT_RUN) == []
        await leases.release(store, PURGE_JOB, "elsewhere")
        assert (await scheduler.run_now(PURGE_JOB)).outcome == "done"
    assert len(await events(store, AUDIT_RUN)) == 1


async def test_a_failed_run_does_not_stop_the_schedule(store: Store, tmp_path: Path) -> None:
    # The blob folder is a file: the sweep fails, every run of the purge fails.
    blob_dir = tmp_path / "not-a-folder"
    blob_dir.write_text("")
    scheduler = Scheduler(store, every(0.2), blob_dir=blob_dir, instance="one")
    async with scheduler:

        async def failed_then_again() -> bool:
            last = scheduler.last.get(PURGE_JOB)
            return last is not None and last.outcome == "failed" and last.started_at > first

        first = datetime.now(UTC)
        await wait_for(failed_then_again)
        # The lease was given back after the failure.
        assert await leases.current(store, PURGE_JOB) is None


async def test_stopping_ends_a_running_purge_after_its_batch(store: Store, tmp_path: Path) -> None:
    portal = Portal(store)
    org = await portal.create_organization("P", "https://p.example.org", "r.example.org", now=T0)
    staff = await portal.add_staff(org, "S", [StaffRole.CLINICIAN], ["s@p.example.org"], now=T0)
    client = await portal.add_client(org, "C", ["c@home.example.net"], now=T0)
    for _ in range(20):
        ref = await portal.create_thread(
            org, client, "s", clinician_ids=[staff], author_id=staff, body_text="b", now=T0
        )
        for person in (client, staff):
            await portal.delete_permanently(ref.thread_id, person, now=T0)

    scheduler = Scheduler(
        store,
        every(3600.0, batch_size=1),
        blob_dir=tmp_path,
        instance="one",
        pacing=Pacing(pause=0.2),
        stop_grace=10.0,
    )
    async with scheduler:
        running = asyncio.create_task(scheduler.run_now(PURGE_JOB))

        async def some_batches() -> bool:
            async with store.read() as session:
                query = select(sa.func.count()).where(AuditEvent.action == "purge_batch")
                return int((await session.exec(query)).one()) >= 2

        await wait_for(some_batches)
        started = time.monotonic()
    assert time.monotonic() - started < 5
    assert (await running).outcome == "done"
    (event,) = await events(store, AUDIT_RUN)
    assert event.detail["complete"] is False
    assert 2 <= (event.detail["threads"] or 0) < 20  # type: ignore[operator]


async def test_the_injected_clock_sets_the_retention_time(store: Store, tmp_path: Path) -> None:
    scheduler = Scheduler(store, every(3600.0), blob_dir=tmp_path, instance="one", clock=lambda: T0)
    async with scheduler:
        assert (await scheduler.run_now(HOUSEKEEPING_JOB)).outcome == "done"
    (event,) = await events(store, AUDIT_HOUSEKEEPING)
    assert event.detail["as_of"] == T0.isoformat()


async def test_run_now_refuses_an_unknown_job(store: Store, tmp_path: Path) -> None:
    async with Scheduler(store, every(3600.0), blob_dir=tmp_path, instance="one") as scheduler:
        with pytest.raises(KeyError):
            await scheduler.run_now("nonsense")
