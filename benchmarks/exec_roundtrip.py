"""kubernetes:exec and kubernetes:download through a real API server: the time of one exec step, and how
fast a file is copied out of a pod.

Starts a real control plane (etcd, kube-apiserver, kwok... from tools/), one pod, then runs the shipped
Exec actionner `--runs` times (`printf` of an alert value) and downloads a `--mib` MiB file `--copies`
times. kwok runs the commands on loopback, so this is the cost of talon-opa, the API server's WebSocket
exec and the kubelet stream, not of a container runtime. Prints
`exec_p50_ms=X exec_p99_ms=Y n=N download_mib_per_s=Z`.
Usage: benchmarks/exec_roundtrip.py [--runs 100] [--mib 16] [--copies 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from talon_opa.actionners.kubernetes.download import Download
from talon_opa.actionners.kubernetes.exec import Exec
from talon_opa.core.config import Config
from talon_opa.core.events import Alert
from talon_opa.core.kube import KubeClient, KubeConfig
from talon_opa.plugins.clients import ClientProvider
from talon_opa.plugins.params import NoParams
from tests.harness.kube import KubeCluster


async def main(runs: int, mib: int, copies: int) -> None:
    with tempfile.TemporaryDirectory(prefix="talon-opa-bench-") as tmp:
        kube = KubeCluster(Path(tmp))
        try:
            await kube.start()
            await kube.create_namespace("bench")
            await kube.create_pod("bench", "api-1")
            await kube.wait_running("bench", "app=api-1")
            client = KubeClient(KubeConfig.from_file(kube.kubeconfig))
            http = aiohttp.ClientSession()
            provider = ClientProvider(Config(), http=http, kube=client)
            alert = Alert(
                rule="r", output_fields={"k8s.ns.name": "bench", "k8s.pod.name": "api-1", "proc.cmdline": "bash -i"}
            )
            exec_ = Exec(provider.clients_for(Exec.spec), NoParams())
            params = Exec.spec.decode({"command": "printf '%s' \"${PROC_CMDLINE}\""})
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                await exec_.run(alert, params)
                times.append((time.perf_counter() - started) * 1000)
            big = kube.kwok_workdir / "big.bin"
            big.write_bytes(b"\xab" * (mib * 1024 * 1024))
            download = Download(provider.clients_for(Download.spec), NoParams())
            dparams = Download.spec.decode({"file": str(big)})
            started = time.perf_counter()
            for _ in range(copies):
                outcome = await download.run(alert, dparams)
                assert outcome.artifact is not None
                assert len(outcome.artifact.data) == mib * 1024 * 1024
            rate = mib * copies / (time.perf_counter() - started)
            await client.close()
            await http.close()
            times.sort()
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
            print(
                f"exec_p50_ms={statistics.median(times):.1f} exec_p99_ms={p99:.1f} n={runs} "
                f"download_mib_per_s={rate:.0f}"
            )
        finally:
            await kube.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--copies", type=int, default=5)
    a = parser.parse_args()
    asyncio.run(main(a.runs, a.mib, a.copies))
