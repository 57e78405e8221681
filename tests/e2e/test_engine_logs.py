"""Logs: one JSON object per line (or text), fixed messages, fields from `extra`, and the trace id of the
current alert on every line logged while it is handled."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from talon_opa.core import logs
from tests.e2e.engine_harness import DRY_RUN_RULES, running_engine, shell_alert


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`logs.setup` configures the process; put the test session's logging back afterwards."""
    saved = [
        (logger, list(logger.handlers), logger.level, logger.propagate)
        for logger in (logs.get(), logging.getLogger("aiohttp"))
    ]
    yield
    for logger, handlers, level, propagate in saved:
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


FORGED = '2026-01-01T00:00:00.000000Z INFO forged line admin="yes"'
HOSTILE = f'evil\n{FORGED}\r\x1b[2J\x1b]0;title\x07 "quoted" a=b \x9b31m \u2028{FORGED}'
STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")


@pytest.mark.parametrize("log_format", ["json", "text", "color"])
async def test_alert_values_cannot_forge_lines_or_reach_the_terminal_raw(tmp_path: Path, log_format: str) -> None:
    out = io.StringIO()
    logs.setup(log_format, "info", stream=out)
    alert = shell_alert("forge", output=HOSTILE) | {"rule": HOSTILE, "hostname": HOSTILE}
    async with running_engine(tmp_path, DRY_RUN_RULES, print_all_events=True, log_format=log_format) as e:
        assert (await e.post(json_body=alert)).status == 200
        await e.drained()
        assert (await e.post(json_body={"rule": HOSTILE, "time": HOSTILE})).status == 400  # refused: logged too
    text = out.getvalue()
    lines = text.splitlines()
    assert any("event" in line and "forged line" in line for line in lines)  # the values were logged
    assert any("alert refused" in line for line in lines)
    for line in lines:
        if log_format == "json":
            json.loads(line)
        else:
            assert STAMP.match(line), line
        assert "forged line" not in line or not line.startswith(FORGED)
        raw = line.replace("\x1b[0m", "").replace("\x1b[32m", "").replace("\x1b[33m", "").replace("\x1b[90m", "")
        assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", raw), repr(line)
    if log_format != "json":
        assert '\\"quoted\\"' in text  # quotes inside a quoted value are escaped


async def test_aiohttp_errors_and_tracebacks_are_json_lines(tmp_path: Path) -> None:
    out = io.StringIO()
    logs.setup("json", "info", stream=out)
    async with running_engine(tmp_path, DRY_RUN_RULES) as e:
        host, port = e.url.split("//", 1)[1].rsplit(":", 1)
        for _ in range(3):  # throttled: one line a second at most
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
            await writer.drain()
            assert b" 400 " in await reader.read()
            writer.close()
        logging.getLogger("aiohttp.web").error("boom", exc_info=ValueError("from aiohttp"))
    docs = [json.loads(line) for line in out.getvalue().splitlines()]  # every line is JSON
    errors = [d for d in docs if d["message"].startswith("Error handling request")]
    assert len(errors) == 1
    assert "LineTooLong" in errors[0]["exception"]
    assert any(d["message"] == "boom" and "from aiohttp" in d["exception"] for d in docs)
