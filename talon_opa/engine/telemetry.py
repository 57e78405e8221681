"""Tracing: one trace per alert, span names `{verb} {object}`, attribute keys as constants here.

`receive alert` (root; continues an incoming W3C `traceparent`) → `decide plan` → `run action` per step
→ `write output` / `send notification`. An engine exporting spans has its own TracerProvider (never the
global one), exporting by OTLP/HTTP when `otel.traces_enabled`. Trace ids are generated either way: with
nothing to export, spans are `IdsOnlyTracer`'s, which carry the same W3C ids (answers, logs, audit lines and
outgoing `traceparent` headers show them) and record nothing, at a fraction of a recording span's cost, and
OpenTelemetry's SDK is not even imported.
"""

from __future__ import annotations

import random
import socket
import traceback
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    NoOpTracer,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util import types

from talon_opa.core import secrets
from talon_opa.core.config import Otel

if TYPE_CHECKING:  # the SDK is imported only when spans are exported (15 ms of start-up otherwise)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

# span names
RECEIVE_ALERT = "receive alert"
PROCESS_ALERT = "process alert"  # the replica running an alert from JetStream
DECIDE_PLAN = "decide plan"
RUN_ACTION = "run action"
WRITE_OUTPUT = "write output"
SEND_NOTIFICATION = "send notification"
RESUME_PLAN = "resume plan"  # the rest of a plan, once its waiting step is decided (docs/approvals.md)
UNDO = "undo action"  # the root of its own trace, linked to the action's span (docs/undo.md)

# standard attribute keys
K8S_POD_NAME = "k8s.pod.name"
K8S_NAMESPACE_NAME = "k8s.namespace.name"
ERROR_TYPE = "error.type"

# ours
ALERT_ID = "talon.alert.id"
ALERT_RULE = "talon.alert.rule"  # the Falco rule
ALERT_PRIORITY = "talon.alert.priority"
ALERT_SOURCE = "talon.alert.source"
ALERT_HOSTNAME = "talon.alert.hostname"
ALERT_DUPLICATE = "talon.alert.duplicate"
ALERT_DUPLICATE_OF = "talon.alert.duplicate_of"
DECISION_ID = "talon.decision.id"
DECISION_BATCH_SIZE = "talon.decision.batch_size"  # alerts decided by the same OPA request (same decision id)
BUNDLE_REVISION = "talon.bundle.revision"
DECIDED_BY = "talon.decision.by"  # "opa", or "index": the revision's candidate index has no rule for the alert
MATCHED_RULES = "talon.matched_rules"
STEP_COUNT = "talon.plan.steps"
RULE = "talon.rule"
ACTION = "talon.action"
ACTIONNER = "talon.actionner"
STEP_INDEX = "talon.step.index"
CONTINUE = "talon.action.continue"
IGNORE_ERRORS = "talon.action.ignore_errors"
DRY_RUN = "talon.action.dry_run"
STATUS = "talon.status"
HELD = "talon.held"  # why the caps policy held the step (docs/caps.md)
APPROVAL_ID = "talon.approval.id"  # a step that waited for approval (docs/approvals.md)
APPROVAL_WINDOW = "talon.approval.window_seconds"
APPROVAL_RESULT = "talon.approval.result"  # approved, denied or expired
APPROVAL_BY = "talon.approval.by"  # who approved or denied it
RESULT = "talon.result"
OUTPUT_TARGET = "talon.output.target"
NOTIFIER = "talon.notifier"
STAGE = "talon.stage"
OPA_ATTEMPTS = "talon.opa.attempts"
SKIPPED_REASON = "talon.skipped"
UNDO_ACTION_ID = "talon.action.id"  # alert id and step index: what `talon-opa undo` takes
UNDO_TRIGGER = "talon.undo.trigger"  # manual or ttl
UNDO_RESULT = "talon.undo.result"  # undone, already_undone, conflict or failure

_PROPAGATOR = TraceContextTextMapPropagator()
NO_PARENT = otel_context.Context()  # the context of a span that starts a new trace


