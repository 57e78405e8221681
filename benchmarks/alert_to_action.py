"""Alert → first Kubernetes write: POST an alert, time until the label it asks for is visible in the API server.

Starts a real control plane (etcd, kube-apiserver, kwok... from tools/) and the engine as its own process,
creates pods, then for each pod posts a "Terminal shell in container" alert and waits for the pod's
labelled version on a watch. Interleaved with those alerts, the bare floor of the same run: a plain client
GETs another pod and PATCHes the same label onto it (what the actionner does, without the engine), timed
until the watch shows it. Prints `p50_ms=X p99_ms=Y n=N floor_p50_ms=F floor_p99_ms=G ratio_p50=R`.
Loopback only, bounded.
With `--queue nats --replicas N`, N engine processes share one JetStream stream and the alerts go round-robin.
With `--intake-processes N`, the engine runs with intake.processes: N (an alert passes through an intake
process first). With `--caps-pod`, the config sets caps.protected_labels and caps.keep_last_replica, so the
engine reads each alert's pod (and its owner) from the API server before deciding (docs/caps.md): the cost of
that lookup.
With `--burst`, every alert is posted at once (a noisy rule matching many pods), after the floor's writes
all at once: each alert's time until its label shows.
Usage: benchmarks/alert_to_action.py [--alerts 100] [--queue memory|nats] [--replicas 1] [--caps-pod] [--burst]
    [--intake-processes N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._engine import engines
from tests.harness.kube import NODES, KubeCluster

LABEL = "security.falco.org/suspicious"
RULES = f"""\
- rule: Shell in a container
  match:
    rules: [Terminal shell in container]
  actions:
    - action: Mark the pod
      actionner: kubernetes:label
      parameters:
        labels:
          {LABEL}: "true"
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alerts", type=int, default=100)
    p.add_argument("--queue", choices=("memory", "nats"), default="memory")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--caps-pod", action="store_true", help="caps that read the pod before deciding")
    p.add_argument("--burst", action="store_true", help="post every alert at once (and the floor's writes at once)")
    p.add_argument("--intake-processes", type=int, default=0, help="the engine with intake.processes: N")
    a = p.parse_args()
    caps = {"protected_labels": {"talon-opa.io/protected": "true"}, "keep_last_replica": ["kubernetes:terminate"]}
    extra: dict[str, object] = {"caps": caps} if a.caps_pod else {}
    if a.intake_processes:
        extra["intake"] = {"processes": a.intake_processes}
    with tempfile.TemporaryDirectory(prefix="talon-opa-bench-kube-") as tmp:
        kube = KubeCluster(Path(tmp))
        try:
            await kube.start()
            ns = await kube.new_namespace("bench")
            for i in range(a.alerts):
                await kube.create_pod(ns, f"p{i}", node=NODES[i % 2])
                await kube.create_pod(ns, f"f{i}", node=NODES[i % 2])
            await kube.wait_running(ns, count=2 * a.alerts, within=180)
            loop = asyncio.get_running_loop()
            seen: dict[str, asyncio.Future[float]] = {
                f"{k}{i}": loop.create_future() for i in range(a.alerts) for k in "pf"
            }
            watch = asyncio.create_task(watch_labels(kube, ns, seen))
            async with engines(RULES, a.replicas, a.queue, {}, kubeconfig=str(kube.kubeconfig), **extra) as urls:
                latencies, floor = [], []
                plain = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=kube.api.config.ssl_context()))
                async with plain, aiohttp.ClientSession() as http:

                    async def direct(i: int) -> float:
                        start = time.monotonic()
                        await label_directly(plain, kube, ns, f"f{i}")
                        return (await asyncio.wait_for(seen[f"f{i}"], 60) - start) * 1000

                    async def alert(i: int) -> float:
                        body = {
                            "rule": "Terminal shell in container",
                            "priority": "Notice",
                            "output": f"shell in p{i}",
                            "output_fields": {"k8s.pod.name": f"p{i}", "k8s.ns.name": ns},
                        }
                        start = time.monotonic()
                        async with http.post(urls[i % len(urls)] + "/", json=body) as r:
                            assert r.status == 200, await r.text()
                        return (await asyncio.wait_for(seen[f"p{i}"], 60) - start) * 1000

                    if a.burst:  # every floor write at once, then every alert at once
                        floor = list(await asyncio.gather(*(direct(i) for i in range(a.alerts))))
                        latencies = list(await asyncio.gather(*(alert(i) for i in range(a.alerts))))
                    else:
                        for i in range(a.alerts):
                            floor.append(await direct(i))
                            latencies.append(await alert(i))
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        finally:
            await kube.stop()
    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    f50, f99 = statistics.median(floor), percentile(floor, 0.99)
    print(
        f"p50_ms={p50:.1f} p99_ms={p99:.1f} n={len(latencies)} floor_p50_ms={f50:.1f} floor_p99_ms={f99:.1f} "
        f"ratio_p50={p50 / f50:.2f} queue={a.queue} replicas={a.replicas} caps_pod={a.caps_pod} burst={a.burst} "
        f"intake_processes={a.intake_processes}"
    )


async def label_directly(http: aiohttp.ClientSession, kube: KubeCluster, ns: str, pod: str) -> None:
    """The floor: one GET of the pod and one merge PATCH of the label, from a plain HTTP client (its TLS
    connection kept open, as the engine's is)."""
    cfg = kube.api.config
    url = f"{cfg.server}/api/v1/namespaces/{ns}/pods/{pod}"
    headers = {"Authorization": f"Bearer {cfg.token}"}
    async with http.get(url, headers=headers) as r:
        assert r.status == 200, await r.text()
        await r.read()
    patch = {"metadata": {"labels": {LABEL: "true"}}}
    headers["Content-Type"] = "application/merge-patch+json"
    async with http.patch(url, data=json.dumps(patch), headers=headers) as r:
        assert r.status == 200, await r.text()
        await r.read()


async def watch_labels(kube: KubeCluster, ns: str, seen: dict[str, asyncio.Future[float]]) -> None:
    """Resolve each pod's future with the time its label first shows on a watch of the namespace."""
    cfg = kube.api.config
    headers = {"Authorization": f"Bearer {cfg.token}"}
    async with aiohttp.ClientSession() as http:
        lst = await kube.api.get(f"/api/v1/namespaces/{ns}/pods")
        rv = lst["metadata"]["resourceVersion"]
        async with http.get(
            f"{cfg.server}/api/v1/namespaces/{ns}/pods",
            params={"watch": "1", "resourceVersion": rv},
            headers=headers,
            ssl=cfg.ssl_context(),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        ) as r:
            async for line in r.content:
                event = json.loads(line)
                meta = event["object"]["metadata"]
                fut = seen.get(meta["name"])
                if fut is not None and not fut.done() and (meta.get("labels") or {}).get(LABEL) == "true":
                    fut.set_result(time.monotonic())


if __name__ == "__main__":
    asyncio.run(main())
