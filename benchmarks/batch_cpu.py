"""CPU per decision by batch size and requests in flight: the engine's OPA client against a real child OPA.

Translates `examples/rules.yaml`, starts OPA on a unix socket as the engine does, and decides N alerts
(a non-matching sample alert, built as the engine builds OPA's input, counters included) through
`OpaClient.decide_batch_once`, for every batch size and number of requests in flight given. Prints one
line per combination on stdout:

    batch=B in_flight=F alerts_per_s=X opa_us_per_alert=Y python_us_per_alert=Z

CPU is user+sys from /proc (OPA's process; this Python process, which also builds each input), so it is
less noisy than rates on a shared machine. Never asserted in tests.

    .venv/bin/python benchmarks/batch_cpu.py --alerts 20000 --batch 1,16,64,256 --in-flight 1,2,4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._proc import cpu_s
from talon_opa import catalog
from talon_opa.core import events
from talon_opa.opa.client import Endpoint, OpaClient
from talon_opa.opa.process import OpaProcess
from talon_opa.translator import bundle, rego
from talon_opa.translator import rules as rules_loader

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO.parent / "shared" / "samples" / "alerts" / "falco-internal-syscall-event-drop.json"


LEAN = ("rule", "priority_rank", "source", "tags_set", "output_fields_str", "counters")


async def run(client: OpaClient, opa_pid: int, alerts: int, batch: int, in_flight: int, lean: bool = False) -> str:
    doc = json.loads(SAMPLE.read_text()) if SAMPLE.exists() else {"rule": "x", "priority": "Notice", "output": "x"}
    body = json.dumps(dict(doc, rule="Benchmark rule that matches nothing")).encode()
    batches = max(1, alerts // batch)
    todo = iter(range(batches))
    opa0, py0, t0 = cpu_s(opa_pid), time.process_time(), time.perf_counter()

    async def sender() -> None:
        for _ in todo:
            inputs = []
            for _ in range(batch):  # the engine decodes each alert and builds its input
                opa_input = events.decode_alert(body).opa_input()
                opa_input["counters"] = {}
                inputs.append({k: opa_input[k] for k in LEAN} if lean else opa_input)
            plans = await client.decide_batch_once(inputs)
            assert all(not isinstance(p, Exception) and not p.matched_rules for p in plans)

    await asyncio.gather(*(sender() for _ in range(in_flight)))
    n = batches * batch
    seconds = time.perf_counter() - t0
    opa_us = (cpu_s(opa_pid) - opa0) / n * 1e6
    py_us = (time.process_time() - py0) / n * 1e6
    return (
        f"batch={batch} in_flight={in_flight} lean={lean} alerts_per_s={n / seconds:.0f} "
        f"opa_us_per_alert={opa_us:.0f} python_us_per_alert={py_us:.0f}"
    )


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alerts", type=int, default=20000, help="alerts per combination")
    p.add_argument("--batch", default="1,16,64,256", help="comma-separated batch sizes")
    p.add_argument("--in-flight", default="1,2,4", help="comma-separated requests in flight")
    p.add_argument("--lean", action="store_true", help="also with only the input fields the library reads")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="talon-opa-bench-") as tmp:
        ruleset = rules_loader.load_ruleset([REPO / "examples" / "rules.yaml"], catalog.default_registry())
        out = Path(tmp) / "bundle"
        bundle.build_bundle(rego.generate(ruleset), out, check=False)
        opa = OpaProcess(bundle=out, unix_socket=True, token="bench", log_path=Path(tmp) / "opa.log")
        await opa.start()
        ep = Endpoint.open(opa.base_url, opa.connector(), opa.headers())
        try:
            client = OpaClient(lambda: ep, timeout=30)
            assert opa.pid is not None
            await run(client, opa.pid, 2000, 16, 1)  # warm-up
            for batch in (int(x) for x in a.batch.split(",")):
                for in_flight in (int(x) for x in a.in_flight.split(",")):
                    for lean in (False, True) if a.lean else (False,):
                        print(await run(client, opa.pid, a.alerts, batch, in_flight, lean), flush=True)
        finally:
            await ep.close()
            await opa.stop()


if __name__ == "__main__":
    asyncio.run(main())
