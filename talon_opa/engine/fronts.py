"""The engine's intake processes (`intake.processes`, engine/front.py): started, fed, answered, restarted, stopped.

Each runs `python -m talon_opa.engine.front`. The engine's listener still accepts every connection (and
refuses those over `intake.max_connections`, counting the ones the intake processes hold), and passes each new
one, as its file descriptor, to the intake process holding the fewest; it serves a connection itself only when
no intake process can take it. What the intake processes send is handled here, in the engine's loop, as the
engine's own intake handles an alert once decoded: each alert is accepted (deduplicated, queued or decided at
once, counted and traced) and its answer sent back; each request they refused is counted (`rejected`); each
connection they hand back (a request their protocol does not take) is served by aiohttp here.

An intake process that exits while the engine runs is logged and started again a second later (up to 30 s
while they keep exiting); its connections are closed, and their clients connect again; the engine serves new
connections itself meanwhile. On stop, each is asked to stop and given `intake.read_timeout_seconds` to write
its last answers, then killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from talon_opa.core import config, logs
from talon_opa.engine import front_wire
from talon_opa.engine.accept import Acceptor
from talon_opa.engine.intake import Intake, Reply, refusal
from talon_opa.engine.intake_protocol import Connections
from talon_opa.engine.metrics import Metrics
from talon_opa.engine.work import WorkItem

log = logs.get("intake.process")
RESTART_DELAY_S = 1.0  # before an intake process that exited is started again; doubled while they keep exiting
RESTART_DELAY_MAX_S = 30.0
STEADY_S = 60.0  # an intake process that ran this long exited alone: the next restart waits RESTART_DELAY_S
_pass_log = logs.Throttle(1.0)
_KEPT = frozenset(("PATH", "HOME", "LANG", "TZ", "VIRTUAL_ENV", "TMPDIR"))

Answer = tuple[int, int, bytes, tuple[tuple[str, str], ...]]  # seq, status, body, headers


@dataclass
class _Front:
    """One running intake process, as the engine sees it."""

    index: int
    proc: asyncio.subprocess.Process
    channel: socket.socket  # connections both ways
    link: _Link | None = None
    held: int = 0  # connections it said it holds
    taken: int = 0  # connections it said it had taken from the channel, in all
    passed: int = 0  # connections passed to it, in all
    received: front_wire.Connections = field(default_factory=front_wire.Connections)

    @property
    def load(self) -> int:
        return self.held + self.passed - self.taken  # those on their way count too


class _Link(asyncio.Protocol):
    """One intake process's link, in the engine: alerts, refusals and its connection count in, answers out."""

    def __init__(self, acceptor: Acceptor, intake: Intake, metrics: Metrics, front: _Front) -> None:
        self._acceptor = acceptor
        self._intake = intake
        self._front = front
        self._count = metrics.intake_process_alerts.labels(process=str(front.index)).inc
        self._frames = front_wire.Frames()
        self._transport: asyncio.Transport | None = None
        self._later: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        answers: list[Answer] = []
        alerts = 0
        try:
            batches = list(self._frames.feed(data))
        except ValueError as e:  # not what an intake process writes: it is closed (and started again)
            log.error("an intake process sent what is not a frame", extra={"error": str(e)})
            self._front.proc.kill()
            return
        for batch in batches:
            for record in batch:
                kind = record[0]
                if kind == front_wire.ALERT:
                    alerts += 1
                    answer = self._alert(record)
                    if answer is not None:
                        answers.append(answer)
                elif kind == front_wire.REFUSED:
                    self._intake.count_refusal(record[1])
                elif kind == front_wire.HELD:
                    self._front.held, self._front.taken = record[1], record[2]
        if alerts:
            self._count(alerts)
        if answers:
            self._write(answers)

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.write(front_wire.frame((front_wire.STOP,)))

    def _alert(self, record: tuple[Any, ...]) -> Answer | None:
        _, seq, alert_id, values, body, content_type, traceparent, tracestate = record
        item = WorkItem(alert_id, front_wire.alert_of(values), body, content_type, traceparent, tracestate)
        try:
            admission = self._acceptor.accept_now(item)
        except Exception:
            log.exception("the alert could not be accepted", extra={"id": alert_id})
            self._intake.count_refusal(500)
            return _answer(seq, _internal())
        if admission is None:  # the queue stores it first (JetStream): answered once it has
            task = asyncio.get_running_loop().create_task(self._accept_later(seq, item))
            self._later.add(task)
            task.add_done_callback(self._later.discard)
            return None
        return _answer(seq, self._intake.reply(admission))

    async def _accept_later(self, seq: int, item: WorkItem) -> None:
        try:
            reply = await self._intake.accept_later(item)
        except Exception:
            log.exception("the alert could not be accepted", extra={"id": item.alert_id})
            self._intake.count_refusal(500)
            reply = _internal()
        self._write([_answer(seq, reply)])

    def _write(self, answers: list[Answer]) -> None:
        if self._transport is not None:
            self._transport.write(front_wire.frame(answers))


