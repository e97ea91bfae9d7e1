"""Transports against real peers: a folder on disk, and an aiosmtpd sink told how to answer."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from smtp_sink import AUTH_PASSWORD, AUTH_USER, DROP, CertFiles, Sink

from bridge.config import OutboundSettings
from bridge.outbound.queue import TEST_SUBJECT, send_test
from bridge.outbound.transport import (
    MAX_ANSWER,
    FileTransport,
    PermanentSendError,
    SendResult,
    SmtpTransport,
    TransientSendError,
    TransportSettingsError,
    transport_from_settings,
)

SENDER = "bridge@example.org"
RECIPIENT = "client@example.net"


def email_to(recipient: str = RECIPIENT, body: str = "A message is waiting.\n") -> EmailMessage:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = recipient
    message["Subject"] = "You have a new secure message"
    message.set_content(body)
    return message


async def send(transport: SmtpTransport, recipient: str = RECIPIENT) -> SendResult:
    return await transport.send(email_to(recipient), sender=SENDER, recipient=recipient, name="1")


# --- file --------------------------------------------------------------------------------


async def test_the_file_transport_writes_the_whole_email_under_the_callers_name(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "outbox"  # created on first use
    message = email_to()

    result = await FileTransport(folder).send(
        message, sender=SENDER, recipient=RECIPIENT, name="42"
    )

    written = folder / "42.eml"
    assert result.code == 250
    assert written.read_bytes() == message.as_bytes()
    assert stat.S_IMODE(written.stat().st_mode) == 0o600  # convenience emails carry content
    assert os.listdir(folder) == ["42.eml"]  # no temporary file left


async def test_sending_the_same_name_again_replaces_the_file_instead_of_adding_one(
    tmp_path: Path,
) -> None:
    transport = FileTransport(tmp_path)
    await transport.send(email_to(body="first\n"), sender=SENDER, recipient=RECIPIENT, name="7")
    await transport.send(email_to(body="second\n"), sender=SENDER, recipient=RECIPIENT, name="7")

    assert os.listdir(tmp_path) == ["7.eml"]
    assert b"second" in (tmp_path / "7.eml").read_bytes()


async def test_a_reader_of_the_folder_never_sees_a_partly_written_email(tmp_path: Path) -> None:
    # Versions of different sizes, each large enough that a non-atomic write would be seen
    # half-done; a thread reads the file as fast as it can while they are written.
    versions = [email_to(body=f"{n}\n" + "x" * (200_000 + 50_000 * n)) for n in range(12)]
    complete = {v.as_bytes() for v in versions}
    target = tmp_path / "9.eml"
    seen: list[bytes] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                seen.append(target.read_bytes())
            except FileNotFoundError:
                continue

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        transport = FileTransport(tmp_path)
        for version in versions:
            await transport.send(version, sender=SENDER, recipient=RECIPIENT, name="9")
    finally:
        done.set()
        watcher.join(timeout=10)

    assert seen, "the watcher never read the file"
    assert all(data in complete for data in seen)


async def test_the_file_transport_refuses_names_that_could_leave_its_folder(
    tmp_path: Path,
) -> None:
    transport = FileTransport(tmp_path / "out")
    for name in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(PermanentSendError):
            await transport.send(email_to(), sender=SENDER, recipient=RECIPIENT, name=name)
    assert not (tmp_path / "escape.eml").exists()


async def test_a_folder_that_cannot_be_written_is_a_temporary_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")

    with pytest.raises(TransientSendError) as caught:
        await FileTransport(blocker).send(email_to(), sender=SENDER, recipient=RECIPIENT, name="1")
    assert caught.value.code is None


# --- smtp: answers -----------------------------------------------------------------------


async def test_a_250_returns_the_code_and_the_relay_delivers_to_the_envelope(sink: Sink) -> None:
    transport = SmtpTransport(sink.settings())
    try:
        result = await send(transport)
    finally:
        await transport.aclose()

    assert result.code == 250
    (delivery,) = sink.deliveries
    assert (delivery.mail_from, delivery.rcpt_tos) == (SENDER, (RECIPIENT,))
    assert delivery.header("Subject") == "You have a new secure message"


@pytest.mark.parametrize(
    ("answer", "error", "code"),
    [
        ("451 4.3.0 try later", TransientSendError, 451),
        ("452 4.3.1 insufficient storage", TransientSendError, 452),
        ("550 5.7.1 message refused", PermanentSendError, 550),
        ("554 5.6.0 transaction failed", PermanentSendError, 554),
    ],
)
async def test_an_answer_to_data_maps_4xx_to_transient_and_5xx_to_permanent(
    sink: Sink, answer: str, error: type[Exception], code: int
) -> None:
    sink.script(answer)
    transport = SmtpTransport(sink.settings())
    try:
        with pytest.raises(error) as caught:
            await send(transport)
        # The session survives a refusal: the next email goes through on it.
        assert (await send(transport)).code == 250
    finally:
        await transport.aclose()

    assert getattr(caught.value, "code", None) == code
    assert getattr(caught.value, "answer", "") == answer[4:]
    assert str(code) in str(caught.value)
    assert answer[4:] not in str(caught.value), "the answer may echo an address: not in str()"
    assert len(sink.deliveries) == 1
    assert sink.connections_made == 1


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ("550 5.1.1 no such user", PermanentSendError),
        ("450 4.2.1 mailbox busy", TransientSendError),
    ],
)
async def test_a_refused_recipient_maps_like_any_answer(
    sink: Sink, answer: str, error: type[Exception]
) -> None:
    sink.script_rcpt(RECIPIENT, answer)
    transport = SmtpTransport(sink.settings())
    try:
        with pytest.raises(error) as caught:
            await send(transport)
    finally:
        await transport.aclose()
    assert getattr(caught.value, "code", None) == int(answer[:3])
    assert sink.deliveries == []


async def test_a_connection_dropped_during_data_is_transient_and_nothing_is_delivered(
    sink: Sink,
) -> None:
    sink.script(DROP)
    transport = SmtpTransport(sink.settings())
    try:
        with pytest.raises(TransientSendError) as caught:
            await send(transport)
        assert caught.value.code is None
        # The next send opens a new connection by itself.
        assert (await send(transport)).code == 250
    finally:
        await transport.aclose()
    assert (sink.dropped, len(sink.deliveries), sink.connections_made) == (1, 1, 2)


async def test_a_relay_that_is_down_is_a_temporary_failure_and_is_used_again_when_back(
    sink: Sink,
) -> None:
    transport = SmtpTransport(sink.settings())
    try:
        assert (await send(transport)).code == 250  # leaves a pooled connection behind
        await sink.stop()
        with pytest.raises(TransientSendError) as caught:
            await send(transport)
        assert caught.value.code is None
        await sink.start()
        assert (await send(transport)).code == 250
    finally:
        await transport.aclose()
    assert len(sink.deliveries) == 2


async def test_a_long_answer_is_clipped_to_the_column_width(sink: Sink) -> None:
    sink.script("550 5.7.1 " + "y" * 3000)
    transport = SmtpTransport(sink.settings())
    try:
        with pytest.raises(PermanentSendError) as caught:
            await send(transport)
    finally:
        await transport.aclose()
    assert len(caught.value.answer) == MAX_ANSWER


# --- smtp: connections -------------------------------------------------------------------


async def test_twenty_emails_at_concurrency_two_use_at_most_two_connections(sink: Sink) -> None:
    transport = SmtpTransport(sink.settings(concurrency=2))
    try:
        results = await asyncio.gather(
            *(
                transport.send(email_to(), sender=SENDER, recipient=f"c{n}@example.net", name="1")
                for n in range(20)
            )
        )
    finally:
        await transport.aclose()

    assert [r.code for r in results] == [250] * 20
    assert len(sink.deliveries) == 20
    assert 1 <= sink.connections_made <= 2
    assert sink.peak_live <= 2


async def test_an_idle_connection_the_relay_closed_is_replaced_without_a_failure(
    sink: Sink,
) -> None:
    transport = SmtpTransport(sink.settings())
    try:
        await send(transport)
        for protocol in list(sink.live):  # the relay times the idle session out
            protocol.transport.close()
        await sink.wait_until(lambda: not sink.live, "the idle session to close")
        assert (await send(transport)).code == 250
    finally:
        await transport.aclose()
    assert (len(sink.deliveries), sink.connections_made) == (2, 2)


async def test_aclose_quits_the_pooled_connections(sink: Sink) -> None:
    transport = SmtpTransport(sink.settings(concurrency=3))
    await asyncio.gather(*(send(transport) for _ in range(3)))
    assert sink.live

    await transport.aclose()

    await sink.wait_until(lambda: not sink.live, "the pooled connections to close")


# --- smtp: TLS and AUTH ------------------------------------------------------------------


async def test_starttls_with_verification_on_refuses_a_self_signed_certificate(
    tls_sink: Sink,
) -> None:
    transport = SmtpTransport(
        tls_sink.settings(security="starttls", username=AUTH_USER, password=AUTH_PASSWORD)
    )
    try:
        with pytest.raises(TransientSendError) as caught:
            await send(transport)
    finally:
        await transport.aclose()
    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.answer
    assert tls_sink.deliveries == []
    await tls_sink.wait_until(lambda: tls_sink.tls_failures == 1, "the sink to see the refusal")


async def test_starttls_required_but_not_offered_sends_nothing_in_plain_text(sink: Sink) -> None:
    transport = SmtpTransport(sink.settings(security="starttls", verify_certificates=False))
    try:
        with pytest.raises(TransientSendError):
            await send(transport)
    finally:
        await transport.aclose()
    assert sink.deliveries == []


async def test_starttls_with_verification_off_accepts_it_and_auth_works(tls_sink: Sink) -> None:
    transport = SmtpTransport(
        tls_sink.settings(
            security="starttls",
            verify_certificates=False,
            username=AUTH_USER,
            password=AUTH_PASSWORD,
        )
    )
    try:
        assert (await send(transport)).code == 250
    finally:
        await transport.aclose()
    assert len(tls_sink.deliveries) == 1


async def test_starttls_verifies_against_a_trusted_certificate(
    tls_sink: Sink, self_signed: CertFiles
) -> None:
    # The refusal above is about trust, not about TLS not working: trust the cert and it passes.
    settings = tls_sink.settings(security="starttls", username=AUTH_USER, password=AUTH_PASSWORD)
    transport = SmtpTransport(settings, context=self_signed.trusting_client_context())
    try:
        assert (await send(transport)).code == 250
    finally:
        await transport.aclose()


async def test_ca_file_makes_a_relay_with_a_private_ca_verify(
    tls_sink: Sink, self_signed: CertFiles
) -> None:
    settings = tls_sink.settings(
        security="starttls",
        username=AUTH_USER,
        password=AUTH_PASSWORD,
        ca_file=str(self_signed.cert),
    )
    assert settings.verify_certificates, "verification stays on"
    transport = SmtpTransport(settings)
    try:
        assert (await send(transport)).code == 250
    finally:
        await transport.aclose()
    assert len(tls_sink.deliveries) == 1
    assert tls_sink.tls_failures == 0


@pytest.mark.parametrize("content", [None, "this is not a certificate\n"])
async def test_a_ca_file_that_cannot_be_loaded_is_a_settings_error_naming_the_key(
    sink: Sink, tmp_path: Path, content: str | None
) -> None:
    bad = tmp_path / "ca.pem"
    if content is not None:
        bad.write_text(content)
    with pytest.raises(TransportSettingsError) as caught:
        SmtpTransport(sink.settings(security="starttls", ca_file=str(bad)))
    assert str(caught.value).startswith(f"outbound.smtp.ca_file = {str(bad)!r}: cannot load it")


async def test_helo_hostname_is_the_name_announced_in_ehlo(sink: Sink) -> None:
    transport = SmtpTransport(sink.settings(helo_hostname="bridge.harbour.example"))
    try:
        await send(transport)
    finally:
        await transport.aclose()
    assert [d.helo for d in sink.deliveries] == ["bridge.harbour.example"]


# --- from settings -----------------------------------------------------------------------


async def test_transport_from_settings_writes_files_for_file_and_uses_the_relay_for_smtp(
    sink: Sink, tmp_path: Path
) -> None:
    to_files = transport_from_settings(OutboundSettings(transport="file", file_dir=tmp_path))
    await to_files.send(email_to(), sender=SENDER, recipient=RECIPIENT, name="7")
    await to_files.aclose()
    assert os.listdir(tmp_path) == ["7.eml"]

    smtp = sink.settings(helo_hostname="from-settings.example")
    to_relay = transport_from_settings(
        OutboundSettings(transport="smtp", file_dir=tmp_path, smtp=smtp)
    )
    try:
        await to_relay.send(email_to(), sender=SENDER, recipient=RECIPIENT, name="8")
    finally:
        await to_relay.aclose()
    assert [(d.rcpt_tos, d.helo) for d in sink.deliveries] == [
        ((RECIPIENT,), "from-settings.example")
    ]
    assert os.listdir(tmp_path) == ["7.eml"], "nothing written by the smtp transport"


async def test_a_wrong_password_is_a_temporary_failure_not_a_refusal_of_the_email(
    tls_sink: Sink,
) -> None:
    transport = SmtpTransport(
        tls_sink.settings(
            security="starttls", verify_certificates=False, username=AUTH_USER, password="wrong"
        )
    )
    try:
        with pytest.raises(TransientSendError) as caught:
            await send(transport)
    finally:
        await transport.aclose()
    assert caught.value.code == 535
    assert tls_sink.deliveries == []


async def test_a_relay_refusing_our_envelope_sender_is_a_setting_to_fix_not_a_bad_email(
    tls_sink: Sink,
) -> None:
    # No credentials: aiosmtpd answers MAIL with 530. A refusal of MAIL concerns every
    # email alike, so it must not fail the queue for good.
    transport = SmtpTransport(tls_sink.settings(security="starttls", verify_certificates=False))
    try:
        with pytest.raises(TransientSendError) as caught:
            await send(transport)
    finally:
        await transport.aclose()
    assert caught.value.code == 530


async def test_implicit_tls_delivers(self_signed: CertFiles) -> None:
    relay = Sink(tls_context=self_signed.server_context(), implicit_tls=True)
    await relay.start()
    transport = SmtpTransport(relay.settings(security="tls", verify_certificates=False))
    try:
        assert (await send(transport)).code == 250
    finally:
        await transport.aclose()
        await relay.stop()
    assert len(relay.deliveries) == 1
    assert relay.errors == []


# --- the CLI's test email ----------------------------------------------------------------


async def test_the_test_email_is_fixed_text_marked_as_our_own(sink: Sink) -> None:
    transport = SmtpTransport(sink.settings())
    try:
        result = await send_test(transport, SENDER, RECIPIENT, datetime(2026, 3, 1, tzinfo=UTC))
    finally:
        await transport.aclose()
    assert result.code == 250
    (delivery,) = sink.deliveries
    assert delivery.rcpt_tos == (RECIPIENT,)
    assert delivery.header("Subject") == TEST_SUBJECT
    assert delivery.header("X-Bridge-Notification") == "test"
    assert delivery.header("Auto-Submitted") == "auto-generated"
    assert delivery.header("X-Auto-Response-Suppress") == "All"


async def test_the_test_email_through_the_file_transport_gets_a_dated_name(
    tmp_path: Path,
) -> None:
    await send_test(FileTransport(tmp_path), SENDER, RECIPIENT, datetime(2026, 3, 1, tzinfo=UTC))
    assert os.listdir(tmp_path) == ["test-20260301T000000.eml"]
