"""The engine's intake processes (`intake.processes`, engine/front.py): started, answered, restarted, stopped.

Each runs `python -m talon_opa.engine.front` and listens on the engine's address and port beside the engine's
own listener (SO_REUSEPORT: the kernel spreads new connections evenly over the listening processes). What they send
is handled here, in the engine's loop, as the engine's own intake handles an alert once decoded: each alert
is accepted (deduplicated, queued or decided at once, counted and traced) and its answer sent back; each
request they refused is counted (`rejected`); each connection they hand over is served by aiohttp here.

An intake process that exits while the engine runs is logged and started again a second later; the engine's
own listener answers meanwhile. On stop, each is asked to stop and given `intake.read_timeout_seconds` to
write its last answers, then killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Callable
from typing import Any, cast

from talon_opa.core import config, logs
from talon_opa.engine import front_wire
from talon_opa.engine.accept import Acceptor
from talon_opa.engine.intake import Intake, Reply, refusal
from talon_opa.engine.metrics import Metrics
from talon_opa.engine.work import WorkItem

log = logs.get("intake.process")
RESTART_DELAY_S = 1.0


def share(cfg: config.Intake) -> int:
    """The connections each process (the engine's and each intake process) may hold."""
    processes = cfg.processes + 1
    return -(-cfg.max_connections // processes)


class _Link(asyncio.Protocol):
    """One intake process's link, in the engine: alerts and refusals in, answers out."""

    def __init__(self, acceptor: Acceptor, intake: Intake, metrics: Metrics, index: int) -> None:
        self._acceptor = acceptor
        self._intake = intake
        self._count = metrics.intake_process_alerts.labels(process=str(index)).inc
        self._frames = front_wire.Frames()
        self._transport: asyncio.Transport | None = None
        self._later: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        answers: list[tuple[int, int, bytes, tuple[tuple[str, str], ...]]] = []
        alerts = 0
        for batch in self._frames.feed(data):
            for record in batch:
                if record[0] == front_wire.ALERT:
                    alerts += 1
                    answer = self._alert(record)
                    if answer is not None:
                        answers.append(answer)
                else:
                    self._intake.count_refusal(record[1])
        if alerts:
            self._count(alerts)
        if answers:
            self._write(answers)

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.write(front_wire.frame((front_wire.STOP,)))

    def _alert(self, record: tuple[Any, ...]) -> tuple[int, int, bytes, tuple[tuple[str, str], ...]] | None:
        _, seq, alert_id, values, body, content_type, traceparent, tracestate = record
        item = WorkItem(alert_id, front_wire.alert_of(values), body, content_type, traceparent, tracestate)
        try:
            admission = self._acceptor.accept_now(item)
        except Exception:
            log.exception("the alert could not be accepted", extra={"id": alert_id})
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
            reply = _internal()
        self._write([_answer(seq, reply)])

    def _write(self, answers: list[tuple[int, int, bytes, tuple[tuple[str, str], ...]]]) -> None:
        if self._transport is not None:
            self._transport.write(front_wire.frame(answers))


def _environment() -> dict[str, str]:
    """What Python needs of the engine's environment, without the rest: the process that parses what clients
    send holds none of the engine's credentials (cloud keys, tokens given as environment variables)."""
    return {k: v for k, v in os.environ.items() if k in _KEPT or k.startswith(("PYTHON", "LC_"))}


_KEPT = frozenset(("PATH", "HOME", "LANG", "TZ", "VIRTUAL_ENV", "TMPDIR"))


def _answer(seq: int, reply: Reply) -> tuple[int, int, bytes, tuple[tuple[str, str], ...]]:
    return seq, reply.status, reply.body, reply.headers


def _internal() -> Reply:
    return refusal(500, "internal error while handling the request", "", hint="see the engine's log")


class Fronts:
    """The intake processes of one engine."""

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
        self._running: dict[int, tuple[asyncio.subprocess.Process, _Link, socket.socket]] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._handed: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for i in range(self._cfg.intake.processes):
            await self._start(i)

    async def stop(self) -> None:
        """Ask each to stop; those still running after `intake.read_timeout_seconds` are killed."""
        self._stopping = True
        running = list(self._running.values())
        for _, link, _ in running:
            link.stop()
        procs = [proc for proc, _, _ in running]
        if procs:
            await asyncio.wait(
                [asyncio.ensure_future(p.wait()) for p in procs], timeout=self._cfg.intake.read_timeout_seconds + 1
            )
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        for task in list(self._watchers):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _, _ in self._running.values()]

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
            for s in (link_here, link_there, channel_here, channel_there):
                s.close()
            return
        finally:
            link_there.close()
            channel_there.close()
        link_here.sendall(front_wire.frame(self._settings()))
        link_here.setblocking(False)
        _, link = await loop.create_unix_connection(
            lambda: _Link(self._acceptor, self._intake, self._metrics, index), sock=link_here
        )
        channel_here.setblocking(False)
        received = front_wire.Connections()
        loop.add_reader(channel_here.fileno(), self._receive, channel_here, received)
        self._running[index] = (proc, link, channel_here)
        self._metrics.intake_processes.set(len(self._running))
        log.info("intake process started", extra={"intake_process": index, "pid": proc.pid})
        watcher = loop.create_task(self._watch(index, proc, channel_here))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    def _settings(self) -> dict[str, Any]:
        cfg = self._cfg
        return {
            "address": cfg.address,
            "port": cfg.listen_port,
            "log_format": cfg.log_format,
            "log_level": cfg.log_level,
            "max_body_bytes": cfg.intake.max_body_bytes,
            "read_timeout_seconds": cfg.intake.read_timeout_seconds,
            "max_connections": share(cfg.intake),
            "token": cfg.auth.token,
            "header": cfg.auth.header,
        }

    async def _watch(self, index: int, proc: asyncio.subprocess.Process, channel: socket.socket) -> None:
        try:
            code = await proc.wait()
        finally:
            asyncio.get_running_loop().remove_reader(channel.fileno())
            channel.close()
            self._running.pop(index, None)
            self._metrics.intake_processes.set(len(self._running))
        if self._stopping:
            return
        self._metrics.intake_process_exits.inc()
        log.error(
            "an intake process exited; the engine's own listener answers until it is started again",
            extra={"intake_process": index, "pid": proc.pid, "exit_code": code},
        )
        await asyncio.sleep(RESTART_DELAY_S)
        if not self._stopping:
            await self._start(index)

    def _receive(self, channel: socket.socket, received: front_wire.Connections) -> None:
        try:
            handed = received.receive(channel)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.error("a handed-over connection could not be received", extra={"error": str(e)})
            return
        if handed is None:
            asyncio.get_running_loop().remove_reader(channel.fileno())
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
            log.warning("a handed-over connection closed before it was served", extra={"error": str(e)})
            sock.close()
            return
        if read:
            protocol.data_received(read)