def _answer(seq: int, reply: Reply) -> Answer:
    return seq, reply.status, reply.body, reply.headers


def _internal() -> Reply:
    return refusal(500, "internal error while handling the request", "", hint="see the engine's log")


def _environment() -> dict[str, str]:
    """What Python needs of the engine's environment, without the rest: the process that parses what clients
    send is not given the engine's credentials (cloud keys, tokens given as environment variables). It runs
    as the engine's user: this keeps them out of its memory, its crash reports and its children, not out of
    its reach (it is no security boundary)."""
    return {k: v for k, v in os.environ.items() if k in _KEPT or k.startswith(("PYTHON", "LC_"))}


class _PassOn(asyncio.Protocol):
    """A connection the engine's listener accepted, passed to an intake process as soon as it is made."""

    def __init__(self, listener: Connections, front: _Front, here: Callable[[], asyncio.Protocol]) -> None:
        self._listener = listener
        self._front = front
        self._here = here

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        if self._listener.refuse_busy(t):
            return
        try:
            front_wire.send_connection(self._front.channel, t.get_extra_info("socket").fileno(), b"")
        except OSError as e:  # its channel is full or gone: served here
            held = _pass_log.allow()
            if held is not None:
                log.warning(
                    "a connection could not be passed to an intake process: the engine serves it",
                    extra={"intake_process": self._front.index, "error": str(e), "also_logged_since_last_line": held},
                )
            protocol = self._here()
            t.set_protocol(protocol)
            protocol.connection_made(t)
            return
        self._front.passed += 1
        t.abort()  # the engine's descriptor only: the intake process's copy keeps the connection


