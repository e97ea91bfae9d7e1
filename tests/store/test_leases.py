"""Named leases on both backends: one holder at a time, expiry, renewal, the fence."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from bridge.store import leases
from bridge.store.engine import Store
from bridge.store.leases import HeldLease, LeaseBusyError, LeaseLostError
from bridge.store.models import AuditEvent

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
TTL = timedelta(minutes=10)


async def test_a_free_lease_is_taken_and_a_held_one_refused(store: Store) -> None:
    assert await leases.acquire(store, "purge", "a", TTL, T0)
    assert not await leases.acquire(store, "purge", "b", TTL, T0 + timedelta(minutes=9))
    held = await leases.current(store, "purge")
    assert held is not None
    assert (held.owner, held.expires_at) == ("a", T0 + TTL)


async def test_the_holder_acquiring_again_extends_its_lease(store: Store) -> None:
    assert await leases.acquire(store, "purge", "a", TTL, T0)
    assert await leases.acquire(store, "purge", "a", TTL, T0 + timedelta(minutes=5))
    held = await leases.current(store, "purge")
    assert held is not None and held.expires_at == T0 + timedelta(minutes=15)


async def test_an_expired_lease_is_taken_over(store: Store) -> None:
    assert await leases.acquire(store, "purge", "a", TTL, T0)
    assert not await leases.acquire(store, "purge", "b", TTL, T0 + TTL - timedelta(seconds=1))
    assert await leases.acquire(store, "purge", "b", TTL, T0 + TTL)
    held = await leases.current(store, "purge")
    assert held is not None and held.owner == "b"


async def test_renew_only_while_nobody_else_took_it(store: Store) -> None:
    assert await leases.acquire(store, "purge", "a", TTL, T0)
    assert await leases.renew(store, "purge", "a", TTL, T0 + timedelta(minutes=8))
    assert not await leases.renew(store, "purge", "b", TTL, T0 + timedelta(minutes=8))
    # Expired, but nobody took it over: still ours to renew.
    assert await leases.renew(store, "purge", "a", TTL, T0 + timedelta(hours=1))
    assert await leases.acquire(store, "purge", "b", TTL, T0 + timedelta(hours=2))
    assert not await leases.renew(store, "purge", "a", TTL, T0 + timedelta(hours=2))


async def test_release_frees_only_our_own_lease(store: Store) -> None:
    assert await leases.acquire(store, "purge", "a", TTL, T0)
    assert not await leases.release(store, "purge", "b")
    assert await leases.release(store, "purge", "a")
    assert await leases.current(store, "purge") is None
    assert await leases.acquire(store, "purge", "b", TTL, T0)


async def test_leases_with_different_names_are_independent(store: Store) -> None:
    assert await leases.acquire(store, "purge", "a", TTL, T0)
    assert await leases.acquire(store, "housekeeping", "b", TTL, T0)


async def test_names_and_owners_must_fit_their_columns(store: Store) -> None:
    with pytest.raises(ValueError, match="name"):
        await leases.acquire(store, "x" * 65, "a", TTL, T0)
    with pytest.raises(ValueError, match="owner"):
        await leases.acquire(store, "purge", "", TTL, T0)
    with pytest.raises(ValueError, match="ttl"):
        await leases.acquire(store, "purge", "a", timedelta(0), T0)


async def test_without_an_injected_time_the_database_clock_is_used(store: Store) -> None:
    before = datetime.now(UTC)
    assert await leases.acquire(store, "purge", "a", TTL)
    held = await leases.current(store, "purge")
    assert held is not None
    # The database's clock, on this machine: within a few seconds of ours.
    assert abs(held.expires_at - (before + TTL)) < timedelta(seconds=5)
    async with store.read() as session:
        now = await leases.database_now(session)
    assert now.tzinfo is not None and abs(now - before) < timedelta(seconds=5)


@pytest.mark.parametrize("round_", range(3))
async def test_concurrent_acquirers_on_separate_connections_get_one_winner(
    database_url: str, store: Store, round_: int
) -> None:
    """Twelve engines (separate connections) race for one lease: exactly one wins."""
    contenders = [Store(database_url) for _ in range(12)]
    try:
        start = asyncio.Event()

        async def contend(i: int) -> bool:
            await start.wait()
            return await leases.acquire(contenders[i], f"race{round_}", f"owner{i}", TTL)

        tasks = [asyncio.create_task(contend(i)) for i in range(len(contenders))]
        # Every engine opens its connection first, so the acquirers start together.
        for contender in contenders:
            await contender.ping()
        start.set()
        results = await asyncio.gather(*tasks)
    finally:
        for contender in contenders:
            await contender.dispose()
    assert sum(results) == 1
    held = await leases.current(store, f"race{round_}")
    assert held is not None and held.owner == f"owner{results.index(True)}"


async def test_concurrent_takeover_of_an_expired_lease_has_one_winner(
    database_url: str, store: Store
) -> None:
    assert await leases.acquire(store, "purge", "dead", TTL, T0)
    contenders = [Store(database_url) for _ in range(8)]
    later = T0 + TTL + timedelta(seconds=1)
    try:
        for contender in contenders:
            await contender.ping()
        results = await asyncio.gather(
            *(leases.acquire(c, "purge", f"o{i}", TTL, later) for i, c in enumerate(contenders))
        )
    finally:
        for contender in contenders:
            await contender.dispose()
    assert sum(results) == 1


async def test_held_lease_refuses_a_second_holder_and_names_the_first(store: Store) -> None:
    async with HeldLease(store, "purge", "a", TTL):
        with pytest.raises(LeaseBusyError) as refused:
            async with HeldLease(store, "purge", "b", TTL):
                pytest.fail("two holders")
        assert refused.value.holder == "a"
        assert refused.value.expires_at is not None
    # Released on exit.
    assert await leases.current(store, "purge") is None


async def test_held_lease_is_renewed_in_the_background(store: Store) -> None:
    ttl = timedelta(seconds=1)
    async with HeldLease(store, "purge", "a", ttl, renew_every=timedelta(seconds=0.2)) as held:
        await asyncio.sleep(2.0)
        # Twice the time to live has passed; the lease is still ours.
        assert not await leases.acquire(store, "purge", "b", ttl)
        assert not held.lost


async def test_the_fence_rolls_back_work_done_after_the_lease_was_lost(store: Store) -> None:
    clock = [T0]
    held = HeldLease(store, "purge", "a", TTL, clock=lambda: clock[0])
    async with held:
        async with store.transaction() as session:
            await held.check(session)
            session.add(AuditEvent(actor="a", action="fenced_work", detail={}))
        # The lease expires and another instance takes it over.
        assert await leases.acquire(store, "purge", "b", TTL, T0 + TTL)
        with pytest.raises(LeaseLostError):
            async with store.transaction() as session:
                session.add(AuditEvent(actor="a", action="fenced_work", detail={}))
                await session.flush()
                await held.check(session)
        assert held.lost
    async with store.read() as session:
        count = select(sa.func.count()).where(AuditEvent.action == "fenced_work")
        assert (await session.exec(count)).one() == 1
    # The lost lease is not released on exit: it is b's now.
    owner = await leases.current(store, "purge")
    assert owner is not None and owner.owner == "b"


async def test_the_fence_extends_the_lease(store: Store) -> None:
    clock = [T0]
    held = HeldLease(store, "purge", "a", TTL, clock=lambda: clock[0])
    async with held:
        clock[0] = T0 + timedelta(minutes=9)
        async with store.transaction() as session:
            await held.check(session)
        assert not await leases.acquire(store, "purge", "b", TTL, T0 + timedelta(minutes=15))
