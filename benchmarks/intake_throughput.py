"""Intake throughput: non-matching alerts posted for a fixed time, then every accepted alert accounted for.

Prints `alerts_per_s=X processed_per_s=P drain_s=S lost=N accepted=A refused=R decided=D`: `alerts_per_s`
the rate alerts were accepted, `processed_per_s` the rate they were decided (load and queue drain), `drain_s`
how long the queue took to drain after the load; `lost` counts alerts the engine accepted (HTTP 200) and never
decided. Loopback only; the load is bounded in time and count.
With `--queue nats --replicas N`, N engine processes share one JetStream stream (a nats-server started here)
and the load is spread over them; the figures are summed over the replicas.
Usage: benchmarks/intake_throughput.py [--seconds 10] [--connections 32] [--queue memory|nats] [--replicas 1]
       [--workers 16] [--no-prefilter] [--in-flight 2] [--no-decide-ahead]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._engine import engines, metric

RULES = (Path(__file__).resolve().parent.parent / "examples" / "rules.yaml").read_text()
SAMPLE = (
    json.loads(
        (
            Path(__file__).resolve().parents[2]
            / "shared"
            / "samples"
            / "alerts"
            / "falco-internal-syscall-event-drop.json"
        ).read_text()
    )
    if (Path(__file__).resolve().parents[2] / "shared").is_dir()
    else {"rule": "x", "priority": "Notice", "output": "x"}
)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--max-alerts", type=int, default=500_000)
    p.add_argument("--queue", choices=("memory", "nats"), default="memory")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--workers", type=int, default=16, help="queue.workers")
    p.add_argument("--no-prefilter", action="store_true", help="opa.prefilter: false (every alert asked to OPA)")
    p.add_argument("--in-flight", type=int, default=2, help="opa.requests_in_flight")
    p.add_argument("--no-decide-ahead", action="store_true", help="opa.decide_ahead: false")
    a = p.parse_args()
    queue = {"capacity": 100_000, "workers": a.workers}
    opa = {"prefilter": not a.no_prefilter, "requests_in_flight": a.in_flight, "decide_ahead": not a.no_decide_ahead}
    async with engines(RULES, a.replicas, a.queue, queue=queue, opa=opa) as urls:
        accepted = refused = 0
        sent = 0
        stop = time.monotonic() + a.seconds
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=a.connections)) as http:

            async def worker(w: int) -> None:
                nonlocal accepted, refused, sent
                n = 0
                while time.monotonic() < stop and sent < a.max_alerts:
                    sent += 1
                    n += 1
                    body = dict(SAMPLE, rule="Benchmark rule that matches nothing", output=f"bench {w}-{n}")
                    async with http.post(urls[(w + n) % len(urls)] + "/", json=body) as r:
                        await r.read()
                        if r.status == 200:
                            accepted += 1
                        else:
                            refused += 1

            start = time.monotonic()
            await asyncio.gather(*(worker(w) for w in range(a.connections)))
            elapsed = time.monotonic() - start
            # wait until the engine has decided everything it accepted (or stops making progress)
            loaded = time.monotonic()
            decided, last, still = 0.0, -1.0, 0
            while still < 50:
                decided = await total(http, urls, "talon_opa_decision_duration_seconds_count")
                depth = await total(http, urls, "talon_opa_queue_depth")
                flight = await total(http, urls, "talon_opa_alerts_in_flight")
                if decided >= accepted and depth == 0 and flight == 0:
                    break
                still = still + 1 if decided == last else 0
                last = decided
                await asyncio.sleep(0.1)
            drain = time.monotonic() - loaded
    print(
        f"alerts_per_s={accepted / elapsed:.0f} processed_per_s={decided / (elapsed + drain):.0f} "
        f"drain_s={drain:.1f} lost={max(0, accepted - int(decided))} "
        f"accepted={accepted} refused={refused} decided={int(decided)} seconds={elapsed:.1f} "
        f"queue={a.queue} replicas={a.replicas}"
    )


async def total(http: aiohttp.ClientSession, urls: list[str], name: str) -> float:
    return sum([await metric(http, url, name) for url in urls])


if __name__ == "__main__":
    asyncio.run(main())
