"""The hourly cap: at most `outbound.hourly_cap` emails to one destination per hour.

A destination is a participant (their `recipient_id`), or, for a notice to an
address that belongs to no participant, that address in lower case. The
sender reads the recent load of a claimed batch's destinations once
(`HourlyLoad.read`) and then admits its rows one by one; a row over the cap
goes back to `pending`, due when the oldest email counted against it leaves
the hour. Meanwhile new messages coalesce into it (the dispatcher's rule), so
overflow is delayed and merged, never dropped.

This module only counts. It does not claim rows, change them or log: the
sender does, inside the claim's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bridge.store.models import Outbox, OutboxStatus

HOUR = timedelta(hours=1)

Destination = int | str
"""Whom the cap counts: a participant id, or (notices only) a lower-cased address."""


def destination(row: Outbox) -> Destination:
    return _key(row.recipient_id, (row.to_address or "").lower())


@dataclass
class HourlyLoad:
    """Per destination, when each email of the last hour left (in-flight ones count as now)."""

    cap: int
    times: dict[Destination, list[datetime]] = field(default_factory=dict)

    @classmethod
    async def read(
        cls, session: AsyncSession, rows: Iterable[Outbox], now: datetime, *, cap: int
    ) -> HourlyLoad:
        """The load of the destinations of `rows`, as the store has it at `now`.

        In flight means `sending` under a live lease (another instance's, as ours
        were released), so that two instances together stay near the cap.
        """
        wanted = {destination(row) for row in rows}
        people = sorted(d for d in wanted if isinstance(d, int))
        addresses = sorted(d for d in wanted if isinstance(d, str))
        to_address = sa.func.lower(col(Outbox.to_address))
        of_them = sa.or_(col(Outbox.recipient_id).in_(people), to_address.in_(addresses))
        sent = select(Outbox.recipient_id, to_address, Outbox.sent_at).where(
            of_them,
            col(Outbox.status) == OutboxStatus.SENT.value,
            col(Outbox.sent_at) > now - HOUR,
        )
        flying = select(Outbox.recipient_id, to_address).where(
            of_them,
            col(Outbox.status) == OutboxStatus.SENDING.value,
            col(Outbox.lease_expires_at) >= now,
        )
        load = cls(cap)
        for recipient_id, address, sent_at in await session.exec(sent):
            if sent_at is not None:
                load.times.setdefault(_key(recipient_id, address), []).append(sent_at)
        for recipient_id, address in await session.exec(flying):
            load.times.setdefault(_key(recipient_id, address), []).append(now)
        return load

    def admit(self, row: Outbox, now: datetime) -> datetime | None:
        """None, and `row` counts from now on, if it fits; else when room frees up."""
        times = self.times.setdefault(destination(row), [])
        if len(times) >= self.cap:
            return sorted(times)[len(times) - self.cap] + HOUR
        times.append(now)  # counts towards the cap for the rest of the batch
        return None


def _key(recipient_id: int | None, address: str | None) -> Destination:
    return recipient_id if recipient_id is not None else (address or "")
