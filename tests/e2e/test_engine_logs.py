"""Logs: one JSON object per line (or text), fixed messages, fields from `extra`, and the trace id of the
current alert on every line logged while it is handled."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from talon_opa.core import logs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`logs.setup` configures the process; put the test session's logging back afterwards."""
    logger = logs.get()
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def test_json_lines_carry_fields_and_the_current_trace_id() -> None:
    out = io.StringIO()
    logs.setup("json", "info", stream=out)
    log = logs.get("test")
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("receive alert") as span:
        log.info("action", extra={"rule": "R", "status": "success", "objects": {"pod": "p"}})
    log.info("outside")
    log.debug("hidden")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "action"
    assert first["level"] == "info"
    assert (first["rule"], first["status"], first["objects"]) == ("R", "success", {"pod": "p"})
    assert first["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert second["message"] == "outside"
    assert "trace_id" not in second


def test_text_lines_for_humans() -> None:
    out = io.StringIO()
    logs.setup("text", "debug", stream=out)
    logs.get("test").warning("rules rejected", extra={"error": "bad thing", "count": 2})
    line = out.getvalue().strip()
    assert " WARN rules rejected " in line
    assert 'error="bad thing"' in line
    assert "count=2" in line


def test_a_throttle_lets_one_line_a_second_through() -> None:
    t = logs.Throttle(60)
    assert t.allow() == 0
    assert t.allow() is None
    assert t.allow() is None
