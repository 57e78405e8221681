"""Start `talon-opa server` as its own process for a benchmark, and read its /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml

from benchmarks import _proc
from benchmarks._proc import cpu_s
from talon_opa.opa.process import free_port
from tests.harness.nats import Nats

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Running:
    """An engine process started for a benchmark: its base URL and process id (its OPA is a child)."""

    url: str
    pid: int


@contextlib.asynccontextmanager
async def engine_process(rules: str, **config: object) -> AsyncIterator[str]:
    """Run the engine on a free loopback port with these rules; yields its base URL."""
    async with running_engine(rules, src=REPO, **config) as engine:
        yield engine.url


@contextlib.asynccontextmanager
async def running_engine(rules: str, *, src: Path = REPO, **config: object) -> AsyncIterator[Running]:
    """Run the engine of the source tree `src` on a free loopback port with these rules; yields its URL and pid."""
    with tempfile.TemporaryDirectory(prefix="talon-opa-bench-") as tmp:
        work = Path(tmp)
        (work / "rules.yaml").write_text(rules)
        port = free_port()
        cfg = {"listen_address": "127.0.0.1", "listen_port": port, "log_format": "json", "log_level": "warning"}
        cfg.update(config)
        (work / "config.yaml").write_text(yaml.safe_dump(cfg))
        log = (work / "engine.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "talon_opa.cli.main",
            "server",
            "-c",
            str(work / "config.yaml"),
            "-r",
            str(work / "rules.yaml"),
            cwd=src,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONPATH": str(src)},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(600):
                    if proc.returncode is not None:
                        raise RuntimeError((work / "engine.log").read_text()[-2000:])
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(url + "/readyz") as r:
                            if r.status == 200:
                                break
                    await asyncio.sleep(0.1)
                else:
                    raise RuntimeError("engine not ready after 60 s")
            yield Running(url, proc.pid)
        finally:
            # CPU of the engine and of its OPA child over its whole run (start-up included), to stderr
            print(
                f"engine_cpu_s={_cpu(proc.pid):.2f} python_cpu_s={_cpu(proc.pid, children=False):.2f}", file=sys.stderr
            )
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
            log.close()


@contextlib.asynccontextmanager
async def engines(
    rules: str, replicas: int, kind: str, queue: dict[str, object], **config: object
) -> AsyncIterator[list[str]]:
    """`replicas` engine processes; with kind "nats", on one JetStream stream of a nats-server started here."""
    async with contextlib.AsyncExitStack() as stack:
        q = dict(queue)
        if kind == "nats":
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="talon-opa-bench-nats-"))
            server = Nats(Path(tmp))
            await server.start()
            stack.callback(server.stop)
            q.update(kind="nats", nats_url=server.url, nats_stream="BENCH")
        urls = [await stack.enter_async_context(engine_process(rules, queue=q, **config)) for _ in range(replicas)]
        yield urls


async def metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    """Sum of every sample of one metric on /metrics."""
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{.*\}})? (\S+)$", line)
        if m:
            total += float(m.group(1))
    return total


def _cpu(pid: int, children: bool = True) -> float:
    """CPU seconds used so far by a process and, with `children`, by its live children (the OPA child)."""
    return cpu_s(pid) + (sum(cpu_s(c) for c in _proc.children(pid)) if children else 0.0)
