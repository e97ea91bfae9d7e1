"""`bridge status`, as an operator runs it, against a real store on each backend.

The command is driven through its own argument parser (`register`). Rows are
written with known timestamps relative to now, so the ages, the last purge and
the one-hour failure window are all checked; no address may be printed.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from bridge import config
from bridge.commands import EXIT_FAILURE, EXIT_OK, Context, ops
from bridge.portal import Portal
from bridge.store.engine import Store
from bridge.store.models import (
    AuditEvent,
    InboundEmail,
    InboundStatus,
    Outbox,
    OutboxStatus,
)

CLIENT_ADDRESS = "private-client@home.example"


async def run(
    capsys: pytest.CaptureFixture[str], settings: config.Settings, *argv: str
) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="bridge")
    common = argparse.ArgumentParser(add_help=False)
    sub = parser.add_subparsers(dest="command", required=True)
    ops.register(sub, common)
    args = parser.parse_args(argv)
    code = await args.handler(args, Context(settings, None, {}))
    out, err = capsys.readouterr()
    return code, out, err


def settings_for(url: str) -> config.Settings:
    return config.Settings(store=config.StoreSettings(url=url))


async def test_status_of_an_empty_store(
    store: Store, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run(capsys, settings_for(database_url), "status")
    assert (code, err) == (EXIT_OK, "")
    assert "outbox:  pending=0 sending=0 sent=0 failed=0 coalesced=0" in out
    assert "inbound: received=0 filed=0 dropped=0 held=0 parked=0" in out
    assert "oldest waiting: outbox none; inbound none" in out
    assert "last purge: never" in out
    assert "failures in the last hour: outbox 0 failed, inbound 0 parked" in out


async def test_status_shows_depths_oldest_items_last_purge_and_recent_failures(
    store: Store, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    portal = Portal(store)
    org = await portal.create_organization("Practice", "https://p.example", "r.example")
    client = await portal.add_client(org, "Client", [CLIENT_ADDRESS])

    def outbox(status: OutboxStatus, age: timedelta) -> Outbox:
        return Outbox(
            organization_id=org,
            recipient_id=client,
            status=status.value,
            created_at=now - age,
            next_attempt_at=now - age,
        )

    def inbound(status: InboundStatus, age: timedelta, processed: timedelta | None) -> InboundEmail:
        return InboundEmail(
            raw=b"Subject: x\r\n\r\nbody\r\n",
            sha256="0" * 64,
            received_via="smtp",
            envelope_sender=CLIENT_ADDRESS,
            envelope_recipient="reply+abc@r.example",
            status=status.value,
            received_at=now - age,
            processed_at=None if processed is None else now - processed,
        )

    async with store.transaction() as session:
        newer_pending = outbox(OutboxStatus.PENDING, timedelta(minutes=5))
        older_pending = outbox(OutboxStatus.PENDING, timedelta(minutes=45))
        recent_fail = outbox(OutboxStatus.FAILED, timedelta(hours=3))
        old_fail = outbox(OutboxStatus.FAILED, timedelta(hours=5))
        sent = outbox(OutboxStatus.SENT, timedelta(hours=6))
        session.add_all([newer_pending, older_pending, recent_fail, old_fail, sent])
        waiting = inbound(InboundStatus.RECEIVED, timedelta(minutes=30), None)
        parked_recent = inbound(InboundStatus.PARKED, timedelta(hours=2), timedelta(minutes=10))
        parked_old = inbound(InboundStatus.PARKED, timedelta(hours=3), timedelta(hours=2))
        filed = inbound(InboundStatus.FILED, timedelta(hours=1), timedelta(minutes=59))
        session.add_all([waiting, parked_recent, parked_old, filed])
        await session.flush()
        last_purge = AuditEvent(at=now - timedelta(hours=7), actor="test", action="purge_batch")
        session.add_all(
            [
                AuditEvent(
                    at=now - timedelta(minutes=20),
                    actor="test",
                    action=ops.OUTBOX_FAILED_ACTION,
                    outbox_id=recent_fail.id,
                ),
                AuditEvent(
                    at=now - timedelta(hours=4),
                    actor="test",
                    action=ops.OUTBOX_FAILED_ACTION,
                    outbox_id=old_fail.id,
                ),
                AuditEvent(at=now - timedelta(days=2), actor="test", action="purge_run"),
                last_purge,
                AuditEvent(at=now - timedelta(minutes=1), actor="test", action="thread_opened"),
            ]
        )
        await session.flush()

    code, out, err = await run(capsys, settings_for(database_url), "status")

    assert (code, err) == (EXIT_OK, "")
    assert "outbox:  pending=2 sending=0 sent=1 failed=2 coalesced=0" in out
    assert "inbound: received=1 filed=1 dropped=0 held=0 parked=2" in out
    assert f"oldest waiting: outbox id {older_pending.id}, 45m old;" in out
    assert f"inbound id {waiting.id}, 30m old" in out
    purge_at = (now - timedelta(hours=7)).isoformat(timespec="seconds")
    assert f"last purge: {purge_at} (purge_batch, event {last_purge.id})" in out
    assert "failures in the last hour: outbox 1 failed, inbound 1 parked" in out
    assert CLIENT_ADDRESS not in out
    assert "reply+abc" not in out


async def test_an_unreachable_store_is_one_line_and_a_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "postgresql://nobody@127.0.0.1:1/none"
    code, out, err = await run(capsys, settings_for(url), "status")
    assert code == EXIT_FAILURE
    assert out == ""
    assert err.count("\n") == 1
    assert "store unreachable" in err
