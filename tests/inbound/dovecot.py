"""A throwaway Dovecot IMAP server for the receiver tests, and a plain client for it.

`Dovecot` writes a minimal configuration into a short temporary directory (its
unix sockets live there, and socket paths are limited to about 100 bytes),
listens on free ports of 127.0.0.1, accepts any user with the password
`PASSWORD`, and keeps each user's mail as a maildir under the directory. It can
be killed, started again on the same ports, told to drop its connections
(`doveadm kick`), kept from writing into a mailbox, made to advertise fewer
capabilities (`imap_capability`), or to speak TLS (implicit and STARTTLS) with
a given certificate.

The test side talks to it with the standard library's `imaplib` (blocking:
call it through `asyncio.to_thread`), so the receiver under test and the
client that checks it share no code.

Needs the `dovecot` and `doveadm` commands (Debian package `dovecot-imapd`) and
root, because Dovecot switches to the `nobody` user for mail access.
"""

from __future__ import annotations

import contextlib
import grp
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

PASSWORD = "secret"  # a throwaway test server
USER = "bridge"

_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")
_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")
_FETCH_UID = re.compile(rb"UID (\d+)")


def missing() -> str | None:
    """Why the Dovecot tests cannot run here, or None when they can."""
    if shutil.which("dovecot") is None or shutil.which("doveadm") is None:
        return "IMAP tests need Dovecot (Debian package: dovecot-imapd)"
    if os.geteuid() != 0:
        return "IMAP tests run Dovecot as root (it switches to `nobody` for mail)"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Dovecot:
    """One Dovecot instance in its own directory; `start()` it, `remove()` it at the end."""

    def __init__(
        self,
        *,
        tls: tuple[Path, Path] | None = None,
        capabilities: str | None = None,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dv", dir="/tmp"))
        self.root.chmod(0o755)  # Dovecot's mail processes run as `nobody`
        (self.root / "mail").mkdir(mode=0o777)
        (self.root / "mail").chmod(0o777)
        self.port = free_port()
        self.tls_port = free_port() if tls else 0
        self.tls = tls
        self.conf = self.root / "dovecot.conf"
        self.conf.write_text(self._config(capabilities))

    def _config(self, capabilities: str | None) -> str:
        root = self.root
        lines = [
            "protocols = imap",
            "listen = 127.0.0.1",
            f"base_dir = {root}/run",
            f"state_dir = {root}/state",
            f"log_path = {root}/dovecot.log",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain",
            # Refused logins answer at once (the default waits two seconds).
            "auth_failure_delay = 0",
            f"mail_location = maildir:{root}/mail/%u",
            "mail_uid = nobody",
            "mail_gid = nogroup",
            "first_valid_uid = 0",
            "passdb {",
            "  driver = static",
            f"  args = password={PASSWORD}",
            "}",
            "userdb {",
            "  driver = static",
            f"  args = home={root}/mail/%u",
            "}",
            "service imap-login {",
            "  inet_listener imap {",
            f"    port = {self.port}",
            "  }",
            "  inet_listener imaps {",
            f"    port = {self.tls_port}",
            "  }",
            "}",
        ]
        if self.tls:
            cert, key = self.tls
            lines += ["ssl = yes", f"ssl_cert = <{cert}", f"ssl_key = <{key}"]
        else:
            lines.append("ssl = no")
        if capabilities is not None:
            lines.append(f"imap_capability = {capabilities}")
        return "\n".join(lines) + "\n"

    # -- the server ------------------------------------------------------------------

    def start(self) -> None:
        self._run("dovecot", "-c", str(self.conf))
        deadline = time.monotonic() + 10
        while not self._accepting():
            if time.monotonic() > deadline:
                raise RuntimeError(f"Dovecot did not start:\n{self.log()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the server and every session it started, as a crash would (SIGKILL to
        its process group, whose id is the master's pid), and wait until all are gone.

        (A graceful `doveadm stop` takes seconds here and leaves IMAP sessions running.)
        """
        pid_file = self.root / "run" / "master.pid"
        if not pid_file.exists():
            return
        group = int(pid_file.read_text().split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _living_members(group):
            if time.monotonic() > deadline:
                raise RuntimeError("Dovecot did not stop")
            time.sleep(0.01)
        pid_file.unlink()

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def kick(self, user: str = USER) -> None:
        """Drop every IMAP connection of `user` (the server says BYE and closes)."""
        self._run("doveadm", "-c", str(self.conf), "kick", user)

    def save(self, raw: bytes, mailbox: str = "INBOX", user: str = USER) -> None:
        """Deliver `raw` straight into the maildir, as a local delivery agent would
        (tmp/, then renamed into new/); works while the server is stopped."""
        folder = self.folder(mailbox, user)
        name = f"{time.time_ns()}.P{os.getpid()}.bridge-test"
        staged = folder / "tmp" / name
        staged.write_bytes(raw)
        os.chown(staged, pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)
        staged.rename(folder / "new" / name)

    def folder(self, mailbox: str, user: str = USER) -> Path:
        """The maildir of `mailbox` (INBOX is the user's directory itself)."""
        home = self.root / "mail" / user
        return home if mailbox.upper() == "INBOX" else home / f".{mailbox}"

    @contextlib.contextmanager
    def read_only(self, mailbox: str, user: str = USER) -> Iterator[None]:
        """Within the block, Dovecot's mail user cannot write into `mailbox` (its
        maildir directories are made read-only), so a MOVE or COPY there is refused."""
        folder = self.folder(mailbox, user)
        modes = {path: path.stat().st_mode for path in (folder / d for d in ("cur", "new", "tmp"))}
        for path in modes:
            path.chmod(0o555)
        try:
            yield
        finally:
            for path, mode in modes.items():
                path.chmod(mode)

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _accepting(self) -> bool:
        with socket.socket() as probe:
            probe.settimeout(1)
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def _run(self, *command: str) -> None:
        # Output goes to a file, not a pipe: the daemon keeps its inherited descriptors
        # open, and reading a pipe to its end would wait for the server to exit.
        output = self.root / "commands.log"
        with output.open("ab") as sink:
            done = subprocess.run(command, stdout=sink, stderr=sink, check=False, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed:\n{output.read_text()}\n{self.log()}")

    # -- a plain client --------------------------------------------------------------

    @contextlib.contextmanager
    def client(self, user: str = USER) -> Iterator[imaplib.IMAP4]:
        imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        try:
            imap.login(user, PASSWORD)
            yield imap
        finally:
            with contextlib.suppress(Exception):
                imap.logout()

    def append(self, raw: bytes, mailbox: str = "INBOX", user: str = USER) -> int:
        """APPEND `raw`; returns its UID."""
        (uid,) = self.append_all([raw], mailbox, user)
        return uid

    def append_all(
        self, raws: Iterable[bytes], mailbox: str = "INBOX", user: str = USER
    ) -> list[int]:
        """APPEND each message in turn over one connection; returns their UIDs."""
        uids = []
        with self.client(user) as imap:
            for raw in raws:
                status, data = imap.append(_q(mailbox), None, None, raw)
                assert status == "OK", data
                found = _APPENDUID.search(data[0] or b"")
                assert found, data
                uids.append(int(found.group(2)))
        return uids

    def messages(self, mailbox: str = "INBOX", user: str = USER) -> dict[int, bytes]:
        """Every message in `mailbox` by UID, as FETCH BODY.PEEK[] returns it. A message
        moved away while this runs is simply absent."""
        with self.client(user) as imap:
            status, data = imap.select(_q(mailbox), readonly=True)
            assert status == "OK", data
            status, data = imap.uid("SEARCH", "ALL")
            assert status == "OK", data
            uids = (data[0] or b"").split()
            if not uids:
                return {}
            status, parts = imap.uid("FETCH", b",".join(uids).decode(), "(UID BODY.PEEK[])")
            assert status == "OK", parts
        found: dict[int, bytes] = {}
        for part in parts:
            if isinstance(part, tuple):
                uid = _FETCH_UID.search(part[0])
                assert uid, part[0]
                found[int(uid.group(1))] = part[1]
        return found

    def uidvalidity(self, mailbox: str = "INBOX", user: str = USER) -> int:
        with self.client(user) as imap:
            status, data = imap.status(_q(mailbox), "(UIDVALIDITY)")
        assert status == "OK", data
        found = _UIDVALIDITY.search(data[0] or b"")
        assert found, data
        return int(found.group(1))

    def create(self, mailbox: str, user: str = USER) -> None:
        with self.client(user) as imap:
            status, data = imap.create(_q(mailbox))
        assert status == "OK", data

    def delete(self, mailbox: str, user: str = USER) -> None:
        with self.client(user) as imap:
            status, data = imap.delete(_q(mailbox))
        assert status == "OK", data


def _living_members(group: int) -> list[int]:
    """Processes of process group `group` that are not zombies (Linux /proc)."""
    living = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[2]) == group and fields[0] != "Z":
                living.append(int(stat.parent.name))
    return living


def _q(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'
