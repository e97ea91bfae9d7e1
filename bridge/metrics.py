"""Every metric bridge exports, on a registry of its own, and the gauges read from the store.

`Metrics` is instantiated once per daemon (tests make as many as they like):
its `CollectorRegistry` is not prometheus-client's global one, so two daemons
or two tests in one process never share a series. Components count events
through its methods (`notification_sent`, `inbound_refused`, ...), never
through the raw prometheus objects, because the methods are where label
values are checked: a label value is a member of a closed set (an enum of the
store, a reason code) or it becomes `other`. Ids, addresses, subjects and any
other free text can therefore never reach a label, however a caller errs.

`refresh_gauges` reads queue depths and oldest ages from the store with two
aggregate queries. This module does not serve anything (that is
`bridge.health`), does not decide when to count (the components do) and
never reads content columns.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from sqlmodel import col, select

from bridge.store.engine import Store
from bridge.store.models import (
    InboundEmail,
    InboundStatus,
    InboundVia,
    NotificationMode,
    Outbox,
    OutboxKind,
    OutboxStatus,
)

# The text format generate_latest() writes; our names are all legacy-valid.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

OTHER = "other"
# What an open label value (a reason code, a loop name) may look like: no digits (so no
# ids), no spaces, dots or @ (so no subjects, names or addresses).
_LABEL_VALUE = re.compile(r"[a-z_]{1,40}")
# Distinct values an open label may take before further new ones become `other`:
# a caller passing something variable by mistake must not grow the series without bound.
MAX_OPEN_VALUES = 50

# Statuses counted as queue depth: work still to do, or rows that need an operator.
# Final successes (sent, coalesced, filed, dropped) only grow and are not queues.
OUTBOX_DEPTH_STATUSES: tuple[str, ...] = (
    OutboxStatus.PENDING.value,
    OutboxStatus.SENDING.value,
    OutboxStatus.FAILED.value,
)
INBOUND_DEPTH_STATUSES: tuple[str, ...] = (
    InboundStatus.RECEIVED.value,
    InboundStatus.HELD.value,
    InboundStatus.PARKED.value,
)
_OUTBOX_WAITING = frozenset({OutboxStatus.PENDING.value, OutboxStatus.SENDING.value})

PURGE_KINDS = frozenset({"threads", "messages", "attachments", "blobs"})
DIRECTIONS = frozenset({"inbound", "outbound"})
_MODES = frozenset(m.value for m in NotificationMode)
_KINDS = frozenset(k.value for k in OutboxKind)
_VIAS = frozenset(v.value for v in InboundVia)
# `received` is not an outcome of processing; the rest are.
_PROCESSED = frozenset(s.value for s in InboundStatus) - {InboundStatus.RECEIVED.value}

# From a quick local delivery (50 ms) to a message that waited an hour for a relay.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def label_value(value: object, allowed: Collection[str] | None = None) -> str:
    """`value` as a label value when it is one of `allowed` (or, with no set given,
    a short lower-case code); `other` for anything else."""
    if isinstance(value, enum.Enum):
        value = value.value
    if not isinstance(value, str):
        return OTHER
    if allowed is not None:
        return value if value in allowed else OTHER
    return value if _LABEL_VALUE.fullmatch(value) else OTHER


class _OpenLabel:
    """A label without a closed set: codes pass the pattern, up to `MAX_OPEN_VALUES` of them."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, value: object) -> str:
        text = label_value(value)
        if text in self._seen:
            return text
        if len(self._seen) >= MAX_OPEN_VALUES:
            return OTHER
        self._seen.add(text)
        return text


@dataclass(frozen=True)
class QueueSnapshot:
    """Depths by status and oldest ages (seconds; 0 when the queue is empty)."""

    outbox: Mapping[str, int]
    inbound: Mapping[str, int]
    outbox_oldest_pending_seconds: float
    inbound_oldest_received_seconds: float

    def status_line(self) -> str:
        """A short summary, e.g. for systemd's `STATUS=`."""
        outbox = " ".join(f"{k}={v}" for k, v in self.outbox.items())
        inbound = " ".join(f"{k}={v}" for k, v in self.inbound.items())
        return f"outbox {outbox}; inbound {inbound}"


