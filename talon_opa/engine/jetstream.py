"""Replicas on NATS JetStream (`queue.kind: nats`): one work queue of accepted alerts that every replica consumes.

* Publish: before the intake answers 200, the work item is stored in the stream (work-queue retention, file
  storage) on subject `<stream>.alerts.p<N>`, N = the alert's partition: a stable hash of its target pod
  (alerts without one: of their id) modulo `queue.partitions`. The digest of the dedup key is the message's
  `Nats-Msg-Id`, so JetStream drops a duplicate within the stream's duplicate window (the dedup window),
  whichever replica it reached.
* Consume: one durable pull consumer per partition, shared by every replica, with at most one message
  awaiting its ack: one alert of a partition is in flight at a time across all replicas, so two alerts for
  the same pod never act concurrently.
* The message is acked only after its plan has run (or failed and been reported). While it runs, the
  replica tells JetStream it is still working on it; a replica that dies stops doing so, and the alert is
  delivered again to another replica after `queue.ack_wait_seconds`. Actions are idempotent, so a
  redelivered alert converges instead of acting twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from talon_opa.core import config, logs
from talon_opa.core.errors import AlertError, TalonError
from talon_opa.engine.work import WorkItem

if TYPE_CHECKING:  # nats is imported when a queue is made: an engine without `queue.kind: nats` never loads it
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext, api

log = logs.get("jetstream")

Handler = Callable[[WorkItem, Mapping[str, str]], Awaitable[None]]  # the item and its message's trace headers
PUBLISH_TIMEOUT = 5.0


class QueueUnavailable(TalonError):
    """NATS did not store the alert (unreachable, or no answer in time): nothing was accepted."""


def partition_of(target: tuple[str, str] | None, alert_id: str, partitions: int) -> int:
    """The alert's partition: the same for every alert about one pod, in every replica."""
    key = f"{target[0]}/{target[1]}" if target else alert_id
    return zlib.crc32(key.encode()) % partitions


def message_id(dedup_key: str) -> str:
    return hashlib.sha256(dedup_key.encode()).hexdigest()


