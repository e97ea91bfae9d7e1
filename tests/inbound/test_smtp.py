"""The SMTP/LMTP listener, driven by real clients against a real store.

Clients: `smtplib` (in a thread), `aiosmtplib`, raw asyncio streams where a
test needs to stop half-way through a command, and the command-line tools
`swaks` and Postfix's `smtp-source` (Debian packages `swaks` and `postfix`;
those tests skip when the tools are missing). The listener runs in the
test's own loop on port 0, or on a unix socket, with a fixed clock.

What aiosmtpd adds to a message: nothing. Its sample handlers add `X-Peer`
and `X-MailFrom` headers; `InboundHandler` does not, so a row holds exactly
the bytes the client sent (after SMTP dot-unstuffing), which the byte-exact
comparisons below prove.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import smtplib
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosmtplib
import pytest

from bridge.inbound.receipt import ReplyRules
from bridge.inbound.smtp import Listener, ListenerError, ListenerOptions
from bridge.logs import PlainFormatter
from bridge.store.engine import Store
from bridge.store.models import Audience, InboundStatus, InboundVia, NotificationMode, StaffRole

if TYPE_CHECKING:
    from conftest import DatabaseFaults, Practice

StartListener = Callable[..., Awaitable[Listener]]

MESSAGE = (
    b"From: Client <client@home.example.net>\r\n"
    b"To: Practice <reply@replies.example.org>\r\n"
    b"Subject: Re: Appointment\r\n"
    b"Message-ID: <m1@home.example.net>\r\n"
    b"\r\n"
    b"Tuesday is fine.\r\n"
    b".A line that starts with a dot survives dot-stuffing.\r\n"
    b"\r\n"
    b"> quoted\r\n"
)
UNKNOWN = b"5.1.1 Unknown reply address; please answer in the portal"
EXPIRED = b"5.1.1 This reply address has expired; please answer in the portal"
NO_LONGER = b"5.1.1 This reply address is no longer valid; please answer in the portal"
NO_REPLY = b"5.1.1 This address does not accept replies; please answer in the portal"
TEMPORARY = b"4.3.0 Temporary failure, please retry"
TOO_BIG = b"5.3.4 Message too big for system"


@contextmanager
def smtp_client(port: int | None) -> Iterator[smtplib.SMTP]:
    assert port is not None
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as client:
        yield client


def send(
    port: int | None, sender: str, recipients: list[str], message: bytes = MESSAGE
) -> dict[str, Any]:
    """One transaction, step by step; returns every answer (blocking: use a thread)."""
    with smtp_client(port) as client:
        client.ehlo()
        utf8 = not all(address.isascii() for address in (sender, *recipients))
        answers: dict[str, Any] = {"mail": client.mail(sender, ["SMTPUTF8"] if utf8 else [])}
        answers["rcpt"] = [client.rcpt(address) for address in recipients]
        if any(code == 250 for code, _ in answers["rcpt"]):
            answers["data"] = client.data(message)
        return answers


def needs(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"needs the {tool} command (Debian package: {package})")


async def run_tool(*argv: str) -> tuple[int, str]:
    """Run a command-line client to completion; returns its status and output."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


# --- accepted replies ------------------------------------------------------------------


async def test_smtplib_reply_is_acknowledged_with_the_id_of_its_committed_row(
    practice: Practice, smtp_listener: Listener
) -> None:
    address = await practice.address(practice.client_id)

    answers = await asyncio.to_thread(send, smtp_listener.port, practice.sender, [address])

    (row,) = await practice.rows()
    assert answers["rcpt"] == [(250, b"2.1.5 OK")]
    assert answers["data"] == (250, f"2.0.0 Queued as {row.id}".encode())
    assert row.raw == MESSAGE
    assert row.status == InboundStatus.RECEIVED.value
    assert row.received_via == InboundVia.SMTP.value
    assert (row.envelope_sender, row.envelope_recipient) == (practice.sender, address)
    assert row.message_id_header == "<m1@home.example.net>"


async def test_aiosmtplib_reply_is_stored_byte_for_byte(
    practice: Practice, smtp_listener: Listener
) -> None:
    address = await practice.address(practice.client_id)
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=smtp_listener.port, start_tls=False, timeout=10
    )

    async with client:
        refused, answer = await client.sendmail(practice.sender, [address], MESSAGE)

    (row,) = await practice.rows()
    assert refused == {}
    assert answer == f"2.0.0 Queued as {row.id}"
    assert row.raw == MESSAGE


