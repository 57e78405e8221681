"""Tracing: one trace per alert, span names `{verb} {object}`, attribute keys as constants here.

`receive alert` (root; continues an incoming W3C `traceparent`) → `decide plan` → `run action` per step
→ `write output` / `send notification`. Each engine has its own TracerProvider (never the global one),
exporting by OTLP/HTTP when `otel.traces_enabled`; trace ids are generated either way.
"""

from __future__ import annotations

import socket
import traceback
from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from talon_opa.core import secrets
from talon_opa.core.config import Otel

# span names
RECEIVE_ALERT = "receive alert"
PROCESS_ALERT = "process alert"  # the replica running an alert from JetStream
DECIDE_PLAN = "decide plan"
RUN_ACTION = "run action"
WRITE_OUTPUT = "write output"
SEND_NOTIFICATION = "send notification"

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
RESULT = "talon.result"
OUTPUT_TARGET = "talon.output.target"
NOTIFIER = "talon.notifier"
STAGE = "talon.stage"
OPA_ATTEMPTS = "talon.opa.attempts"
SKIPPED_REASON = "talon.skipped"

_PROPAGATOR = TraceContextTextMapPropagator()


class Telemetry:
    """The engine's tracer, its provider (flushed at shutdown) and W3C propagation."""

    def __init__(self, otel: Otel, *, exporter: SpanExporter | None = None) -> None:
        resource = Resource.create({"service.name": otel.service_name, "service.instance.id": socket.gethostname()})
        self.provider = TracerProvider(resource=resource)
        if exporter is None and otel.traces_enabled:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=otel.traces_url(), timeout=otel.timeout)
        if exporter is not None:
            self.provider.add_span_processor(
                BatchSpanProcessor(
                    exporter, schedule_delay_millis=otel.batch_delay_ms, export_timeout_millis=int(otel.timeout * 1000)
                )
            )
        self.tracer: Tracer = self.provider.get_tracer("talon-opa")

    def extract(self, headers: Mapping[str, str]) -> otel_context.Context:
        """The context of an incoming `traceparent` (an empty context without one)."""
        carrier = {k.lower(): v for k, v in headers.items() if k.lower() in ("traceparent", "tracestate")}
        return _PROPAGATOR.extract(carrier)

    def flush(self, timeout_ms: int = 5000) -> bool:
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        self.provider.force_flush(5000)
        self.provider.shutdown()


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


def ok(span: Span, message: str = "") -> None:
    """Mark a span successful (OTel allows a description on errors only: `message` goes in an attribute)."""
    if message:
        result(span, message)
    span.set_status(Status(StatusCode.OK))


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""
