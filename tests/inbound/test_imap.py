"""The IMAP receiver against a real Dovecot and a real store (SQLite and PostgreSQL).

Mail is delivered the way it reaches a practice's mailbox: APPENDed by a plain
`imaplib` client, or written into the maildir as a local delivery agent does
(which also works while the server is down). Faults are injected in the peer: the
server drops the connection (`doveadm kick`), is killed and started again, loses
and recreates the mailbox (a new UIDVALIDITY), advertises fewer capabilities,
refuses the MOVE (its processed folder is read-only for the mail user), or
presents a certificate nobody trusts. The crash test SIGKILLs a receiver
running in its own process.

Every wait polls the store or the server with a deadline; none sleeps to
synchronise. `poll_interval_seconds` is 300 unless a test is about polling, so
only IDLE can explain mail arriving within seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from dovecot import PASSWORD, USER, Dovecot, missing
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from sqlmodel import select

from bridge.config import InboundImapSettings
from bridge.inbound._imap_wire import parse_bodies, uid_set
from bridge.inbound.imap import (
    UNKNOWN_RECIPIENT,
    Backoff,
    ImapReceiver,
    Recipient,
    account_key,
    choose_recipient,
)
from bridge.inbound.receipt import storable_address
from bridge.logs import PlainFormatter
from bridge.store.engine import Store
from bridge.store.models import ImapState, InboundEmail, InboundStatus, InboundVia

if TYPE_CHECKING:
    from conftest import Practice

T = TypeVar("T")
StartReceiver = Callable[..., Awaitable[ImapReceiver]]

FORMAT = "reply+{token}"
PROCESSED = "bridge-processed"
DEADLINE = 10.0
# Reconnects within a test's time budget; everything else as in production.
FAST: dict[str, Any] = {
    "backoff": Backoff(initial=0.05, maximum=0.5),
    "timeout": 5.0,
    "heartbeat_seconds": 0.5,
    "stop_grace": 1.0,
}


def message(to: str, n: int = 1, *, headers: bytes = b"", body: bytes = b"") -> bytes:
    """A reply as a mail client writes it (CRLF line ends, as IMAP hands them back)."""
    return (
        b"From: Client <client@home.example.net>\r\n"
        + (f"To: Practice <{to}>\r\n".encode() if to else b"")
        + headers
        + b"Subject: Re: Appointment\r\n"
        + f"Message-ID: <m{n}@home.example.net>\r\n".encode()
        + b"\r\n"
        + f"Tuesday is fine ({n}).\r\n".encode()
        + body
    )


def imap_settings(server: Dovecot, **changes: Any) -> InboundImapSettings:
    values: dict[str, Any] = {
        "enabled": True,
        "host": "127.0.0.1",
        "port": server.port,
        "security": "none",
        "username": USER,
        "password": SecretStr(PASSWORD),
        "processed_folder": PROCESSED,
        "poll_interval_seconds": 300.0,
    }
    values.update(changes)
    return InboundImapSettings(**values)


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    """The first truthy result of `probe`, polled until `DEADLINE` seconds have passed."""
    deadline = time.monotonic() + DEADLINE
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {DEADLINE} s waiting for {what}")
        await asyncio.sleep(0.05)


async def rows(store: Store) -> list[InboundEmail]:
    async with store.read() as session:
        return list(await session.exec(select(InboundEmail).order_by(InboundEmail.id)))


async def stored(store: Store, count: int) -> list[InboundEmail]:
    """Wait until `count` rows exist; fail if more appear."""

    async def probe() -> list[InboundEmail] | None:
        found = await rows(store)
        assert len(found) <= count, f"{len(found)} rows, expected {count}"
        return found if len(found) == count else None

    return await eventually(probe, f"{count} stored rows")


async def mailbox_holds(
    server: Dovecot, mailbox: str, count: int, *, user: str = USER
) -> dict[int, bytes]:
    """Wait until `mailbox` holds exactly `count` messages; returns them by UID."""

    async def probe() -> dict[int, bytes] | None:
        found = await asyncio.to_thread(server.messages, mailbox, user)
        return found if len(found) == count else None

    if count == 0:
        await eventually(lambda: _empty(server, mailbox, user), f"{mailbox} to be empty")
        return {}
    return await eventually(probe, f"{count} messages in {mailbox}")


async def all_moved(server: Dovecot, sent: list[bytes]) -> None:
    """Wait until INBOX is empty; then the processed folder must hold each of `sent`.

    A server killed in the middle of a MOVE may have copied a message without
    removing it; the receiver moves it again, so the processed folder may hold
    such a message twice (harmless: the store holds it once).
    """
    await mailbox_holds(server, "INBOX", 0)
    moved = await asyncio.to_thread(server.messages, PROCESSED)
    assert set(moved.values()) == set(sent)


async def _empty(server: Dovecot, mailbox: str, user: str) -> bool:
    return not await asyncio.to_thread(server.messages, mailbox, user)


async def imap_state(store: Store, settings: InboundImapSettings) -> ImapState | None:
    async with store.read() as session:
        return await session.get(ImapState, account_key(settings))


async def logged(caplog: pytest.LogCaptureFixture, text: str, count: int = 1) -> None:
    def records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith(text)]

    async def probe() -> bool:
        return len(records()) >= count

    await eventually(probe, f"{count} log records starting {text!r}")


@pytest.fixture
def servers() -> Iterator[Callable[..., Dovecot]]:
    """Start Dovecot servers (`Dovecot` options as keywords); removed at teardown."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    started: list[Dovecot] = []

    def start(**options: Any) -> Dovecot:
        server = Dovecot(**options)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.remove()