async def test_swaks_reply_is_stored_byte_for_byte_and_unknown_recipients_refused(
    practice: Practice, smtp_listener: Listener, tmp_path: Path
) -> None:
    needs("swaks", "swaks")
    address = await practice.address(practice.client_id)
    data = tmp_path / "reply.eml"
    # swaks ends DATA with CRLF "." CRLF after the file, so the file has no final line break.
    data.write_bytes(MESSAGE.removesuffix(b"\r\n"))
    base = ["swaks", "--server", f"127.0.0.1:{smtp_listener.port}", "--helo", "client.test"]
    base += ["--from", practice.sender, "--data", f"@{data}"]

    accepted = await run_tool(*base, "--to", address)
    refused = await run_tool(*base, "--to", practice.unknown_address())

    (row,) = await practice.rows()
    assert accepted[0] == 0, accepted[1]
    assert f"<-  250 2.0.0 Queued as {row.id}" in accepted[1]
    assert row.raw == MESSAGE
    assert refused[0] != 0
    assert f"<** 550 {UNKNOWN.decode()}" in refused[1]
    assert len(await practice.rows()) == 1


# --- refused recipients ----------------------------------------------------------------


REFUSALS = {
    "unknown token": UNKNOWN,
    "expired token": EXPIRED,
    "revoked token": NO_LONGER,
    "no-reply address": NO_REPLY,
    "foreign domain": UNKNOWN,
    "not a reply address": UNKNOWN,
    "non-ASCII local part": UNKNOWN,
}


async def refused_address(practice: Practice, case: str) -> str:
    if case == "unknown token":
        return practice.unknown_address()
    if case == "expired token":
        return await practice.address(practice.client_id, expires_at=practice.now)
    if case == "revoked token":
        return await practice.address(practice.client_id, revoked_at=practice.now)
    if case == "no-reply address":
        return practice.noreply
    token, _ = await practice.token(practice.client_id)
    if case == "foreign domain":
        return practice.address_for(token, "replies.example.com")
    if case == "not a reply address":
        return f"{token}@{practice.reply_domain}"
    return f"réponse+{token}@{practice.reply_domain}"


@pytest.mark.parametrize("case", REFUSALS)
async def test_refused_recipients_get_550_at_rcpt_and_leave_no_row(
    practice: Practice, smtp_listener: Listener, case: str
) -> None:
    address = await refused_address(practice, case)

    answers = await asyncio.to_thread(send, smtp_listener.port, practice.sender, [address])

    assert answers["rcpt"] == [(550, REFUSALS[case])]
    assert "data" not in answers
    assert await practice.rows() == []


async def test_a_participant_who_lost_access_is_refused_while_others_are_accepted(
    practice: Practice, smtp_listener: Listener
) -> None:
    scheduler = await practice.address(practice.scheduler_id)
    clinician = await practice.address(practice.clinician_id)
    await practice.portal.change_audience(practice.thread_id, Audience.CLINICAL)

    answers = await asyncio.to_thread(
        send, smtp_listener.port, practice.sender, [scheduler, clinician]
    )

    assert answers["rcpt"] == [(550, NO_LONGER), (250, b"2.1.5 OK")]
    assert [row.envelope_recipient for row in await practice.rows()] == [clinician]


async def test_more_than_100_recipients_get_452(
    practice: Practice, smtp_listener: Listener
) -> None:
    address = await practice.address(practice.client_id)

    answers = await asyncio.to_thread(send, smtp_listener.port, practice.sender, [address] * 101)

    assert answers["rcpt"][:100] == [(250, b"2.1.5 OK")] * 100
    assert answers["rcpt"][100] == (452, b"4.5.3 Too many recipients")
    assert len(await practice.rows()) == 1


# --- size, charsets, senders -------------------------------------------------------------


async def test_a_message_declared_too_big_is_refused_at_mail(
    practice: Practice, start_listener: StartListener
) -> None:
    listener = await start_listener(max_message_size=1000)

    def declare() -> tuple[int, bytes]:
        with smtp_client(listener.port) as client:
            client.ehlo()
            return client.mail(practice.sender, ["SIZE=1001"])

    assert await asyncio.to_thread(declare) == (552, TOO_BIG)


