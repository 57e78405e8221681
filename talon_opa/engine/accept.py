"""Acceptance: a work item is deduplicated and queued, or refused, without waiting on anything.

The answer is an `Admission`, not an HTTP status: the intake turns it into one (200, or 503 with
Retry-After). The root `receive alert` span starts here, continuing the item's trace context.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from talon_opa.core import config, logs
from talon_opa.core.slots import slot_init
from talon_opa.engine import telemetry
from talon_opa.engine.dedup import Deduplicator, dedup_key
from talon_opa.engine.jetstream import JetStreamQueue, QueueUnavailable
from talon_opa.engine.metrics import Metrics
from talon_opa.engine.queue import AlertQueue, QueueClosed
from talon_opa.engine.work import Job, WorkItem

log = logs.get("engine")

Verdict = Literal["queued", "duplicate", "full", "closing", "unavailable"]


@slot_init
@dataclass(frozen=True, slots=True)
class Admission:
    """What became of one work item at acceptance."""

    verdict: Verdict
    alert_id: str
    trace_id: str = ""
    duplicate_of: str = ""  # the first alert's id, for a duplicate
    capacity: int = 0  # the queue's capacity, when full
    reason: str = ""  # why the queue could not take it, when unavailable
    full_by_bytes: bool = False  # full because of the bytes waiting, not the count

    @property
    def accepted(self) -> bool:
        """Queued, or a duplicate of an alert already queued: either way nothing more to send."""
        return self.verdict in ("queued", "duplicate")


class Acceptor:
    """Dedup, then queue; every outcome traced, counted and (throttled) logged."""

    def __init__(
        self,
        cfg: config.Config,
        *,
        queue: AlertQueue[Job],
        metrics: Metrics,
        tracing: telemetry.Telemetry,
        jetstream: JetStreamQueue | None = None,
        decide_now: Callable[[Job], bool] | None = None,
    ) -> None:
        self._cfg = cfg
        # in process, an alert the candidate index can decide is processed here, not queued (False: queue it)
        self._decide_now = decide_now if jetstream is None else None
        self._queue = queue
        self._jetstream = jetstream
        self._metrics = metrics
        self._telemetry = tracing
        self._tracer = tracing.tracer
        self._key_parts = cfg.deduplication.key
        self.dedup = Deduplicator(cfg.deduplication.time_window_seconds)
        self._full_log = logs.Throttle(1.0)

    def accept_now(self, item: WorkItem) -> Admission | None:
        """Dedup and queue a work item in process, without waiting; None (nothing done) when the queue is
        JetStream: then `accept` must be awaited."""
        if self._jetstream is not None:
            return None
        span, trace_id, key, target, duplicate = self._receive(item)
        if duplicate is not None:
            return duplicate
        job = Job(item, span, time.monotonic())
        queue, size = self._queue, len(item.body)
        # only when the queue would take it (same answer) and holds nothing of its pod (that runs first)
        decide_now = self._decide_now
        if (
            decide_now is not None
            and queue.has_room(size)
            and (target is None or not queue.holds(target))
            and decide_now(job)
        ):
            self.dedup.record(key, item.alert_id, trace_id)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("alert queued", extra={"id": item.alert_id, "trace_id": trace_id})
            return Admission("queued", item.alert_id, trace_id)
        try:
            queued = queue.put(job, target, size)
        except QueueClosed:
            telemetry.fail(span, "the engine is shutting down", "draining")
            span.end()
            return Admission("closing", item.alert_id, trace_id)
        if not queued:
            by_bytes = self._queue.depth < self._queue.capacity
            telemetry.fail(span, "queue full", "queue_full")
            span.end()
            held = self._full_log.allow()
            if held is not None:
                log.warning(
                    "queue full, alert refused",
                    extra={
                        "capacity": self._queue.capacity,
                        "waiting": self._queue.depth,
                        "waiting_bytes": self._queue.bytes,
                        "max_bytes": self._queue.max_bytes,
                        "also_refused_since_last_line": held,
                        "trace_id": trace_id,
                    },
                )
            return Admission("full", item.alert_id, trace_id, capacity=self._queue.capacity, full_by_bytes=by_bytes)
        self.dedup.record(key, item.alert_id, trace_id)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("alert queued", extra={"id": item.alert_id, "trace_id": trace_id})
        return Admission("queued", item.alert_id, trace_id)

    async def accept(self, item: WorkItem) -> Admission:
        """Dedup and queue a work item: in process, without waiting (`accept_now`); on JetStream, once it is stored."""
        admission = self.accept_now(item)
        if admission is not None:
            return admission
        span, trace_id, key, target, duplicate = self._receive(item)
        if duplicate is not None:
            return duplicate
        with trace.use_span(span, end_on_exit=False):  # the trace context goes into the stored message
            return await self._publish(item, span, trace_id, target, key)

    def _receive(self, item: WorkItem) -> tuple[Span, str, str, tuple[str, str] | None, Admission | None]:
        """Start the item's `receive alert` span, count it, look its dedup key up: (span, trace id, dedup key,
        target pod, the Admission of a duplicate, already answered)."""
        alert = item.alert
        ns, pod = alert.namespace() or "", alert.pod_name() or ""
        attrs: dict[str, Any] | None = None
        if self._telemetry.recording:  # the root span's attributes, set at creation (nothing to build otherwise)
            attrs = {
                telemetry.ALERT_RULE: alert.rule,
                telemetry.ALERT_PRIORITY: alert.priority,
                telemetry.ALERT_SOURCE: alert.source,
                telemetry.ALERT_HOSTNAME: alert.hostname,
                telemetry.ALERT_ID: item.alert_id,
            }
            if pod:
                attrs[telemetry.K8S_POD_NAME] = pod
            if ns:
                attrs[telemetry.K8S_NAMESPACE_NAME] = ns
        # a new trace, or the one of the request's W3C headers
        parent = self._telemetry.extract(item.trace_headers()) if item.traceparent else telemetry.NO_PARENT
        span = self._tracer.start_span(telemetry.RECEIVE_ALERT, context=parent, kind=SpanKind.SERVER, attributes=attrs)
        trace_id = telemetry.trace_id_of(span)
        self._metrics.count_event(alert.rule, alert.priority, alert.source)
        # log lines name the trace themselves: entering the span's context costs more than the rest here
        if self._cfg.print_all_events:
            log.info(
                "event",
                extra={
                    "id": item.alert_id,
                    "event": alert.rule,
                    "priority": alert.priority,
                    "source": alert.source,
                    "output": alert.output,
                    "trace_id": trace_id,
                },
            )
        key = dedup_key(self._key_parts, alert)
        target = (ns, pod) if pod else None
        seen = self.dedup.lookup(key)
        if seen is None:
            return span, trace_id, key, target, None
        self._metrics.dedup_hits.inc()
        span.set_attribute(telemetry.ALERT_DUPLICATE, True)
        span.set_attribute(telemetry.ALERT_DUPLICATE_OF, seen.alert_id)
        log.info(
            "duplicate alert, not processed again",
            extra={
                "id": item.alert_id,
                "duplicate_of": seen.alert_id,
                "first_trace_id": seen.trace_id,
                "trace_id": trace_id,
            },
        )
        span.end()
        return span, trace_id, key, target, Admission("duplicate", item.alert_id, trace_id, duplicate_of=seen.alert_id)

    async def _publish(
        self, item: WorkItem, span: Span, trace_id: str, target: tuple[str, str] | None, key: str
    ) -> Admission:
        """Store the item in JetStream; the receive span ends here, the replica that runs it continues the trace."""
        assert self._jetstream is not None
        carrier: dict[str, str] = {}
        telemetry.inject(carrier)
        try:
            seq, duplicate = await self._jetstream.publish(item, target, key, carrier)
        except QueueUnavailable as e:
            telemetry.fail(span, e, "queue_unavailable")
            span.end()
            if self._full_log.allow() is not None:
                log.warning("queue unavailable, alert refused", extra={"error": str(e)})
            return Admission("unavailable", item.alert_id, trace_id, reason=str(e))
        if duplicate:
            first = await self._jetstream.original_id(seq)
            self._metrics.dedup_hits.inc()
            span.set_attribute(telemetry.ALERT_DUPLICATE, True)
            if first:
                span.set_attribute(telemetry.ALERT_DUPLICATE_OF, first)
            log.info("duplicate alert, not processed again", extra={"id": item.alert_id, "duplicate_of": first})
            span.end()
            return Admission("duplicate", item.alert_id, trace_id, duplicate_of=first)
        self.dedup.record(key, item.alert_id, trace_id)
        telemetry.ok(span)
        span.end()
        log.debug("alert queued", extra={"id": item.alert_id, "seq": seq})
        return Admission("queued", item.alert_id, trace_id)