@pytest.fixture
def dovecot(servers: Callable[..., Dovecot]) -> Dovecot:
    return servers()


@pytest.fixture
async def start_receiver(store: Store) -> AsyncIterator[StartReceiver]:
    """Start receivers in the test's loop (`ImapReceiver` options as keywords)."""
    started: list[ImapReceiver] = []

    async def start(settings: InboundImapSettings, **options: Any) -> ImapReceiver:
        receiver = ImapReceiver(store, settings, address_format=FORMAT, **{**FAST, **options})
        await receiver.__aenter__()
        started.append(receiver)
        return receiver

    yield start
    for receiver in reversed(started):
        await receiver.stop()


# --- the normal path ----------------------------------------------------------------------


async def test_a_reply_is_stored_once_exactly_as_fetched_then_moved_to_the_processed_folder(
    practice: Practice, dovecot: Dovecot, start_receiver: StartReceiver
) -> None:
    address = await practice.address(practice.client_id)
    raw = message(address)
    uid = await asyncio.to_thread(dovecot.append, raw)
    settings = imap_settings(dovecot)

    await start_receiver(settings)

    (row,) = await stored(practice.store, 1)
    assert row.raw == raw
    assert row.sha256 == hashlib.sha256(raw).hexdigest()
    assert row.message_id_header == "<m1@home.example.net>"
    assert (row.received_via, row.status) == (InboundVia.IMAP.value, InboundStatus.RECEIVED.value)
    assert (row.envelope_sender, row.envelope_recipient) == (None, address)
    moved = await mailbox_holds(dovecot, PROCESSED, 1)
    assert list(moved.values()) == [raw]
    assert await asyncio.to_thread(dovecot.messages) == {}
    state = await imap_state(practice.store, settings)
    assert state is not None
    assert (state.uidvalidity, state.last_uid) == (
        await asyncio.to_thread(dovecot.uidvalidity),
        uid,
    )

    # The next pass (brought on by new mail) takes only the new message.
    second = message(address, 2)
    await asyncio.to_thread(dovecot.append, second)
    assert [r.raw for r in await stored(practice.store, 2)] == [raw, second]


