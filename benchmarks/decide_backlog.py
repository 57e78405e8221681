"""Catching up a backlog: N alerts put straight into the engine's queue, timed until every one is decided.

Runs the real engine in this process (rules → bundle → child OPA, no HTTP: the intake is not measured)
on `examples/rules.yaml`, queues N non-matching alerts at once (or matching ones with `--matching`: no
cluster is configured, so their steps run in dry run) and waits until the queue is drained. Prints:

    alerts=N seconds=S alerts_per_s=X python_us_per_alert=P opa_us_per_alert=O prefilter=.. decide_ahead=..

CPU is user+sys of this process (the engine) and of its OPA child over the drain only, from /proc.
Options switch the decision features off for A/B runs. Never asserted in tests.

    .venv/bin/python benchmarks/decide_backlog.py --alerts 20000 [--no-prefilter] [--no-decide-ahead]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._proc import cpu_s
from talon_opa.core import config, events
from talon_opa.engine.lifecycle import Engine
from talon_opa.engine.work import Job, WorkItem

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO.parent / "shared" / "samples" / "alerts" / "falco-internal-syscall-event-drop.json"


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alerts", type=int, default=20000)
    p.add_argument("--workers", type=int, default=16, help="queue.workers")
    p.add_argument("--in-flight", type=int, default=2, help="opa.requests_in_flight")
    p.add_argument("--no-prefilter", action="store_true")
    p.add_argument("--no-decide-ahead", action="store_true")
    p.add_argument("--matching", action="store_true", help="alerts that match a rule (dry run: no cluster)")
    a = p.parse_args()
    doc = json.loads(SAMPLE.read_text()) if SAMPLE.exists() else {"priority": "Notice", "output": "x"}
    rule = "Terminal shell in container" if a.matching else "Benchmark rule that matches nothing"
    with tempfile.TemporaryDirectory(prefix="talon-opa-bench-") as tmp:
        rules = Path(tmp) / "rules.yaml"
        rules.write_text((REPO / "examples" / "rules.yaml").read_text())
        opa = dataclasses.replace(
            config.Opa(),
            prefilter=not a.no_prefilter,
            decide_ahead=not a.no_decide_ahead,
            requests_in_flight=a.in_flight,
        )
        cfg = config.Config(
            rules_files=(str(rules),),
            watch_rules=False,
            log_level="error",
            log_format="json",
            opa=opa,
            queue=config.Queue(capacity=a.alerts + 1, workers=a.workers, max_bytes=1 << 40),
        )
        engine = Engine(cfg, kube_config=None)  # no cluster: every Kubernetes step runs in dry run
        async with aiohttp.ClientSession() as http:
            await engine.start(http)
            try:
                for _ in range(500):  # bounded: the prefilter's index is fetched at start
                    if not engine.prefilter.enabled or engine.prefilter.revision:
                        break
                    engine.prefilter.empty_plan_revision(rule, [])
                    await asyncio.sleep(0.01)
                jobs = []
                for i in range(a.alerts):
                    body = json.dumps(dict(doc, rule=rule, output=f"bench {i}")).encode()
                    item = WorkItem(f"a{i}", events.decode_alert(body), body, "application/json")
                    jobs.append(Job(item, engine.tracer.start_span("receive alert"), time.monotonic()))
                opa_pid = engine.supervisor.pid or 0
                opa0, py0, t0 = cpu_s(opa_pid), time.process_time(), time.perf_counter()
                for job in jobs:
                    assert engine.queue.put(job, None, len(job.item.body))
                await engine.queue.join()
                seconds = time.perf_counter() - t0
                opa_us = (cpu_s(opa_pid) - opa0) / a.alerts * 1e6
                py_us = (time.process_time() - py0) / a.alerts * 1e6
            finally:
                await engine.stop()
    print(
        f"alerts={a.alerts} seconds={seconds:.2f} alerts_per_s={a.alerts / seconds:.0f} "
        f"python_us_per_alert={py_us:.0f} opa_us_per_alert={opa_us:.0f} prefilter={not a.no_prefilter} "
        f"decide_ahead={not a.no_decide_ahead} in_flight={a.in_flight} matching={a.matching}"
    )


if __name__ == "__main__":
    asyncio.run(main())