async def test_a_message_too_big_is_refused_after_data_and_leaves_no_row(
    practice: Practice, start_listener: StartListener
) -> None:
    listener = await start_listener(max_message_size=1000)
    address = await practice.address(practice.client_id)
    big = MESSAGE + b"x" * 70 + b"\r\n"
    big *= 1000 // len(big) + 1

    answers = await asyncio.to_thread(send, listener.port, practice.sender, [address], big)
    fits = await asyncio.to_thread(send, listener.port, practice.sender, [address])

    assert answers["data"] == (552, TOO_BIG)
    assert fits["data"][0] == 250
    assert [row.raw for row in await practice.rows()] == [MESSAGE]


async def test_smtputf8_sender_and_recipient_and_8bit_body_are_stored_intact(
    practice: Practice, smtp_listener: Listener
) -> None:
    org = await practice.portal.create_organization(
        "Praxis", "https://praxis.example", "antworten.bücher.example"
    )
    admin = await practice.portal.add_staff(
        org, "Leitung", [StaffRole.PRACTICE_ADMIN], ["leitung@bücher.example"]
    )
    await practice.portal.set_notification_mode(
        org, NotificationMode.CONVENIENCE, acknowledged_by=admin
    )
    client = await practice.portal.add_client(org, "Klientin", ["jörg@bücher.example"])
    thread = await practice.portal.create_thread(
        org, client, "Termin", audience=Audience.ADMINISTRATIVE, author_id=client, body_text="?"
    )
    token, _ = await practice.token(client, thread.thread_id)
    address = practice.address_for(token, "antworten.bücher.example")
    sender = "jörg@bücher.example"
    message = (
        "From: Jörg <jörg@bücher.example>\r\n"
        "Subject: Grüße\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "Dienstag passt, schöne Grüße. 日本語\r\n"
    ).encode() + b"and a lone latin-1 byte: \xe9\r\n"

    def send_utf8() -> tuple[tuple[int, bytes], tuple[int, bytes], tuple[int, bytes]]:
        with smtp_client(smtp_listener.port) as conn:
            conn.ehlo()
            assert conn.has_extn("smtputf8")
            return (
                conn.mail(sender, ["SMTPUTF8", "BODY=8BITMIME"]),
                conn.rcpt(address),
                conn.data(message),
            )

    mail, rcpt, data = await asyncio.to_thread(send_utf8)

    (row,) = await practice.rows()
    assert (mail[0], rcpt[0], data[0]) == (250, 250, 250)
    assert row.raw == message
    assert (row.envelope_sender, row.envelope_recipient) == (sender, address)


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """One (possibly multi-line) SMTP reply."""
    reply = b""
    while True:
        line = await reader.readline()
        reply += line
        if line[3:4] != b"-":
            return reply


