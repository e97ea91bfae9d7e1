"""The one place that configures logging: stderr, plain or JSON, one line per event.

Modules log with `logging.getLogger(__name__)` and pass ids and reason codes
as `extra` fields or as %-arguments; they never pass bodies, subjects, names,
addresses or tokens. This module only formats; it does not scrub (scrubbing
would hide the bug instead of fixing it; a test enforces the rule instead).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class PlainFormatter(logging.Formatter):
    """`LEVEL logger: message key=value ...`; journald adds the timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname} {record.name}: {record.getMessage()}"
        fields = " ".join(f"{k}={v}" for k, v in sorted(_extras(record).items()))
        if fields:
            line = f"{line} {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def configure(level: str = "INFO", fmt: str = "plain", stream: TextIO | None = None) -> None:
    """Install bridge's single stderr handler on the root logger (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_bridge", False):
            root.removeHandler(old)
    handler._bridge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    set_level(level)
    # Libraries that log message content or peer addresses at INFO are kept quieter.
    # aiosqlite logs every statement with its parameters (raw mail bytes) at DEBUG.
    # alembic.runtime.plugins announces its autogenerate plugins on every schema check.
    quiet = (
        "mail.log",
        "aiosmtpd",
        "aioimaplib",
        "mailparser",
        "aiosqlite",
        "alembic.runtime.plugins",
        "apscheduler",  # one INFO line per job run
    )
    for noisy in quiet:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
