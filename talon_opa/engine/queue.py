"""The bounded in-process queue between intake and execution.

At most `capacity` accepted alerts wait, and the alerts accepted and not finished hold at most
`max_bytes` of bodies (one alert is always let into an idle queue); `put` refuses beyond either (intake
answers 503), so nothing accepted is dropped and a burst of large alerts cannot exhaust memory. N workers
take alerts in order; alerts with the same target key (the pod) never run at the same time: a worker that
finds its alert's target busy hands it to the worker already on that target, which runs it next, in
arrival order (`on_wait` is told of an alert that waits so, e.g. to decide it meanwhile). `drain` stops
intake and waits for every accepted alert to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from talon_opa.core import logs

log = logs.get("queue")

J = TypeVar("J")


@dataclass(eq=False)
class _Entry(Generic[J]):
    job: J
    target: Hashable | None
    size: int


class QueueClosed(Exception):
    """The queue is draining: no new alerts."""


class AlertQueue(Generic[J]):
    """Bounded queue + workers with per-target ordering. `handler(job, started)` must not raise (it is logged).

    An alert counts as waiting (depth, capacity) until its handler calls `started()` (or returns): a
    handler that decides alerts ahead of running them (more workers than plans running at once) calls
    it once the plan may run, so those alerts still count against the capacity.
    """

    def __init__(
        self,
        handler: Callable[[J, Callable[[], None]], Awaitable[None]],
        *,
        capacity: int,
        workers: int,
        max_bytes: int | None = None,
        on_depth: Callable[[int], None] | None = None,
        on_wait: Callable[[J], None] | None = None,
    ) -> None:
        self._handler = handler
        self._on_wait = on_wait
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0  # sizes of the alerts accepted and not finished (they hold memory until then)
        self._n_workers = workers
        self._on_depth = on_depth or (lambda depth: None)
        self._queue: asyncio.Queue[_Entry[J]] = asyncio.Queue()
        self._busy: dict[Hashable, deque[_Entry[J]]] = {}  # target → alerts waiting behind the running one
        self._held: dict[Hashable, int] = {}  # target → its alerts accepted and not finished
        self._waiting = 0  # accepted, not started
        self._unfinished = 0  # accepted, not finished
        self._idle = asyncio.Event()
        self._idle.set()
        self._workers: list[asyncio.Task[None]] = []
        self.closed = False

    @property
    def depth(self) -> int:
        return self._waiting

    @property
    def unfinished(self) -> int:
        return self._unfinished

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work(), name=f"talon-opa-worker-{i}") for i in range(self._n_workers)]

    def has_room(self, size: int) -> bool:
        """Whether `put` would take a job of this size now (not draining, not full by count or bytes)."""
        if self.closed or self._waiting >= self.capacity:
            return False
        return self.max_bytes is None or not self._unfinished or self.bytes + size <= self.max_bytes

    def holds(self, target: Hashable) -> bool:
        """Whether an alert of this target is accepted and not finished (one after it must wait for it)."""
        return target in self._held

    def put(self, job: J, target: Hashable | None = None, size: int = 0) -> bool:
        """Accept the job unless the queue is full by count or bytes (False) or draining (QueueClosed)."""
        if self.closed:
            raise QueueClosed()
        if self._waiting >= self.capacity:
            return False
        if self.max_bytes is not None and self._unfinished and self.bytes + size > self.max_bytes:
            return False
        if target is not None:
            self._held[target] = self._held.get(target, 0) + 1
        self._waiting += 1
        self.bytes += size
        self._unfinished += 1
        self._idle.clear()
        self._queue.put_nowait(_Entry(job, target, size))
        self._on_depth(self._waiting)
        return True

    async def _work(self) -> None:
        while True:
            entry = await self._queue.get()
            target = entry.target
            if target is not None:
                behind = self._busy.get(target)
                if behind is not None:
                    behind.append(entry)  # the worker on this target runs it next
                    if self._on_wait is not None:
                        self._on_wait(entry.job)
                    continue
                self._busy[target] = deque()
            try:
                await self._run(entry)
                if target is not None:
                    queue = self._busy[target]
                    while queue:
                        await self._run(queue.popleft())
            finally:
                if target is not None:
                    rest = self._busy.pop(target, deque())
                    for e in rest:  # only when cancelled mid-way: put them back for other workers
                        self._queue.put_nowait(e)

    async def _run(self, entry: _Entry[J]) -> None:
        waiting = True

        def started() -> None:  # the handler says its alert starts (at the latest when it returns)
            nonlocal waiting
            if waiting:
                waiting = False
                self._waiting -= 1
                self._on_depth(self._waiting)

        try:
            await self._handler(entry.job, started)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("alert handler failed")
        finally:
            started()
            target = entry.target
            if target is not None:
                held = self._held[target] - 1
                if held:
                    self._held[target] = held
                else:
                    del self._held[target]
            self._unfinished -= 1
            self.bytes -= entry.size
            if self._unfinished == 0:
                self._idle.set()

    async def join(self) -> None:
        """Wait until every accepted alert is finished."""
        await self._idle.wait()

    async def drain(self, timeout: float) -> int:
        """Stop accepting, finish what was accepted (up to `timeout`), stop the workers; the unfinished count."""
        self.closed = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.join()
        left = self._unfinished
        await self.stop()
        return left

    async def stop(self) -> None:
        self.closed = True
        for t in self._workers:
            t.cancel()
        for t in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._workers = []
