"""The HTTP listener's protocol settings: read timeouts, a connection limit, and JSON for aiohttp's own errors.

aiohttp answers some requests before any route runs (an unparsable request line, an unknown method, a
header line too long, an unexpected exception): its answers are plain text. Here they become the intake's
JSON `{"error", "field"}`. Slow clients are bounded: a request's headers must arrive within
`intake.read_timeout_seconds` of the connection opening or of the previous answer (aiohttp's keep-alive
timer closes the connection otherwise; the intake bounds the body with the same timeout), and at most
`intake.max_connections` connections are open at once (the next one gets a 503 and is closed). Request
bodies reach the intake as sent (no automatic decompression): the intake decompresses with its limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol, cast

from aiohttp import http_exceptions, web
from aiohttp.web_request import BaseRequest

from talon_opa.core import config, logs
from talon_opa.engine.intake import INTAKE, RESERVED, Intake
from talon_opa.engine.intake_protocol import Connections, IntakeProtocol

log = logs.get("http")

LINGER_SECONDS = 2.0  # how long the rest of an unparsable request is read (and dropped) after the answer


class _ThrottledLog(logging.Filter):
    """At most one aiohttp error line a second (a flood of bad requests must not flood the logs)."""

    def __init__(self) -> None:
        super().__init__()
        self._throttle = logs.Throttle(1.0)

    def filter(self, record: logging.LogRecord) -> bool:
        held = self._throttle.allow()
        if held is None:
            return False
        record.also_logged_since_last_line = held
        return True


HTTP_LOG = logs.get("http.aiohttp")
HTTP_LOG.addFilter(_ThrottledLog())


def _field(exc: BaseException | None) -> str:
    if isinstance(exc, http_exceptions.BadHttpMethod):
        return "method"
    if isinstance(exc, http_exceptions.LineTooLong):
        return "headers"
    if isinstance(exc, http_exceptions.HttpProcessingError) and "header" in str(exc.message).lower():
        return "headers"  # an invalid header name or value, too many headers
    if isinstance(exc, http_exceptions.HttpProcessingError):
        return "request"
    return ""


def _busy_answer() -> bytes:
    body = json.dumps(
        {
            "error": "too many open connections",
            "field": "",
            "hint": "send again later, reuse connections, or raise intake.max_connections",
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _LingeringClose:
    """A transport whose close sends the answer, half-closes, reads and drops what the client still sends,
    and closes a little later. Closing at once with the client's unread body in the socket resets the
    connection, and the client may lose the answer (an unparsable request line followed by a body)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        t = self._transport
        if t.is_closing():
            return
        t.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, t.close)


class _Handler(web.RequestHandler):
    """aiohttp's protocol handler, with JSON errors and the connection limit."""

    def __init__(self, manager: _Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._server = manager

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._server.refuse_busy(cast(asyncio.Transport, transport)):
            self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs (throttled); raises if the answer began
        transport = self.transport
        parse_error = isinstance(exc, http_exceptions.HttpProcessingError)
        if parse_error and isinstance(transport, asyncio.Transport) and transport.can_write_eof():
            self.transport = cast(asyncio.Transport, _LingeringClose(transport))  # closes it, later
        if status >= 500:
            doc = {"error": "internal error while handling the request", "field": "", "hint": "see the engine's log"}
        else:
            text = message or (exc.message if isinstance(exc, http_exceptions.HttpProcessingError) else "")
            reason = " ".join(part.strip() for part in str(text or "unreadable").splitlines() if part.strip())
            doc = {"error": f"bad HTTP request: {reason[:200]}", "field": _field(exc)}
        resp = web.json_response(doc, status=status)
        resp.force_close()
        return resp


_busy_log = logs.Throttle(1.0)


def reserved_path(path: bytes) -> bool:
    """Paths aiohttp routes elsewhere than the intake (engine.app's routes)."""
    return path in RESERVED or path.startswith(b"/v1/")


class Elsewhere(Protocol):
    """Processes that serve connections the listener accepts (the intake processes, engine/fronts.py)."""

    def protocol(self, listener: Connections, here: Callable[[], asyncio.Protocol]) -> asyncio.Protocol | None:
        """The protocol that passes a new connection on (`here` makes the listener's own, should that fail);
        None: the listener serves it."""

    def open_connections(self) -> int:
        """The connections they hold."""


class _Server(web.Server):
    """aiohttp's server, whose connections start with the intake's own protocol when the app has an intake."""

    def __init__(self, *args: Any, max_connections: int, intake: Intake | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max = max_connections
        self._intake = intake
        self.fast: set[IntakeProtocol] = set()
        self.elsewhere: Elsewhere | None = None

    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]
        if self._intake is None:
            return self.handler()
        if self.elsewhere is not None:
            passing = self.elsewhere.protocol(self, self._own)
            if passing is not None:
                return passing
        return self._own()

    def _own(self) -> IntakeProtocol:
        assert self._intake is not None
        return IntakeProtocol(self, self._intake, reserved_path)

    def handler(self) -> web.RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)

    def open_connections(self) -> int:
        elsewhere = self.elsewhere.open_connections() if self.elsewhere is not None else 0
        return len(self.fast) + len(self._connections) + elsewhere

    def refuse_busy(self, transport: asyncio.Transport) -> bool:
        """Over `intake.max_connections`: a 503 is written and the connection closed (True)."""
        if self.open_connections() <= self._max:
            return False
        held = _busy_log.allow()
        if held is not None:
            log.warning(
                "connection refused: too many open connections",
                extra={"max_connections": self._max, "also_refused_since_last_line": held},
            )
        transport.write(_busy_answer())
        transport.close()
        return True

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        for conn in list(self.fast):
            conn.close_idle()

    async def shutdown(self, timeout: float | None = None) -> None:
        fast = [conn.wait_closed() for conn in list(self.fast)]
        await asyncio.gather(super().shutdown(timeout), asyncio.wait_for(asyncio.gather(*fast), timeout))


class Runner(web.AppRunner):
    """An AppRunner whose connections get the listener's limits and JSON errors, and the intake's own
    protocol when the app has an intake (`INTAKE`)."""

    def __init__(self, app: web.Application, intake: config.Intake, *, own_protocol: bool = True) -> None:
        super().__init__(
            app,
            handle_signals=False,
            access_log=None,
            auto_decompress=False,  # the intake decompresses, bounded by intake.max_body_bytes
            keepalive_timeout=intake.read_timeout_seconds,  # also bounds how long headers may take
            logger=HTTP_LOG,
        )
        self._max_connections = intake.max_connections
        self._own_protocol = own_protocol  # False: aiohttp serves every request (benchmarks' and tests' A/B)

    def handler(self) -> asyncio.Protocol:
        """aiohttp's protocol for a connection an intake process hands back."""
        return self._listening().handler()

    def serve_elsewhere(self, elsewhere: Elsewhere | None) -> None:
        """Pass new connections on to `elsewhere` while it takes them (None: serve them all here)."""
        self._listening().elsewhere = elsewhere

    def _listening(self) -> _Server:
        server = self.server
        assert isinstance(server, _Server), "the runner is set up"
        return server

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts the app; its handler and request factory are kept
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            loop=asyncio.get_running_loop(),
            max_connections=self._max_connections,
            intake=self.app.get(INTAKE) if self._own_protocol else None,
            **self._kwargs,
        )
