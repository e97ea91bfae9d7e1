"""How one rendered email leaves the daemon: to a relay over SMTP, or to a file.

This module owns the `Transport` protocol and its two implementations, and
the mapping of every way a hand-over can go wrong onto two errors: a
`TransientSendError` (try again later: SMTP 4xx, a refused or dropped
connection, a timeout, a TLS or AUTH failure while opening a session) and a
`PermanentSendError` (this email can never be delivered as it is: SMTP 5xx in
answer to RCPT or DATA, or an address the relay cannot take). A refusal of
MAIL is transient: it concerns our envelope sender, the same for every email.

Envelope. Callers pass the envelope explicitly (`sender`, `recipient`) instead
of letting it be derived from the headers: the outbox has exactly one
recipient per email, so a transport takes exactly one, and a relay can never
accept a message for some recipients and refuse it for others.

`transport_from_settings` picks and builds the one `outbound.transport` names.

It does not decide anything about the queue (retries, backoff, leases live in
`bridge.outbound.sender`) and it never logs: what went wrong travels in the
errors, whose `str()` names the code only. The relay's answer is kept in
`.answer` (at most `MAX_ANSWER` characters); it may echo an address, so it
goes to the store, never to a log line.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import aiosmtplib

from bridge.config import OutboundSettings, OutboundSmtpSettings
from bridge.errors import BridgeError

# The width of `outbox.smtp_answer`.
MAX_ANSWER = 1000

# A file name stem that cannot leave the folder or hide as a dot file.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")

# How long a pooled connection may take to answer NOOP before it is replaced.
_NOOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SendResult:
    """The relay accepted the email: its code (250) and its answer (often a queue id)."""

    code: int
    answer: str


class SendError(BridgeError):
    """The email was not handed over. `code` is the SMTP code, None when there was none."""

    def __init__(self, code: int | None, answer: str) -> None:
        self.code = code
        self.answer = clip(answer)
        # The answer may echo an address: keep it out of str(), which ends up in logs.
        super().__init__(f"{type(self).__name__}: code={code}")


class TransientSendError(SendError):
    """Try again later; nothing about this email is wrong as far as we know."""


class PermanentSendError(SendError):
    """The relay refused this email for good (5xx), or it cannot be sent as it is."""


class Transport(Protocol):
    """Hands one email for one recipient over, or raises a `SendError`."""

    async def send(
        self, message: EmailMessage, *, sender: str, recipient: str, name: str
    ) -> SendResult:
        """Deliver `message` with envelope `sender` -> `recipient`.

        `name` is the caller's reference for this email (the outbox id): the file
        transport names its file after it. It must match `[A-Za-z0-9_-][A-Za-z0-9._-]*`.
        """
        ...

    async def aclose(self) -> None:
        """Release connections; the transport is not used afterwards."""
        ...


class TransportSettingsError(BridgeError):
    """A transport cannot be built from its settings; the message names the key."""


def clip(answer: str) -> str:
    """An answer as it fits `outbox.smtp_answer`: one line per line, at most MAX_ANSWER."""
    text = " ".join(answer.split())
    return text if len(text) <= MAX_ANSWER else text[: MAX_ANSWER - 3] + "..."


def classify(code: int, answer: str) -> SendError:
    """The error for an SMTP reply that is not a success: 5xx permanent, else transient."""
    if 500 <= code < 600:
        return PermanentSendError(code, answer)
    return TransientSendError(code, answer)


# --- file ------------------------------------------------------------------------------


class FileTransport:
    """Writes each email to `{directory}/{name}.eml`, atomically.

    A reader of the folder sees a complete file or none: the bytes go to a
    temporary dot file in the same folder, are flushed to disk, renamed into
    place, and the folder entry is flushed too. Sending the same `name` again
    replaces the file, so a retry never leaves two copies. Files are created
    with mode 0600: convenience-mode emails carry message content.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def send(
        self, message: EmailMessage, *, sender: str, recipient: str, name: str
    ) -> SendResult:
        if not _NAME.fullmatch(name):
            raise PermanentSendError(None, "invalid file name for the email")
        try:
            await asyncio.to_thread(self._write, message, name)
        except OSError as err:
            raise TransientSendError(None, f"cannot write the email file: {err.strerror}") from err
        return SendResult(250, f"written as {name}.eml")

    async def aclose(self) -> None:
        return None

    def _write(self, message: EmailMessage, name: str) -> None:
        data = message.as_bytes()
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            Path(temp).replace(self.directory / f"{name}.eml")
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        folder = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


# --- smtp ------------------------------------------------------------------------------


