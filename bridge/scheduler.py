"""The daemon's scheduled jobs: the trash purge and housekeeping, one instance at a time.

`Scheduler` runs APScheduler 3's `AsyncIOScheduler` inside the daemon's own
event loop, as an async context manager. Its jobs are defined here in code from
`[retention]` at start-up and kept in APScheduler's in-memory job store: the
SQLAlchemy job store of APScheduler 3 must not be shared between processes,
and nothing about a job needs to survive a restart (the last runs are in the
audit trail). Each job runs every `every_seconds`, or, when that is 0, once a
day at `daily_at` UTC; runs that were missed while the loop was busy are
coalesced into one, and a job never runs twice at once in one process.

Across processes, each job first takes the lease of its name (`bridge.store.
leases`), renews it while it works and passes its fence into every write
transaction, so only one instance sharing the store purges at a time; an
instance that finds the lease held skips that run. A crashed holder's lease
expires after `retention.lease_seconds`.

Stopping asks a running job to end after its current batch (what is left is
done by the next run), waits up to `stop_grace`, then cancels.

Not here: what the jobs delete (`bridge.purge`), or reading the config file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bridge import purge
from bridge.config import JobSchedule, RetentionSettings
from bridge.store.engine import Store
from bridge.store.leases import HeldLease, LeaseBusyError, LeaseLostError

log = logging.getLogger(__name__)

PURGE_JOB = "purge"
HOUSEKEEPING_JOB = "housekeeping"
# The audit action that records a finished run of each job (for `bridge jobs`).
RUN_ACTIONS = {PURGE_JOB: purge.AUDIT_RUN, HOUSEKEEPING_JOB: purge.AUDIT_HOUSEKEEPING}
BEAT_NAME = "scheduler"

Clock = Callable[[], datetime]
Work = Callable[[HeldLease], Awaitable[object]]


@dataclass(frozen=True)
class JobInfo:
    """One job as `bridge jobs` shows it."""

    name: str
    schedule: str
    last_run: datetime | None
    next_run: datetime | None
    running: bool = False


@dataclass(frozen=True)
class JobRun:
    """The last run of a job in this process: `done`, `skipped`, `lease_lost` or `failed`."""

    started_at: datetime
    finished_at: datetime
    outcome: str


def schedules(retention: RetentionSettings) -> dict[str, JobSchedule]:
    return {PURGE_JOB: retention.purge, HOUSEKEEPING_JOB: retention.housekeeping}


def trigger_for(schedule: JobSchedule) -> IntervalTrigger | CronTrigger:
    if schedule.every_seconds > 0:
        return IntervalTrigger(seconds=schedule.every_seconds, timezone=UTC)
    hour, minute = schedule.daily_at.split(":")
    return CronTrigger(hour=int(hour), minute=int(minute), timezone=UTC)


def describe(schedule: JobSchedule) -> str:
    if schedule.every_seconds > 0:
        return f"every {schedule.every_seconds:g} s"
    return f"daily at {schedule.daily_at} UTC"


def next_run(schedule: JobSchedule, last_run: datetime | None, now: datetime) -> datetime | None:
    """When the job is next due, as seen from outside the daemon (for the CLI).

    A daily job's next time is fixed. An interval job counts from the daemon's
    start, which the CLI does not know: its next run is estimated from the last
    one (None when there was none).
    """
    if schedule.every_seconds > 0:
        if last_run is None:
            return None
        return max(last_run + timedelta(seconds=schedule.every_seconds), now)
    fire: datetime | None = trigger_for(schedule).get_next_fire_time(None, now)
    return fire


def planned_jobs(
    retention: RetentionSettings, last_runs: Mapping[str, datetime], now: datetime
) -> list[JobInfo]:
    """The jobs with their schedule, last run (by action, from the audit trail) and next run."""
    jobs = []
    for name, schedule in schedules(retention).items():
        last = last_runs.get(RUN_ACTIONS[name])
        jobs.append(JobInfo(name, describe(schedule), last, next_run(schedule, last, now)))
    return jobs


class Scheduler:
    """The scheduled jobs of one daemon instance (see the module docstring).

    `instance` names this process in leases and audit events. `beat(name)` is
    called every `beat_every` seconds while the scheduler runs (the daemon's
    watchdog). `clock` injects the time retention is measured against (tests);
    None means the database's clock.
    """

    def __init__(
        self,
        store: Store,
        retention: RetentionSettings,
        *,
        blob_dir: Path,
        instance: str,
        beat: Callable[[str], None] | None = None,
        beat_every: float = 5.0,
        stop_grace: float = 30.0,
        pacing: purge.Pacing = purge.GENTLE,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.retention = retention
        self.blob_dir = blob_dir
        self.instance = instance
        self._beat = beat
        self._beat_every = beat_every
        self._stop_grace = stop_grace
        self._pacing = pacing
        self._clock = clock
        self._ttl = timedelta(seconds=retention.lease_seconds)
        self._schedules = schedules(retention)
        self._work: dict[str, Work] = {PURGE_JOB: self._purge, HOUSEKEEPING_JOB: self._housekeeping}
        self._scheduler: AsyncIOScheduler | None = None
        self._stopping = asyncio.Event()
        self._tasks: dict[asyncio.Task[Any], str] = {}
        self.last: dict[str, JobRun] = {}

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start(self) -> None:
        """Start the jobs in the running event loop."""
        if self._scheduler is not None:
            raise RuntimeError("the scheduler is already started")
        self._stopping.clear()
        scheduler = AsyncIOScheduler(timezone=UTC)
        for name, schedule in self._schedules.items():
            scheduler.add_job(
                self._run_job,
                trigger_for(schedule),
                args=(name,),
                id=name,
                name=name,
                coalesce=True,
                max_instances=1,
                # However late the loop gets to a due run, it still runs (once).
                misfire_grace_time=None,
            )
        if self._beat is not None:
            scheduler.add_job(
                self._heartbeat,
                IntervalTrigger(seconds=self._beat_every, timezone=UTC),
                id=BEAT_NAME,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=None,
            )
            self._beat(BEAT_NAME)
        scheduler.start()
        self._scheduler = scheduler
        log.info(
            "scheduler started",
            extra={name: describe(schedule) for name, schedule in self._schedules.items()},
        )

    async def stop(self) -> None:
        """No new runs; a running job ends after its batch (or is cancelled after the grace)."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is None:
            return
        self._stopping.set()
        scheduler.pause()
        running = list(self._tasks)
        if running:
            _, late = await asyncio.wait(running, timeout=self._stop_grace)
            for task in late:
                log.warning("job cancelled at shutdown", extra={"job": self._tasks.get(task)})
                task.cancel()
            if late:
                await asyncio.wait(late)
        scheduler.shutdown(wait=False)
        # AsyncIOScheduler shuts down on the loop's next turn.
        await asyncio.sleep(0)
        log.info("scheduler stopped")

    def jobs(self) -> list[JobInfo]:
        """The jobs, their schedule, last run in this process, and next run."""
        running = set(self._tasks.values())
        infos = []
        for name, schedule in self._schedules.items():
            job = self._scheduler.get_job(name) if self._scheduler is not None else None
            last = self.last.get(name)
            infos.append(
                JobInfo(
                    name,
                    describe(schedule),
                    last.finished_at if last else None,
                    job.next_run_time if job is not None else None,
                    name in running,
                )
            )
        return infos

    async def run_now(self, name: str) -> JobRun:
        """Run one job at once, outside its schedule (under its lease, like a scheduled run)."""
        if name not in self._work:
            raise KeyError(name)
        await self._run_job(name)
        return self.last[name]

    async def _heartbeat(self) -> None:
        if self._beat is not None:
            self._beat(BEAT_NAME)

    async def _run_job(self, name: str) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks[task] = name
        started = datetime.now(UTC)
        outcome = "failed"
        try:
            async with HeldLease(self.store, name, self.instance, self._ttl) as lease:
                await self._work[name](lease)
            outcome = "done"
        except LeaseBusyError as busy:
            outcome = "skipped"
            log.info(
                "job skipped, lease held elsewhere", extra={"job": name, "holder": busy.holder}
            )
        except LeaseLostError:
            outcome = "lease_lost"
            log.warning("job stopped, its lease was lost", extra={"job": name})
        except Exception:  # one failed run; the next one is scheduled as usual
            log.exception("job failed", extra={"job": name})
        finally:
            self.last[name] = JobRun(started, datetime.now(UTC), outcome)
            if task is not None:
                self._tasks.pop(task, None)

    def _now(self) -> datetime | None:
        return None if self._clock is None else self._clock()

    async def _purge(self, lease: HeldLease) -> object:
        return await purge.purge(
            self.store,
            self.blob_dir,
            actor=self.instance,
            batch_size=self.retention.batch_size,
            now=self._now(),
            fence=lease.check,
            should_stop=self._stopping.is_set,
            pacing=self._pacing,
        )

    async def _housekeeping(self, lease: HeldLease) -> object:
        return await purge.housekeeping(
            self.store,
            purge.HousekeepingRules.from_settings(self.retention),
            actor=self.instance,
            batch_size=self.retention.batch_size,
            now=self._now(),
            fence=lease.check,
            should_stop=self._stopping.is_set,
            pacing=self._pacing,
        )
