"""The intake's own HTTP/1.1 protocol: the usual alert is parsed and answered here, anything else by aiohttp.

The usual alert is a whole `POST` to an intake path, HTTP/1.1, with a Content-Length within
`intake.max_body_bytes`, without Content-Encoding, Transfer-Encoding or Upgrade (`Expect: 100-continue` is
answered as aiohttp answers it), and with well-formed header lines: it goes through the same `Intake` steps as
aiohttp's route (token, decoding, acceptance, the same JSON answers, counters and log lines), without
aiohttp's per-request objects (request, headers multidict, router, response, writer), which cost more than the
intake's own work (docs/performance.md). Several requests of one read are answered with one write.

Any other request (a reserved path, another method or version, chunked or compressed bodies, a header this
parser does not take, an unparsable request) hands the connection to aiohttp's protocol handler, with the
bytes not yet answered: aiohttp serves the connection from there on, as it serves every route, so every
answer and limit aiohttp and the intake give (405, 413, 415, 431, JSON parse errors, its keep-alive and
timeouts) stay theirs. What this protocol does itself, it does as they do: it closes a connection idle, or
still sending a request's headers, `intake.read_timeout_seconds` after it opened or after its last answer;
a body not received within that time after its headers gets the intake's 408; the connections it holds
count toward `intake.max_connections`.
"""

from __future__ import annotations

import asyncio
import http
import re
import time
from collections.abc import Callable
from functools import partial
from typing import Protocol, cast

from aiohttp.http import SERVER_SOFTWARE
from aiohttp.tcp_helpers import tcp_keepalive

from talon_opa.core import logs
from talon_opa.engine.intake import Intake, Reply, refusal

log = logs.get("http")

LINGER_SECONDS = 2.0  # how long what a client still sends is read and dropped after a last answer
MAX_HEAD = 8190  # bytes of request line and headers this protocol takes (aiohttp's line limit); beyond, aiohttp

# `POST <path>[?query] HTTP/1.1` on a path aiohttp routes as written: no percent-escapes, no dot segments
# (checked apart), no fragment, not `//...`
_REQUEST_LINE = re.compile(rb"POST (/(?!/)[!-\"$&->@-~]*)(?:\?[!-\"$-~]*)? HTTP/1\.1")
# header lines `name: value` with a token name and no control characters in the value (tab allowed)
_HEADER_LINES = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
_HANDED_TO_AIOHTTP = frozenset((b"transfer-encoding", b"upgrade"))
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # to `Expect: 100-continue`, before the answer, as aiohttp writes it


class Connections(Protocol):
    """What the listener gives the protocol: the connection count, and aiohttp's handler for handing over."""

    fast: set[IntakeProtocol]

    def open_connections(self) -> int: ...

    def handler(self) -> asyncio.Protocol: ...

    def refuse_busy(self, transport: asyncio.Transport) -> bool: ...


