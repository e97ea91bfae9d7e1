"""The systemd unit: the settings the issue asks for, and its offline security exposure."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "bridge.service"
MAX_EXPOSURE = 1.5
EXPOSURE = re.compile(r"Overall exposure level for bridge\.service:\s*(\d+(?:\.\d+)?)")


def directives(text: str) -> dict[str, list[str]]:
    """`Key=value` lines of the unit (comments skipped), every value of repeated keys."""
    found: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture(scope="module")
def unit() -> dict[str, list[str]]:
    return directives(UNIT.read_text())


def test_offline_security_exposure_is_at_most_one_point_five() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    done = subprocess.run(
        [tool, "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = EXPOSURE.search(done.stdout + done.stderr)
    assert match is not None, f"no exposure line (rc={done.returncode}):\n{done.stderr}"
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}"


def test_unit_is_a_notify_service_with_a_watchdog(unit: dict[str, list[str]]) -> None:
    assert unit.get("Type") == ["notify"]
    assert unit.get("Restart") == ["on-failure"]
    watchdog = unit.get("WatchdogSec", [])
    assert len(watchdog) == 1
    assert re.fullmatch(r"[1-9]\d*(s|sec|min)?", watchdog[0]), watchdog


def test_reload_sends_sighup_to_the_main_process(unit: dict[str, list[str]]) -> None:
    reload = unit.get("ExecReload", [])
    assert len(reload) == 1
    assert "HUP" in reload[0]
    assert "$MAINPID" in reload[0]


def test_unit_runs_unprivileged_with_its_own_directories(unit: dict[str, list[str]]) -> None:
    user = unit.get("User", [])
    dynamic = unit.get("DynamicUser", [])
    assert (user and user[0] not in ("root", "0")) or dynamic == ["yes"], (user, dynamic)
    assert unit.get("StateDirectory") == ["bridge"]
    assert unit.get("ConfigurationDirectory") == ["bridge"]


def test_unit_takes_secrets_through_load_credential() -> None:
    # The credential lines may ship commented out (the admin names their own files),
    # but the unit must show how: LoadCredential= or LoadCredentialEncrypted= name:path.
    text = UNIT.read_text()
    lines = re.findall(r"^#?\s*LoadCredential(?:Encrypted)?=(\S+):(\S+)$", text, re.MULTILINE)
    assert lines, "no LoadCredential=/LoadCredentialEncrypted= line in the unit"
    assert all(name and path.startswith("/") for name, path in lines), lines
