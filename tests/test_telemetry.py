"""The spans of the tracer that exports nothing (`IdsOnlyTracer`) carry the ids, flags and state the SDK's give."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider

from talon_opa.core.config import Otel
from talon_opa.engine import telemetry

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    "headers",
    [
        None,  # a new trace: the engine's NO_PARENT
        {},  # a new trace, from an extracted context without one
        {"traceparent": PARENT},
        {"traceparent": PARENT, "tracestate": "vendor=x,other=y"},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"},
    ],
)
def test_ids_only_spans_carry_what_the_sdks_spans_carry(headers: dict[str, str] | None) -> None:
    context = telemetry.NO_PARENT if headers is None else telemetry.Telemetry(Otel()).extract(headers)
    ours = telemetry.IdsOnlyTracer().start_span("receive alert", context=context)
    sdk = TracerProvider().get_tracer("test").start_span("receive alert", context=context)
    a, b = ours.get_span_context(), sdk.get_span_context()
    assert (a.trace_flags, a.trace_state, a.is_remote, a.is_valid) == (b.trace_flags, b.trace_state, False, True)
    assert not ours.is_recording()
    if headers:
        assert telemetry.trace_id_of(ours) == telemetry.trace_id_of(sdk) == PARENT.split("-")[1]
    else:  # a new trace each time
        other = telemetry.IdsOnlyTracer().start_span("receive alert", context=context)
        assert telemetry.trace_id_of(ours) != telemetry.trace_id_of(other)
    assert a.span_id != b.span_id
