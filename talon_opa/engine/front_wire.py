"""What the engine and its intake processes (engine/fronts.py, engine/front.py) say to each other.

Two Unix socket pairs per intake process. On the first, frames: a 4-byte big-endian length, then a
`marshal` payload (both ends are this package, in processes the engine started as its own user; marshal
trusts what it reads, as the engine trusts its intake processes): the engine's settings for the intake
first, then batches of records one way and of answers the other way. On the second, connections travel as
their file descriptors (SCM_RIGHTS), each with a frame of the bytes already read from it: the engine passes
each new connection on, and the intake process hands one back when a request on it is not one its protocol
takes.
"""

from __future__ import annotations

import dataclasses
import marshal
import operator
import socket
import struct
from collections.abc import Iterator
from typing import Any

from talon_opa.core.events import Alert

_LEN = struct.Struct(">I")
MAX_FRAME = 1 << 30

ALERT = 0  # (ALERT, seq, alert id, alert fields, body, content type, traceparent, tracestate)
REFUSED = 1  # (REFUSED, status): the intake process refused a request itself (counted by the engine)
STOP = 2  # engine → intake process: take no more connections, write the answers to come, exit
HELD = 3  # (HELD, held, taken): the connections the intake process holds, and has taken in all, when they change

_ALERT_FIELDS = tuple(f.name for f in dataclasses.fields(Alert))
_alert_values = operator.attrgetter(*_ALERT_FIELDS)


def frame(payload: Any) -> bytes:
    try:
        data = marshal.dumps(payload)
    except ValueError:  # a dict subclass (a JSON object with a repeated key, nested in an alert)
        data = marshal.dumps(_plain(payload))
    return _LEN.pack(len(data)) + data


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def alert_values(alert: Alert) -> tuple[Any, ...]:
    return tuple(_alert_values(alert))


def alert_of(values: tuple[Any, ...]) -> Alert:
    return Alert(*values)


class Frames:
    """Frames out of a byte stream, as the bytes arrive."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Any]:
        buf = self._buf
        buf += data
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _LEN.unpack_from(buf, pos)
            if n > MAX_FRAME:
                raise ValueError(f"a frame of {n} bytes")
            if len(buf) - pos - 4 < n:
                break
            yield marshal.loads(memoryview(buf)[pos + 4 : pos + 4 + n])
            pos += 4 + n
        del buf[:pos]


def send_connection(channel: socket.socket, fd: int, read: bytes) -> None:
    """Hand a connection's descriptor and what was read of it over `channel` (blocking)."""
    data = frame(read)
    sent = channel.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
    if sent < len(data):
        channel.sendall(data[sent:])


class Connections:
    """Connections handed over a channel: each frame's descriptor came with its first byte."""

    def __init__(self) -> None:
        self._frames = Frames()
        self._fds: list[int] = []

    def receive(self, channel: socket.socket) -> list[tuple[int, bytes]] | None:
        """What one read of the (readable, non-blocking) channel completes; None at its end."""
        data, ancillary, _, _ = channel.recvmsg(1 << 18, socket.CMSG_SPACE(64 * 4))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                self._fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
        if not data:
            return None
        done = []
        for read in self._frames.feed(data):
            done.append((self._fds.pop(0), read))
        return done


def read_settings(link: socket.socket) -> dict[str, Any]:
    """The first frame of the link (blocking), read to its last byte and not beyond."""
    head = _read_exactly(link, 4)
    (n,) = _LEN.unpack(head)
    settings: dict[str, Any] = marshal.loads(_read_exactly(link, n))
    return settings


def _read_exactly(link: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        part = link.recv(n - len(data))
        if not part:
            raise ConnectionError("the engine closed the link before sending the intake's settings")
        data += part
    return bytes(data)
