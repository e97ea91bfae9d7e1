"""The `bridge` command as an operator meets it: exit codes and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def bridge(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args], capture_output=True, text=True, cwd=cwd
    )


def test_help_lists_every_command() -> None:
    done = bridge("--help")
    assert done.returncode == 0
    for command in ("run", "check-config", "db"):
        assert command in done.stdout


def test_example_config_passes_check_without_connecting() -> None:
    done = bridge("check-config", "--no-connect", "-c", str(REPO / "config.example.toml"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("PASS")


@pytest.mark.parametrize(
    ("toml", "key", "value"),
    [
        ("[outbound.smtp]\nport = 70000\n", "outbound.smtp.port", "70000"),
        ("[store]\nurl = 'mysql://x/y'\n", "store.url", "mysql://x/y"),
        ("[log]\nlevel = 'LOUD'\n", "log.level", "LOUD"),
        ("[outbound]\ntransprot = 'smtp'\n", "outbound.transprot", "smtp"),
    ],
)
def test_bad_config_is_one_line_naming_file_key_value_and_exits_2(
    tmp_path: Path, toml: str, key: str, value: str
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    done = bridge("-c", str(cfg), "check-config", "--no-connect")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(cfg) in lines[0] and key in lines[0] and value in lines[0]


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    done = bridge("-c", str(tmp_path / "nope.toml"), "check-config", "--no-connect")
    assert done.returncode == 2
    assert "nope.toml" in done.stderr


def test_db_check_fails_before_upgrade_and_passes_after(tmp_path: Path) -> None:
    cfg = tmp_path / "bridge.toml"
    db = tmp_path / "store.sqlite3"
    cfg.write_text(f'[store]\nurl = "sqlite:///{db}"\n')
    before = bridge("-c", str(cfg), "db", "check")
    assert before.returncode == 1
    assert "bridge db upgrade" in before.stderr
    assert not db.exists(), "a check must not create the database"
    assert bridge("-c", str(cfg), "db", "upgrade").returncode == 0
    after = bridge("-c", str(cfg), "db", "check")
    assert after.returncode == 0, after.stdout + after.stderr
    connect = bridge("-c", str(cfg), "check-config")
    assert connect.returncode == 0
    assert "PASS  store" in connect.stdout


def test_embedded_defaults_need_no_config_file(tmp_path: Path) -> None:
    done = bridge("db", "upgrade", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "var" / "bridge.sqlite3").exists()
