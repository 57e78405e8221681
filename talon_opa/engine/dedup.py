"""Deduplication: alerts with the same key within the window are processed once.

The key is Talon's by default (the prefix-stripped output text; Talon hashes it), or made of the parts
configured in `deduplication.key`. A duplicate is answered 200 and counted, never queued.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from talon_opa.core.events import Alert
from talon_opa.core.slots import slot_init

ALERT_PARTS = ("rule", "priority", "source", "hostname")
PURGE_EVERY_SECONDS = 1.0  # expired keys are dropped in one pass at most this often (a hit checks its own expiry)
SEPARATOR = "\x1f"


def dedup_key(parts: Sequence[str], alert: Alert) -> str:
    """The one dedup key: `parts` are "output", "rule", "priority", "source", "hostname" or output field names."""
    if len(parts) == 1 and parts[0] == "output":
        return alert.output  # Talon's key, the usual case
    values = []
    for part in parts:
        if part == "output":
            values.append(alert.output)
        elif part in ALERT_PARTS:
            values.append(str(getattr(alert, part) or ""))
        else:
            values.append(alert.field_str(part) or "")
    return SEPARATOR.join(values)


@slot_init
@dataclass(frozen=True, slots=True)
class Seen:
    """The first alert of a dedup key within the window."""

    alert_id: str
    trace_id: str
    expires: float


class Deduplicator:
    """Remembers keys for `window` seconds; with a window of 0 nothing is a duplicate."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._seen: dict[str, Seen] = {}  # insertion order == expiry order
        self._next_purge = 0.0

    def _purge(self, now: float) -> None:
        expired = []
        for key, first in self._seen.items():
            if first.expires > now:
                break
            expired.append(key)
        for key in expired:
            del self._seen[key]

    def lookup(self, key: str) -> Seen | None:
        """The first alert with this key if it is still within the window."""
        if self.window <= 0:
            return None
        now = self._clock()
        if now >= self._next_purge:
            self._purge(now)
            self._next_purge = now + PURGE_EVERY_SECONDS
        seen = self._seen.get(key)
        return seen if seen is not None and seen.expires > now else None

    def record(self, key: str, alert_id: str, trace_id: str) -> None:
        if self.window <= 0:
            return
        self._seen.pop(key, None)  # an expired entry not purged yet: the new one goes last, in expiry order
        self._seen[key] = Seen(alert_id, trace_id, self._clock() + self.window)

    def __len__(self) -> int:
        return len(self._seen)
