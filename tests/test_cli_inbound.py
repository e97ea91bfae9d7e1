"""`bridge parse` and `bridge inbound list|show|retry`, as an operator runs them.

The commands are driven through their own argument parser (`register`), with
settings loaded from a real TOML file, against a real store for `inbound`.
What must never be printed without `--show-content`: addresses, names,
subjects, bodies, attachment names.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlmodel import col, select, update

from bridge import config
from bridge.commands import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Context
from bridge.commands import inbound as inbound_commands
from bridge.inbound.receipt import store_raw
from bridge.policy.tokens import issue_token, reply_address
from bridge.store.engine import Store
from bridge.store.models import InboundEmail, InboundStatus, InboundVia

SECRET = "cli-tests-secret-0123456789abcdef"
NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
PRIVATE = ("Jane Client", "jane@home.example", "Appointment", "Tuesday", "scan.pdf")


def email_file(tmp_path: Path, *, to: str, text: str, name: str = "reply.eml") -> Path:
    msg = EmailMessage()
    msg["From"] = "Jane Client <jane@home.example>"
    msg["To"] = to
    msg["Subject"] = "Re: Appointment"
    msg.set_content(text)
    msg.add_attachment(b"%PDF-1.4\n", maintype="application", subtype="pdf", filename="scan.pdf")
    path = tmp_path / name
    path.write_bytes(msg.as_bytes())
    return path


def settings_for(tmp_path: Path, store_url: str | None = None) -> config.Settings:
    cfg = tmp_path / "bridge.toml"
    lines = [f'[tokens]\nsecret = "{SECRET}"\n']
    if store_url is not None:
        lines.append(f'[store]\nurl = "{store_url}"\n')
    cfg.write_text("".join(lines))
    return config.load(cfg, env={})


async def run(
    capsys: pytest.CaptureFixture[str], settings: config.Settings, *argv: str
) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="bridge")
    common = argparse.ArgumentParser(add_help=False)
    sub = parser.add_subparsers(dest="command", required=True)
    inbound_commands.register(sub, common)
    args = parser.parse_args(argv)
    code = await args.handler(args, Context(settings, None, {}))
    out, err = capsys.readouterr()
    return code, out, err


async def test_parse_shows_the_token_hash_and_how_the_reply_was_read_but_no_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issued = issue_token(SECRET.encode())
    to = reply_address("reply+{token}", issued.token, "replies.example.org")
    path = email_file(tmp_path, to=to, text="Tuesday works.\n\n> Shall we move Tuesday?\n")

    code, out, err = await run(capsys, settings_for(tmp_path), "parse", str(path))

    assert (code, err) == (EXIT_OK, "")
    assert f"token: {issued.token_hash[:12]}" in out
    assert "classification: human (human)" in out
    assert "reply: from text part, 14 characters, 1 lines, trimmed" in out
    assert "attachments: 1 (application/pdf 9 bytes)" in out
    assert issued.token not in out
    for private in PRIVATE:
        assert private not in out


async def test_parse_reply_only_prints_exactly_the_text_that_would_be_filed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        "Tuesday works.\nSee you.\n\n"
        "On Sun, Mar 1, 2026 at 9:00 AM Practice <p@x.example> wrote:\n> Shall we?\n"
    )
    path = email_file(tmp_path, to="someone@example.org", text=text)
    # The embedded defaults: no config file, no store, no token key.
    defaults = config.load(None, env={})

    code, out, err = await run(capsys, defaults, "parse", "--reply-only", str(path))

    assert (code, out, err) == (EXIT_OK, "Tuesday works.\nSee you.\n", "")


async def test_parse_of_an_unreadable_or_malformed_file_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(tmp_path)
    deep = tmp_path / "deep.eml"
    deep.write_bytes(
        b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
        + b"".join(
            b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
            for i in range(3000)
        )
    )

    missing = await run(capsys, settings, "parse", str(tmp_path / "nope.eml"))
    malformed = await run(capsys, settings, "parse", "--reply-only", str(deep))

    assert missing[0] == EXIT_USAGE and "nope.eml" in missing[2]
    assert malformed == (EXIT_FAILURE, "", "malformed: too_deep\n")


@pytest.fixture
async def rows(store: Store) -> tuple[int, int]:
    """A filed and a held row (statuses set directly: the pipeline is tested elsewhere)."""
    msg = EmailMessage()
    msg["From"] = "Jane Client <jane@home.example>"
    msg["Subject"] = "Appointment"
    msg.set_content("Tuesday is fine.")
    async with store.transaction() as session:
        filed, held = [
            (
                await store_raw(
                    session,
                    msg.as_bytes() + str(n).encode(),
                    via=InboundVia.SMTP,
                    envelope_sender="jane@home.example",
                    envelope_recipients=["reply+x@replies.example.org"],
                    now=NOW,
                )
            )[0]
            for n in range(2)
        ]
        for row_id, status, reason in ((filed, "filed", None), (held, "held", "sender_mismatch")):
            await session.exec(
                update(InboundEmail)
                .where(col(InboundEmail.id) == row_id)
                .values(status=status, reason=reason, attempts=1, processed_at=NOW)
            )
    return filed, held


async def test_inbound_list_and_show_give_ids_and_codes_only(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    store: Store,
    database_url: str,
    rows: tuple[int, int],
) -> None:
    filed, held = rows
    settings = settings_for(tmp_path, database_url)

    listed = await run(capsys, settings, "inbound", "list")
    only_held = await run(capsys, settings, "inbound", "list", "--status", "held")
    shown = await run(capsys, settings, "inbound", "show", str(held))

    assert listed[0] == EXIT_OK
    assert [line.split()[:3] for line in listed[1].splitlines()[1:]] == [
        [str(held), "held", "sender_mismatch"],
        [str(filed), "filed", "-"],
    ]
    assert [line.split()[0] for line in only_held[1].splitlines()[1:]] == [str(held)]
    assert shown[0] == EXIT_OK
    assert f"id: {held}" in shown[1] and "status: held (sender_mismatch)" in shown[1]
    for output in (listed[1], shown[1]):
        for private in PRIVATE:
            assert private not in output


async def test_inbound_show_content_prints_the_envelope_and_the_raw_email(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    store: Store,
    database_url: str,
    rows: tuple[int, int],
) -> None:
    _, held = rows
    code, out, _ = await run(
        capsys, settings_for(tmp_path, database_url), "inbound", "show", str(held), "--show-content"
    )

    assert code == EXIT_OK
    assert "envelope sender: jane@home.example" in out
    assert "Tuesday is fine." in out


async def test_inbound_retry_puts_a_held_row_back_in_line_but_never_a_filed_one(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    store: Store,
    database_url: str,
    rows: tuple[int, int],
) -> None:
    filed, held = rows
    settings = settings_for(tmp_path, database_url)

    again = await run(capsys, settings, "inbound", "retry", str(held))
    refused = await run(capsys, settings, "inbound", "retry", str(filed))
    unknown = await run(capsys, settings, "inbound", "show", "999999")

    assert again[0] == EXIT_OK and refused[0] == EXIT_FAILURE and unknown[0] == EXIT_FAILURE
    async with store.read() as session:
        row = (await session.exec(select(InboundEmail).where(col(InboundEmail.id) == held))).one()
    assert (row.status, row.reason, row.attempts) == (InboundStatus.RECEIVED.value, None, 0)
