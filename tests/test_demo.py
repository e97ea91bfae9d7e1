"""`bridge demo` is the newcomer's first look: it must run the whole loop and exit 0."""

from __future__ import annotations

import email
import email.policy
import subprocess
import sys
from pathlib import Path

from bridge.demo import BODY, CLIENT, CLIENT_REPLY, CLINICIAN, SUBJECT


def test_demo_runs_the_whole_loop_and_leaves_the_emails(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    steps = [line for line in done.stdout.splitlines() if line[:2] in {f"{n}." for n in range(10)}]
    assert len(steps) == 9, done.stdout
    # The daemon's own counters saw the same loop: three sent, one accepted, one filed.
    assert "3 notifications sent, 1 reply accepted, 1 filed" in steps[-1]
    emails = sorted((tmp_path / "demo" / "outbox").glob("*.eml"))
    assert len(emails) == 3
    secure, convenience, to_clinician = (
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default) for path in emails
    )
    secure_text = secure.as_string()
    for content in (SUBJECT, BODY, CLIENT, CLINICIAN):
        assert content not in secure_text
    assert convenience["Reply-To"] is not None
    assert CLIENT_REPLY in to_clinician.get_body(("plain",)).get_content()  # type: ignore[union-attr]