class Telemetry:
    """The engine's tracer, its provider (flushed at shutdown) and W3C propagation."""

    def __init__(self, otel: Otel, *, exporter: SpanExporter | None = None) -> None:
        if exporter is None and otel.traces_enabled:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=otel.traces_url(), timeout=otel.timeout)
        self.recording = exporter is not None
        self.tracer: Tracer = IdsOnlyTracer()
        self.provider: TracerProvider | None = None  # only when spans are exported
        if exporter is not None:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            resource = Resource.create({"service.name": otel.service_name, "service.instance.id": socket.gethostname()})
            self.provider = TracerProvider(resource=resource)
            self.provider.add_span_processor(
                BatchSpanProcessor(
                    exporter, schedule_delay_millis=otel.batch_delay_ms, export_timeout_millis=int(otel.timeout * 1000)
                )
            )
            self.tracer = self.provider.get_tracer("talon-opa")

    def extract(self, headers: Mapping[str, str]) -> otel_context.Context:
        """The context of an incoming `traceparent` (an empty context without one)."""
        carrier = {k.lower(): v for k, v in headers.items() if k.lower() in ("traceparent", "tracestate")}
        return _PROPAGATOR.extract(carrier)

    def flush(self, timeout_ms: int = 5000) -> bool:
        return self.provider.force_flush(timeout_ms) if self.provider is not None else True

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.force_flush(5000)
            self.provider.shutdown()


_ROOT_FLAGS = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)  # what the SDK gives a root span
_NO_STATE = TraceState()  # immutable: every root span can share it
_random_bits = random.getrandbits


class IdsOnlyTracer(NoOpTracer):
    """The tracer when no span is exported: each span gets the ids, flags and state the SDK's tracer (always
    sampling, or following the parent) would give it, as a `NonRecordingSpan` (attributes, status, events and
    `end` cost nothing and are dropped). `start_as_current_span` is NoOpTracer's, around this `start_span`."""

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        if context is NO_PARENT:  # the usual alert's root span: nothing to look up
            # the SDK generator's draws, without its calls (0, an invalid id, is drawn again there)
            trace_id, span_id = _random_bits(128), _random_bits(64)
            return NonRecordingSpan(
                SpanContext(
                    trace_id or _random_id(128),
                    span_id or _random_id(64),
                    False,
                    _ROOT_FLAGS,
                    _NO_STATE,
                )
            )
        parent = trace.get_current_span(context).get_span_context()
        if parent.is_valid:
            trace_id, flags, state = parent.trace_id, parent.trace_flags, parent.trace_state
        else:
            trace_id, flags, state = _random_id(128), _ROOT_FLAGS, _NO_STATE
        return NonRecordingSpan(SpanContext(trace_id, _random_id(64), False, flags, state))


def _random_id(bits: int) -> int:
    """A random trace (128 bits) or span (64 bits) id, never the invalid 0: what the SDK's generator gives."""
    while True:
        value = _random_bits(bits)
        if value:
            return value


def inject(carrier: dict[str, str]) -> None:
    """The current span's context as W3C `traceparent`/`tracestate` entries of `carrier`."""
    _PROPAGATOR.inject(carrier)


def trace_id_of(span: Span) -> str:
    return format(span.get_span_context().trace_id, "032x")


def span_id_of(span: Span) -> str:
    return format(span.get_span_context().span_id, "016x")


def fail(span: Span, error: BaseException | str, error_type: str | None = None) -> None:
    """Mark a span failed with the reason and `error.type` (known secrets scrubbed)."""
    message = secrets.KNOWN.scrub(str(error))
    kind = error_type or (type(error).__name__ if isinstance(error, BaseException) else "error")
    span.set_attribute(ERROR_TYPE, kind)
    span.set_status(Status(StatusCode.ERROR, message[:1000]))
    if isinstance(error, BaseException):
        # OTel's exception event, written here so that its message and stack are scrubbed too
        stack = "".join(traceback.format_exception(error))
        span.add_event(
            "exception",
            {
                "exception.type": type(error).__qualname__,
                "exception.message": message,
                "exception.stacktrace": secrets.KNOWN.scrub(stack),
            },
        )


def result(span: Span, text: str) -> None:
    """The step's result text on its span (`talon.result`), known secrets scrubbed."""
    span.set_attribute(RESULT, secrets.KNOWN.scrub(text[:1000]))


_OK = Status(StatusCode.OK)


def ok(span: Span, message: str = "") -> None:
    """Mark a span successful (OTel allows a description on errors only: `message` goes in an attribute)."""
    if message:
        result(span, message)
    span.set_status(_OK)


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""