class _Date:
    """The Date header's value, made once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
        return self._value


_date = _Date()
_SERVER = b"Server: " + SERVER_SOFTWARE.encode() + b"\r\n"
_HEAD = (
    b"HTTP/1.1 %s\r\n%sContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: %d\r\nDate: %s\r\n%s%s\r\n%s"  # status, headers, length, date, server, close, body
)
_REASONS = {s.value: f"{s.value} {s.phrase}".encode() for s in http.HTTPStatus}


def render(reply: Reply, close: bool) -> bytes:
    """A reply as HTTP/1.1 bytes, with the headers aiohttp writes for the same answer."""
    extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in reply.headers) if reply.headers else b""
    return _HEAD % (
        _REASONS[reply.status],
        extra,
        len(reply.body),
        _date(),
        _SERVER,
        b"Connection: close\r\n" if close else b"",
        reply.body,
    )


class IntakeProtocol(asyncio.Protocol):
    """One connection of the intake listener, until it is closed or handed to aiohttp."""

    def __init__(self, connections: Connections, intake: Intake, reserved: Callable[[bytes], bool]) -> None:
        self._connections = connections
        self._intake = intake
        self._reserved = reserved  # paths aiohttp routes elsewhere (/healthz, /v1/...)
        self._auth_name = intake.header.lower().encode()
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf: bytes | bytearray = b""  # what is not answered yet; a bytearray while a request arrives in parts
        self._need = 0  # bytes `_buf` must hold before the awaited request is whole (0: its headers are not in)
        self._since = 0.0  # the start of what is awaited: a request's headers, or its body (`_body_wait`)
        self._body_wait = False
        self._continued = False  # `100 Continue` written for the request whose body is awaited
        self._timer: asyncio.TimerHandle | None = None
        self._pending: asyncio.Future[Reply] | None = None  # an answer that awaits the queue (JetStream, the engine)
        self._paused = False  # reading paused: an answer is pending, or the client does not read ours
        self._closing = False  # the engine stops, or the client asked to close: no request after this one

    # asyncio's protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses
        self._transport = transport
        self._connections.fast.add(self)
        if self._connections.refuse_busy(transport):
            return
        tcp_keepalive(transport)
        self._since = self._loop.time()
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._connections.fast.discard(self)
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # nothing after the last answer is read
        buf = self._buf
        if not buf:
            self._buf = data
        else:  # appended in place: a body sent in many small parts costs its length, not its length squared
            if type(buf) is bytes:
                buf = self._buf = bytearray(buf)
            buf += data
        if self._pending is None:
            if len(self._buf) >= self._need:
                self._serve()
        elif len(self._buf) > self._intake.max_body + MAX_HEAD:  # the client sends on while it waits: enough
            self._pause()

    def eof_received(self) -> bool | None:
        if self._pending is not None:
            self._closing = True
            return True  # the pending answer is written, then the connection closed
        return None

    def pause_writing(self) -> None:
        self._pause()

    def resume_writing(self) -> None:
        if self._pending is None:
            self._resume()

    # the engine's stop

    def close_idle(self) -> None:
        """Close now unless an answer is pending (it closes once written)."""
        self._closing = True
        if self._pending is None and self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        if self._pending is not None:
            await asyncio.wait([self._pending])

    # requests

    def _serve(self) -> None:
        """Answer every whole request buffered; hand the connection over at the first this protocol does not take."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        buf, pos = bytes(self._buf), 0
        out: list[bytes] = []
        self._need = 0
        intake = self._intake
        while pos < len(buf) and not self._closing:
            head_end = buf.find(b"\r\n\r\n", pos, pos + MAX_HEAD + 4)
            if head_end < 0:
                if len(buf) - pos > MAX_HEAD:
                    return self._hand_over(out, pos)  # aiohttp's limits answer it
                break
            line_end = buf.find(b"\r\n", pos)
            m = _REQUEST_LINE.fullmatch(buf, pos, line_end)
            if m is None or self._reserved(m[1]) or b"/." in m[1]:
                return self._hand_over(out, pos)
            if _HEADER_LINES.fullmatch(buf, line_end + 2, head_end + 2) is None:
                return self._hand_over(out, pos)
            length = -1
            content_type: str | None = None
            traceparent = tracestate = ""
            auth: bytes | None = None
            close = expect = False
            for line in buf[line_end + 2 : head_end].split(b"\r\n"):
                name, _, value = line.partition(b":")
                name = name.lower()
                value = value.strip(b" \t")
                if name == b"content-length":
                    if length >= 0 or not value.isdigit():
                        return self._hand_over(out, pos)
                    length = int(value)
                elif name == b"content-type":
                    if content_type is None:
                        content_type = value.decode("utf-8", "surrogateescape")
                elif name == b"traceparent":
                    traceparent = traceparent or value.decode("utf-8", "surrogateescape")
                elif name == b"tracestate":
                    tracestate = tracestate or value.decode("utf-8", "surrogateescape")
                elif name == b"connection":
                    v = value.lower()
                    if b"upgrade" in v:
                        return self._hand_over(out, pos)
                    close = close or b"close" in v
                elif name == b"expect":
                    if value.lower() != b"100-continue":
                        return self._hand_over(out, pos)  # aiohttp's 417
                    expect = True
                elif name == b"content-encoding":
                    if value.lower() not in (b"", b"identity"):
                        return self._hand_over(out, pos)
                elif name in _HANDED_TO_AIOHTTP:
                    return self._hand_over(out, pos)
                if name == self._auth_name and auth is None:
                    auth = value
            length = max(length, 0)
            if length > intake.max_body:
                return self._hand_over(out, pos)  # the intake's 413, from aiohttp's route
            body_end = head_end + 4 + length
            if expect and not self._continued:
                out.append(_CONTINUE)
                self._continued = True
            if body_end > len(buf):
                if not self._body_wait:
                    self._body_wait, self._since = True, self._loop.time()
                self._need = body_end - pos
                break
            self._body_wait = self._continued = False
            body = buf[head_end + 4 : body_end]
            pos = body_end
            self._closing = close
            if not intake.token_ok(auth):
                reply = intake.unauthorized(auth is None)
            else:
                item = intake.work(body, content_type, traceparent, tracestate)
                if isinstance(item, Reply):
                    reply = item
                else:
                    admission = intake.accept_now(item)
                    if admission is None:  # the queue stores it first: answered once it has
                        self._buf = rest = buf[pos:]
                        pending = self._pending = intake.answer_later(item)
                        pending.add_done_callback(partial(self._answered, item.alert_id))
                        self._flush(out)
                        if len(rest) > intake.max_body + MAX_HEAD:
                            self._pause()
                        return None
                    reply = intake.reply(admission)
            out.append(render(reply, self._closing))
        self._buf = buf[pos:]
        self._flush(out)
        return None

    def _answered(self, alert_id: str, pending: asyncio.Future[Reply]) -> None:
        self._pending = None
        error = None if pending.cancelled() else pending.exception()
        if pending.cancelled() or error is not None:
            log.error("the alert could not be accepted", exc_info=error, extra={"id": alert_id})
            self._intake.count_refusal(500)
            reply = refusal(500, "internal error while handling the request", "", hint="see the engine's log")
        else:
            reply = pending.result()
        transport = self._transport
        if transport is None:
            return  # the client went away: the alert is accepted all the same
        self._flush([render(reply, self._closing)])
        if transport.is_closing():
            return
        self._resume()
        if self._buf and len(self._buf) >= self._need:  # what the client sent meanwhile
            self._serve()

    def _flush(self, out: list[bytes]) -> None:
        transport = self._transport
        if transport is None:
            return
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            if not self._body_wait:
                self._since = self._loop.time()
        if self._closing and self._pending is None:
            _close_lingering(transport, self._loop)

    def _hand_over(self, out: list[bytes], pos: int) -> None:
        """Answer what was answered; aiohttp's handler takes the connection with the bytes from `pos`."""
        self._flush(out)
        transport, rest = self._transport, bytes(self._buf[pos:])
        self._buf = b""
        if transport is None or transport.is_closing():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._connections.fast.discard(self)
        self._transport = None
        handler = self._connections.handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._paused:
            transport.resume_reading()
        if rest:
            handler.data_received(rest)

    # timers and flow control

    def _arm(self) -> None:
        self._timer = self._loop.call_at(self._since + self._intake.read_timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._pending is not None or self._loop.time() < self._since + self._intake.read_timeout:
            if self._pending is not None:
                self._since = self._loop.time()
            self._arm()
            return
        if self._body_wait:  # headers in, body late: the intake's 408
            transport.write(render(self._intake.refused(self._intake.slow_body()), close=True))
            _close_lingering(transport, self._loop)
        else:  # idle, or headers late: closed, as aiohttp's keep-alive timer does
            transport.close()

    def _pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()


def _close_lingering(transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
    """Send what is written, half-close, and close a little later: what the client still sends is dropped
    rather than answered by a reset that could lose the answer."""
    if transport.can_write_eof():
        transport.write_eof()
        loop.call_later(LINGER_SECONDS, transport.close)
    else:
        transport.close()
