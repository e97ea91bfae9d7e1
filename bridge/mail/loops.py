"""Loop breakers for mail that slips past classification.

Owns two small tools for DESIGN invariant 5: a sliding-window `RateLimiter`
(at most N events per key per window; a key is e.g. a sender hash or a thread id)
and `body_fingerprint`, which makes "the same body again" cheap to count.
Header-based recognition of automatic mail is `bridge.mail.classify`.

Pure: time is passed in, never read; state is in memory only, so limits are per
process and start empty on restart. Does not: persist counts, pick keys or
limits (the inbound pipeline and the configuration do), or log anything.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections import deque
from datetime import datetime, timedelta


class RateLimiter:
    """At most `limit` allowed events per key within any `window` of time.

    Memory stays bounded: each key keeps at most `limit` timestamps, and keys whose
    newest event has left the window are dropped by a sweep that runs at most once
    per window, so only keys active in roughly the last two windows are held.
    Pass timezone-aware (UTC) datetimes; a clock that steps backwards only makes
    the limiter stricter for a while, never looser.
    """

    def __init__(self, limit: int, window: timedelta) -> None:
        if limit < 0:
            raise ValueError(f"limit must be zero or more, got {limit}")
        if window <= timedelta(0):
            raise ValueError(f"window must be positive, got {window}")
        self._limit = limit
        self._window = window
        self._events: dict[str, deque[datetime]] = {}
        self._last_sweep: datetime | None = None

    def allow(self, key: str, now: datetime) -> bool:
        """Whether one more event for `key` at `now` is within the limit; records it if so."""
        self._sweep(now)
        cutoff = now - self._window
        events = self._events.get(key)
        if events is not None:
            while events and events[0] <= cutoff:
                events.popleft()
        if self._limit == 0 or (events is not None and len(events) >= self._limit):
            return False
        if events is None:
            events = self._events[key] = deque(maxlen=self._limit)
        events.append(now)
        return True

    def __len__(self) -> int:
        """How many keys are held in memory (for tests and metrics)."""
        return len(self._events)

    def _sweep(self, now: datetime) -> None:
        last = self._last_sweep
        # Sweep once per window of (injected) time, and whenever the clock steps back.
        if last is not None and last <= now < last + self._window:
            return
        self._last_sweep = now
        cutoff = now - self._window
        stale = [key for key, events in self._events.items() if not events or events[-1] <= cutoff]
        for key in stale:
            del self._events[key]


def body_fingerprint(text: str) -> str:
    """A hex SHA-256 of `text` that ignores case, whitespace and Unicode normal form.

    Two bodies that differ only in line wrapping, spacing or letter case get the
    same fingerprint, which is what a loop sending "the same message" produces.
    Lone surrogates (from `surrogateescape` decoding) are hashed, not refused.
    """
    normalised = " ".join(unicodedata.normalize("NFC", text).casefold().split())
    return hashlib.sha256(normalised.encode("utf-8", "surrogatepass")).hexdigest()