class JetStreamQueue:
    """Publishes accepted work items and consumes them, one in flight per partition across replicas."""

    def __init__(self, cfg: config.Config, handler: Handler, on_depth: Callable[[int], None] | None = None) -> None:
        q = cfg.queue
        self._url = q.nats_url
        self._stream = q.nats_stream
        self._subject = f"{q.nats_stream}.alerts"
        self._partitions = q.partitions
        self._ack_wait = q.ack_wait_seconds
        self._window = cfg.deduplication.time_window_seconds
        self._handler = handler
        self._on_depth = on_depth or (lambda depth: None)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.closed = False
        self._errors = logs.Throttle(5.0)

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def connect(self) -> None:
        """Connect, then create the stream and the partitions' consumers when missing (idempotent)."""
        import nats
        from nats.errors import Error as NatsError
        from nats.js import api
        from nats.js.errors import NotFoundError

        try:
            self._nc = await nats.connect(
                servers=[s.strip() for s in self._url.split(",") if s.strip()],
                name="talon-opa",
                connect_timeout=5,
                reconnect_time_wait=1,
                max_reconnect_attempts=-1,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        except (OSError, NatsError, TimeoutError) as e:
            raise TalonError(
                f"cannot connect to NATS at queue.nats_url: {e}",
                hint="start nats-server with JetStream (-js), or set queue.nats_url (or queue.kind: memory)",
            ) from e
        self._js = self._nc.jetstream()
        subjects = [f"{self._subject}.*"]
        window = self._window if self._window > 0 else 0.1  # 0 turns dedup off: no message ids are sent
        try:
            await self._js.stream_info(self._stream)
        except NotFoundError:
            await self._js.add_stream(
                api.StreamConfig(
                    name=self._stream,
                    subjects=subjects,
                    retention=api.RetentionPolicy.WORK_QUEUE,
                    storage=api.StorageType.FILE,
                    duplicate_window=window,
                )
            )
        for n in range(self._partitions):
            await self._js.add_consumer(self._stream, self._consumer_config(n))

    def _consumer_config(self, n: int) -> api.ConsumerConfig:
        from nats.js import api

        return api.ConsumerConfig(
            durable_name=f"p{n}",
            filter_subject=f"{self._subject}.p{n}",
            ack_policy=api.AckPolicy.EXPLICIT,
            max_ack_pending=1,
            ack_wait=self._ack_wait,
            deliver_policy=api.DeliverPolicy.ALL,
        )

    async def publish(
        self, item: WorkItem, target: tuple[str, str] | None, dedup_key: str | None, trace: Mapping[str, str]
    ) -> tuple[int, bool]:
        """Store the item (its stream sequence, and whether JetStream had it already); QueueUnavailable if not."""
        from nats.errors import Error as NatsError

        if self.closed:
            raise QueueUnavailable("the engine is shutting down", hint="send it again (another replica)")
        js = self._js
        if js is None or not self.connected:
            raise QueueUnavailable("NATS is unreachable", hint="send it again later; the engine reconnects by itself")
        headers = dict(trace)
        if dedup_key is not None and self._window > 0:
            headers["Nats-Msg-Id"] = message_id(dedup_key)
        subject = f"{self._subject}.p{partition_of(target, item.alert_id, self._partitions)}"
        try:
            ack = await js.publish(subject, item.encode(), timeout=PUBLISH_TIMEOUT, headers=headers)
        except (NatsError, TimeoutError, OSError) as e:
            raise QueueUnavailable(
                f"NATS did not store the alert: {type(e).__name__}: {e}", hint="send it again later"
            ) from e
        return ack.seq, bool(ack.duplicate)

    async def original_id(self, seq: int) -> str:
        """The id of the alert stored at `seq`, "" when it is already consumed (work-queue streams delete it)."""
        from nats.errors import Error as NatsError

        if self._js is None:
            return ""
        try:
            msg = await self._js.get_msg(self._stream, seq)
            return WorkItem.decode(msg.data or b"").alert_id
        except (NatsError, TimeoutError, AlertError):
            return ""

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._consume(n), name=f"talon-opa-jetstream-p{n}") for n in range(self._partitions)
        ]
        self._tasks.append(loop.create_task(self._watch_depth(), name="talon-opa-jetstream-depth"))

    async def depth(self) -> int:
        """Alerts in the stream not yet finished by any replica (waiting, or in flight somewhere)."""
        assert self._js is not None
        total = 0
        for n in range(self._partitions):
            info = await self._js.consumer_info(self._stream, f"p{n}", timeout=PUBLISH_TIMEOUT)
            total += (info.num_pending or 0) + (info.num_ack_pending or 0)
        return total

    async def _watch_depth(self, every: float = 2.0) -> None:
        """The queue depth gauge, for the whole stream (every replica reports the same figure)."""
        while True:
            try:
                self._on_depth(await self.depth())
            except asyncio.CancelledError:
                raise
            except Exception as e:  # disconnected: the next turn tries again
                if self._errors.allow() is not None:
                    log.warning("jetstream depth unknown", extra={"error": str(e)})
            await asyncio.sleep(every)

    async def _consume(self, n: int) -> None:
        assert self._js is not None
        sub = await self._js.pull_subscribe(
            f"{self._subject}.p{n}", durable=f"p{n}", stream=self._stream, config=self._consumer_config(n)
        )
        while not self.closed:
            try:
                msgs = await sub.fetch(1, timeout=1.0)
            except TimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # disconnected meanwhile: the client reconnects by itself
                if self._errors.allow() is not None:
                    log.warning("jetstream fetch failed", extra={"partition": n, "error": str(e)})
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                await self._process(msg)

    async def _process(self, msg: Msg) -> None:
        self._in_flight += 1
        self._idle.clear()
        keepalive = asyncio.get_running_loop().create_task(self._keep_alive(msg), name="talon-opa-jetstream-wip")
        try:
            try:
                item = WorkItem.decode(msg.data)
            except AlertError as e:
                log.error("not a work item, dropped", extra={"subject": msg.subject, "error": str(e)})
                await msg.term()
                return
            await self._handler(item, dict(msg.headers or {}))
            await msg.ack()
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _keep_alive(self, msg: Msg) -> None:
        """Tell JetStream the alert is still being worked on, so it is not delivered to another replica."""
        from nats.errors import Error as NatsError

        while True:
            await asyncio.sleep(max(self._ack_wait / 3, 0.2))
            with contextlib.suppress(NatsError, TimeoutError):
                await msg.in_progress()

    async def drain(self, timeout: float) -> int:
        """Stop taking alerts, finish the ones in flight (up to `timeout`); the unfinished count (redelivered later)."""
        self.closed = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        left = self._in_flight
        await self.stop()
        return left

    async def stop(self) -> None:
        from nats.errors import Error as NatsError

        self.closed = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if self._nc is not None:
            with contextlib.suppress(NatsError, TimeoutError, OSError):
                await self._nc.close()

    async def _on_error(self, e: Exception) -> None:
        if self._errors.allow() is not None:
            log.warning("nats error", extra={"error": str(e)})

    async def _on_disconnected(self) -> None:
        log.warning("nats disconnected, reconnecting", extra={"url": self._url})

    async def _on_reconnected(self) -> None:
        log.info("nats reconnected")
