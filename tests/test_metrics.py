"""`bridge.metrics`: label values stay closed sets, counters count, gauges match the store.

The gauge tests read a real store (SQLite, and PostgreSQL when configured)
seeded with rows of every status; the clock is a fixed `NOW`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import delete

from bridge.metrics import (
    MAX_OPEN_VALUES,
    OTHER,
    Metrics,
    QueueSnapshot,
    label_value,
    refresh_gauges,
)
from bridge.store.engine import Store
from bridge.store.models import (
    InboundEmail,
    InboundStatus,
    InboundVia,
    NotificationMode,
    Organization,
    Outbox,
    OutboxKind,
)

NOW = datetime(2030, 1, 2, 12, 0, tzinfo=UTC)

# Strings that stand for PHI: none of them may ever become a label value.
MARKERS = (
    "Re: therapy session with Jane Roe",
    "jane.roe@example.org",
    "Jane Roe",
    "outbox_12345",
    "42",
    "SECURE",
    "secure ",
    "reason\nwith newline",
    "a" * 41,
    "",
)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def all_label_values(metrics: Metrics) -> set[str]:
    families = text_string_to_metric_families(metrics.exposition().decode())
    return {
        value
        for family in families
        for s in family.samples
        for key, value in s.labels.items()
        if key != "le"  # histogram bucket bounds
    }


# --- label values ------------------------------------------------------------------------


@pytest.mark.parametrize("text", MARKERS)
def test_free_text_becomes_other(text: str) -> None:
    assert label_value(text) == OTHER


@pytest.mark.parametrize("value", [None, 3, b"secure", 1.5])
def test_non_strings_become_other(value: object) -> None:
    assert label_value(value) == OTHER


def test_reason_codes_pass_unchanged() -> None:
    assert label_value("sender_mismatch") == "sender_mismatch"
    assert label_value("a" * 40) == "a" * 40


def test_closed_set_admits_only_its_members_and_enum_members_give_their_value() -> None:
    modes = {"secure", "convenience"}
    assert label_value(NotificationMode.CONVENIENCE, modes) == "convenience"
    assert label_value("secure", modes) == "secure"
    assert label_value("valid_looking_code", modes) == OTHER


def test_open_label_stops_admitting_new_values_past_its_cap() -> None:
    metrics = Metrics()
    letters = "abcdefghijklmnopqrstuvwxyz"
    codes = [f"code_{letters[n // 26]}{letters[n % 26]}" for n in range(MAX_OPEN_VALUES + 5)]
    for code in codes:
        metrics.inbound_refused(code)
    reasons = {
        s.labels["reason"]
        for family in text_string_to_metric_families(metrics.exposition().decode())
        if family.name == "bridge_inbound_refused"
        for s in family.samples
        if s.name == "bridge_inbound_refused_total"
    }
    assert len(reasons) == MAX_OPEN_VALUES + 1
    assert sample(metrics, "bridge_inbound_refused_total", reason=OTHER) == 5
    # A value admitted before the cap keeps counting under its own name.
    metrics.inbound_refused(codes[0])
    assert sample(metrics, "bridge_inbound_refused_total", reason=codes[0]) == 2


def test_no_marker_reaches_any_label_whatever_the_callers_pass() -> None:
    metrics = Metrics()
    for text in MARKERS:
        metrics.notification_sent(text, text)
        metrics.notification_failed(text, text)
        metrics.inbound_accepted(text)
        metrics.inbound_refused(text)
        metrics.inbound_processed(text, text)
        metrics.purged(text, 1)
        metrics.observe_latency(text, NOW, NOW)
        metrics.set_loop_ages({text: 1.0})
    exposed = metrics.exposition().decode()
    for text in MARKERS[:4]:  # the rest are too short to search for in the whole text
        assert text not in exposed
    assert all_label_values(metrics) <= {
        "secure",
        "convenience",
        "notification",
        "invitation",
        "notice",
        "smtp",
        "lmtp",
        "imap",
        "threads",
        "messages",
        "attachments",
        "blobs",
        "inbound",
        "outbound",
        "pending",
        "sending",
        "failed",
        "received",
        "held",
        "parked",
        OTHER,
    }


# --- counters and histogram --------------------------------------------------------------


def test_known_series_exist_at_zero_before_any_event() -> None:
    metrics = Metrics()
    assert (
        sample(metrics, "bridge_notifications_sent_total", mode="secure", kind="notification") == 0
    )
    assert sample(metrics, "bridge_inbound_accepted_total", via="lmtp") == 0
    assert sample(metrics, "bridge_purged_rows_total", kind="blobs") == 0
    assert sample(metrics, "bridge_e2e_latency_seconds_count", direction="inbound") == 0
    assert sample(metrics, "bridge_outbox_depth", status="pending") == 0


def test_events_count_under_their_labels() -> None:
    metrics = Metrics()
    metrics.notification_sent(NotificationMode.CONVENIENCE, OutboxKind.NOTIFICATION)
    metrics.notification_sent("convenience", "notification")
    metrics.notification_failed("secure", "retry_horizon")
    metrics.notification_failed("secure", None)
    metrics.inbound_accepted(InboundVia.SMTP)
    metrics.inbound_refused("expired")
    metrics.inbound_processed(InboundStatus.FILED)
    metrics.inbound_processed("held", "sender_mismatch")
    metrics.inbound_processed("received", "x")
    metrics.purged("threads", 3)
    metrics.purged("messages", 0)

    assert (
        sample(metrics, "bridge_notifications_sent_total", mode="convenience", kind="notification")
        == 2
    )
    failed = "bridge_notifications_failed_total"
    assert sample(metrics, failed, mode="secure", reason="retry_horizon") == 1
    assert sample(metrics, failed, mode="secure", reason="permanent") == 1
    assert sample(metrics, "bridge_inbound_accepted_total", via="smtp") == 1
    assert sample(metrics, "bridge_inbound_refused_total", reason="expired") == 1
    processed = "bridge_inbound_processed_total"
    assert sample(metrics, processed, status="filed", reason="none") == 1
    assert sample(metrics, processed, status="held", reason="sender_mismatch") == 1
    # `received` is not an outcome of processing.
    assert sample(metrics, processed, status=OTHER, reason="x") == 1
    assert sample(metrics, "bridge_purged_rows_total", kind="threads") == 3
    assert sample(metrics, "bridge_purged_rows_total", kind="messages") == 0


def test_two_instances_do_not_share_series() -> None:
    first, second = Metrics(), Metrics()
    first.inbound_accepted("imap")
    assert sample(first, "bridge_inbound_accepted_total", via="imap") == 1
    assert sample(second, "bridge_inbound_accepted_total", via="imap") == 0


def test_latency_takes_naive_times_as_utc_and_never_goes_negative() -> None:
    metrics = Metrics()
    naive_start = (NOW - timedelta(seconds=3)).replace(tzinfo=None)
    metrics.observe_latency("inbound", naive_start, NOW)
    metrics.observe_latency("outbound", NOW, NOW - timedelta(seconds=10))
    name = "bridge_e2e_latency_seconds"
    assert sample(metrics, f"{name}_sum", direction="inbound") == pytest.approx(3.0)
    assert sample(metrics, f"{name}_bucket", direction="inbound", le="2.5") == 0
    assert sample(metrics, f"{name}_bucket", direction="inbound", le="5.0") == 1
    assert sample(metrics, f"{name}_sum", direction="outbound") == 0
    assert sample(metrics, f"{name}_bucket", direction="outbound", le="0.05") == 1


def test_buckets_span_fifty_milliseconds_to_an_hour() -> None:
    metrics = Metrics()
    metrics.observe_latency("outbound", NOW - timedelta(minutes=59), NOW)
    name = "bridge_e2e_latency_seconds_bucket"
    assert sample(metrics, name, direction="outbound", le="1800.0") == 0
    assert sample(metrics, name, direction="outbound", le="3600.0") == 1


def test_loop_ages_are_exported_per_loop() -> None:
    metrics = Metrics()
    metrics.set_loop_ages({"sender": 4.5, "dispatcher": -1.0})
    assert sample(metrics, "bridge_loop_heartbeat_age_seconds", loop="sender") == 4.5
    assert sample(metrics, "bridge_loop_heartbeat_age_seconds", loop="dispatcher") == 0


# --- gauges from the store ---------------------------------------------------------------


async def seed_queues(store: Store) -> None:
    """Outbox and inbound rows of every status, with known ages at `NOW`."""
    async with store.transaction() as session:
        org = Organization(
            display_name="Practice",
            portal_base_url="https://portal.example.org",
            reply_domain="reply.example.org",
        )
        session.add(org)
        await session.flush()
        assert org.id is not None
        for status, age in [
            ("pending", 600),
            ("pending", 60),
            ("sending", 30),
            ("failed", 5000),
            ("sent", 9000),
            ("coalesced", 9000),
        ]:
            session.add(
                Outbox(
                    organization_id=org.id,
                    to_address="someone@example.org",
                    status=status,
                    created_at=NOW - timedelta(seconds=age),
                )
            )
        for status, age in [
            ("received", 120),
            ("received", 10),
            ("held", 4000),
            ("parked", 50),
            ("filed", 9000),
            ("dropped", 9000),
        ]:
            session.add(
                InboundEmail(
                    raw=b"Subject: x\r\n\r\nx\r\n",
                    sha256="0" * 64,
                    received_via="smtp",
                    envelope_recipient="reply+t@reply.example.org",
                    status=status,
                    received_at=NOW - timedelta(seconds=age),
                )
            )


async def test_gauges_of_an_empty_store_are_zero(store: Store) -> None:
    metrics = Metrics()
    snapshot = await refresh_gauges(store, metrics, NOW)
    assert snapshot == QueueSnapshot(
        outbox={"pending": 0, "sending": 0, "failed": 0},
        inbound={"received": 0, "held": 0, "parked": 0},
        outbox_oldest_pending_seconds=0.0,
        inbound_oldest_received_seconds=0.0,
    )
    assert sample(metrics, "bridge_outbox_oldest_pending_seconds") == 0


async def test_gauges_count_rows_by_status_and_age_the_oldest_waiting_row(store: Store) -> None:
    await seed_queues(store)
    metrics = Metrics()
    snapshot = await refresh_gauges(store, metrics, NOW)

    assert dict(snapshot.outbox) == {"pending": 2, "sending": 1, "failed": 1}
    assert dict(snapshot.inbound) == {"received": 2, "held": 1, "parked": 1}
    # Failed and held rows are counted, but only waiting rows make the age.
    assert snapshot.outbox_oldest_pending_seconds == pytest.approx(600)
    assert snapshot.inbound_oldest_received_seconds == pytest.approx(120)
    assert sample(metrics, "bridge_outbox_depth", status="pending") == 2
    assert sample(metrics, "bridge_outbox_depth", status="failed") == 1
    assert sample(metrics, "bridge_inbound_depth", status="parked") == 1
    assert sample(metrics, "bridge_outbox_oldest_pending_seconds") == pytest.approx(600)
    assert sample(metrics, "bridge_inbound_oldest_received_seconds") == pytest.approx(120)
    assert snapshot.status_line() == (
        "outbox pending=2 sending=1 failed=1; inbound received=2 held=1 parked=1"
    )


async def test_gauges_fall_back_to_zero_when_the_queues_drain(store: Store) -> None:
    await seed_queues(store)
    metrics = Metrics()
    await refresh_gauges(store, metrics, NOW)
    async with store.transaction() as session:
        await session.exec(delete(Outbox))
    await refresh_gauges(store, metrics, NOW)
    assert sample(metrics, "bridge_outbox_depth", status="pending") == 0
    assert sample(metrics, "bridge_outbox_oldest_pending_seconds") == 0
    assert sample(metrics, "bridge_inbound_depth", status="received") == 2
