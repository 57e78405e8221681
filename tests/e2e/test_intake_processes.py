"""`intake.processes`: intake processes answer alerts beside the engine (engine/front.py, engine/fronts.py).

`talon-opa server` runs as a process with two intake processes and a real child OPA; the engine's listener
passes each new connection to the intake process holding the fewest (counted on /metrics). The same requests
go on every connection: the answers are the engine's (one deduplication across processes, the refusals
counted by the engine, its other routes served through a connection handed back to it), every accepted alert
is decided and acted on in its trace, and SIGTERM stops the intake processes and drains. An intake process
that dies is started again; with none running, the engine serves new connections itself.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import yaml

from talon_opa.opa.process import free_port
from tests.e2e.engine_harness import DRY_RUN_RULES, shell_alert
from tests.e2e.server_process import log_lines, spawn_server, stop_server, wait_ready
from tests.harness.nats import Nats

TOKEN = "processes-token"
SECRET = "engine-only-credential"
PROCESSES = 2
CONNECTIONS = 8


class Connection:
    """One keep-alive HTTP/1.1 connection to the engine's port."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(
        self, body: bytes, *, method: str = "POST", path: str = "/", token: bool = True, headers: str = ""
    ) -> tuple[int, str, bytes]:
        auth = f"Authorization: Bearer {TOKEN}\r\n" if token else ""
        head = f"{method} {path} HTTP/1.1\r\nHost: engine\r\n{auth}{headers}Content-Length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)
        answer = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status = int(answer.split(b" ", 2)[1])
        m = re.search(rb"\r\ncontent-length: *(\d+)\r\n", answer, re.IGNORECASE)
        assert m, answer
        return status, answer.decode(), await asyncio.wait_for(self.reader.readexactly(int(m[1])), 10)

    def close(self) -> None:
        self.writer.close()


def alert(output: str, pod: str = "api-1") -> bytes:
    return json.dumps(shell_alert(pod=pod, output=output)).encode()


def metric(text: str, name: str) -> float:
    """The sum of a metric's series in a Prometheus exposition."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@asynccontextmanager
async def server(tmp_path: Path, **more: object) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, Path]]:
    port = free_port()
    rules = tmp_path / "rules.yaml"
    rules.write_text(DRY_RUN_RULES)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "listen_port": port,
                "auth": {"token": TOKEN},
                "listen_address": "127.0.0.1",
                "intake": {"processes": PROCESSES, "max_body_bytes": 4096},
                "watch_rules": False,
                **more,
            }
        )
    )
    log = tmp_path / "server.log"
    proc = await spawn_server(cfg, rules, log, {"AWS_SECRET_ACCESS_KEY": SECRET})
    try:
        await wait_ready(f"http://127.0.0.1:{port}", proc)
        for _ in range(100):
            if len(started(log)) == PROCESSES:
                break
            await asyncio.sleep(0.1)
        assert len(started(log)) == PROCESSES, "the intake processes were started"
        yield proc, port, log
    finally:
        await stop_server(proc, gracefully=False)


def started(log: Path) -> list[int]:
    return [line["pid"] for line in log_lines(log) if line["message"] == "intake process started"]


async def metrics_text(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = Connection(reader, writer)
    try:
        status, _, body = await conn.send(b"", method="GET", path="/metrics")
        assert status == 200
        return body.decode()
    finally:
        conn.close()


async def connections(port: int, tag: str, n: int = CONNECTIONS) -> list[Connection]:
    """New connections to the engine's port, each having posted one alert."""
    conns = []
    for i in range(n):
        conn = Connection(*await asyncio.open_connection("127.0.0.1", port))
        status, _, body = await conn.send(alert(f"{tag} {i}", pod=f"{tag}-{i}"))
        assert status == 200, body
        conns.append(conn)
    return conns


def by_process(text: str, index: int | str) -> float:
    return metric(text, f'talon_opa_intake_process_alerts_total{{process="{index}"}}')