async def test_a_sender_that_is_not_utf8_is_refused_at_mail(
    practice: Practice, smtp_listener: Listener
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", smtp_listener.port)
    try:
        await read_reply(reader)
        writer.write(b"EHLO client.test\r\n")
        await read_reply(reader)
        writer.write(b"MAIL FROM:<j\xf6rg@example.net>\r\n")
        answer = await read_reply(reader)
    finally:
        writer.close()
        await writer.wait_closed()

    assert answer == b"553 5.1.7 The sender address cannot be accepted\r\n"


async def test_the_null_sender_is_stored_as_null(
    practice: Practice, smtp_listener: Listener
) -> None:
    address = await practice.address(practice.client_id)

    answers = await asyncio.to_thread(send, smtp_listener.port, "<>", [address])

    (row,) = await practice.rows()
    assert answers["data"][0] == 250
    assert row.envelope_sender is None


# --- LMTP ------------------------------------------------------------------------------


def send_lmtp(socket_path: Path, sender: str, recipients: list[str], message: bytes) -> Any:
    """RCPT answers, then every DATA answer (one per accepted recipient)."""
    with smtplib.LMTP(str(socket_path), local_hostname="client.test", timeout=10) as client:
        client.ehlo()  # smtplib's LMTP sends LHLO here
        client.mail(sender)
        rcpt = [client.rcpt(address) for address in recipients]
        accepted = sum(1 for code, _ in rcpt if code == 250)
        # smtplib reads only the first DATA answer; the others follow on the wire.
        data = [client.data(message)]
        data += [client.getreply() for _ in range(accepted - 1)]
        return rcpt, data


async def test_lmtp_answers_data_once_per_accepted_recipient_over_a_unix_socket(
    practice: Practice, start_listener: StartListener, short_tmp: Path
) -> None:
    path = short_tmp / "lmtp.sock"
    await start_listener(protocol="lmtp", unix_socket=path)
    client = await practice.address(practice.client_id)
    clinician = await practice.address(practice.clinician_id)
    expired = await practice.address(practice.client_id, expires_at=practice.now)
    recipients = [client, practice.unknown_address(), clinician, expired]

    rcpt, data = await asyncio.to_thread(send_lmtp, path, practice.sender, recipients, MESSAGE)

    rows = await practice.rows()
    assert rcpt == [(250, b"2.1.5 OK"), (550, UNKNOWN), (250, b"2.1.5 OK"), (550, EXPIRED)]
    assert data == [(250, f"2.0.0 Queued as {row.id}".encode()) for row in rows]
    assert [row.envelope_recipient for row in rows] == [client, clinician]
    assert {row.received_via for row in rows} == {InboundVia.LMTP.value}
    assert {row.raw for row in rows} == {MESSAGE}


async def test_lmtp_refuses_an_oversized_message_once_per_recipient(
    practice: Practice, start_listener: StartListener, short_tmp: Path
) -> None:
    path = short_tmp / "lmtp.sock"
    await start_listener(protocol="lmtp", unix_socket=path, max_message_size=1000)
    recipients = [await practice.address(practice.client_id) for _ in range(3)]

    _, data = await asyncio.to_thread(send_lmtp, path, practice.sender, recipients, MESSAGE * 10)

    assert data == [(552, TOO_BIG)] * 3
    assert await practice.rows() == []


async def test_postfix_smtp_source_delivers_over_lmtp_in_parallel_sessions(
    practice: Practice, start_listener: StartListener, short_tmp: Path
) -> None:
    needs("smtp-source", "postfix")
    path = short_tmp / "lmtp.sock"
    await start_listener(protocol="lmtp", unix_socket=path)
    address = await practice.address(practice.client_id)
    data = short_tmp / "message.txt"
    data.write_bytes(MESSAGE.replace(b"\r\n", b"\n"))
    # smtp-source reads one DATA answer per recipient it sent, so it can only be
    # given recipients that are all accepted (mixed sets are proved with smtplib).
    argv = ["smtp-source", "-L", "-s", "3", "-m", "9", "-r", "1", "-M", "client.test"]
    argv += ["-f", practice.sender, "-t", address, "-F", str(data), f"unix:{path}"]

    status, output = await run_tool(*argv)

    rows = await practice.rows()
    assert status == 0, output
    assert len(rows) == 9
    assert {row.envelope_recipient for row in rows} == {address}
    # smtp-source sends every file line with CRLF and adds an empty last line.
    assert {row.raw for row in rows} == {MESSAGE + b"\r\n"}


# --- nothing acknowledged is lost ---------------------------------------------------------


async def test_a_store_failure_at_data_is_a_451_and_the_retry_is_stored_once(
    practice: Practice, smtp_listener: Listener, faults: DatabaseFaults
) -> None:
    address = await practice.address(practice.client_id)
    faults.refuse_inbound_inserts()

    failed = await asyncio.to_thread(send, smtp_listener.port, practice.sender, [address])
    assert failed["rcpt"] == [(250, b"2.1.5 OK")]
    assert failed["data"] == (451, TEMPORARY)
    assert await practice.rows() == []

    faults.accept_inbound_inserts()
    retried = await asyncio.to_thread(send, smtp_listener.port, practice.sender, [address])

    (row,) = await practice.rows()
    assert retried["data"] == (250, f"2.0.0 Queued as {row.id}".encode())
    assert row.raw == MESSAGE


async def test_a_database_outage_between_rcpt_and_data_is_a_451_then_the_retry_is_stored(
    practice: Practice, smtp_listener: Listener, faults: DatabaseFaults
) -> None:
    if practice.store.dialect != "postgresql":
        pytest.skip("a database server outage needs PostgreSQL")
    address = await practice.address(practice.client_id)

    def session_through_an_outage() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        with smtp_client(smtp_listener.port) as client:
            client.ehlo()
            client.mail(practice.sender)
            rcpt = client.rcpt(address)
            faults.cut_off_database()
            try:
                return rcpt, client.data(MESSAGE)
            finally:
                faults.reconnect_database()

    rcpt, data = await asyncio.to_thread(session_through_an_outage)
    assert await practice.rows() == []
    retried = await asyncio.to_thread(send, smtp_listener.port, practice.sender, [address])

    (row,) = await practice.rows()
    assert (rcpt, data) == ((250, b"2.1.5 OK"), (451, TEMPORARY))
    assert retried["data"] == (250, f"2.0.0 Queued as {row.id}".encode())


async def test_a_store_failure_at_lmtp_data_is_a_451_for_every_recipient(
    practice: Practice, start_listener: StartListener, short_tmp: Path, faults: DatabaseFaults
) -> None:
    path = short_tmp / "lmtp.sock"
    await start_listener(protocol="lmtp", unix_socket=path)
    recipients = [
        await practice.address(practice.client_id),
        await practice.address(practice.clinician_id),
    ]
    faults.refuse_inbound_inserts()

    _, data = await asyncio.to_thread(send_lmtp, path, practice.sender, recipients, MESSAGE)

    assert data == [(451, TEMPORARY)] * 2
    assert await practice.rows() == []


async def test_a_store_failure_at_rcpt_is_a_451(
    practice: Practice, smtp_listener: Listener, faults: DatabaseFaults
) -> None:
    address = await practice.address(practice.client_id)
    faults.hide_reply_tokens()

    failed = await asyncio.to_thread(send, smtp_listener.port, practice.sender, [address])
    faults.restore_reply_tokens()
    retried = await asyncio.to_thread(send, smtp_listener.port, practice.sender, [address])

    assert failed["rcpt"] == [(451, TEMPORARY)]
    assert retried["rcpt"] == [(250, b"2.1.5 OK")]
    assert len(await practice.rows()) == 1


# --- STARTTLS ---------------------------------------------------------------------------


async def test_require_starttls_refuses_mail_before_starttls_and_accepts_after(
    practice: Practice, start_listener: StartListener, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    listener = await start_listener(tls_cert_file=cert, tls_key_file=key, require_starttls=True)
    address = await practice.address(practice.client_id)
    context = ssl.create_default_context(cafile=str(cert))

    def session() -> dict[str, Any]:
        with smtp_client(listener.port) as client:
            client.ehlo()
            answers: dict[str, Any] = {"offered": sorted(client.esmtp_features)}
            answers["early_mail"] = client.mail(practice.sender)
            answers["starttls"] = client.starttls(context=context)
            client.ehlo()
            answers["after_tls"] = sorted(client.esmtp_features)
            answers["mail"] = client.mail(practice.sender)
            answers["rcpt"] = client.rcpt(address)
            answers["data"] = client.data(MESSAGE)
            return answers

    answers = await asyncio.to_thread(session)

    (row,) = await practice.rows()
    assert "starttls" in answers["offered"]
    assert answers["early_mail"] == (530, b"5.7.0 Must issue a STARTTLS command first")
    assert answers["starttls"][0] == 220
    assert "starttls" not in answers["after_tls"]
    assert "auth" not in answers["after_tls"]
    assert answers["data"] == (250, f"2.0.0 Queued as {row.id}".encode())
    assert row.raw == MESSAGE


async def test_swaks_delivers_over_starttls(
    practice: Practice, start_listener: StartListener, tls_files: tuple[Path, Path]
) -> None:
    needs("swaks", "swaks")
    _, support = await run_tool("swaks", "--support")
    if "=== TLS supported" not in support:
        pytest.skip("swaks has no TLS support (Debian package: libnet-ssleay-perl)")
    cert, key = tls_files
    listener = await start_listener(tls_cert_file=cert, tls_key_file=key, require_starttls=True)
    address = await practice.address(practice.client_id)
    argv = ["swaks", "--server", f"127.0.0.1:{listener.port}", "--helo", "client.test", "--tls"]

    status, output = await run_tool(*argv, "--from", practice.sender, "--to", address)

    (row,) = await practice.rows()
    assert status == 0, output
    assert f"<~  250 2.0.0 Queued as {row.id}" in output


def test_lmtp_cannot_require_starttls(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    options = ListenerOptions(
        protocol="lmtp", tls_cert_file=cert, tls_key_file=key, require_starttls=True
    )

    with pytest.raises(ListenerError, match="LMTP"):
        Listener(Store("sqlite://"), options, ReplyRules(b"s" * 32, "{token}", "x@y"))


# --- stopping ---------------------------------------------------------------------------


async def open_session(listener: Listener, practice: Practice, address: str) -> Any:
    """A raw session that has said EHLO, MAIL, RCPT and DATA (354 received)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    assert (await read_reply(reader)).startswith(b"220")
    for command in (b"EHLO client.test", f"MAIL FROM:<{practice.sender}>".encode()):
        writer.write(command + b"\r\n")
        assert (await read_reply(reader)).startswith(b"250")
    writer.write(f"RCPT TO:<{address}>\r\n".encode())
    assert (await read_reply(reader)).startswith(b"250")
    writer.write(b"DATA\r\n")
    assert (await read_reply(reader)).startswith(b"354")
    return reader, writer


async def test_stop_lets_a_session_in_data_finish_and_refuses_new_connections(
    practice: Practice, smtp_listener: Listener
) -> None:
    address = await practice.address(practice.client_id)
    port = smtp_listener.port
    reader, writer = await open_session(smtp_listener, practice, address)
    wire = MESSAGE.replace(b"\r\n.", b"\r\n..")  # dot-stuffed, as a client must send it
    head, tail = wire[:40], wire[40:]
    writer.write(head)
    await writer.drain()

    stopping = asyncio.create_task(smtp_listener.stop(grace=5))
    await asyncio.sleep(0)  # stop() closes the server before its first await
    assert not smtp_listener.serving
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    assert not stopping.done()
    writer.write(tail + b".\r\n")
    answer = await read_reply(reader)
    farewell = await read_reply(reader)
    await stopping
    writer.close()

    (row,) = await practice.rows()
    assert answer == f"250 2.0.0 Queued as {row.id}\r\n".encode()
    assert farewell.startswith(b"421 4.3.2 ")
    assert await reader.read() == b""
    assert row.raw == MESSAGE


async def test_stop_says_421_to_idle_sessions(smtp_listener: Listener) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", smtp_listener.port)
    await read_reply(reader)
    writer.write(b"EHLO client.test\r\n")
    await read_reply(reader)

    await smtp_listener.stop(grace=5)

    assert (await read_reply(reader)).startswith(b"421 4.3.2 ")
    assert await reader.read() == b""
    writer.close()


async def test_stop_aborts_a_session_still_in_data_after_the_grace_period(
    practice: Practice, smtp_listener: Listener
) -> None:
    address = await practice.address(practice.client_id)
    reader, writer = await open_session(smtp_listener, practice, address)
    writer.write(b"Subject: never finished\r\n")
    await writer.drain()

    await smtp_listener.stop(grace=0.05)

    # An abort may reset the connection rather than close it: either way it is gone.
    with contextlib.suppress(ConnectionResetError):
        assert await reader.read() == b""
    writer.close()
    assert await practice.rows() == []


# --- logging ----------------------------------------------------------------------------


async def test_logs_carry_ids_and_reason_codes_never_addresses_or_tokens(
    practice: Practice, smtp_listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token, _ = await practice.token(practice.client_id)
    address = practice.address_for(token)
    unknown = practice.unknown_address()

    await asyncio.to_thread(send, smtp_listener.port, practice.sender, [unknown, address])

    (row,) = await practice.rows()
    ours = [r for r in caplog.records if r.name.startswith(("bridge", "mail"))]
    text = "\n".join(PlainFormatter().format(record) for record in ours)
    for secret in (token, unknown.split("@")[0], practice.sender, "Appointment", "Tuesday"):
        assert secret.lower() not in text.lower()
    accepted = [r for r in ours if r.getMessage() == "inbound message accepted"]
    refused = [r for r in ours if r.getMessage() == "inbound recipient refused"]
    assert [(r.levelname, vars(r)["inbound_ids"], vars(r)["recipients"]) for r in accepted] == [
        ("INFO", str(row.id), 1)
    ]
    assert [(vars(r)["reason"], vars(r)["smtp_code"]) for r in refused] == [("unknown", 550)]
