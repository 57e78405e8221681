"""Decision time of data.talon.plan with 10 and 10,000 generated rules (printed, never asserted).

Usage: .venv/bin/python benchmarks/rego_index_scaling.py [--sizes 10,10000] [--requests 3000]

For each size: generate the rules (translator.rego.generate) + the hand-written library into a
bundle directory, then measure (1) `opa bench` (evaluation only) and (2) HTTP round trips to a real
`opa run --server` over loopback (POST /v1/data/talon/plan, one pooled aiohttp session), for an
alert that matches one rule and an alert that matches none.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from talon_opa.core import binaries
from talon_opa.core.errors import Where
from talon_opa.opa.process import OpaProcess
from talon_opa.translator.bundle import build_bundle
from talon_opa.translator.model import Action, FieldCondition, Match, Priority, Rule, RuleSet
from talon_opa.translator.rego import generate


def ruleset(n: int) -> RuleSet:
    """n rules of every kind: by Falco rule (+ priority, output_fields), by tag, and a few unindexed."""
    rules = []
    for i in range(n):
        where = Where("bench.yaml", i + 1, 3)
        if i % 10 == 9:
            match = Match(tags=(frozenset({f"tag{i}", "container"}),), priority=Priority(">=", 4, ">=Warning"))
        else:
            match = Match(
                rules=(f"Falco rule {i}", f"Other falco rule {i}"),
                priority=Priority(">=", 3, ">=Notice"),
                output_fields=((FieldCondition("k8s.ns.name", "!=", "kube-system"),),),
            )
        action = Action(
            name="label",
            actionner="kubernetes:label",
            parameters={"labels": {"suspicious": "true"}, "level": "pod"},
            continue_=True,
            ignore_errors=False,
            output=None,
            where=where,
        )
        rules.append(Rule(name=f"Rule {i}", match=match, actions=(action,), where=where))
    return RuleSet(tuple(rules))


def alert(rule: str) -> dict[str, object]:
    return {
        "rule": rule,
        "priority": "Warning",
        "priority_rank": 4,
        "source": "syscall",
        "hostname": "node-1",
        "time": "2026-07-14T08:21:07.114583261Z",
        "output": "A shell was spawned",
        "tags": ["T1059", "container", "shell"],
        "tags_set": {"T1059": True, "container": True, "shell": True},
        "output_fields": {"k8s.ns.name": "payments", "k8s.pod.name": "api-1", "proc.pid": 1234567},
        "output_fields_str": {"k8s.ns.name": "payments", "k8s.pod.name": "api-1", "proc.pid": "1234567"},
    }


def build(n: int, root: Path) -> float:
    started = time.perf_counter()
    files = generate(ruleset(n))
    elapsed = time.perf_counter() - started
    build_bundle(files, root, check=False)
    return elapsed


def opa_bench(root: Path, input_doc: dict[str, object]) -> str:
    inp = root.parent / "input.json"
    inp.write_text(json.dumps(input_doc))
    done = subprocess.run(
        [binaries.find("opa"), "bench", "--count", "1", "-b", str(root), "-i", str(inp), "--format", "json",
         "data.talon.plan"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout)
    extra = result["Extra"]
    p50, p99 = extra["histogram_timer_rego_query_eval_ns_median"], extra["histogram_timer_rego_query_eval_ns_99%"]
    return f"opa bench eval p50 {p50 / 1000:.1f} µs, p99 {p99 / 1000:.1f} µs"


async def http_latency(root: Path, input_doc: dict[str, object], requests: int) -> tuple[str, object]:
    opa = OpaProcess(bundle=root)
    await opa.start(ready_within=120)
    try:
        url = f"{opa.base_url}/v1/data/talon/plan"
        body = json.dumps({"input": input_doc}).encode()
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession(connector=opa.connector()) as http:
            for _ in range(200):  # warm-up
                async with http.post(url, data=body, headers=headers) as r:
                    result = (await r.json())["result"]
            times = []
            for _ in range(requests):
                t0 = time.perf_counter()
                async with http.post(url, data=body, headers=headers) as r:
                    await r.read()
                times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        p50 = statistics.median(times)
        p99 = times[int(len(times) * 0.99) - 1]
        return f"HTTP p50 {p50:.3f} ms, p99 {p99:.3f} ms", result
    finally:
        await opa.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,10000")
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "bundle"
            gen = build(n, root)
            print(f"== {n} rules (generate: {gen:.1f} s)")
            for label, doc in (("matching alert", alert("Falco rule 5")), ("non-matching alert", alert("nothing"))):
                http, result = await http_latency(root, doc, args.requests)
                matched = result["matched_rules"] if isinstance(result, dict) else result
                print(f"  {label:19} {opa_bench(root, doc)}; {http}; matched {matched}")


if __name__ == "__main__":
    asyncio.run(main())
