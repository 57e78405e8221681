"""Decision latency (engine -> OPA -> plan) over loopback, from 10 to 10,000 Talon rules.

Generates a Talon rules file of realistic shape (action blocks, rules lists, priorities, tags,
output_fields, several actions per rule), translates it with the real translator into a bundle,
serves it with a real OPA (TCP, then a unix socket) and times `POST /v1/data/talon/plan` from Python
with one pooled aiohttp session, for matching and non-matching alerts. Prints one line per rule
count, transport and alert kind on stdout:

    rules=N transport=tcp|unix p50_ms=X p99_ms=Y match=yes|no

Details (translate/start times, OPA's own evaluation time) go to stderr. Never asserted in tests.

    .venv/bin/python benchmarks/decision_latency.py --rules 10,100,1000,10000 --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._wrk import alert_doc
from talon_opa import catalog
from talon_opa.core import binaries, events
from talon_opa.opa.process import OpaProcess
from talon_opa.translator import bundle, rego
from talon_opa.translator import rules as rules_loader

MAX_REQUESTS = 100_000
MATCHING_SAMPLES = 8  # distinct matching rules the timed alerts rotate over
PRIORITIES = (">=Warning", ">=Notice", "Critical", ">Informational", "", "<=Emergency")

ACTION_BLOCKS = """\
- action: Mark the pod as suspicious
  actionner: kubernetes:label
  parameters:
    labels:
      security.falco.org/suspicious: "true"

- action: Annotate the pod
  actionner: kubernetes:annotation
  parameters:
    annotations:
      security.falco.org/alert: "falco"

- action: Isolate the pod from the network
  actionner: kubernetes:networkpolicy
  parameters:
    allow_cidr:
      - "10.0.0.0/8"

- action: Terminate the pod now
  actionner: kubernetes:terminate
  parameters:
    grace_period_seconds: 0
    ignore_daemonsets: true
    ignore_statefulsets: true

- action: Collect the pod logs
  actionner: kubernetes:log
  parameters:
    tail_lines: 50
"""


def falco_rule(i: int, letter: str) -> str:
    return f"Falco rule {i:05d} {letter}"


def rule_yaml(i: int) -> str:
    """One Talon rule; the shape varies with i so every criterion kind is present at every size."""
    names = [falco_rule(i, c) for c in "ABC"[: 2 + (i % 3 == 0)]]
    lines = [
        f"- rule: Response {i:05d}",
        f"  description: Generated response rule number {i}.",
        "  match:",
        "    rules:",
        *[f"      - {n}" for n in names],
    ]
    priority = PRIORITIES[i % len(PRIORITIES)]
    if priority:
        lines.append(f'    priority: "{priority}"')
    if i % 4 == 0:
        lines += ["    tags:", "      - T1059, container", "      - mitre_execution"]
    if i % 3 == 1:
        lines += ["    output_fields:", "      - k8s.ns.name!=kube-system, k8s.ns.name!=falco"]
    elif i % 3 == 2:
        lines += ["    output_fields:", "      - k8s.ns.name=payments", "      - k8s.ns.name=vault"]
    if i % 7 == 0:
        lines.append("    source: syscall")
    if i % 50 == 49:
        lines.append("  continue: false")
    lines += [
        "  actions:",
        "    - action: Mark the pod as suspicious",
        "      parameters:",
        "        labels:",
        f"          security.falco.org/rule: r{i:05d}",
        "    - action: Annotate the pod",
    ]
    if i % 2 == 0:
        lines.append("    - action: Isolate the pod from the network")
    if i % 5 == 0:
        lines.append("    - action: Collect the pod logs")
    if i % 10 == 0:
        lines.append("    - action: Terminate the pod now")
    return "\n".join(lines) + "\n"


def rules_file(n: int) -> str:
    return ACTION_BLOCKS + "\n" + "\n".join(rule_yaml(i) for i in range(n))


def falco_alert(rule: str) -> bytes:
    output = f"08:21:07.114583261: Critical {rule} | k8s_pod_name=api-1 k8s_ns_name=payments"
    return json.dumps(alert_doc(rule, output)).encode()


def opa_input(body: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = events.decode_alert(body, "application/json").opa_input()
    return doc


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of an already sorted list."""
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


async def decide(http: aiohttp.ClientSession, url: str, doc: dict[str, Any]) -> Any:
    async with http.post(url, json={"input": doc}) as r:
        body = json.loads(await r.read())
    if r.status != 200 or "result" not in body:
        raise RuntimeError(f"OPA answered {r.status}: {body}")
    return body["result"]


async def measure(
    opa: OpaProcess, inputs: Sequence[dict[str, Any]], requests: int, warmup: int
) -> tuple[list[float], list[float], list[float]]:
    """Sequential timed decisions (ms), rotating over `inputs`; OPA's own eval and handler times (ms)."""
    url = f"{opa.base_url}/v1/data/talon/plan"
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=opa.connector(), headers=opa.headers(), timeout=timeout) as http:
        for i in range(warmup):
            await decide(http, url, inputs[i % len(inputs)])
        times: list[float] = []
        for i in range(requests):
            t0 = time.perf_counter_ns()
            await decide(http, url, inputs[i % len(inputs)])
            times.append((time.perf_counter_ns() - t0) / 1e6)
        evals: list[float] = []
        handler: list[float] = []
        for i in range(min(500, requests)):
            async with http.post(url + "?metrics=true", json={"input": inputs[i % len(inputs)]}) as r:
                metrics = (await r.json())["metrics"]
            evals.append(metrics.get("timer_rego_query_eval_ns", 0) / 1e6)
            handler.append(metrics.get("timer_server_handler_ns", 0) / 1e6)
    return sorted(times), sorted(evals), sorted(handler)


