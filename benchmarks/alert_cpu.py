"""CPU per alert of everything after HTTP: decode the body, build the work item, accept it (trace, count,
dedup) and, for an alert the candidate index decides, process it on the spot. Prints `mode=after_http
us_per_alert=...` (process CPU, user + system).

The real engine runs in this process (its own OPA child, 1 generated rule, the server's defaults: no trace
export, no audit trail) until its candidate index is loaded; then each round decodes and accepts `--alerts`
unique non-matching bodies (Falco's shape, as wrk posts them) and the minimum over `--rounds` rounds is
printed: the least noisy figure on a busy machine. Every alert must be answered `queued` and decided by
the index (nothing left in the queue). It calls `Acceptor.accept_now` when the tree has it (what the
intake calls), else (or with `--await-accept`) awaits `accept`. `--src DIR` measures another source tree (A/B runs, e.g.
`git archive BASE | tar -x -C DIR`); run both in turn, several times.

    PYTHONPATH=. .venv/bin/python benchmarks/alert_cpu.py [--src /tmp/base]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


async def run(a: argparse.Namespace) -> None:
    from benchmarks._wrk import body_halves
    from benchmarks.decision_latency import rules_file
    from talon_opa.core import config, events
    from talon_opa.engine.intake import new_alert_id
    from talon_opa.engine.work import WorkItem
    from tests.e2e.engine_harness import running_engine

    head, tail = body_halves(matching=False)
    content_type = "application/json"
    with tempfile.TemporaryDirectory(prefix="talon-opa-bench-") as tmp:
        queue = config.Queue(capacity=10**7, workers=16, drain_timeout_seconds=20)
        async with running_engine(Path(tmp), rules_file(1), queue=queue, log_format="json") as e:
            engine = e.engine
            assert engine.built is not None
            for _ in range(1000):  # a lookup asks for a stale index to be fetched
                engine.prefilter.empty_plan_revision("", [])
                if engine.prefilter.revision == engine.built.revision:
                    break
                await asyncio.sleep(0.01)
            else:
                sys.exit("the candidate index was never loaded")
            acceptor: Any = engine.acceptor
            now = None if a.await_accept else getattr(acceptor, "accept_now", None)
            best = float("inf")
            for r in range(a.rounds):
                bodies = [f"{head}{r}-{i}{tail}".encode() for i in range(a.alerts)]
                verdicts = set()
                start = time.process_time()
                for body in bodies:
                    alert = events.decode_alert(body, content_type)
                    item = WorkItem(new_alert_id(), alert, body, content_type, "", "")
                    admission = now(item) if now is not None else await acceptor.accept(item)
                    verdicts.add(admission.verdict)
                elapsed = time.process_time() - start
                if verdicts != {"queued"} or engine.queue.unfinished:
                    sys.exit(f"not every alert was decided by the index: {verdicts}, {engine.queue.unfinished} queued")
                best = min(best, elapsed / a.alerts)
            print(
                f"mode=after_http us_per_alert={best * 1e6:.1f} rounds={a.rounds} alerts={a.alerts} "
                f"via={'accept_now' if now is not None else 'accept'}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--alerts", type=int, default=5000)
    p.add_argument("--await-accept", action="store_true", help="await `accept` even when `accept_now` exists")
    p.add_argument("--src", type=Path, help="the talon-opa source tree to measure (default: this one)")
    a = p.parse_args()
    sys.path.insert(0, str(HERE.parent))
    if a.src:  # its talon_opa package (and its test harness) first
        sys.path.insert(0, str(a.src.resolve()))
    import uvloop

    uvloop.run(run(a))


if __name__ == "__main__":
    main()
