"""Talking to systemd: the sd_notify protocol, without a C library.

Sends `READY=1`, `STATUS=...`, `WATCHDOG=1`, `RELOADING=1` and `STOPPING=1`
as datagrams to `$NOTIFY_SOCKET` when it is set, and does nothing otherwise,
so the daemon behaves the same outside systemd. It decides nothing about
*when* to send them; that is the daemon's job.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    """A connection-less client of systemd's notification socket."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        # A leading "@" names a socket in the abstract namespace.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval: float | None = int(usec) / 1_000_000 if watched else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, **fields: str | int) -> None:
        """Send `KEY=value` lines; `send(ready=1, status="...")` -> `READY=1\\nSTATUS=...`."""
        if not self._address:
            return
        payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(payload, self._address)

    def ready(self, status: str) -> None:
        self.send(ready=1, status=status)

    def reloading(self) -> None:
        # systemd >= 253 wants the monotonic time with RELOADING=1.
        self.send(reloading=1, monotonic_usec=time.monotonic_ns() // 1000)

    def stopping(self, status: str) -> None:
        self.send(stopping=1, status=status)

    def watchdog(self) -> None:
        self.send(watchdog=1)
