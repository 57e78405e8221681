"""An intake process (`intake.processes`): it answers alerts beside the engine, on another core.

The engine (engine/fronts.py) starts it with two descriptors: its link to the engine, and a channel that
carries connections. The engine's intake settings and token come first on the link. The engine's listener
accepts each connection and passes it on the channel to the intake process holding the fewest. Each connection
is served by the intake's own protocol (engine/intake_protocol.py) with those limits: the request is parsed,
the token checked and the alert decoded here, and a refused request answered here (its status counted by the
engine). An alert goes to the engine, which deduplicates, queues and decides it as if it had received it
itself, and the engine's answer comes back to be written. A request the protocol does not take (the engine's
other routes, a compressed or chunked body...) hands its connection to the engine: its descriptor and what
was read of it go over the channel, and aiohttp serves it in the engine's process from there.

It stops when the engine says so (it stops accepting, closes idle connections and writes the answers still
to come), and at once when its link to the engine closes.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from typing import Any, cast

from talon_opa.core import config, logs
from talon_opa.engine import front_wire
from talon_opa.engine.intake import Intake, Reply
from talon_opa.engine.intake_protocol import IntakeProtocol
from talon_opa.engine.listener import reserved_path
from talon_opa.engine.metrics import Metrics
from talon_opa.engine.work import WorkItem

log = logs.get("intake.process")
HAND_OVER_TIMEOUT_S = 5.0
BATCH_BYTES = 1 << 22  # alerts' bodies in one frame to the engine, at most (one body may be larger)
HELD_EVERY_S = 0.2  # how often the count of connections held is told to the engine, when it changed


class _Engine(asyncio.Protocol):
    """The link to the engine: alerts and refusals out in batches (one write per turn of the loop), answers in."""

    def __init__(self, stopped: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = stopped
        self._transport: asyncio.Transport | None = None
        self._frames = front_wire.Frames()
        self._out: list[tuple[Any, ...]] = []
        self._out_bytes = 0
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._seq = 0
        self.stop_asked = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._transport = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("the engine is gone"))
        self._stopped.set()

    def data_received(self, data: bytes) -> None:
        for payload in self._frames.feed(data):
            if type(payload) is list:
                for seq, status, body, headers in payload:
                    fut = self._pending.pop(seq, None)
                    if fut is not None and not fut.done():
                        fut.set_result(Reply(status, body, headers))
            elif payload == (front_wire.STOP,):
                self.stop_asked.set()

    def submit(self, item: WorkItem) -> asyncio.Future[Reply]:
        self._seq += 1
        fut = self._pending[self._seq] = self._loop.create_future()
        self._out_bytes += len(item.body)
        self._send(
            (
                front_wire.ALERT,
                self._seq,
                item.alert_id,
                front_wire.alert_values(item.alert),
                item.body,
                item.content_type,
                item.traceparent,
                item.tracestate,
            )
        )
        return fut

    def refused(self, status: int) -> None:
        self._send((front_wire.REFUSED, status))

    def held(self, held: int, taken: int) -> None:
        self._send((front_wire.HELD, held, taken))

    def _send(self, record: tuple[Any, ...]) -> None:
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(record)
        if self._out_bytes > BATCH_BYTES:  # large bodies: sent now rather than one frame of them all
            self._flush()

    def _flush(self) -> None:
        out, self._out, self._out_bytes = self._out, [], 0
        if not out:
            return
        try:
            if self._transport is None:
                raise ConnectionError("the engine is gone")
            self._transport.write(front_wire.frame(out))
        except Exception as e:  # each alert of the batch gets the intake's 500, none waits forever
            log.exception("alerts could not be passed to the engine", extra={"alerts": len(out)})
            for record in out:
                fut = self._pending.pop(record[1], None) if record[0] == front_wire.ALERT else None
                if fut is not None and not fut.done():
                    fut.set_exception(e)


class _FrontIntake(Intake):
    """The intake's steps up to the decoded alert; its acceptance and the refusal counts are the engine's.
    Only the intake's own protocol uses it (`accept_now` is None for every alert, so it asks `answer_later`)."""

    def __init__(self, cfg: config.Config, engine: _Engine) -> None:
        super().__init__(cfg, self._in_the_engine, Metrics())
        self._engine = engine

    async def _in_the_engine(self, item: WorkItem) -> Any:
        raise AssertionError("an intake process answers through answer_later: the engine accepts the alert")

    def count_refusal(self, status: int) -> None:
        self._engine.refused(status)

    def answer_later(self, item: WorkItem) -> asyncio.Future[Reply]:
        return self._engine.submit(item)  # no task per alert: the engine's answer resolves it


