"""The daemon's lifecycle: start the components, tell systemd, wait, drain, stop.

Every component is an async context manager entered on one `AsyncExitStack`
(store first; the scheduler, outbound and inbound parts join it as they are
built), so shutdown runs in reverse order of start-up. Signals: SIGTERM and
SIGINT stop, SIGHUP reloads what can change without a restart. The watchdog
is fed only while the event loop runs and every registered loop has beaten
recently, so a stuck daemon gets restarted by systemd rather than kept alive.

This module wires; it decides nothing about mail.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from bridge import config, logs
from bridge.errors import BridgeError
from bridge.health import HealthServer
from bridge.inbound.imap import ImapReceiver
from bridge.inbound.pipeline import Pipeline
from bridge.inbound.receipt import ReplyRules
from bridge.inbound.smtp import Listener, ListenerOptions
from bridge.metrics import Metrics, refresh_gauges
from bridge.outbound.dispatcher import Dispatcher
from bridge.outbound.render import RenderContext
from bridge.outbound.sender import Sender
from bridge.poll import PollLoop
from bridge.scheduler import Scheduler
from bridge.store.engine import Store, sqlite_path
from bridge.store.migrate import check as check_schema
from bridge.systemd import Notifier

log = logging.getLogger(__name__)
T = TypeVar("T")

# A loop that has not beaten for this long is stuck (a step may legitimately take a while:
# a batch of sends to a slow relay); the watchdog is then withheld and systemd restarts us.
LOOP_STALL_SECONDS = 300.0
# How often STATUS= (queue depths) is refreshed for `systemctl status`.
STATUS_INTERVAL_SECONDS = 10.0

# Settings sections that SIGHUP applies in place; the rest need a restart.
_RELOADABLE = frozenset({"log"})


class StartupError(BridgeError):
    """A fatal problem at start-up; its message is the one line the operator sees."""


class Liveness:
    """Heartbeats of the daemon's long-running loops, for the watchdog."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._beats: dict[str, float] = {}

    def beat(self, name: str) -> None:
        self._beats[name] = self._clock()

    def ages(self) -> dict[str, float]:
        now = self._clock()
        return {name: now - at for name, at in self._beats.items()}

    def stale(self, max_age: float) -> list[str]:
        now = self._clock()
        return sorted(name for name, at in self._beats.items() if now - at > max_age)


def instance_id(settings: config.Settings) -> str:
    """This process's name in leases and audit events."""
    return settings.daemon.instance_id or f"{socket.gethostname()}:{os.getpid()}"


@asynccontextmanager
async def open_store(settings: config.StoreSettings) -> AsyncIterator[Store]:
    """The store, reachable and at the schema revision this code expects."""
    password = settings.password.get_secret_value() if settings.password else None
    async with Store(settings.url, password=password) as store:
        try:
            status = await check_schema(settings.url, password)
        except Exception as err:
            raise StartupError(f"store unreachable: {type(err).__name__}: {err}") from err
        if not status.ok:
            raise StartupError(
                f"store schema is at revision {status.current or 'none'}, this bridge needs "
                f"{status.head}: run `bridge db upgrade`"
                + (f" ({len(status.differences)} differences)" if status.differences else "")
            )
        yield store


# Where the embedded default keeps the token key it generates (beside the SQLite store).
GENERATED_SECRET_NAME = "token.secret"  # noqa: S105 (a file name, not a secret)


