"""The shared poll loop, driven by step functions written here, on the real event loop.

Pacing is proved by counting, not by timing: while the loop pauses it beats
once per poll-interval slice, so the beats between two steps say how long the
pause was in poll intervals. The intervals are powers of two, so the slices
add up exactly. Where a test must show that nothing happens, the interval is
an hour and the test looks after a short real wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from bridge.poll import PollLoop

HOUR = 3600.0
TICK = 1 / 64  # seconds; exact in binary, so pauses are whole numbers of slices
WAIT_S = 10.0


class Recorder:
    """The loop's visible behaviour, in order: "step" and "beat" events."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.changed = asyncio.Event()

    def beat(self, name: str) -> None:
        assert name == "worker"
        self._add("beat")

    def step_done(self) -> None:
        self._add("step")

    def _add(self, event: str) -> None:
        self.events.append(event)
        self.changed.set()

    @property
    def steps(self) -> int:
        return self.events.count("step")

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        try:
            await asyncio.wait_for(self._until(condition), WAIT_S)
        except TimeoutError:
            pytest.fail(f"timed out after {WAIT_S}s waiting for {what}")

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self.changed.clear()
            await self.changed.wait()


def beats_between(events: list[str]) -> list[int]:
    """For each pair of consecutive steps, the number of beats between them."""
    result: list[int] = []
    count: int | None = None
    for event in events:
        if event == "step":
            if count is not None:
                result.append(count)
            count = 0
        elif count is not None:
            count += 1
    return result


async def test_a_step_that_found_work_runs_again_at_once_and_an_idle_one_pauses() -> None:
    seen = Recorder()
    work = [True, True, True, False]

    async def step() -> bool:
        seen.step_done()
        return work.pop(0) if work else False

    loop = PollLoop("worker", step, poll_interval=HOUR, beat=seen.beat)
    async with loop:
        await seen.until(lambda: seen.steps == 4, "three busy steps and an idle one")
        await asyncio.sleep(0.1)  # an hour's pause has begun: nothing more happens
        assert seen.steps == 4

    # Each step is preceded by one beat and no pause came between the busy steps.
    assert seen.events == ["beat", "step"] * 4


async def test_an_idle_loop_steps_once_per_poll_interval() -> None:
    seen = Recorder()

    async def step() -> bool:
        seen.step_done()
        return False

    async with PollLoop("worker", step, poll_interval=TICK, beat=seen.beat):
        await seen.until(lambda: seen.steps == 4, "four idle steps")

    # One slice per pause, so no beat inside it: only the one before each step.
    assert beats_between(seen.events)[:3] == [1, 1, 1]


async def test_wake_cuts_a_pause_short() -> None:
    seen = Recorder()

    async def step() -> bool:
        seen.step_done()
        return False

    loop = PollLoop("worker", step, poll_interval=HOUR, beat=seen.beat)
    async with loop:
        await seen.until(lambda: seen.steps == 1, "the first step")
        loop.wake()
        await seen.until(lambda: seen.steps == 2, "the woken step, long before an hour")
        loop.wake()
        await seen.until(lambda: seen.steps == 3, "and again")


async def test_a_wake_during_a_step_is_not_lost() -> None:
    seen = Recorder()
    loop: PollLoop

    async def step() -> bool:
        seen.step_done()
        if seen.steps == 1:
            loop.wake()  # new work arrives while this step is still running
        return False

    loop = PollLoop("worker", step, poll_interval=HOUR, beat=seen.beat)
    async with loop:
        await seen.until(lambda: seen.steps == 2, "the step the wake-up asked for")
        await asyncio.sleep(0.1)
        assert seen.steps == 2, "then an hour's pause"


async def test_a_raising_step_backs_off_doubling_up_to_the_cap_and_beats_meanwhile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = Recorder()

    async def step() -> bool:
        seen.step_done()
        raise RuntimeError("store unreachable")

    loop = PollLoop("worker", step, poll_interval=TICK, max_backoff=8 * TICK, beat=seen.beat)
    with caplog.at_level(logging.ERROR, logger="bridge.poll"):
        async with loop:
            await seen.until(lambda: seen.steps == 6, "six failing steps")
            assert loop.failures >= 6

    # Pauses of 2, 4, 8, 8, 8 intervals (capped at 8): one beat per slice.
    assert beats_between(seen.events)[:5] == [2, 4, 8, 8, 8]
    failures = [r for r in caplog.records if r.getMessage() == "worker step failed"]
    assert len(failures) >= 6 and all(r.exc_info is not None for r in failures)
    assert [getattr(r, "failures", None) for r in failures[:3]] == [1, 2, 3]


async def test_after_a_failure_a_good_step_resets_the_pause() -> None:
    seen = Recorder()
    outcomes: list[bool | None] = [None, None, None, False, False]  # None: raise

    async def step() -> bool:
        seen.step_done()
        outcome = outcomes.pop(0) if outcomes else False
        if outcome is None:
            raise RuntimeError("transient")
        return outcome

    loop = PollLoop("worker", step, poll_interval=TICK, max_backoff=HOUR, beat=seen.beat)
    async with loop:
        await seen.until(lambda: seen.steps == 6, "failures, then good steps")
        assert loop.failures == 0

    assert beats_between(seen.events)[:5] == [2, 4, 8, 1, 1]


async def test_the_heartbeat_keeps_coming_while_a_long_back_off_waits() -> None:
    seen = Recorder()

    async def step() -> bool:
        seen.step_done()
        raise RuntimeError("down")

    # By the 40th beat the pauses have grown to 16 intervals and more, so there
    # are few steps but the beats go on: the watchdog sees a live loop.
    async with PollLoop("worker", step, poll_interval=TICK, max_backoff=HOUR, beat=seen.beat):
        await seen.until(lambda: seen.events.count("beat") >= 40, "forty beats")
        assert seen.steps <= 5


async def test_stop_lets_the_step_in_flight_finish_and_starts_no_other() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[int] = []

    async def step() -> bool:
        started.set()
        await release.wait()
        finished.append(len(finished) + 1)
        return True  # "more work": only stopping ends the loop

    loop = PollLoop("worker", step, poll_interval=HOUR)
    loop.start()
    await asyncio.wait_for(started.wait(), WAIT_S)
    stopping = asyncio.create_task(loop.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done(), "stop waits for the step"

    release.set()
    await asyncio.wait_for(stopping, WAIT_S)

    assert finished == [1], "the step finished, and no further step began"


async def test_run_with_a_stop_event_ends_a_pause_at_once() -> None:
    steps = 0

    async def step() -> bool:
        nonlocal steps
        steps += 1
        return False

    stop = asyncio.Event()
    loop = PollLoop("worker", step, poll_interval=HOUR)
    running = asyncio.create_task(loop.run(stop))
    await asyncio.sleep(0.05)  # the step ran; the hour's pause began
    stop.set()
    await asyncio.wait_for(running, WAIT_S)
    assert steps == 1


async def test_a_loop_runs_once_at_a_time_and_needs_a_positive_interval() -> None:
    async def step() -> bool:
        return False

    loop = PollLoop("worker", step, poll_interval=HOUR)
    async with loop:
        with pytest.raises(RuntimeError):
            loop.start()
    with pytest.raises(ValueError):
        PollLoop("worker", step, poll_interval=0)