class _Listener:
    """What the intake protocol asks of its listener, in this process: the engine's listener accepted the
    connection and counted it toward `intake.max_connections` already."""

    def __init__(self, channel: socket.socket) -> None:
        self.fast: set[IntakeProtocol] = set()
        self._channel = channel

    def open_connections(self) -> int:
        return len(self.fast)

    def handler(self) -> asyncio.Protocol:
        return _HandOver(self._channel)

    def refuse_busy(self, transport: asyncio.Transport) -> bool:
        return False


class _HandOver(asyncio.Protocol):
    """A connection going to the engine's process: once what was read of it is in, its descriptor is sent."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._read = bytearray()
        self._transport: asyncio.Transport | None = None
        self._waited = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = t = cast(asyncio.Transport, transport)
        t.pause_reading()
        asyncio.get_running_loop().call_soon(self._send)  # after `data_received` of what was read already

    def data_received(self, data: bytes) -> None:
        self._read += data

    def _send(self) -> None:
        t = self._transport
        if t is None or t.is_closing():
            return
        if t.get_write_buffer_size():  # answers written before it must reach the client first
            self._waited += 1
            if self._waited * 0.01 < HAND_OVER_TIMEOUT_S:
                asyncio.get_running_loop().call_later(0.01, self._send)
                return
            t.abort()
            return
        sock = t.get_extra_info("socket")
        try:
            front_wire.send_connection(self._channel, sock.fileno(), bytes(self._read))
        except OSError as e:
            log.error("a connection could not be handed to the engine", extra={"error": str(e)})
        t.abort()  # this process's descriptor only: the engine's copy keeps the connection

    def connection_lost(self, exc: BaseException | None) -> None:
        self._transport = None


async def serve(link: socket.socket, channel: socket.socket, cfg: config.Config) -> None:
    """Serve the connections the engine passes until it says stop (or is gone)."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    _, engine = await loop.create_unix_connection(lambda: _Engine(stopped), sock=link)
    intake = _FrontIntake(cfg, engine)
    listener = _Listener(channel)
    received = front_wire.Connections()
    tasks: set[asyncio.Task[None]] = set()
    taken = 0

    async def take(fd: int, read: bytes) -> None:
        nonlocal taken
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        protocol = IntakeProtocol(listener, intake, reserved_path)
        try:
            await loop.connect_accepted_socket(lambda: protocol, sock)
        except OSError:
            sock.close()  # the client went away meanwhile
            return
        finally:
            taken += 1  # held from now on (`listener.fast`), or gone
        if read:
            protocol.data_received(read)

    def readable() -> None:
        try:
            passed = received.receive(channel)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        if passed is None:  # the engine is gone (its link says so too)
            loop.remove_reader(channel.fileno())
            return
        for fd, read in passed:
            task = loop.create_task(take(fd, read))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def report() -> None:  # the engine passes each new connection to the process holding the fewest
        said = (0, 0)
        while True:
            now = (len(listener.fast), taken)
            if now != said:
                said = now
                engine.held(*now)
            await asyncio.sleep(HELD_EVERY_S)

    loop.add_reader(channel.fileno(), readable)
    reporter = loop.create_task(report())
    stop = loop.create_task(engine.stop_asked.wait())
    gone = loop.create_task(stopped.wait())
    await asyncio.wait([stop, gone], return_when=asyncio.FIRST_COMPLETED)
    reporter.cancel()
    if gone.done():
        return  # the engine is gone: nothing can be answered any more
    loop.remove_reader(channel.fileno())  # the engine passes no more connections
    for conn in list(listener.fast):
        conn.close_idle()
    waits = [asyncio.ensure_future(conn.wait_closed()) for conn in list(listener.fast)]
    if waits:
        await asyncio.wait([*waits, gone], timeout=cfg.intake.read_timeout_seconds, return_when=asyncio.ALL_COMPLETED)
    stop.cancel()
    gone.cancel()


def main(argv: list[str] | None = None) -> int:
    # the engine stops it (after its last answers), and a Ctrl-C or a SIGTERM sent to the whole process group
    # reaches the engine too; without the engine, its link closes and it exits
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    link_fd, channel_fd = (int(a) for a in (argv or sys.argv[1:])[:2])
    link = socket.socket(fileno=link_fd)
    channel = socket.socket(fileno=channel_fd)
    settings = front_wire.read_settings(link)
    logs.setup(settings["log_format"], settings["log_level"])
    cfg = config.Config(
        intake=config.Intake(
            max_body_bytes=settings["max_body_bytes"], read_timeout_seconds=settings["read_timeout_seconds"]
        ),
        auth=config.Auth(token=settings["token"], header=settings["header"]),
    )
    channel.settimeout(HAND_OVER_TIMEOUT_S)
    link.setblocking(False)
    run = serve(link, channel, cfg)
    try:
        import uvloop
    except ImportError:
        asyncio.run(run)
    else:
        uvloop.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