async def test_intake_processes_answer_as_the_engine_does(tmp_path: Path) -> None:
    async with server(tmp_path) as (proc, port, log):
        conns = await connections(port, "spread")
        n = len(conns)
        text = await metrics_text(port)  # the engine passed each connection to the intake process holding fewest
        assert [by_process(text, i) for i in range(PROCESSES)] == [n / PROCESSES] * PROCESSES
        assert metric(text, "falcosecurity_falco_talon_events_total") == n

        # one deduplication whichever process holds the connection
        answers = [await c.send(alert("the same alert on every connection")) for c in conns]
        first = json.loads(answers[0][2])
        assert answers[0][0] == 200
        assert "duplicate" not in first
        for status, _, body in answers[1:]:
            assert status == 200
            doc = json.loads(body)
            assert doc["duplicate"] is True
            assert doc["duplicate_of"] == first["id"], doc

        # alerts, each decided and acted on in the trace its answer names
        traces = {}
        for i, c in enumerate(conns):
            status, _, body = await c.send(alert(f"acted on {i}", pod=f"acted-{i}"))
            assert status == 200
            traces[json.loads(body)["trace_id"]] = f"acted-{i}"

        # an object with a repeated key inside output_fields crosses to the engine too
        nested = b'{"rule": "Terminal shell in container", "output": "nested %d", "priority": "Notice",'
        nested += b' "output_fields": {"k8s.pod.name": "nested", "k8s.ns.name": "payments", "x": {"a": 1, "a": 2}}}'
        for i, c in enumerate(conns):
            status, _, body = await c.send(nested % i)
            assert status == 200, body

        # refusals, answered where they arrive and counted by the engine
        for c in conns:
            status, _, body = await c.send(b"{")
            assert status == 400
            assert json.loads(body)["error"].startswith("malformed JSON"), body
            status, head, body = await c.send(alert("no token"), token=False)
            assert status == 401
            assert "WWW-Authenticate" in head, body
        text = await metrics_text(port)
        assert metric(text, 'talon_opa_intake_rejected_total{status="400"}') == n
        assert metric(text, 'talon_opa_intake_rejected_total{status="401"}') == n

        # what the intake protocol does not take: the connection goes on in the engine, served by aiohttp
        for i, c in enumerate(conns):
            status, _, body = await c.send(gzip.compress(alert(f"gzip {i}")), headers="Content-Encoding: gzip\r\n")
            assert status == 200
            assert "trace_id" in json.loads(body), body
            status, _, body = await c.send(b"", method="GET", path="/healthz")
            assert (status, json.loads(body)) == (200, {"status": "ok"})
            status, _, body = await c.send(alert(f"after the hand-over {i}"))
            assert status == 200
            assert "trace_id" in json.loads(body), body
        # a Ctrl-C or SIGTERM sent to the process group reaches them too: the engine stops them, after it
        pids = started(log)
        for pid in pids:
            os.kill(pid, signal.SIGINT)
            os.kill(pid, signal.SIGTERM)
        before = metric(await metrics_text(port), "talon_opa_intake_process_alerts_total")
        conns += await connections(port, "after the signals")  # new connections: the intake processes hold them
        text = await metrics_text(port)
        assert metric(text, "talon_opa_intake_process_alerts_total") == before + CONNECTIONS
        assert metric(text, "talon_opa_intake_processes") == PROCESSES
        assert metric(text, "talon_opa_intake_process_exits_total") == 0
        for c in conns:
            c.close()

        assert await stop_server(proc) == 0
    lines = log_lines(log)
    acted = {line["trace_id"] for line in lines if line["message"] == "action" and line.get("status") == "dry_run"}
    assert set(traces) <= acted, "every alert an intake process passed on was decided and acted on in its trace"
    for pid in pids:
        assert not _alive(pid), "the intake processes stopped with the engine"
    messages = [line["message"] for line in lines]
    assert "drained, every accepted alert finished" in messages
    assert messages[-1] == "stopped"


