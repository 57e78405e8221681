"""What keeping a reversal costs a step: `Undoer.record` with `state_dir` (one file, fsynced, renamed) and
without (memory only), and how long a start takes to read the records back.

Records N reversals (a label step's) through the engine's `Undoer`, one after the other as steps do, and
prints one line per mode on stdout:

    state_dir=on|off records=N record_us_p50=X record_us_p99=Y load_ms=Z

`record_us` is the time one `record` takes (the executor awaits it before the step's notification and
the next step: it adds to the step's latency, not to the Kubernetes write before it). `load_ms` is the
time a new engine's start spends reading the N records back (on only). Never asserted in tests.

    .venv/bin/python benchmarks/undo_record.py --records 2000
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from talon_opa.catalog import default_registry
from talon_opa.core import config
from talon_opa.engine.undo import Undoer
from talon_opa.engine.undo_store import UndoStore
from talon_opa.opa.plan import Step
from talon_opa.plugins.reversal import Reversal

STEP = Step("Shell in a container", "Mark", "kubernetes:label", {"labels": {"suspicious": "true"}}, undo_after=1800)
REVERSAL = Reversal(
    "kubernetes:label",
    "labels of the pod payments/api-1: remove security.falco.org/suspicious",
    {
        "path": "/api/v1/namespaces/payments/pods/api-1",
        "uid": "0f0e0d0c-0b0a-0908-0706-050403020100",
        "what": "the pod payments/api-1",
        "field": "labels",
        "changes": {"security.falco.org/suspicious": {"before": None, "after": "true"}},
    },
)


async def run(records: int, state_dir: str) -> tuple[list[float], float]:
    cfg = dataclasses.replace(config.Config(), state_dir=state_dir)
    undoer = Undoer(
        cfg, registry=default_registry(), tracer=TracerProvider().get_tracer("b"), metrics=CollectorRegistry()
    )
    took = []
    for i in range(records):
        started = time.perf_counter()
        await undoer.record(
            alert_id=f"{i:032x}",
            step_index=0,
            step=STEP,
            reversal=REVERSAL,
            cluster=None,
            trace_id="ab" * 16,
            span_id="cd" * 8,
        )
        took.append((time.perf_counter() - started) * 1e6)
    load_ms = 0.0
    if state_dir:
        started = time.perf_counter()
        assert UndoStore(state_dir).load() == records
        load_ms = (time.perf_counter() - started) * 1000
    return took, load_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=2000)
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)  # a log line per record (and the memory-only warning): not measured
    for on in (True, False):
        with tempfile.TemporaryDirectory(prefix="talon-opa-undo-bench-") as tmp:
            took, load_ms = asyncio.run(run(args.records, tmp if on else ""))
        q = statistics.quantiles(took, n=100)
        print(
            f"state_dir={'on' if on else 'off'} records={args.records} record_us_p50={q[49]:.0f} "
            f"record_us_p99={q[98]:.0f} load_ms={load_ms:.0f}"
        )


if __name__ == "__main__":
    main()
