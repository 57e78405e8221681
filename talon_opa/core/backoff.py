"""Exponential backoff: wait `initial` seconds after the first failure, twice as long after each next one,
never more than `maximum`.

A `Policy` is the shape (immutable, shared); a `Backoff` is one retry loop's state (which attempt is
under way, how long the next wait is):

    backoff = Backoff(policy)
    while True:
        try:
            return await request()
        except Unavailable:
            await backoff.sleep()  # then `backoff.attempt` is the number of the next try
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Policy:
    """The waits between attempts: `initial` seconds, doubled after each failure, at most `maximum`."""

    initial: float = 0.05
    maximum: float = 2.0


class Backoff:
    """The attempts of one retry loop and the waits between them."""

    def __init__(self, policy: Policy, *, sleep: Sleep | None = None) -> None:
        self.policy = policy
        self._sleep = sleep or asyncio.sleep  # injected by tests: no real waiting
        self._attempt = 1
        self._delay = policy.initial

    @property
    def attempt(self) -> int:
        """The attempt under way, from 1."""
        return self._attempt

    @property
    def delay(self) -> float:
        """The seconds the next wait lasts."""
        return self._delay

    def next(self) -> float:
        """The attempt under way failed: move on to the next one and return the seconds to wait first."""
        delay = self._delay
        self._attempt += 1
        self._delay = min(delay * 2, self.policy.maximum)
        return delay

    async def sleep(self) -> None:
        """The attempt under way failed: wait before the next one."""
        await self._sleep(self.next())

    def reset(self) -> None:
        """An attempt succeeded: the next failure starts again from the first attempt and `initial`."""
        self._attempt = 1
        self._delay = self.policy.initial
