"""The alert as Talon's cloud actionners send it (`json.Marshal(event)`, reference §3.14/§3.15).

Keys in Talon's order: trace_id, output, priority, rule, hostname, time, source, output_fields, context,
tags. `output` is the prefix-stripped text, `time` Go's zero time when the alert had none, `context` the
step's (Talon's `falco-talon.*` keys included). One fix: numbers keep their exact value (Talon decodes them
as float64, so a pid of 1234567 arrives as 1.234567e+06 and a 2^63 id loses digits).
"""

from __future__ import annotations

import json
from typing import Any

from opentelemetry import trace

from talon_opa.core.events import Alert

GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def event_document(alert: Alert, trace_id: str) -> dict[str, Any]:
    return {
        "trace_id": trace_id,
        "output": alert.output,
        "priority": alert.priority,
        "rule": alert.rule,
        "hostname": alert.hostname,
        "time": alert.time or GO_ZERO_TIME,
        "source": alert.source,
        "output_fields": alert.output_fields,
        "context": alert.context,
        "tags": alert.tags,
    }


def event_json(alert: Alert, trace_id: str | None = None) -> bytes:
    """The payload bytes: compact JSON, like Go's encoding/json."""
    doc = event_document(alert, current_trace_id() if trace_id is None else trace_id)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str).encode()
