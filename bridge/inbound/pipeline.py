"""The inbound pipeline: stored raw emails become messages in threads, or are set aside.

`Pipeline` is the worker of docs/inbound.md, "Pipeline": a `PollLoop` whose
step claims a batch of `received` rows under a lease (`_pipeline_claim`), and
for each row runs the pure analysis in a worker thread (`_pipeline_content`:
parse, classify, extract, sanitise, attachments), decides (`_pipeline_decide`,
reading the store through `_pipeline_resolve`), and ends the row `filed`,
`dropped`, `held` or `parked` with a reason code (`_pipeline_file`, which
also writes notices and audit events). An unexpected error puts the row back
with a back-off; after `max_attempts` it is parked (`error`).

Order of the checks, and where it differs from the contract's numbering:
classification, sender rate, token, sender (and DMARC/DKIM when required),
duplicate, thread rate, empty reply, attachment limits, same-body fingerprint,
filing. The duplicate check comes before the thread rate limit and the
fingerprint, so that the same email arriving twice (SMTP and IMAP) is
`duplicate`, not `loop`; the thread limit needs the thread, so it follows the
token. The fingerprint is per (person, thread): a loop always writes to one
reply address, while a person may well send "Thank you" to two threads.

Loop-breaker state: the rate limiters live in memory, per process (several
instances each allow the configured rate; a restart forgets), which is
enough to break a loop. The fingerprint check reads the store (the messages
this person filed by email into the thread in the last day), so it holds
across instances and restarts.

Logs: one INFO line per row with ids, status and reason codes only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

from sqlmodel import col, select

from bridge.config import InboundPipelineSettings, Settings
from bridge.errors import BridgeError
from bridge.inbound._pipeline_admin import InboundRow, list_rows, retry, show_row
from bridge.inbound._pipeline_claim import Job, claim, retry_later
from bridge.inbound._pipeline_content import Analysis, ReplyContent, analyse, reply_content
from bridge.inbound._pipeline_decide import (
    Decider,
    StoredEmail,
    aside,
    classify_sender,
    sender_of,
)
from bridge.inbound._pipeline_file import FileResult, Filing, file_reply, set_aside
from bridge.inbound.receipt import ReplyRules
from bridge.mail.attachments import AttachmentLimits
from bridge.metrics import Metrics
from bridge.poll import PollLoop, Worker
from bridge.store.engine import Store
from bridge.store.models import InboundEmail, InboundStatus

__all__ = [
    "Analysis",
    "InboundRow",
    "Pipeline",
    "PipelineError",
    "ReplyContent",
    "analyse",
    "list_rows",
    "reply_content",
    "retry",
    "show_row",
]

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class PipelineError(BridgeError):
    """The pipeline cannot run with these settings."""


class Pipeline(Worker):
    """The inbound worker; enter it as an async context manager to run its loop.

    `run_once()` does one batch (tests call it directly). `clock` is the only
    source of time; `beat(name)` is called by the loop for the watchdog.
    """

    def __init__(
        self,
        store: Store,
        settings: InboundPipelineSettings,
        rules: ReplyRules,
        *,
        blob_dir: Path,
        instance: str,
        clock: Callable[[], datetime] = _utcnow,
        beat: Callable[[str], None] | None = None,
        retry_base: timedelta = timedelta(seconds=30),
        retry_cap: timedelta = timedelta(hours=1),
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.rules = rules
        self.blob_dir = blob_dir
        self.instance = instance
        self.clock = clock
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.limits = AttachmentLimits(
            settings.max_attachments,
            settings.max_attachment_bytes,
            settings.max_total_attachment_bytes,
        )
        self.decider = Decider(store, settings, rules)
        self._loop = PollLoop(
            "inbound-pipeline", self._step, poll_interval=settings.poll_interval_seconds, beat=beat
        )

    @classmethod
    def from_settings(
        cls,
        store: Store,
        settings: Settings,
        *,
        instance: str,
        token_secret: bytes | None = None,
        beat: Callable[[str], None] | None = None,
        clock: Callable[[], datetime] = _utcnow,
        metrics: Metrics | None = None,
    ) -> Self:
        """A pipeline from the whole config. `token_secret` defaults to `tokens.secret`
        (the daemon passes the key it resolved, which may be the generated one)."""
        if token_secret is None:
            if settings.tokens.secret is None:
                raise PipelineError("tokens.secret is not set: reply tokens cannot be checked")
            token_secret = settings.tokens.secret.get_secret_value().encode()
        rules = ReplyRules(
            token_secret=token_secret,
            address_format=settings.tokens.address_format,
            noreply_address=settings.outbound.from_address,
        )
        return cls(
            store,
            settings.inbound.pipeline,
            rules,
            blob_dir=settings.store.blob_dir,
            instance=instance,
            clock=clock,
            beat=beat,
            metrics=metrics,
        )

    async def _step(self) -> bool:
        return await self.run_once() > 0

    async def run_once(self) -> int:
        """Claim and process one batch; returns how many rows it took (parked ones too)."""
        jobs, parked = await claim(
            self.store,
            instance=self.instance,
            now=self.clock(),
            lease=timedelta(seconds=self.settings.lease_seconds),
            batch_size=self.settings.batch_size,
            max_attempts=self.settings.max_attempts,
        )
        for row_id in parked:
            log.info("inbound parked", extra={"inbound_id": row_id, "reason": "error"})
            self._count(InboundStatus.PARKED.value, "error")
        for job in jobs:
            await self._process_guarded(job)
        return len(jobs) + len(parked)

    async def _process_guarded(self, job: Job) -> None:
        try:
            await self._process(job)
        except Exception:
            # The traceback names code; the engine hides SQL parameters.
            log.exception(
                "inbound row failed", extra={"inbound_id": job.id, "attempt": job.attempts}
            )
            backoff = min(self.retry_base * 2 ** (job.attempts - 1), self.retry_cap)
            # If this fails too (the store is gone), the batch ends here: the rows keep
            # their leases until they expire and are then claimed again, attempts counted.
            parked = await retry_later(
                self.store,
                job,
                instance=self.instance,
                now=self.clock(),
                max_attempts=self.settings.max_attempts,
                backoff=backoff,
            )
            if parked:
                log.info("inbound parked", extra={"inbound_id": job.id, "reason": "error"})
                self._count(InboundStatus.PARKED.value, "error")

    async def _process(self, job: Job) -> None:
        now = self.clock()
        row = await self._load(job.id)
        if row is None:  # deleted meanwhile (its thread was purged)
            return
        analysis = await asyncio.to_thread(analyse, row.raw, classify_sender(row), self.limits)
        decision = await self.decider.decide(row, analysis, now)
        defects = analysis.parsed.defects if analysis.parsed is not None else None
        if isinstance(decision, Filing):
            done = await file_reply(
                self.store, job, decision, instance=self.instance, now=now, blob_dir=self.blob_dir
            )
            if done.result is FileResult.FILED or done.result is FileResult.LOST:
                _log_row(
                    job, done.result.value, thread_id=decision.thread_id, message_id=done.message_id
                )
                self._count(done.result.value, None)
                return
            if done.result is FileResult.DUPLICATE:
                decision = aside(InboundStatus.DROPPED, "duplicate", decision.token)
            else:
                assert done.token is not None
                async with self.store.read() as session:
                    decision = await self.decider.refused(
                        session, row, done.token, sender_of(analysis.parsed)
                    )
        ours, notice_id = await set_aside(
            self.store, job, decision, instance=self.instance, now=now, defects=defects
        )
        _log_row(
            job,
            decision.status.value if ours else FileResult.LOST.value,
            reason=decision.reason,
            rule=str(decision.detail.get("rule", "-")),
            thread_id=decision.thread_id,
            outbox_id=notice_id,
        )
        self._count(decision.status.value if ours else FileResult.LOST.value, decision.reason)

    def _count(self, status: str, reason: str | None) -> None:
        if self.metrics is not None:
            self.metrics.inbound_processed(status, reason)

    async def _load(self, row_id: int) -> StoredEmail | None:
        async with self.store.read() as session:
            row = (
                await session.exec(select(InboundEmail).where(col(InboundEmail.id) == row_id))
            ).first()
        if row is None:
            return None
        return StoredEmail(
            row_id,
            row.raw,
            row.received_via,
            row.envelope_sender,
            row.envelope_recipient,
            row.sha256,
            row.message_id_header,
        )


def _log_row(
    job: Job,
    status: str,
    *,
    reason: str | None = None,
    rule: str = "-",
    thread_id: int | None = None,
    message_id: int | None = None,
    outbox_id: int | None = None,
) -> None:
    log.info(
        "inbound %s",
        status,
        extra={
            "inbound_id": job.id,
            "status": status,
            "reason": reason or "-",
            "rule": rule,
            "thread_id": thread_id,
            "message_id": message_id,
            "outbox_id": outbox_id,
            "attempt": job.attempts,
        },
    )