def tls_context(verify: bool, ca_file: Path | None = None) -> ssl.SSLContext:
    """The client TLS context: a trust store and host name checks, or neither.

    The trust store is the system's, or only the certificates in `ca_file` (a
    relay with a private CA). `verify=False` accepts any certificate from
    anyone, which hands the mail to whoever sits on the path. It exists for
    tests with self-signed certificates; `ca_file` is then not read.
    Raises `TransportSettingsError` for a `ca_file` that cannot be loaded.
    """
    if verify and ca_file is not None:
        try:
            return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
        except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
            problem = getattr(err, "strerror", None) or str(err) or type(err).__name__
            raise TransportSettingsError(
                f"outbound.smtp.ca_file = {str(ca_file)!r}: cannot load it: {problem}"
            ) from err
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class SmtpTransport:
    """Sends through a relay with aiosmtplib, over a pool of reusable connections.

    `settings` is `outbound.smtp`:

    * `security`: `starttls` (plain connect, then STARTTLS, which must be
      offered), `tls` (implicit TLS from the first byte, usually port 465), or
      `none` (plain text; for a relay on localhost).
    * `verify_certificates` is true by default. **Setting it to false accepts
      any certificate, so anyone on the network path can read and alter the
      mail. It is for tests with self-signed certificates only.**
    * `ca_file`: trust the CA certificates in this file instead of the system's.
    * `helo_hostname`: the name sent with EHLO; empty means this host's
      fully qualified name.
    * `username` (non-empty) turns AUTH on, with `password`.
    * At most `concurrency` connections are open and at most that many emails
      in flight; an idle connection is checked with NOOP before reuse and
      replaced if the relay has closed it.
    * `timeout_seconds` bounds each connect and each command.

    Failures while opening a session (connect, TLS, EHLO, AUTH) and refusals
    of MAIL are transient whatever their code: they concern every email alike
    (a wrong password, an envelope sender the relay does not accept), so they
    are settings to fix, and must not fail the whole queue for good meanwhile.
    5xx answers to RCPT or DATA are permanent; 4xx, disconnects and timeouts
    are transient.
    """

    def __init__(
        self, settings: OutboundSmtpSettings, *, context: ssl.SSLContext | None = None
    ) -> None:
        self.settings = settings
        self._context = None
        if settings.security != "none":
            self._context = context or tls_context(settings.verify_certificates, settings.ca_file)
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._idle: list[aiosmtplib.SMTP] = []
        self._local_hostname: str | None = settings.helo_hostname or None

    async def send(
        self, message: EmailMessage, *, sender: str, recipient: str, name: str
    ) -> SendResult:
        async with self._slots:
            client = await self._checkout()
            try:
                result = await self._deliver(client, message, sender, recipient)
            except SendError:
                # After a refusal aiosmtplib has sent RSET: the session is reusable
                # (and after a disconnect it is closed, which _checkin sees).
                self._checkin(client)
                raise
            except BaseException:
                # Cancelled or a bug mid-command: the session state is unknown.
                client.close()
                raise
            self._checkin(client)
            return result

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await client.quit(timeout=_NOOP_TIMEOUT_S)
            except (aiosmtplib.SMTPException, OSError):
                pass
            finally:
                client.close()

    async def _deliver(
        self, client: aiosmtplib.SMTP, message: EmailMessage, sender: str, recipient: str
    ) -> SendResult:
        try:
            refused, answer = await client.send_message(
                message, sender=sender, recipients=[recipient]
            )
        except aiosmtplib.SMTPRecipientsRefused as err:
            raise _refusal(err.recipients) from err
        except aiosmtplib.SMTPSenderRefused as err:
            # MAIL is refused for every email alike (our envelope sender, missing AUTH):
            # a setting to fix, during which nothing may be failed for good.
            raise TransientSendError(err.code, err.message) from err
        except aiosmtplib.SMTPResponseException as err:
            raise classify(err.code, err.message) from err
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as err:
            raise TransientSendError(None, _describe(err)) from err
        except (aiosmtplib.SMTPNotSupported, ValueError) as err:
            # An address the relay cannot take (non-ASCII without SMTPUTF8, bad syntax).
            raise PermanentSendError(None, _describe(err)) from err
        except aiosmtplib.SMTPException as err:
            raise TransientSendError(None, _describe(err)) from err
        if refused:  # cannot happen with one recipient; kept for safety
            code, text = next(iter(refused.values()))
            raise classify(code, text)
        return SendResult(250, clip(answer))

    async def _checkout(self) -> aiosmtplib.SMTP:
        """An idle connection that still answers, else a new one."""
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                try:
                    await client.noop(timeout=_NOOP_TIMEOUT_S)
                except (aiosmtplib.SMTPException, OSError):
                    pass
                else:
                    return client
            client.close()
        return await self._connect()

    def _checkin(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected:
            self._idle.append(client)
        else:
            client.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        settings = self.settings
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        password = settings.password.get_secret_value() if settings.password else None
        client = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            username=settings.username or None,
            password=password if settings.username else None,
            local_hostname=self._local_hostname,
            timeout=settings.timeout_seconds,
            use_tls=settings.security == "tls",
            start_tls=settings.security == "starttls",
            tls_context=self._context,
        )
        try:
            await client.connect()
        except aiosmtplib.SMTPAuthenticationError as err:
            raise TransientSendError(err.code, f"authentication failed: {err.message}") from err
        except aiosmtplib.SMTPResponseException as err:
            raise TransientSendError(err.code, err.message) from err
        except (aiosmtplib.SMTPException, OSError) as err:
            # OSError covers ssl.SSLError, e.g. a certificate that does not verify.
            raise TransientSendError(None, _describe(err)) from err
        return client


# --- from settings ---------------------------------------------------------------------


def transport_from_settings(settings: OutboundSettings) -> Transport:
    """The transport `outbound.transport` names: `.eml` files in `file_dir`, or the relay."""
    if settings.transport == "file":
        return FileTransport(settings.file_dir)
    return SmtpTransport(settings.smtp)


def _refusal(refusals: Sequence[aiosmtplib.SMTPRecipientRefused]) -> SendError:
    first = refusals[0]
    return classify(first.code, first.message)


def _describe(err: BaseException) -> str:
    """A connection problem as text; these messages come from the libraries, not the email."""
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
