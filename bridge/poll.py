"""The daemon's poll loop: one isolated step after another, a pause when idle.

Every worker of the daemon (dispatcher, sender, inbound pipeline, IMAP poller)
has the same shape: do one bounded step of work; if it found work, go again
at once; if not, or if it failed, pause; wake early when told to; stop when
the daemon stops, after the step in flight has finished. `PollLoop` owns that
shape, the back-off after failures and the heartbeat the watchdog reads. The
step owns what the work is; this module knows nothing about mail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)

# A step returns True when it did work (so more may be waiting) and False when idle.
Step = Callable[[], Awaitable[bool]]


class PollLoop:
    """Run `step` until stopped; one failing step never ends the loop.

    As an async context manager it runs in a background task and, on exit,
    lets the step in flight finish before returning. `run(stop)` is the loop
    itself, for callers that own the task.
    """

    def __init__(
        self,
        name: str,
        step: Step,
        *,
        poll_interval: float = 1.0,
        max_backoff: float = 60.0,
        beat: Callable[[str], None] | None = None,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.name = name
        self._step = step
        self._poll_interval = poll_interval
        self._max_backoff = max(max_backoff, poll_interval)
        self._beat = beat
        self.failures = 0
        self._woken = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

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
        """Run the loop in a background task until `stop()`."""
        if self._task is not None:
            raise RuntimeError(f"{self.name} loop is already running")
        self._stopping.clear()
        self._task = asyncio.create_task(self.run(self._stopping), name=self.name)

    async def stop(self) -> None:
        """Ask the loop to stop and wait for the step in flight to finish."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            await task

    def wake(self) -> None:
        """Run the next step now instead of at the end of the pause."""
        self._woken.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Step and pause until `stop` is set; the step in flight is finished first."""
        while not stop.is_set():
            # Cleared before the step, so a wake-up during it is not lost.
            self._woken.clear()
            self._heartbeat()
            if not await self._one_step():
                await self._pause(stop)

    async def _one_step(self) -> bool:
        try:
            did_work = await self._step()
        except Exception:
            # Steps log ids only; the traceback names code, and the engine hides SQL parameters.
            self.failures += 1
            log.exception("%s step failed", self.name, extra={"failures": self.failures})
            return False
        self.failures = 0
        return did_work

    async def _pause(self, stop: asyncio.Event) -> None:
        """Wait out the delay in poll-interval slices that each beat: backing off is alive."""
        remaining = self._delay()
        while remaining > 0 and not stop.is_set() and not self._woken.is_set():
            slice_ = min(remaining, self._poll_interval)
            await self._wait(stop, slice_)
            remaining -= slice_
            if remaining > 0:
                self._heartbeat()

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        waiters = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self._woken.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _delay(self) -> float:
        """The poll interval, doubled per consecutive failure up to `max_backoff`.

        A step that keeps failing (the store down, a row the store refuses) is
        retried and logged ever less often, not every poll interval.
        """
        if self.failures == 0:
            return self._poll_interval
        return min(self._poll_interval * 2.0 ** min(self.failures, 32), self._max_backoff)

    def _heartbeat(self) -> None:
        if self._beat is not None:
            self._beat(self.name)


class Worker:
    """A daemon component driven by one `PollLoop` held in `self._loop`.

    `async with worker:` runs the loop in the background and, on exit, lets the
    step in flight finish and then calls `aclose()` (which releases whatever the
    worker holds: a transport, say). `run(stop)` drives the loop in the caller's
    own task instead; `wake()` starts the next step now.
    """

    _loop: PollLoop

    async def __aenter__(self) -> Self:
        self._loop.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._loop.stop()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Release what the worker holds once its loop has stopped (nothing, by default)."""

    def wake(self) -> None:
        self._loop.wake()

    async def run(self, stop: asyncio.Event) -> None:
        await self._loop.run(stop)