def token_secret(settings: config.Settings, store: Store) -> bytes:
    """The key reply tokens are hashed with.

    A configured secret wins. Without one, a single SQLite instance generates a
    key once and keeps it beside its database file (mode 0600), so the embedded default
    works out of the box. Several instances on PostgreSQL must share one key,
    so there a missing secret is a start-up error rather than a silent split.
    """
    if settings.tokens.secret is not None:
        return settings.tokens.secret.get_secret_value().encode()
    database = sqlite_path(store.url)
    if database is None:
        raise StartupError(
            "tokens.secret is not set: instances sharing a PostgreSQL store need the same key"
            " (tokens.secret_file, $BRIDGE_TOKEN_SECRET or the token-secret credential)"
        )
    generated = database.parent / GENERATED_SECRET_NAME
    if not generated.exists():
        generated.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(generated, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
        log.warning(
            "generated a token key for this single instance", extra={"file": str(generated)}
        )
    return generated.read_text().strip().encode()


async def enter(stack: AsyncExitStack, component: AbstractAsyncContextManager[T], what: str) -> T:
    """Start one component on the stack; a failure to start is one clear line."""
    try:
        return await stack.enter_async_context(component)
    except OSError as err:  # port taken, socket path not writable, TLS file unreadable
        raise StartupError(f"cannot start {what}: {err.strerror or err}") from err
    except StartupError:
        raise
    except BridgeError as err:  # the component's own one-line reason (e.g. a bad option)
        raise StartupError(f"cannot start {what}: {err}") from err


class Daemon:
    """One running bridge process."""

    def __init__(
        self,
        settings: config.Settings,
        *,
        config_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.env = dict(os.environ if env is None else env)
        self.notifier = notifier or Notifier(self.env)
        self.liveness = Liveness()
        self.instance = instance_id(settings)
        self.metrics = Metrics()
        self._stop = asyncio.Event()
        # Set once every component runs (the moment READY=1 goes to systemd).
        self.started = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or `request_stop`); return the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            async with AsyncExitStack() as stack:
                store = await stack.enter_async_context(open_store(self.settings.store))
                self.store = store
                secret = token_secret(self.settings, store)
                self.scheduler = await enter(
                    stack,
                    Scheduler(
                        store,
                        self.settings.retention,
                        blob_dir=self.settings.store.blob_dir,
                        instance=self.instance,
                        beat=self.liveness.beat,
                        stop_grace=self.settings.daemon.shutdown_grace_seconds,
                    ),
                    "the scheduler",
                )
                await self._start_outbound(stack, store, secret)
                self.pipeline = await enter(
                    stack,
                    Pipeline.from_settings(
                        store,
                        self.settings,
                        instance=self.instance,
                        token_secret=secret,
                        beat=self.liveness.beat,
                        metrics=self.metrics,
                    ),
                    "the inbound pipeline",
                )
                smtp = self.settings.inbound.smtp
                if smtp.enabled:
                    rules = ReplyRules(
                        token_secret=secret,
                        address_format=self.settings.tokens.address_format,
                        noreply_address=self.settings.outbound.from_address,
                    )
                    where = (
                        str(smtp.unix_socket) if smtp.unix_socket else f"{smtp.host}:{smtp.port}"
                    )
                    self.listener = await enter(
                        stack,
                        Listener(
                            store,
                            ListenerOptions.from_settings(smtp),
                            rules,
                            stop_grace=self.settings.daemon.shutdown_grace_seconds,
                            metrics=self.metrics,
                        ),
                        f"the inbound {smtp.protocol.upper()} listener on {where}",
                    )
                imap = self.settings.inbound.imap
                if imap.enabled:
                    try:
                        receiver = ImapReceiver(
                            store,
                            imap,
                            address_format=self.settings.tokens.address_format,
                            beat=self.liveness.beat,
                        )
                    except ValueError as err:  # a setting the receiver cannot work with
                        raise StartupError(f"cannot start the IMAP receiver: {err}") from err
                    self.imap = await enter(stack, receiver, "the IMAP receiver")
                health = self.settings.health
                if health.enabled:
                    await enter(
                        stack,
                        HealthServer(
                            health,
                            store,
                            self.metrics,
                            lambda: self.liveness.stale(max_age=LOOP_STALL_SECONDS),
                            loop_ages=self.liveness.ages,
                        ),
                        f"the health endpoint on {health.host}:{health.port}",
                    )
                await stack.enter_async_context(
                    PollLoop(
                        "status",
                        self._report_status,
                        poll_interval=STATUS_INTERVAL_SECONDS,
                        beat=self.liveness.beat,
                    )
                )
                watchdog = asyncio.create_task(self._feed_watchdog(), name="watchdog")
                stack.callback(watchdog.cancel)
                log.info(
                    "bridge started", extra={"instance": self.instance, "store": store.dialect}
                )
                self.notifier.ready("running")
                self.started.set()
                await self._stop.wait()
                log.info("stopping", extra={"instance": self.instance})
                self.notifier.stopping("draining")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("bridge stopped", extra={"instance": self.instance})
        return 0

    async def _start_outbound(self, stack: AsyncExitStack, store: Store, secret: bytes) -> None:
        """The dispatcher (messages -> outbox) and the sender (outbox -> relay or files)."""
        outbound = self.settings.outbound
        self.dispatcher = await enter(
            stack,
            Dispatcher.from_settings(store, outbound, beat=self.liveness.beat),
            "the dispatcher",
        )
        try:
            sender = Sender.from_settings(
                store,
                outbound,
                RenderContext.from_settings(outbound, self.settings.tokens, token_secret=secret),
                instance=self.instance,
                beat=self.liveness.beat,
                metrics=self.metrics,
            )
        except BridgeError as err:  # e.g. an unreadable CA file for the relay
            raise StartupError(f"cannot start the sender: {err}") from err
        self.sender = await enter(stack, sender, "the sender")

    def reload(self) -> None:
        """SIGHUP: re-read the config, apply what can change in place, name the rest."""
        self.notifier.reloading()
        try:
            fresh = config.load(self.config_path, self.env)
        except config.ConfigError as err:
            log.error("reload refused, keeping the running config: %s", err)
            self.notifier.send(ready=1, status="running (reload refused)")
            return
        changed = [
            name
            for name in type(fresh).model_fields
            if getattr(fresh, name) != getattr(self.settings, name)
        ]
        if "log" in changed:
            logs.set_level(fresh.log.level)
        needs_restart = sorted(set(changed) - _RELOADABLE)
        self.settings = fresh.model_copy(
            update={name: getattr(self.settings, name) for name in needs_restart}
        )
        log.info(
            "reloaded",
            extra={
                "applied": ",".join(sorted(set(changed) & _RELOADABLE)) or "-",
                "restart_needed": ",".join(needs_restart) or "-",
            },
        )
        self.notifier.send(ready=1, status="running")

    async def _report_status(self) -> bool:
        """Refresh the queue gauges and show them in `systemctl status` (STATUS=)."""
        try:
            snapshot = await refresh_gauges(self.store, self.metrics, datetime.now(UTC))
        except Exception as err:
            self.notifier.send(status=f"running; store unreachable ({type(err).__name__})")
            raise
        self.notifier.send(status=f"running; {snapshot.status_line()}")
        return False

    async def _feed_watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while True:
            stale = self.liveness.stale(max_age=LOOP_STALL_SECONDS)
            if stale:
                log.error("loops stalled, withholding watchdog", extra={"loops": ",".join(stale)})
            else:
                self.notifier.watchdog()
            await asyncio.sleep(interval / 3)