async def test_idle_delivers_a_new_reply_within_seconds(
    practice: Practice,
    dovecot: Dovecot,
    start_receiver: StartReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.inbound.imap")
    address = await practice.address(practice.client_id)
    await asyncio.to_thread(dovecot.append, message(address, 1))
    await start_receiver(imap_settings(dovecot, poll_interval_seconds=300.0))
    await stored(practice.store, 1)

    # The first pass is over; the next poll would be in 300 s. Only IDLE explains a row now.
    await asyncio.to_thread(dovecot.append, message(address, 2))

    await stored(practice.store, 2)
    connected = [r for r in caplog.records if r.getMessage() == "imap connected"]
    assert [vars(r)["idle"] for r in connected] == [True]


async def test_stopping_ends_idle_and_logs_out(
    practice: Practice, dovecot: Dovecot, start_receiver: StartReceiver
) -> None:
    address = await practice.address(practice.client_id)
    await asyncio.to_thread(dovecot.append, message(address))
    receiver = await start_receiver(imap_settings(dovecot))
    await stored(practice.store, 1)
    await mailbox_holds(dovecot, PROCESSED, 1)

    # Dovecot logs each login and how each session ended; the receiver's session is
    # the only one left open once the test's own have been logged.
    await eventually(lambda: _open_sessions(dovecot, 1), "the test's sessions to end")

    await receiver.stop()

    await eventually(lambda: _open_sessions(dovecot, 0), "the receiver's session to end")
    ends = [line for line in dovecot.log().splitlines() if "imap(bridge)" in line]
    assert "Disconnected: Logged out" in ends[-1]


async def _open_sessions(server: Dovecot, count: int) -> bool:
    lines = server.log().splitlines()
    logins = sum("imap-login: Info: Login: user=<bridge>" in line for line in lines)
    ends = sum("imap(bridge)" in line and "Disconnected" in line for line in lines)
    return logins - ends == count


@pytest.mark.parametrize(
    ("idle", "capabilities"),
    [(False, None), (True, "IMAP4rev1 UIDPLUS MOVE")],
    ids=["idle-switched-off", "server-without-idle"],
)
async def test_without_idle_the_mailbox_is_polled(
    practice: Practice,
    servers: Callable[..., Dovecot],
    start_receiver: StartReceiver,
    caplog: pytest.LogCaptureFixture,
    idle: bool,
    capabilities: str | None,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.inbound.imap")
    server = servers(capabilities=capabilities)
    address = await practice.address(practice.client_id)
    await asyncio.to_thread(server.append, message(address, 1))
    await start_receiver(imap_settings(server, idle=idle, poll_interval_seconds=0.2))
    await stored(practice.store, 1)

    await asyncio.to_thread(server.append, message(address, 2))

    await stored(practice.store, 2)
    await mailbox_holds(server, PROCESSED, 2)
    connected = [r for r in caplog.records if r.getMessage() == "imap connected"]
    assert [vars(r)["idle"] for r in connected] == [False]


@pytest.mark.parametrize(
    "capabilities", ["IMAP4rev1 IDLE UIDPLUS", "IMAP4rev1 IDLE"], ids=["uidplus", "plain"]
)
async def test_without_move_messages_are_copied_flagged_and_expunged(
    practice: Practice,
    servers: Callable[..., Dovecot],
    start_receiver: StartReceiver,
    capabilities: str,
) -> None:
    server = servers(capabilities=capabilities)
    address = await practice.address(practice.client_id)
    first, second = message(address, 1), message(address, 2)
    await asyncio.to_thread(server.append, first)
    await start_receiver(imap_settings(server))
    await stored(practice.store, 1)
    await asyncio.to_thread(server.append, second)

    await stored(practice.store, 2)
    moved = await mailbox_holds(server, PROCESSED, 2)
    assert sorted(moved.values()) == sorted([first, second])
    assert await asyncio.to_thread(server.messages) == {}


async def test_a_backlog_is_drained_in_uid_order_in_small_batches(
    practice: Practice, dovecot: Dovecot, start_receiver: StartReceiver
) -> None:
    address = await practice.address(practice.client_id)
    sent = [message(address, n, body=b"x" * (n * 100)) for n in range(1, 61)]

    await asyncio.to_thread(dovecot.append_all, sent)
    # Batches of 7 UIDs, cut further to about 2 kB of mail per FETCH.
    await start_receiver(imap_settings(dovecot), batch_size=7, batch_bytes=2000)

    assert [r.raw for r in await stored(practice.store, 60)] == sent
    await mailbox_holds(dovecot, PROCESSED, 60)
    assert await asyncio.to_thread(dovecot.messages) == {}


async def test_mail_arriving_during_a_pass_is_not_missed(
    practice: Practice, dovecot: Dovecot, start_receiver: StartReceiver
) -> None:
    """Messages keep arriving while the receiver searches, fetches, commits and moves;
    the server announces each once (an EXISTS, often in answer to one of those
    commands), and no poll comes to the rescue within the test."""
    address = await practice.address(practice.client_id)
    sent = [message(address, n) for n in range(1, 31)]
    await start_receiver(imap_settings(dovecot, poll_interval_seconds=300.0), batch_size=3)

    await asyncio.to_thread(dovecot.append_all, sent)

    assert sorted(r.raw for r in await stored(practice.store, 30)) == sorted(sent)
    await mailbox_holds(dovecot, "INBOX", 0)


async def test_a_large_message_is_stored_byte_for_byte(
    practice: Practice, dovecot: Dovecot, start_receiver: StartReceiver
) -> None:
    address = await practice.address(practice.client_id)
    # 3 MB arrive in many reads; the body also holds lines that look like IMAP responses.
    body = (
        b"* 1 FETCH (UID 9 BODY[] {5}\r\n)\r\nA1 OK done\r\n"
        + (b"0123456789" * 7 + b"\r\n") * 42_000
    )
    raw = message(address, headers=b"Content-Type: text/plain; charset=utf-8\r\n", body=body)
    await asyncio.to_thread(dovecot.append, raw)

    await start_receiver(imap_settings(dovecot))

    (row,) = await stored(practice.store, 1)
    assert len(row.raw) == len(raw)
    assert row.raw == raw


async def test_mail_without_a_reply_address_is_stored_for_the_pipeline_to_hold(
    practice: Practice, dovecot: Dovecot, start_receiver: StartReceiver
) -> None:
    to_someone = message("someone@elsewhere.example.net", 1)
    to_nobody = message("", 2)
    for raw in (to_someone, to_nobody):
        await asyncio.to_thread(dovecot.append, raw)

    await start_receiver(imap_settings(dovecot))

    found = await stored(practice.store, 2)
    assert [(r.raw, r.envelope_recipient) for r in found] == [
        (to_someone, "someone@elsewhere.example.net"),
        (to_nobody, UNKNOWN_RECIPIENT),
    ]
    await mailbox_holds(dovecot, PROCESSED, 2)


async def test_two_receivers_on_one_mailbox_store_each_message_once(
    practice: Practice, dovecot: Dovecot, start_receiver: StartReceiver
) -> None:
    address = await practice.address(practice.client_id)
    sent = [message(address, n) for n in range(1, 21)]

    await asyncio.to_thread(dovecot.append_all, sent)
    settings = imap_settings(dovecot)
    await asyncio.gather(start_receiver(settings), start_receiver(settings))

    await mailbox_holds(dovecot, "INBOX", 0)
    found = await stored(practice.store, 20)
    assert sorted(r.raw for r in found) == sorted(sent)


# --- faults -----------------------------------------------------------------------------

_RECEIVER_PROCESS = """
import asyncio, logging, sys
from pydantic import SecretStr
from sqlmodel import select
from bridge.config import InboundImapSettings
from bridge.inbound.imap import Backoff, ImapReceiver
from bridge.store.engine import Store

async def main(url, port, user, password, folder):
    settings = InboundImapSettings(
        enabled=True, host="127.0.0.1", port=port, security="none", username=user,
        password=SecretStr(password), processed_folder=folder, poll_interval_seconds=300.0,
    )
    async with Store(url) as store:
        receiver = ImapReceiver(
            store, settings, address_format="reply+{token}",
            backoff=Backoff(initial=0.05, maximum=0.2), timeout=5.0,
        )
        await receiver.run(asyncio.Event())

logging.basicConfig(level=logging.INFO)
asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]))
"""


async def test_a_crash_between_commit_and_move_neither_loses_nor_stores_twice(
    practice: Practice,
    database_url: str,
    dovecot: Dovecot,
    start_receiver: StartReceiver,
    tmp_path: Path,
) -> None:
    """The window is held open by the peer: the processed folder is read-only for
    Dovecot's mail user, so every MOVE is refused after the commit. The receiver,
    in its own process, is killed with SIGKILL inside that window; a new one then
    finishes the MOVE without storing the message again (the UID is at or below
    the `last_uid` committed with the row)."""
    address = await practice.address(practice.client_id)
    raw = message(address)
    await asyncio.to_thread(dovecot.create, PROCESSED)
    await asyncio.to_thread(dovecot.append, raw)
    log_path = tmp_path / "receiver.log"
    with dovecot.read_only(PROCESSED):
        with log_path.open("wb") as stderr:
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _RECEIVER_PROCESS,
                database_url,
                str(dovecot.port),
                USER,
                PASSWORD,
                PROCESSED,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )
        try:
            (row,) = await stored(practice.store, 1)
            # Committed, then the MOVE refused: the message is still in the mailbox.
            await eventually(lambda: _log_mentions(log_path, "imap move refused"), "a refused MOVE")
            assert list((await asyncio.to_thread(dovecot.messages)).values()) == [raw]
        finally:
            if child.returncode is None:
                child.send_signal(signal.SIGKILL)
            await child.wait()
        assert child.returncode == -signal.SIGKILL

    await start_receiver(imap_settings(dovecot))

    moved = await mailbox_holds(dovecot, PROCESSED, 1)
    assert list(moved.values()) == [raw]
    assert await asyncio.to_thread(dovecot.messages) == {}
    assert [(r.id, r.raw) for r in await rows(practice.store)] == [(row.id, raw)]


async def test_a_refused_move_holds_back_no_new_mail_and_is_retried(
    practice: Practice,
    dovecot: Dovecot,
    start_receiver: StartReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.inbound.imap")
    address = await practice.address(practice.client_id)
    first, second = message(address, 1), message(address, 2)
    await asyncio.to_thread(dovecot.create, PROCESSED)
    with dovecot.read_only(PROCESSED):
        receiver = await start_receiver(imap_settings(dovecot))
        await asyncio.to_thread(dovecot.append, first)
        await stored(practice.store, 1)
        await logged(caplog, "imap move refused")
        await asyncio.to_thread(dovecot.append, second)
        await stored(practice.store, 2)
        await logged(caplog, "imap move refused", count=3)  # the first again, and the second
        assert sorted((await asyncio.to_thread(dovecot.messages)).values()) == [first, second]

    receiver.wake()  # a pass now, rather than at the next mail or IDLE renewal

    moved = await mailbox_holds(dovecot, PROCESSED, 2)
    assert sorted(moved.values()) == [first, second]
    assert [r.raw for r in await rows(practice.store)] == [first, second]


async def _log_mentions(path: Path, text: str) -> bool:
    return text in await asyncio.to_thread(path.read_text, errors="replace")


async def test_after_the_server_drops_the_connection_the_receiver_reconnects(
    practice: Practice,
    dovecot: Dovecot,
    start_receiver: StartReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.inbound.imap")
    address = await practice.address(practice.client_id)
    await asyncio.to_thread(dovecot.append, message(address, 1))
    await start_receiver(imap_settings(dovecot))
    await stored(practice.store, 1)
    await logged(caplog, "imap connected")

    await asyncio.to_thread(dovecot.kick)
    await logged(caplog, "imap connection failed: connection_lost")
    await asyncio.to_thread(dovecot.append, message(address, 2))

    found = await stored(practice.store, 2)
    await logged(caplog, "imap connected", count=2)
    await all_moved(dovecot, [r.raw for r in found])


async def test_mail_delivered_while_the_server_is_down_is_stored_once_it_is_back(
    practice: Practice,
    dovecot: Dovecot,
    start_receiver: StartReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.inbound.imap")
    address = await practice.address(practice.client_id)
    await asyncio.to_thread(dovecot.append, message(address, 1))
    await start_receiver(imap_settings(dovecot))
    await stored(practice.store, 1)

    # Killed at once: perhaps in the middle of the receiver's MOVE.
    await asyncio.to_thread(dovecot.stop)
    await asyncio.to_thread(dovecot.save, message(address, 2))
    # Reconnecting fails for a while (connection refused), with back-off.
    await logged(caplog, "imap connection failed: ConnectionRefusedError", count=2)
    await asyncio.to_thread(dovecot.start)

    found = await stored(practice.store, 2)
    assert [r.raw for r in found] == [message(address, 1), message(address, 2)]
    await all_moved(dovecot, [r.raw for r in found])


@pytest.mark.parametrize("running", [True, False], ids=["while-running", "between-runs"])
async def test_a_new_uidvalidity_starts_the_mailbox_over_and_loses_nothing(
    practice: Practice, dovecot: Dovecot, start_receiver: StartReceiver, running: bool
) -> None:
    """The mailbox is deleted and created again: its UIDs start at 1 again, which the
    old state says was stored already. Dovecot does not tell an IDLE session that its
    mailbox went away; a running receiver notices at its next pass, at the latest
    when it renews IDLE (every 25 minutes; here every half second)."""
    address = await practice.address(practice.client_id)
    first, second = message(address, 1), message(address, 2)
    await asyncio.to_thread(dovecot.create, "Replies")
    assert await asyncio.to_thread(dovecot.append, first, "Replies") == 1
    settings = imap_settings(dovecot, mailbox="Replies")
    receiver = await start_receiver(settings, idle_renew_seconds=0.5)
    await stored(practice.store, 1)
    await mailbox_holds(dovecot, "Replies", 0)
    old = await asyncio.to_thread(dovecot.uidvalidity, "Replies")
    if not running:
        await receiver.stop()

    await asyncio.to_thread(dovecot.delete, "Replies")
    await asyncio.to_thread(dovecot.create, "Replies")
    new = await asyncio.to_thread(dovecot.uidvalidity, "Replies")
    assert new != old
    assert await asyncio.to_thread(dovecot.append, second, "Replies") == 1
    if not running:
        await start_receiver(settings)

    assert [r.raw for r in await stored(practice.store, 2)] == [first, second]
    await mailbox_holds(dovecot, PROCESSED, 2)
    state = await imap_state(practice.store, settings)
    assert state is not None
    assert (state.uidvalidity, state.last_uid) == (new, 1)


# --- TLS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_tls_and_starttls_connections_deliver(
    practice: Practice,
    servers: Callable[..., Dovecot],
    start_receiver: StartReceiver,
    tls_files: tuple[Path, Path],
    security: str,
) -> None:
    server = servers(tls=tls_files)
    address = await practice.address(practice.client_id)
    await asyncio.to_thread(server.append, message(address, 1))
    port = server.tls_port if security == "tls" else server.port
    # The test certificate is self-signed: verification must be switched off to connect.
    settings = imap_settings(server, security=security, port=port, verify_certificates=False)

    await start_receiver(settings)

    await stored(practice.store, 1)
    await asyncio.to_thread(server.append, message(address, 2))  # and IDLE works over TLS
    await stored(practice.store, 2)


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_an_untrusted_certificate_is_refused_and_the_mail_stays(
    practice: Practice,
    servers: Callable[..., Dovecot],
    start_receiver: StartReceiver,
    tls_files: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
    security: str,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.inbound.imap")
    server = servers(tls=tls_files)
    address = await practice.address(practice.client_id)
    raw = message(address)
    await asyncio.to_thread(server.append, raw)
    port = server.tls_port if security == "tls" else server.port

    await start_receiver(imap_settings(server, security=security, port=port))

    await logged(caplog, "imap connection failed: SSLCertVerificationError", count=2)
    assert await rows(practice.store) == []
    assert list((await asyncio.to_thread(server.messages)).values()) == [raw]


async def test_starttls_is_required_when_configured(
    practice: Practice,
    dovecot: Dovecot,
    start_receiver: StartReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.inbound.imap")
    await asyncio.to_thread(dovecot.append, message("someone@elsewhere.example.net"))

    # This server has no TLS at all: no falling back to a plain-text login.
    await start_receiver(imap_settings(dovecot, security="starttls"))

    await logged(caplog, "imap connection failed: protocol: the server does not offer STARTTLS")
    assert await rows(practice.store) == []


# --- logging ----------------------------------------------------------------------------


async def test_logs_carry_ids_and_counts_never_addresses_user_names_or_content(
    practice: Practice,
    dovecot: Dovecot,
    start_receiver: StartReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    user = "practice-inbox-7q4x"
    token, _ = await practice.token(practice.client_id)
    address = practice.address_for(token)
    await asyncio.to_thread(dovecot.append, message(address), "INBOX", user)

    await start_receiver(imap_settings(dovecot, username=user))

    (row,) = await stored(practice.store, 1)
    await mailbox_holds(dovecot, "INBOX", 0, user=user)
    text = _logged_text(caplog)
    for secret in (token, user, PASSWORD, practice.sender, "Appointment", "Tuesday"):
        assert secret.lower() not in text.lower()
    accepted = [r for r in caplog.records if r.getMessage() == "inbound message accepted"]
    assert [
        (vars(r)["via"], vars(r)["inbound_ids"], vars(r)["recipient"], vars(r)["bytes"])
        for r in accepted
    ] == [("imap", str(row.id), "reply_address", len(row.raw))]


async def test_a_refused_login_is_retried_and_logged_without_the_credentials(
    practice: Practice,
    dovecot: Dovecot,
    start_receiver: StartReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    user, password = "practice-inbox-7q4x", "not-the-password"
    await asyncio.to_thread(dovecot.append, message("someone@elsewhere.example.net"))

    await start_receiver(imap_settings(dovecot, username=user, password=SecretStr(password)))

    await logged(caplog, "imap connection failed: command_failed: LOGIN NO")
    assert await rows(practice.store) == []
    text = _logged_text(caplog)
    assert user not in text
    assert password not in text


def _logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """What bridge and aioimaplib logged, as the daemon would write it."""
    ours = [r for r in caplog.records if r.name.startswith(("bridge", "aioimaplib"))]
    return "\n".join(PlainFormatter().format(record) for record in ours)


# --- choosing the recipient (no server needed) --------------------------------------------

TOKEN = "abcdefghijklmnopqrstuvwxyz234567"
REPLY = f"reply+{TOKEN}@replies.example.org"


def _headers(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\nbody\r\n").encode()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            _headers(
                "Delivered-To: inbox@practice.example.org",
                f"X-Original-To: {REPLY}",
                "To: someone@elsewhere.example.net",
            ),
            Recipient(REPLY, "reply_address"),
        ),
        (
            _headers("To: a@x.example, b@y.example", f"Cc: Practice <{REPLY.upper()}>"),
            Recipient(REPLY.upper(), "reply_address"),
        ),
        (
            _headers("To: Someone <a@x.example>,", f"  Practice <{REPLY}>"),
            Recipient(REPLY, "reply_address"),
        ),
        (
            _headers(f"Delivered-To: {REPLY}", "Delivered-To: reply+tooshort@replies.example.org"),
            Recipient(REPLY, "reply_address"),
        ),
        (_headers("To: a@x.example, b@y.example"), Recipient("a@x.example", "first_to")),
        (_headers("Cc: a@x.example"), Recipient(UNKNOWN_RECIPIENT, "none")),
        (_headers(f"To: {'a' * 320}@x.example"), Recipient(UNKNOWN_RECIPIENT, "none")),
        (b"To: a@x.example\r\nno blank line, no body", Recipient("a@x.example", "first_to")),
        (b"\r\nTo: a@x.example\r\n", Recipient(UNKNOWN_RECIPIENT, "none")),
        (b"", Recipient(UNKNOWN_RECIPIENT, "none")),
        (b"To: \xff\xfe <\x00@\x80>\r\n\r\n", Recipient(UNKNOWN_RECIPIENT, "none")),
        (
            _headers(f"Subject: {REPLY}", "To: =?utf-8?q?=E2=82=AC?="),
            Recipient(UNKNOWN_RECIPIENT, "none"),
        ),
        (b"X" * 70_000 + f"\r\nTo: {REPLY}\r\n\r\n".encode(), Recipient(UNKNOWN_RECIPIENT, "none")),
    ],
    ids=[
        "x-original-to-before-to",
        "cc-and-any-case",
        "folded-to",
        "first-of-several-delivered-to",
        "first-to",
        "cc-only-is-no-fallback",
        "overlong",
        "header-only",
        "no-headers",
        "empty",
        "garbage-bytes",
        "not-recipient-headers",
        "beyond-the-scan-limit",
    ],
)
def test_the_recipient_is_the_first_reply_address_else_the_first_to(
    raw: bytes, expected: Recipient
) -> None:
    assert choose_recipient(raw, FORMAT) == expected


@given(st.binary(max_size=2000))
def test_choosing_a_recipient_never_fails_and_gives_a_storable_address(raw: bytes) -> None:
    found = choose_recipient(raw, FORMAT)
    assert storable_address(found.address)
    assert found.source in {"reply_address", "first_to", "none"}


@given(
    st.lists(
        st.sampled_from(["To", "Cc", "Delivered-To", "X-Original-To", "From"]).flatmap(
            lambda name: st.text(max_size=80).map(lambda value: f"{name}: {value}")
        ),
        max_size=6,
    )
)
def test_choosing_a_recipient_survives_hostile_header_values(lines: list[str]) -> None:
    raw = "\r\n".join(lines).encode("utf-8", "surrogatepass") + b"\r\n\r\n"
    assert storable_address(choose_recipient(raw, FORMAT).address)


# --- small parts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uids", "expected"),
    [([5], "5"), ([3, 1, 2, 2], "1:3"), ([1, 2, 4, 6, 7, 8, 10], "1:2,4,6:8,10")],
)
def test_uid_sets_are_compact(uids: list[int], expected: str) -> None:
    assert uid_set(uids) == expected


def test_fetch_bodies_are_found_by_uid_wherever_the_server_puts_it() -> None:
    lines = [
        b"1 FETCH (UID 7 BODY[] {5}",
        b"12345",
        b")",
        b"2 FETCH (FLAGS (\\Seen))",  # unsolicited: no body
        b"3 FETCH (BODY[] {4}",
        b"UID ",  # a literal may hold anything, even what looks like an item
        b" UID 9)",  # the UID after the literal
        b"4 FETCH (UID 11 BODY[] {9}",
        b"short",  # announced 9 octets, got 5: not taken
        b")",
    ]
    assert parse_bodies(lines) == {7: b"12345", 9: b"UID "}


@pytest.mark.parametrize(
    ("failures", "jitter", "expected"),
    [(1, 0.0, 0.5), (1, 0.999, 0.9995), (3, 0.0, 2.0), (10, 0.0, 150.0), (100, 1.0, 300.0)],
)
def test_reconnect_delays_double_up_to_the_maximum_with_jitter(
    failures: int, jitter: float, expected: float
) -> None:
    assert Backoff(initial=1.0, maximum=300.0).delay(failures, jitter) == pytest.approx(expected)