async def check_plans(opa: OpaProcess, matching: dict[str, dict[str, Any]], other: dict[str, Any]) -> None:
    """The timed alerts decide what they should: each matching one exactly its rule, the other nothing."""
    url = f"{opa.base_url}/v1/data/talon/plan"
    async with aiohttp.ClientSession(connector=opa.connector(), headers=opa.headers()) as http:
        for name, doc in matching.items():
            got = await decide(http, url, doc)
            if got["matched_rules"] != [name] or not got["steps"]:
                raise RuntimeError(f"expected only {name!r} to match, got {got}")
        got = await decide(http, url, other)
        if got != {"matched_rules": [], "steps": []}:
            raise RuntimeError(f"expected an empty plan for the unrelated alert, got {got}")


def profile(bundle_dir: Path, doc: dict[str, Any], limit: int = 15) -> str:
    """`opa eval --profile` of one decision: where evaluation time goes, by Rego expression."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(doc, f)
    done = subprocess.run(
        [
            binaries.find("opa"),
            "eval",
            "--bundle",
            str(bundle_dir),
            "--input",
            f.name,
            "--profile",
            "--profile-sort",
            "total_time_ns",
            "--profile-limit",
            str(limit),
            "--count",
            "5",
            "--format",
            "pretty",
            "data.talon.plan",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    Path(f.name).unlink()
    return done.stdout + done.stderr


async def run_size(
    n: int, transports: Sequence[str], requests: int, work: Path, do_profile: bool, as_data: bool | None = None
) -> None:
    t0 = time.perf_counter()
    rules_path = work / f"rules-{n}.yaml"
    rules_path.write_text(rules_file(n))
    ruleset = rules_loader.load_ruleset([rules_path], catalog.default_registry())
    t1 = time.perf_counter()
    files = rego.generate(ruleset, as_data=as_data)
    t2 = time.perf_counter()
    out = work / f"bundle-{n}"
    revision = bundle.build_bundle(files, out, check=False)
    t3 = time.perf_counter()
    size = sum(len(v) for v in files.values())
    log(
        f"# rules={n} load_s={t1 - t0:.2f} generate_s={t2 - t1:.2f} bundle_s={t3 - t2:.2f} "
        f"generated_bytes={size} revision={revision[:12]}"
    )

    picks = sorted({round(k * (n - 1) / max(1, MATCHING_SAMPLES - 1)) for k in range(MATCHING_SAMPLES)})
    matching = {f"Response {i:05d}": opa_input(falco_alert(falco_rule(i, "A"))) for i in picks}
    other = opa_input(falco_alert("Some unrelated Falco rule"))
    warmup = min(500, max(50, requests // 5))

    for transport in transports:
        opa = OpaProcess(bundle=out, unix_socket=transport == "unix", log_path=work / f"opa-{n}-{transport}.log")
        s0 = time.perf_counter()
        await opa.start(ready_within=600)
        try:
            ready_s = time.perf_counter() - s0
            await check_plans(opa, matching, other)
            for kind, inputs in (("yes", list(matching.values())), ("no", [other])):
                times, evals, handler = await measure(opa, inputs, requests, warmup)
                print(
                    f"rules={n} transport={transport} p50_ms={quantile(times, 0.5):.3f} "
                    f"p99_ms={quantile(times, 0.99):.3f} match={kind}",
                    flush=True,
                )
                log(
                    f"#   transport={transport} match={kind} opa_ready_s={ready_s:.2f} "
                    f"mean_ms={statistics.fmean(times):.3f} max_ms={times[-1]:.3f} "
                    f"opa_eval_p50_ms={quantile(evals, 0.5):.3f} opa_eval_p99_ms={quantile(evals, 0.99):.3f} "
                    f"opa_handler_p50_ms={quantile(handler, 0.5):.3f} opa_handler_p99_ms={quantile(handler, 0.99):.3f}"
                )
        finally:
            await opa.stop()
    if do_profile:
        log(f"# opa eval --profile, rules={n}, matching alert:\n{profile(out, next(iter(matching.values())))}")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rules", default="10,100,1000,10000", help="comma-separated rule counts")
    p.add_argument("--requests", type=int, default=2000, help=f"timed decisions per line (max {MAX_REQUESTS})")
    p.add_argument("--transport", default="tcp,unix", help="comma-separated: tcp, unix")
    p.add_argument("--profile", action="store_true", help="print `opa eval --profile` per rule count to stderr")
    p.add_argument("--keep", metavar="DIR", help="keep the generated rules, bundles and OPA logs in DIR")
    p.add_argument(
        "--form",
        choices=("auto", "modules", "data"),
        default="auto",
        help="translated rules as a module each or as data (auto: data beyond 1,000 rules, as the engine does)",
    )
    args = p.parse_args(argv)
    as_data = {"auto": None, "modules": False, "data": True}[args.form]
    sizes = [int(s) for s in args.rules.split(",") if s.strip()]
    transports = [t.strip() for t in args.transport.split(",") if t.strip()]
    if not sizes or any(n < 1 for n in sizes) or not 1 <= args.requests <= MAX_REQUESTS:
        p.error(f"--rules needs positive counts and --requests 1..{MAX_REQUESTS}")
    if any(t not in ("tcp", "unix") for t in transports):
        p.error("--transport takes tcp and/or unix")

    async def run_all(work: Path) -> None:
        for n in sizes:
            await run_size(n, transports, args.requests, work, args.profile, as_data)

    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
        asyncio.run(run_all(work))
    else:
        with tempfile.TemporaryDirectory(prefix="talon-opa-bench-") as tmp:
            asyncio.run(run_all(Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