class Metrics:
    """One daemon's metrics. Every method is cheap and never raises on a bad label."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._reason_failed = _OpenLabel()
        self._reason_refused = _OpenLabel()
        self._reason_processed = _OpenLabel()
        self._loop = _OpenLabel()

        self._sent = Counter(
            "bridge_notifications_sent_total",
            "Emails the relay accepted, by notification mode and outbox kind.",
            ("mode", "kind"),
            registry=registry,
        )
        self._failed = Counter(
            "bridge_notifications_failed_total",
            "Outbox rows given up on for good, by mode and reason code.",
            ("mode", "reason"),
            registry=registry,
        )
        self._accepted = Counter(
            "bridge_inbound_accepted_total",
            "Inbound emails committed to the store and acknowledged, by receiver.",
            ("via",),
            registry=registry,
        )
        self._refused = Counter(
            "bridge_inbound_refused_total",
            "Inbound recipients refused at RCPT time, by reason code.",
            ("reason",),
            registry=registry,
        )
        self._processed = Counter(
            "bridge_inbound_processed_total",
            "Inbound emails the pipeline finished with, by outcome and reason code.",
            ("status", "reason"),
            registry=registry,
        )
        self._purged = Counter(
            "bridge_purged_rows_total",
            "Rows and blobs permanently deleted by the retention jobs.",
            ("kind",),
            registry=registry,
        )
        self._outbox_depth = Gauge(
            "bridge_outbox_depth",
            "Outbox rows by status (pending, sending, failed).",
            ("status",),
            registry=registry,
        )
        self._inbound_depth = Gauge(
            "bridge_inbound_depth",
            "Inbound emails by status (received, held, parked).",
            ("status",),
            registry=registry,
        )
        self._outbox_oldest = Gauge(
            "bridge_outbox_oldest_pending_seconds",
            "Age of the oldest outbox row not yet sent (pending or sending); 0 when none.",
            registry=registry,
        )
        self._inbound_oldest = Gauge(
            "bridge_inbound_oldest_received_seconds",
            "Age of the oldest inbound email not yet processed; 0 when none.",
            registry=registry,
        )
        self._heartbeat_age = Gauge(
            "bridge_loop_heartbeat_age_seconds",
            "Seconds since each long-running loop last beat.",
            ("loop",),
            registry=registry,
        )
        self._store_up = Gauge(
            "bridge_store_up",
            "1 when the last read of the queue gauges from the store succeeded, else 0.",
            registry=registry,
        )
        self._latency = Histogram(
            "bridge_e2e_latency_seconds",
            "Inbound: received to filed. Outbound: message created to relay accepted.",
            ("direction",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # Known series exist from the start, so a rate() or an alert sees 0, not nothing.
        for mode in sorted(_MODES):
            for kind in sorted(_KINDS):
                self._sent.labels(mode=mode, kind=kind)
        for via in sorted(_VIAS):
            self._accepted.labels(via=via)
        for kind in sorted(PURGE_KINDS):
            self._purged.labels(kind=kind)
        for direction in sorted(DIRECTIONS):
            self._latency.labels(direction=direction)
        for status in OUTBOX_DEPTH_STATUSES:
            self._outbox_depth.labels(status=status)
        for status in INBOUND_DEPTH_STATUSES:
            self._inbound_depth.labels(status=status)

    # --- events (called by the components) ----------------------------------------------

    def notification_sent(self, mode: str, kind: str) -> None:
        self._sent.labels(mode=label_value(mode, _MODES), kind=label_value(kind, _KINDS)).inc()

    def notification_failed(self, mode: str, reason: str | None) -> None:
        self._failed.labels(
            mode=label_value(mode, _MODES),
            reason=self._reason_failed("permanent" if reason is None else reason),
        ).inc()

    def inbound_accepted(self, via: str) -> None:
        self._accepted.labels(via=label_value(via, _VIAS)).inc()

    def inbound_refused(self, reason: str) -> None:
        self._refused.labels(reason=self._reason_refused(reason)).inc()

    def inbound_processed(self, status: str, reason: str | None = None) -> None:
        self._processed.labels(
            status=label_value(status, _PROCESSED),
            reason=self._reason_processed("none" if reason is None else reason),
        ).inc()

    def purged(self, kind: str, rows: int) -> None:
        if rows > 0:
            self._purged.labels(kind=label_value(kind, PURGE_KINDS)).inc(rows)

    def observe_latency(self, direction: str, start: datetime, end: datetime) -> None:
        """One end-to-end delay; `start`/`end` as read from the store (naive means UTC)."""
        seconds = (_aware(end) - _aware(start)).total_seconds()
        # A clock step between instances must not record a negative delay.
        self._latency.labels(direction=label_value(direction, DIRECTIONS)).observe(
            max(0.0, seconds)
        )

    # --- state (set when scraped) ---------------------------------------------------------

    def set_queues(self, snapshot: QueueSnapshot) -> None:
        for status in OUTBOX_DEPTH_STATUSES:
            self._outbox_depth.labels(status=status).set(snapshot.outbox.get(status, 0))
        for status in INBOUND_DEPTH_STATUSES:
            self._inbound_depth.labels(status=status).set(snapshot.inbound.get(status, 0))
        self._outbox_oldest.set(snapshot.outbox_oldest_pending_seconds)
        self._inbound_oldest.set(snapshot.inbound_oldest_received_seconds)

    def set_store_up(self, up: bool) -> None:
        self._store_up.set(1 if up else 0)

    def set_loop_ages(self, ages: Mapping[str, float]) -> None:
        for name, age in ages.items():
            self._heartbeat_age.labels(loop=self._loop(name)).set(max(0.0, age))

    def exposition(self) -> bytes:
        """The registry in Prometheus text format (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


async def refresh_gauges(store: Store, metrics: Metrics, now: datetime) -> QueueSnapshot:
    """Read depths and oldest ages from the store, set the gauges, return what was read.

    Two grouped aggregate queries in one read session; store errors propagate
    (the caller decides what a failed refresh means).
    """
    outbox_query = (
        select(col(Outbox.status), sa.func.count(), sa.func.min(col(Outbox.created_at)))
        .where(col(Outbox.status).in_(OUTBOX_DEPTH_STATUSES))
        .group_by(col(Outbox.status))
    )
    inbound_query = (
        select(
            col(InboundEmail.status), sa.func.count(), sa.func.min(col(InboundEmail.received_at))
        )
        .where(col(InboundEmail.status).in_(INBOUND_DEPTH_STATUSES))
        .group_by(col(InboundEmail.status))
    )
    async with store.read() as session:
        outbox_rows = list(await session.exec(outbox_query))
        inbound_rows = list(await session.exec(inbound_query))
    outbox = dict.fromkeys(OUTBOX_DEPTH_STATUSES, 0)
    outbox.update((status, count) for status, count, _ in outbox_rows)
    inbound = dict.fromkeys(INBOUND_DEPTH_STATUSES, 0)
    inbound.update((status, count) for status, count, _ in inbound_rows)
    snapshot = QueueSnapshot(
        outbox=outbox,
        inbound=inbound,
        outbox_oldest_pending_seconds=_age(
            now, (oldest for status, _, oldest in outbox_rows if status in _OUTBOX_WAITING)
        ),
        inbound_oldest_received_seconds=_age(
            now,
            (
                oldest
                for status, _, oldest in inbound_rows
                if status == InboundStatus.RECEIVED.value
            ),
        ),
    )
    metrics.set_queues(snapshot)
    return snapshot


def _aware(moment: datetime) -> datetime:
    """Timestamps are stored in UTC; SQLite hands them back without a zone."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _age(now: datetime, moments: Iterable[datetime | None]) -> float:
    present = [_aware(m) for m in moments if m is not None]
    if not present:
        return 0.0
    return max(0.0, (_aware(now) - min(present)).total_seconds())
