"""wrk for the benchmarks: where it is (`make bench-tools`), its Lua script, and the alert bodies it posts.

Nothing here imports talon_opa, so that a benchmark can load another source tree's engine (A/B runs).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "wrk_alerts.lua"
MATCHING_RULE = "Falco rule 00000 A"  # matched by rule 0 of benchmarks/decision_latency.py's generated rules


def wrk_binary() -> str:
    found = subprocess.run([str(REPO / "tools" / "path"), "wrk"], capture_output=True, text=True)
    if found.returncode != 0:
        sys.exit(f"wrk is not built: run `make bench-tools` (tools/build wrk)\n{found.stderr.strip()}")
    return found.stdout.strip()


def alert_doc(rule: str, output: str) -> dict[str, object]:
    """A Falco alert of `rule` as the benchmarks post it (a shell in a payments pod)."""
    return {
        "hostname": "ip-10-0-12-47.eu-west-1.compute.internal",
        "output": output,
        "output_fields": {
            "container.id": "3f9a1c2b7d4e",
            "evt.time": 1784017267114583261,
            "k8s.ns.name": "payments",
            "k8s.pod.name": "payments-api-6d8f7c9b5-x2k4p",
            "proc.name": "bash",
            "proc.pid": 4242,
            "user.name": "root",
        },
        "priority": "Critical",
        "rule": rule,
        "source": "syscall",
        "tags": ["T1059", "container", "mitre_execution", "shell"],
        "time": "2026-07-14T08:21:07.114583261Z",
    }


def body_halves(matching: bool) -> tuple[str, str]:
    """The alert body around its unique part (the output text, Talon's deduplication key)."""
    run = secrets.token_hex(4)  # a new key space per run: an engine's dedup window never spans two runs
    rule = MATCHING_RULE if matching else "Benchmark rule that matches nothing"
    head, tail = json.dumps(alert_doc(rule, f"08:21:07.114583261: Critical {rule} | run={run} n=@@")).split("@@")
    return head, tail
