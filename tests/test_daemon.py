"""The daemon as systemd sees it: a real `bridge run` process and a notify socket we own."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.daemon import Liveness


def bridge_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bridge.cli", *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(path: Path, db: Path, level: str = "INFO", port: int | None = None) -> None:
    port = port or free_port()
    path.write_text(
        f'[log]\nlevel = "{level}"\n\n[store]\nurl = "sqlite:///{db}"\n\n'
        f"[inbound.smtp]\nport = {port}\n"
    )


class NotifySocket:
    """The datagram socket systemd would listen on, in a short path (108-byte limit)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="bn", dir="/tmp")
        self.path = os.path.join(self.dir, "n")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.received: list[str] = []

    def wait_for(self, needle: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.received.append(data)
            if needle in data.splitlines():
                return data
        raise AssertionError(f"no {needle!r} within {timeout}s; got {self.received}")

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


@pytest.fixture
def migrated(tmp_path: Path) -> Path:
    cfg = tmp_path / "bridge.toml"
    write_config(cfg, tmp_path / "store.sqlite3")
    done = subprocess.run(
        bridge_cmd("-c", str(cfg), "db", "upgrade"), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return cfg


def start(cfg: Path, notify: NotifySocket, **extra_env: str) -> subprocess.Popen[str]:
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, **extra_env}
    env.pop("WATCHDOG_PID", None)
    return subprocess.Popen(
        bridge_cmd("-c", str(cfg), "run"), env=env, stderr=subprocess.PIPE, text=True
    )


def test_run_reports_ready_feeds_watchdog_and_exits_zero_on_sigterm(
    migrated: Path, notify: NotifySocket
) -> None:
    proc = start(migrated, notify, WATCHDOG_USEC="300000")
    try:
        notify.wait_for("READY=1")
        notify.wait_for("WATCHDOG=1")
        notify.wait_for("WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        _, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "bridge stopped" in stderr


def test_status_line_shows_queue_depths(migrated: Path, notify: NotifySocket) -> None:
    proc = start(migrated, notify)
    try:
        notify.wait_for("READY=1")
        deadline = time.monotonic() + 20
        while not any("outbox pending=" in m for m in notify.received):
            assert time.monotonic() < deadline, notify.received
            notify.sock.settimeout(1)
            with contextlib.suppress(TimeoutError):
                notify.received.append(notify.sock.recv(4096).decode())
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0


def test_sighup_applies_a_new_log_level_without_restart(
    migrated: Path, notify: NotifySocket, tmp_path: Path
) -> None:
    proc = start(migrated, notify)
    try:
        notify.wait_for("READY=1")
        write_config(migrated, tmp_path / "store.sqlite3", level="WARNING")
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "reloaded" not in stderr  # logged at INFO, after the level became WARNING
    assert "bridge started" in stderr
    assert "bridge stopped" not in stderr  # INFO lines stop once WARNING applies


def test_sighup_with_a_broken_config_keeps_running(migrated: Path, notify: NotifySocket) -> None:
    proc = start(migrated, notify)
    try:
        notify.wait_for("READY=1")
        migrated.write_text("[log]\nlevel = 42\n")
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("READY=1")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "reload refused" in stderr
    assert "log.level" in stderr


def test_run_on_an_unmigrated_store_fails_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bridge.toml"
    write_config(cfg, tmp_path / "empty.sqlite3")
    done = subprocess.run(bridge_cmd("-c", str(cfg), "run"), capture_output=True, text=True)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "bridge db upgrade" in lines[0]


def test_a_taken_port_is_one_line_and_a_failed_start(migrated: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        write_config(migrated, tmp_path / "store.sqlite3", port=taken.getsockname()[1])
        done = subprocess.run(
            bridge_cmd("-c", str(migrated), "run"), capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("bridge:")]
    assert len(lines) == 1, done.stderr
    assert "cannot start the inbound SMTP listener" in lines[0]


def test_watchdog_names_loops_that_stopped_beating() -> None:
    now = [100.0]
    liveness = Liveness(clock=lambda: now[0])
    liveness.beat("inbound")
    liveness.beat("outbound")
    now[0] = 105.0
    liveness.beat("outbound")
    assert liveness.stale(max_age=3.0) == ["inbound"]
    liveness.beat("inbound")
    assert liveness.stale(max_age=3.0) == []


def test_a_single_sqlite_instance_keeps_the_token_key_it_generates(
    migrated: Path, notify: NotifySocket, tmp_path: Path
) -> None:
    key = tmp_path / "token.secret"
    for _ in range(2):
        proc = start(migrated, notify)
        try:
            notify.wait_for("READY=1")
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=20)
        finally:
            proc.kill()
        assert proc.returncode == 0
        if _ == 0:
            first = key.read_bytes()
            assert len(first) >= 32
            assert key.stat().st_mode & 0o777 == 0o600
    assert key.read_bytes() == first, "a restart must not change the key (tokens would break)"


def test_instances_on_postgresql_refuse_to_start_without_a_shared_token_key(
    postgres_run_url: str | None, tmp_path: Path
) -> None:
    if postgres_run_url is None:
        pytest.skip("needs BRIDGE_TEST_DATABASE_URL")
    cfg = tmp_path / "bridge.toml"
    cfg.write_text(f'[store]\nurl = "{postgres_run_url}"\n\n[inbound.smtp]\nport = {free_port()}\n')
    env = {k: v for k, v in os.environ.items() if k != "BRIDGE_TOKEN_SECRET"}
    assert subprocess.run(bridge_cmd("-c", str(cfg), "db", "upgrade"), env=env).returncode == 0
    done = subprocess.run(
        bridge_cmd("-c", str(cfg), "run"), capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 1
    assert "tokens.secret is not set" in done.stderr


def test_health_endpoint_answers_when_enabled(
    migrated: Path, notify: NotifySocket, tmp_path: Path
) -> None:
    import json
    import urllib.request

    port = free_port()
    write_config(migrated, tmp_path / "store.sqlite3")
    with migrated.open("a") as cfg:
        cfg.write(f"\n[health]\nenabled = true\nport = {port}\n")
    proc = start(migrated, notify)
    try:
        notify.wait_for("READY=1")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            status, body = answer.status, json.loads(answer.read())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert status == 200, body
    assert "bridge_outbox_depth" in metrics
