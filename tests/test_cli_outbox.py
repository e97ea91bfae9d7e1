"""`bridge outbox`, `bridge outbox retry`, `bridge send-test` as an operator runs them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from bridge.portal import Portal
from bridge.store.engine import Store
from bridge.store.migrate import upgrade
from bridge.store.models import Outbox, OutboxStatus

ADDRESS = "someone@client.example"


def bridge(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", "-c", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def seed(url: str) -> tuple[int, int]:
    await upgrade(url)
    async with Store(url) as store:
        portal = Portal(store)
        org = await portal.create_organization("P", "https://p.example", "reply.p.example")
        client = await portal.add_client(org, "C", [ADDRESS])
        async with store.transaction() as session:
            failed = Outbox(organization_id=org, recipient_id=client, status="failed", attempts=3)
            pending = Outbox(organization_id=org, recipient_id=client)
            session.add_all([failed, pending])
            await session.flush()
            assert failed.id is not None and pending.id is not None
            return failed.id, pending.id


async def status_of(url: str, row_id: int) -> str:
    async with Store(url) as store, store.read() as session:
        row = await session.get(Outbox, row_id)
        assert row is not None
        return row.status


def test_outbox_lists_retries_and_shows_no_addresses(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'[store]\nurl = "{url}"\n\n[outbound]\nfile_dir = "{tmp_path / "out"}"\n')
    failed, pending = asyncio.run(seed(url))

    listing = bridge(cfg, "outbox")
    assert listing.returncode == 0, listing.stderr
    assert f"{failed:>8}" in listing.stdout and f"{pending:>8}" in listing.stdout
    assert ADDRESS not in listing.stdout + listing.stderr

    only_failed = bridge(cfg, "outbox", "--status", "failed")
    assert f"{failed:>8}" in only_failed.stdout and f"{pending:>8}" not in only_failed.stdout
    assert bridge(cfg, "outbox", "--status", "lost").returncode == 2

    assert bridge(cfg, "outbox", "retry", str(failed)).returncode == 0
    assert asyncio.run(status_of(url, failed)) == OutboxStatus.PENDING.value
    assert bridge(cfg, "outbox", "retry", "999999").returncode == 1


def test_send_test_goes_through_the_configured_transport(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'[outbound]\ntransport = "file"\nfile_dir = "{out}"\n')
    done = bridge(cfg, "send-test", "--to", ADDRESS)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("PASS")
    written = list(out.glob("*.eml"))
    assert len(written) == 1
    assert ADDRESS in written[0].read_text()
