"""The audit trail's cost: event-loop time per recorded alert, lines/s the writer sustains, verify speed.

Records N alerts (a sample Falco alert, a two-step plan and its results) through the engine's
`AuditTrail` into a temporary file, with fsync on and off, then verifies the file with
`audit_chain.verify`. Prints one line per mode on stdout:

    fsync=on|off lines=N record_us=X lines_per_s=Y bytes_per_line=Z verify_lines_per_s=W

`record_us` is the time `record` takes on the event loop (the part that can delay other alerts); the
writer thread does the rest. Never asserted in tests.

    .venv/bin/python benchmarks/audit_trail.py --lines 20000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from talon_opa.core import config, events
from talon_opa.engine import audit_chain
from talon_opa.engine.audit import AuditTrail
from talon_opa.engine.execute import StepResult
from talon_opa.engine.metrics import Metrics
from talon_opa.engine.work import Job, WorkItem
from talon_opa.opa.plan import Plan, Step
from tests.harness.paths import ALERTS

BODY = (ALERTS / "falco-terminal-shell-in-container.json").read_bytes()
STEPS = (
    Step("Shell in a container", "Mark", "kubernetes:label", {"labels": {"suspicious": "true"}, "level": "pod"}),
    Step("Shell in a container", "Isolate", "kubernetes:networkpolicy", {"allow_cidr": ["10.0.0.0/8"]}),
)
PLAN = Plan(("Shell in a container",), STEPS, decision_id="d", revision="r" * 64)
RESULTS = [StepResult(s, "success", "done", objects={"pod": "p", "namespace": "n"}, span_id="1" * 16) for s in STEPS]


def job(n: int) -> Job:
    span = NonRecordingSpan(SpanContext(n + 1, n + 1, is_remote=False, trace_flags=TraceFlags(1)))
    item = WorkItem(f"alert-{n}", events.decode_alert(BODY, "application/json"), BODY, "application/json")
    return Job(item, span, 0.0)


async def run(lines: int, fsync: bool, folder: Path) -> str:
    path = folder / f"audit-{'on' if fsync else 'off'}.jsonl"
    trail = AuditTrail(config.Audit(path=str(path), fsync=fsync, buffer=lines), Metrics().registry)
    await trail.start()
    jobs = [job(n) for n in range(lines)]
    on_loop = 0.0
    started = time.perf_counter()
    for n, j in enumerate(jobs):
        t = time.perf_counter()
        trail.record(j, PLAN, RESULTS)
        on_loop += time.perf_counter() - t
        if n % 100 == 99:
            await asyncio.sleep(0)  # let the writer task hand batches to its thread, as between alerts
    await trail.flushed()
    seconds = time.perf_counter() - started
    await trail.stop()
    t = time.perf_counter()
    report = audit_chain.verify(audit_chain.read_lines(path))
    verify_s = time.perf_counter() - t
    if not report.intact or report.lines != lines:
        raise SystemExit(f"the trail does not verify: {report.problems[:3]}")
    return (
        f"fsync={'on' if fsync else 'off'} lines={lines} record_us={on_loop / lines * 1e6:.1f} "
        f"lines_per_s={lines / seconds:.0f} bytes_per_line={path.stat().st_size // lines} "
        f"verify_lines_per_s={lines / verify_s:.0f}"
    )


async def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--lines", type=int, default=20_000)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="talon-opa-audit-bench-") as tmp:
        for fsync in (True, False):
            print(await run(a.lines, fsync, Path(tmp)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
