"""CPU per alert of the intake path alone (HTTP in, decode, accept, queue, answer), without OPA or execution.

Two measures, printed as `mode=... us_per_alert=...` lines (process CPU, user + system):

* `handle`: our Python only. `Intake.handle` on prepared aiohttp requests (built by aiohttp's
  `make_mocked_request`, body already received), with the real Acceptor and queue (no workers: nothing is
  decided). The minimum over `--rounds` rounds of `--alerts` alerts: the least noisy figure on a busy machine.
* `loopback`: the real listener (`talon_opa.engine.listener.Runner`) on uvloop, driven by wrk (`make
  bench-tools`) with unique bodies for `--seconds`; the queue's workers end each job at once. The intake's own
  protocol answers the alerts (engine/intake_protocol.py), or aiohttp's route with `--aiohttp` (as a tree
  without that protocol does). With `--floor`, aiohttp with a handler that only reads the body and answers:
  aiohttp's and uvloop's own share.

A/B runs: `--src DIR` measures another source tree (e.g. `git archive BASE | tar -x -C DIR`); run both in
turn, several times.

    PYTHONPATH=. .venv/bin/python benchmarks/intake_cpu.py --mode handle
    PYTHONPATH=. .venv/bin/python benchmarks/intake_cpu.py --mode loopback --seconds 3 [--floor]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


class _Reading:
    """What a request's body stream asks of its connection (already received in full here: nothing to do)."""

    _reading_paused = False

    def pause_reading(self, **_: object) -> None:
        pass

    def resume_reading(self, **_: object) -> None:
        pass


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def parts() -> tuple[Any, ...]:
    """The engine's intake pieces, imported from the tree on sys.path (this one, or --src)."""
    from talon_opa.core import config
    from talon_opa.engine import telemetry
    from talon_opa.engine.accept import Acceptor
    from talon_opa.engine.intake import Intake
    from talon_opa.engine.metrics import Metrics
    from talon_opa.engine.queue import AlertQueue

    return config, telemetry, Acceptor, Intake, Metrics, AlertQueue


def intake(workers: int) -> Any:
    config, telemetry, acceptor, intake_class, metrics_class, queue_class = parts()
    cfg = config.Config()
    metrics = metrics_class()

    async def done(job: Any, started: Any) -> None:  # the queue's handler: (job, started)
        job.span.end()

    queue = queue_class(done, capacity=10**7, workers=workers, on_depth=metrics.queue_depth.set)
    accept = acceptor(cfg, queue=queue, metrics=metrics, tracing=telemetry.Telemetry(cfg.otel))
    if "accept_now" in inspect.signature(intake_class).parameters:  # a tree with the intake's own protocol
        return cfg, queue, intake_class(cfg, accept.accept, metrics, accept.accept_now)
    return cfg, queue, intake_class(cfg, accept.accept, metrics)


async def handle_mode(a: argparse.Namespace) -> None:
    from aiohttp import streams
    from aiohttp.test_utils import make_mocked_request

    from benchmarks._wrk import body_halves

    head, tail = body_halves(a.matching)
    loop = asyncio.get_running_loop()
    best = float("inf")
    for r in range(a.rounds):
        _, _, handler = intake(workers=0)
        requests = []
        for i in range(a.alerts):
            body = f"{head}{r}-{i}{tail}".encode()
            payload = streams.StreamReader(_Reading(), 2**16, loop=loop)  # type: ignore[arg-type]
            payload.feed_data(body)
            payload.feed_eof()
            headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
            requests.append(make_mocked_request("POST", "/", headers=headers, payload=payload))
        start = time.process_time()
        for request in requests:
            answer = await handler.handle(request)
        elapsed = time.process_time() - start
        if answer.status != 200:
            sys.exit(f"the intake answered {answer.status}: {answer.text}")
        best = min(best, elapsed / a.alerts)
    print(f"mode=handle us_per_alert={best * 1e6:.1f} rounds={a.rounds} alerts={a.alerts}")


async def loopback_mode(a: argparse.Namespace) -> None:
    from aiohttp import web

    from benchmarks._wrk import LUA, body_halves, wrk_binary
    from talon_opa.engine.listener import Runner
    from talon_opa.opa.process import free_port

    cfg, queue, handler = intake(workers=16)
    queue.start()

    async def floor(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b'{"id":"","trace_id":""}', content_type="application/json")

    app = web.Application(client_max_size=cfg.intake.max_body_bytes)
    app.router.add_route("*", "/{tail:.*}", floor if a.floor else handler.handle)
    key = getattr(sys.modules[type(handler).__module__], "INTAKE", None)  # None: a tree before the own protocol
    if key is not None and not (a.floor or a.aiohttp):
        app[key] = handler
    runner = Runner(app, cfg.intake)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    head, tail = body_halves(a.matching)
    wrk = [wrk_binary(), "-t", "2", "-c", str(a.connections), "-d", f"{a.seconds:g}s", "-s", str(LUA)]
    before = cpu()
    proc = await asyncio.create_subprocess_exec(
        *wrk, f"http://127.0.0.1:{port}/", "--", head, tail, stdout=subprocess.PIPE
    )
    out, _ = await proc.communicate()
    await queue.join()
    used = cpu() - before
    await queue.stop()
    await runner.cleanup()
    line = next((x for x in out.decode().splitlines() if x.startswith("wrk_result ")), "")
    if not line:
        sys.exit(f"wrk printed no result: {out.decode()[-500:]}")
    result = {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    n = result["requests"]
    print(
        f"mode=loopback{'-floor' if a.floor else '-aiohttp' if a.aiohttp else ''} us_per_alert={1e6 * used / n:.1f} "
        f"alerts_per_s={n / (result['duration_us'] / 1e6):.0f} p50_ms={result['p50_us'] / 1000:.2f} "
        f"non_200={result['status_errors']}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("handle", "loopback"), default="handle")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--alerts", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--floor", action="store_true", help="loopback: a handler that only reads and answers")
    p.add_argument("--aiohttp", action="store_true", help="loopback: aiohttp answers the alerts, not the own protocol")
    p.add_argument("--matching", action="store_true", help="bodies of an alert that a rule matches")
    p.add_argument("--src", type=Path, help="the talon-opa source tree to measure (default: this one)")
    a = p.parse_args()
    sys.path.insert(0, str(HERE.parent))
    import benchmarks._wrk  # noqa: F401 - this tree's load generator, before --src puts its talon_opa first

    if a.src:  # its talon_opa package first; this tree's benchmarks/ still provide the load
        sys.path.insert(0, str(a.src.resolve()))
    import uvloop

    uvloop.run(handle_mode(a) if a.mode == "handle" else loopback_mode(a))


if __name__ == "__main__":
    main()
