"""Logs: one JSON object per line (or text for humans), with the trace id on every line about an alert.

No value can forge a line or reach the terminal raw: in every format, control characters (newlines,
escape bytes, C1 controls, Unicode line separators) are escaped; a text value with a space, `=`, a quote
or an escape is quoted. A text-format traceback is indented under its line.

Messages are fixed (Talon's: `event`, `match`, `action`, `output`, `notification`, `rules`...); variables
go in `extra={...}` and become fields. The trace id comes from the current OpenTelemetry span, so every
line logged while an alert is handled carries it without the caller passing it.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
import time
from typing import Any, TextIO

from opentelemetry import trace

from talon_opa.core import secrets

LOGGER = "talon_opa"

# attributes every LogRecord has; anything else was passed in `extra`
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}

_COLORS = {"DEBUG": "\x1b[90m", "INFO": "\x1b[32m", "WARNING": "\x1b[33m", "ERROR": "\x1b[31m", "CRITICAL": "\x1b[31m"}


# what json.dumps leaves raw and a terminal still interprets: DEL, C1 controls (0x9b is CSI), line separators
_JSON_RAW_CONTROLS = re.compile("[\x7f-\x9f\u2028\u2029]")
# every control character, for the text formats
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NEEDS_QUOTES = re.compile('[\\s="\\\\]|[\x00-\x1f\x7f-\x9f\u2028\u2029]')
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_control(m: re.Match[str]) -> str:
    c = m.group(0)
    return _SHORT_ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def escape(text: str) -> str:
    """Control characters as visible escapes (`\\n`, `\\x1b`, `\\u2028`): the text stays on one line."""
    return _CONTROLS.sub(_escape_control, text)


def _json_escape_rest(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group(0)):04x}"


def get(name: str = "") -> logging.Logger:
    """The engine's logger (or a child of it)."""
    return logging.getLogger(f"{LOGGER}.{name}" if name else LOGGER)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's extra fields, plus the trace id of the current span when there is one."""
    out = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
    if "trace_id" not in out:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = format(ctx.trace_id, "032x")
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        doc.update(fields(record))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        line = json.dumps(doc, default=str, ensure_ascii=False, separators=(",", ":"))
        return secrets.KNOWN.scrub(_JSON_RAW_CONTROLS.sub(_json_escape_rest, line))


class TextFormatter(logging.Formatter):
    def __init__(self, color: bool) -> None:
        super().__init__()
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        level = record.levelname[:4]
        if self.color:
            level = f"{_COLORS.get(record.levelname, '')}{level}\x1b[0m"
        extras = " ".join(f"{k}={_text(v)}" for k, v in fields(record).items())
        line = f"{stamp} {level} {escape(record.getMessage())}" + (f" {extras}" if extras else "")
        if record.exc_info:
            # indented, each line escaped: a traceback quoting a value cannot start a line of its own
            trace_lines = self.formatException(record.exc_info).splitlines()
            line += "".join(f"\n    | {escape(t)}" for t in trace_lines)
        return secrets.KNOWN.scrub(line)


def _text(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str, ensure_ascii=False)
    if s and not _NEEDS_QUOTES.search(s):
        return s
    return '"' + escape(s.replace("\\", "\\\\").replace('"', '\\"')) + '"'


class Throttle:
    """At most one log line per `interval` seconds for a repeated condition (overload must not flood logs)."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._next = 0.0
        self._suppressed = 0

    def allow(self) -> int | None:
        """None: stay quiet; else how many lines were held back since the last one."""
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return None
        self._next = now + self.interval
        held, self._suppressed = self._suppressed, 0
        return held


def setup(log_format: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Send the engine's logs to `stream` (stderr) in the given format; idempotent."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._talon_opa = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(color=log_format == "color"))
    # aiohttp's own loggers (server errors, tracebacks) get the same format: one line per record
    for logger, lvl in ((get(), level.upper()), (logging.getLogger("aiohttp"), "WARNING")):
        for h in list(logger.handlers):
            if getattr(h, "_talon_opa", False):
                logger.removeHandler(h)
        logger.addHandler(handler)
        logger.setLevel(lvl)
        logger.propagate = False
