"""Memory under hostile alerts (issue 14): unique huge rule names, then 1 MB alerts while OPA is frozen.

Prints the engine's RSS and /metrics size after N alerts whose `rule` is a unique 50 KB string (the metric
labels are bounded: /metrics must not grow), then how many of M 1 MB alerts are accepted while the child
OPA is stopped (SIGSTOP: nothing is decided, the queue fills by bytes and answers 503), the RSS then, and
whether every accepted alert is decided once OPA resumes. Loopback only; bounded in count.
Usage: benchmarks/hostile_memory.py [--unique 1000] [--big 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from talon_opa.opa.process import free_port

REPO = Path(__file__).resolve().parent.parent
RULES = """\
- rule: Shell in a container
  match: {rules: [Terminal shell in container]}
  dry_run: true
  actions:
    - action: Mark the pod
      actionner: kubernetes:label
      parameters: {labels: {security.falco.org/suspicious: "true"}}
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def alert(pod: str, **changes: object) -> bytes:
    doc: dict[str, object] = {
        "rule": "Terminal shell in container",
        "priority": "Notice",
        "output": f"A shell was spawned pod={pod}",
        "output_fields": {"k8s.pod.name": pod, "k8s.ns.name": "bench"},
    }
    doc.update(changes)
    return json.dumps(doc).encode()


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--unique", type=int, default=1000)
    p.add_argument("--big", type=int, default=200)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="talon-opa-bench-") as tmp:
        work = Path(tmp)
        port = free_port()
        (work / "rules.yaml").write_text(RULES)
        cfg = {"listen_port": port, "log_level": "warning", "deduplication": {"time_window_seconds": 0}}
        (work / "config.yaml").write_text(yaml.safe_dump(cfg))
        command = [sys.executable, "-m", "talon_opa.cli.main", "server", "-c", str(work / "config.yaml")]
        with (work / "engine.log").open("wb") as log:
            proc = subprocess.Popen(
                [*command, "-r", str(work / "rules.yaml")],
                cwd=REPO,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )

        def request(method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                conn.request(method, path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                return resp.status, resp.read()
            finally:
                conn.close()

        def metric(name: str) -> float:
            text = request("GET", "/metrics")[1].decode()
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

        try:
            for _ in range(600):
                try:
                    if request("GET", "/readyz")[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            print(f"ready: rss_kib={rss_kib(proc.pid)} metrics_bytes={len(request('GET', '/metrics')[1])}")
            statuses: Counter[int] = Counter()
            for i in range(args.unique):
                statuses[request("POST", "/", alert(f"u{i}", rule=f"r{i}-" + "x" * 50_000))[0]] += 1
            print(
                f"unique_50kb_rules={args.unique} statuses={dict(statuses)} rss_kib={rss_kib(proc.pid)} "
                f"metrics_bytes={len(request('GET', '/metrics')[1])}"
            )
            opa = children(proc.pid)
            for pid in opa:
                os.kill(pid, signal.SIGSTOP)
            statuses = Counter()
            try:
                pad = "y" * (1024 * 1024 - 2000)
                for i in range(args.big):
                    statuses[request("POST", "/", alert(f"b{i}", output_fields={"pad": pad}))[0]] += 1
                print(f"one_mb_alerts_opa_frozen={args.big} statuses={dict(statuses)} rss_kib={rss_kib(proc.pid)}")
            finally:
                for pid in opa:
                    os.kill(pid, signal.SIGCONT)
            for _ in range(600):
                if metric("talon_opa_queue_depth") == 0 and metric("talon_opa_alerts_in_flight") == 0:
                    break
                time.sleep(0.1)
            decided = int(metric("talon_opa_decision_duration_seconds_count"))
            accepted = args.unique + statuses[200]
            print(f"after_opa_resumed: rss_kib={rss_kib(proc.pid)} accepted={accepted} decided={decided}")
        finally:
            proc.send_signal(signal.SIGTERM)
            print(f"exit={proc.wait(60)}")


if __name__ == "__main__":
    main()
