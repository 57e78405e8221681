"""The engine's micro-batching of OPA decisions, over the one OPA client (`opa.client`)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from talon_opa.core import logs
from talon_opa.core.backoff import Backoff
from talon_opa.core.errors import OpaError
from talon_opa.opa.client import BatchRefused, OpaClient, OpaUnavailable
from talon_opa.opa.plan import Plan

log = logs.get("decide")


@dataclass(eq=False, slots=True)
class _Waiting:
    """An alert waiting for its plan from the batcher."""

    opa_input: Mapping[str, Any]
    future: asyncio.Future[Plan]
    on_retry: Callable[[int, OpaError], Awaitable[None] | None] | None
    since: float
    size: int


class Batcher:
    """Micro-batched decisions: the alerts that wait at the same time are decided in one OPA request.

    `decide` keeps `OpaClient.decide`'s contract for each alert (its plan, or the OpaError it would get
    alone; connection errors retried for as long as it takes, with each alert's `on_retry` called).
    `run()` is the task sending the batches: once an alert waits, it lets the alerts handed out in the same
    loop turn join, then sends every waiting alert (up to `max_size`) as one `data.talon.batch.plans`
    request, and no more than `max_bytes` of alerts (by their body size; one alert always goes), so large
    alerts do not add up to one huge request; alerts arriving meanwhile form the next batch, sent once one
    of the `in_flight` requests under way is answered (meanwhile the batch grows). No timer: a lone alert
    goes at once. A batch OPA will not decide as a whole (an evaluation error, a bundle without
    talon.batch) is decided alert by alert. Without `run()` (or with `max_size` 1) each alert is its own
    request.
    """

    def __init__(
        self, client: OpaClient, *, max_size: int = 64, max_bytes: int = 4 * 1024 * 1024, in_flight: int = 1
    ) -> None:
        self._client = client
        self.max_size = max_size
        self.in_flight = max(1, in_flight)
        self.max_bytes = max_bytes
        self._waiting: deque[_Waiting] = deque()
        self._wake = asyncio.Event()
        self._running = False
        self._refused_log = logs.Throttle(10.0)

    async def decide(
        self,
        opa_input: Mapping[str, Any],
        *,
        on_retry: Callable[[int, OpaError], Awaitable[None] | None] | None = None,
        size: int = 0,
    ) -> Plan:
        """The alert's plan; `size` (its body's length) bounds how many large alerts share a request."""
        if not self._running or self.max_size <= 1:
            return await self._client.decide(opa_input, on_retry=on_retry)
        future: asyncio.Future[Plan] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(opa_input, future, on_retry, time.perf_counter(), size))
        self._wake.set()
        return await future

    async def run(self) -> None:
        """Send batches until cancelled; alerts still waiting then get an OpaError."""
        self._running = True
        slots = asyncio.Semaphore(self.in_flight)
        sending: list[list[_Waiting]] = []  # the batches under way
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    await self._wake.wait()
                    await asyncio.sleep(0)  # the workers woken in this loop turn add their alerts first
                    await slots.acquire()  # while every slot is busy, waiting alerts add up to a larger batch
                    batch = self._take()
                    if batch:
                        sending.append(batch)
                        tg.create_task(self._send_guarded(batch, sending, slots))
                    else:
                        slots.release()
        finally:
            self._running = False
            stopped = OpaError("the engine stopped before the alert was decided", hint="send it again")
            for w in (*(w for batch in sending for w in batch), *self._waiting):
                if not w.future.done():
                    w.future.set_exception(stopped)
            self._waiting.clear()

    def _take(self) -> list[_Waiting]:
        """The next batch: the waiting alerts, up to `max_size` and `max_bytes`."""
        batch: list[_Waiting] = []
        size = 0
        while self._waiting and len(batch) < self.max_size:
            if batch and size + self._waiting[0].size > self.max_bytes:
                break
            w = self._waiting.popleft()
            if not w.future.done():  # its worker was cancelled meanwhile
                batch.append(w)
                size += w.size
        if not self._waiting:
            self._wake.clear()
        return batch

    async def _send_guarded(
        self, batch: list[_Waiting], sending: list[list[_Waiting]], slots: asyncio.Semaphore
    ) -> None:
        try:
            await self._send(batch)
        except Exception as e:  # a bug, not OPA: each alert fails as it would alone; go on
            log.exception("batch failed")
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(e)
        finally:
            slots.release()
        sending.remove(batch)  # not when cancelled: `run` then fails its alerts

    async def _send(self, batch: list[_Waiting]) -> None:
        client = self._client
        backoff = Backoff(client.retry)
        first_sent = time.perf_counter()
        while True:
            attempt = backoff.attempt
            try:
                results = await client.decide_batch_once([w.opa_input for w in batch])
                break
            except BatchRefused as e:
                if self._refused_log.allow() is not None:
                    log.warning("batch refused, deciding its alerts one by one", extra={"error": str(e)})
                await self._one_by_one(batch)
                return
            except OpaUnavailable as e:  # not a 5xx (those are BatchRefused): retried for as long as it takes
                client.on_error("unavailable")
                if attempt == 1 or attempt % 20 == 0:
                    log.warning(
                        "opa unavailable, retrying", extra={"error": str(e), "attempt": attempt, "alerts": len(batch)}
                    )
                for w in batch:
                    if w.on_retry is not None and not w.future.done():
                        maybe = w.on_retry(attempt, e)
                        if maybe is not None:
                            await maybe
                await backoff.sleep()
                batch = [w for w in batch if not w.future.done()]
                if not batch:
                    return
        for w, result in zip(batch, results, strict=True):
            if w.future.done():
                continue
            if isinstance(result, OpaError):
                client.on_error("bad_answer")
                w.future.set_exception(result)
            else:
                seconds = first_sent - w.since + result.seconds  # waiting for the batch + its request
                w.future.set_result(
                    dataclasses.replace(result, attempts=attempt, seconds=seconds, batch_size=len(batch))
                )

    async def _one_by_one(self, batch: list[_Waiting]) -> None:
        async def one(w: _Waiting) -> None:
            try:
                plan = await self._client.decide(w.opa_input, on_retry=w.on_retry)
            except Exception as e:  # OpaError, or a bug: the alert's own outcome either way
                if not w.future.done():
                    w.future.set_exception(e)
                return
            if not w.future.done():
                w.future.set_result(plan)

        async with asyncio.TaskGroup() as tg:
            for w in batch:
                tg.create_task(one(w))