async def test_an_intake_process_that_exits_is_started_again(tmp_path: Path) -> None:
    async with server(tmp_path) as (proc, port, log):
        first = next(line for line in log_lines(log) if line["message"] == "intake process started")
        victim, index = first["pid"], first["intake_process"]
        os.kill(victim, signal.SIGKILL)
        for _ in range(100):
            if len(started(log)) == PROCESSES + 1:
                break
            await asyncio.sleep(0.1)
        pids = started(log)
        assert len(pids) == PROCESSES + 1, "a new one was started"
        assert victim not in pids[PROCESSES:]
        exited = [line for line in log_lines(log) if line["message"].startswith("an intake process exited")]
        assert [(line["pid"], line["exit_code"]) for line in exited] == [(victim, -signal.SIGKILL)]
        conns = await connections(port, "after")
        text = await metrics_text(port)
        assert by_process(text, index) > 0, "the new one answers"
        for pid in pids[1:]:  # what parses clients' requests holds none of the engine's credentials
            assert SECRET.encode() not in _environ(pid)
        assert SECRET.encode() in _environ(proc.pid)
        assert metric(text, "talon_opa_intake_process_exits_total") == 1
        assert metric(text, "talon_opa_intake_processes") == PROCESSES
        for c in conns:
            c.close()
        assert await stop_server(proc) == 0


async def test_with_no_intake_process_running_the_engine_serves_connections_itself(tmp_path: Path) -> None:
    async with server(tmp_path) as (proc, port, log):
        for pid in started(log):
            os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if len([line for line in log_lines(log) if line["message"].startswith("an intake process exited")]) == 2:
                break
            await asyncio.sleep(0.05)
        # within the second before they are started again (RESTART_DELAY_S)
        assert metric(await metrics_text(port), "talon_opa_intake_processes") == 0
        [conn] = await connections(port, "while down", n=1)
        text = await metrics_text(port)
        assert metric(text, "falcosecurity_falco_talon_events_total") == 1
        assert metric(text, "talon_opa_intake_process_alerts_total") == 0, "the engine answered it itself"
        status, _, body = await conn.send(alert("on the same connection"))
        assert status == 200, body
        conn.close()
        for _ in range(100):
            if len(started(log)) == 2 * PROCESSES:
                break
            await asyncio.sleep(0.1)
        conns = await connections(port, "back up")
        assert metric(await metrics_text(port), "talon_opa_intake_process_alerts_total") == len(conns)
        for c in conns:
            c.close()
        assert await stop_server(proc) == 0


def _environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_intake_processes_with_the_jetstream_queue(tmp_path: Path, nats: Nats) -> None:
    """Each alert an intake process passes on is answered once stored in the stream, and a duplicate is
    dropped whichever process received it."""
    stream = f"P{os.getpid()}"
    queue = {"kind": "nats", "nats_url": nats.url, "nats_stream": stream, "workers": 4, "partitions": 4}
    async with server(tmp_path, queue=queue) as (proc, port, log):
        conns = await connections(port, "stored")
        answers = [await c.send(alert("one alert, stored once")) for c in conns]
        assert {status for status, _, _ in answers} == {200}
        docs = [json.loads(body) for _, _, body in answers]
        assert [d.get("duplicate", False) for d in docs] == [False] + [True] * (len(conns) - 1)
        traces = {}
        for i, c in enumerate(conns):
            status, _, body = await c.send(alert(f"stored and run {i}", pod=f"stored-{i}"))
            assert status == 200
            traces[json.loads(body)["trace_id"]] = i
        for c in conns:
            c.close()
        assert await stop_server(proc) == 0
    acted = {line["trace_id"] for line in log_lines(log) if line["message"] == "action"}
    assert set(traces) <= acted
