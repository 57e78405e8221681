"""Counters of recent actions for the caps policy (docs/caps.md): `input.counters` of each decision.

The executor records every step that ran with success; `snapshot` gives, per actionner and namespace,
how many ran in each sliding window (WINDOWS seconds), keyed by the window as a string:
`{"kubernetes:terminate": {"payments": {"60": 1, "600": 3, "3600": 3}}}`. In memory, per replica.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable

from talon_opa.core.config import CAP_WINDOWS

WINDOWS = CAP_WINDOWS  # the windows a cap may use (window_seconds)
_COMPACT_FROM = 1024


class ActionCounters:
    """Times of the successful steps per (actionner, namespace), kept for the longest window.

    Each key's times are in order (a monotonic clock), so a snapshot counts each window by bisection: its cost
    does not grow with the actions of the last hour (a storm of matching alerts records thousands).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._times: dict[tuple[str, str], list[float]] = {}
        self._start: dict[tuple[str, str], int] = {}  # per key, its times before this index have expired

    def record(self, actionner: str, namespace: str) -> None:
        key = (actionner, namespace)
        times = self._times.get(key)
        if times is None:
            self._times[key] = [self._clock()]
            self._start[key] = 0
        else:
            times.append(self._clock())

    def snapshot(self) -> dict[str, dict[str, dict[str, int]]]:
        """The counts per actionner, namespace and window (only non-empty entries)."""
        now = self._clock()
        out: dict[str, dict[str, dict[str, int]]] = {}
        for key in list(self._times):
            times = self._times[key]
            start = bisect_right(times, now - WINDOWS[-1], self._start[key])
            if start == len(times):
                del self._times[key], self._start[key]
                continue
            if start > _COMPACT_FROM and start * 2 > len(times):  # expired times dropped now and then, not each time
                del times[:start]
                start = 0
            self._start[key] = start
            actionner, namespace = key
            out.setdefault(actionner, {})[namespace] = {
                str(w): len(times) - bisect_right(times, now - w, start) for w in WINDOWS
            }
        return out
