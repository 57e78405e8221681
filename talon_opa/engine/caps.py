"""Counters of recent actions for the caps policy (docs/caps.md): `input.counters` of each decision.

The executor records every step that ran with success; `snapshot` gives, per actionner and namespace,
how many ran in each sliding window (WINDOWS seconds), keyed by the window as a string:
`{"kubernetes:terminate": {"payments": {"60": 1, "600": 3, "3600": 3}}}`. In memory, per replica.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from talon_opa.core.config import CAP_WINDOWS

WINDOWS = CAP_WINDOWS  # the windows a cap may use (window_seconds)


class ActionCounters:
    """Times of the successful steps per (actionner, namespace), kept for the longest window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._times: dict[tuple[str, str], deque[float]] = {}

    def record(self, actionner: str, namespace: str) -> None:
        self._times.setdefault((actionner, namespace), deque()).append(self._clock())

    def snapshot(self) -> dict[str, dict[str, dict[str, int]]]:
        """The counts per actionner, namespace and window (only non-empty entries)."""
        now = self._clock()
        out: dict[str, dict[str, dict[str, int]]] = {}
        for key in list(self._times):
            times = self._times[key]
            while times and times[0] <= now - WINDOWS[-1]:
                times.popleft()
            if not times:
                del self._times[key]
                continue
            actionner, namespace = key
            out.setdefault(actionner, {})[namespace] = {str(w): sum(1 for t in times if t > now - w) for w in WINDOWS}
        return out