class Fronts:
    """The intake processes of one engine (the listener's `Elsewhere`)."""

    def __init__(
        self,
        cfg: config.Config,
        *,
        acceptor: Acceptor,
        intake: Intake,
        metrics: Metrics,
        handler: Callable[[], asyncio.Protocol],
    ) -> None:
        self._cfg = cfg
        self._acceptor = acceptor
        self._intake = intake
        self._metrics = metrics
        self._handler = handler
        self._stopping = False
        self._running: dict[int, _Front] = {}
        self._delays: dict[int, float] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._handed: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for i in range(self._cfg.intake.processes):
            await self._start(i)

    async def stop(self) -> None:
        """Ask each to stop; those still running after `intake.read_timeout_seconds` are killed."""
        self._stopping = True
        running = list(self._running.values())
        for front in running:
            if front.link is not None:
                front.link.stop()
        if running:
            await asyncio.wait(
                [asyncio.ensure_future(f.proc.wait()) for f in running],
                timeout=self._cfg.intake.read_timeout_seconds + 1,
            )
            for front in running:
                if front.proc.returncode is None:
                    front.proc.kill()
                    await front.proc.wait()
        for task in list(self._watchers):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # the listener's Elsewhere

    def protocol(self, listener: Connections, here: Callable[[], asyncio.Protocol]) -> asyncio.Protocol | None:
        fronts = [f for f in self._running.values() if f.link is not None]
        if self._stopping or not fronts:
            return None
        return _PassOn(listener, min(fronts, key=lambda f: f.load), here)

    def open_connections(self) -> int:
        return sum(f.load for f in self._running.values())

    # starting and watching

    async def _start(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        link_here, link_there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        channel_here, channel_there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = (link_there.fileno(), channel_there.fileno())
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "talon_opa.engine.front",
                *(str(fd) for fd in fds),
                pass_fds=fds,
                stdin=asyncio.subprocess.DEVNULL,
                env=_environment(),
            )
        except OSError as e:
            log.error("an intake process could not be started", extra={"error": str(e), "intake_process": index})
            for s in (link_here, channel_here):
                s.close()
            return
        finally:
            link_there.close()
            channel_there.close()
        front = _Front(index, proc, channel_here)
        self._running[index] = front
        watcher = loop.create_task(self._watch(front))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        link_here.sendall(front_wire.frame(self._settings()))
        link_here.setblocking(False)
        channel_here.setblocking(False)
        _, front.link = await loop.create_unix_connection(
            lambda: _Link(self._acceptor, self._intake, self._metrics, front), sock=link_here
        )
        if self._running.get(index) is not front:  # it exited meanwhile (logged, started again by its watcher)
            return
        loop.add_reader(channel_here.fileno(), self._receive, front)
        self._metrics.intake_processes.set(len(self._running))
        log.info("intake process started", extra={"intake_process": index, "pid": proc.pid})

    def _settings(self) -> dict[str, Any]:
        cfg = self._cfg
        return {
            "log_format": cfg.log_format,
            "log_level": cfg.log_level,
            "max_body_bytes": cfg.intake.max_body_bytes,
            "read_timeout_seconds": cfg.intake.read_timeout_seconds,
            "token": cfg.auth.token,
            "header": cfg.auth.header,
        }

    async def _watch(self, front: _Front) -> None:
        started = asyncio.get_running_loop().time()
        try:
            code = await front.proc.wait()
        finally:
            asyncio.get_running_loop().remove_reader(front.channel.fileno())
            front.channel.close()
            self._running.pop(front.index, None)
            self._metrics.intake_processes.set(len(self._running))
        if self._stopping:
            return
        self._metrics.intake_process_exits.inc()
        steady = asyncio.get_running_loop().time() - started > STEADY_S
        delay = RESTART_DELAY_S if steady else self._delays.get(front.index, RESTART_DELAY_S / 2) * 2
        delay = self._delays[front.index] = min(delay, RESTART_DELAY_MAX_S)
        log.error(
            "an intake process exited; the engine serves new connections itself until it is started again",
            extra={"intake_process": front.index, "pid": front.proc.pid, "exit_code": code, "restart_in_s": delay},
        )
        await asyncio.sleep(delay)
        if not self._stopping:
            await self._start(front.index)

    # connections handed back

    def _receive(self, front: _Front) -> None:
        try:
            handed = front.received.receive(front.channel)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.error("a handed-back connection could not be received", extra={"error": str(e)})
            return
        if handed is None:
            asyncio.get_running_loop().remove_reader(front.channel.fileno())
            return
        for fd, read in handed:
            task = asyncio.get_running_loop().create_task(self._serve_handed(fd, read))
            self._handed.add(task)
            task.add_done_callback(self._handed.discard)

    async def _serve_handed(self, fd: int, read: bytes) -> None:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        protocol = self._handler()
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock)
        except OSError as e:
            log.warning("a handed-back connection closed before it was served", extra={"error": str(e)})
            sock.close()
            return
        if read:
            protocol.data_received(read)
