"""A kwok node of a test's own, and workloads pinned to it: cordon and drain act on whole nodes, and the
session's two nodes must stay schedulable for the other tests."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from tests.harness.kube import KubeCluster


@pytest_asyncio.fixture(loop_scope="session")
async def node(kube: KubeCluster) -> AsyncIterator[str]:
    """A kwok node of this test's own, deleted after it."""
    name = f"ops-{secrets.token_hex(3)}"
    await kube.create_node(name)

    async def ready() -> bool:
        conditions = (await kube.api.get(f"/api/v1/nodes/{name}")).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    await kube.wait_for(ready, f"node {name} Ready")
    yield name
    await kube.api.delete(f"/api/v1/nodes/{name}")


async def on_node(kube: KubeCluster, kind: str, ns: str, name: str, node: str, replicas: int = 1) -> None:
    """A Deployment, StatefulSet or DaemonSet whose pods run on `node` only."""
    plural = {"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}[kind]
    template = kube.pod_template(name)
    template["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    # the harness's pods tolerate every taint, the cordon's `unschedulable` too: these must not
    del template["spec"]["tolerations"]
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": name}}, "template": template}
    if kind != "DaemonSet":
        spec["replicas"] = replicas
    if kind == "StatefulSet":
        spec["serviceName"] = name
    await kube.api.post(
        f"/apis/apps/v1/namespaces/{ns}/{plural}",
        {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec},
    )


async def guarded_by_a_budget(kube: KubeCluster, ns: str, app: str) -> None:
    """A PodDisruptionBudget keeping every pod of `app`; waits until the disruption controller computed it."""
    base = f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets"
    await kube.api.post(
        base,
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": app},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": app}}},
        },
    )

    async def computed() -> bool:
        pdb = await kube.api.get(f"{base}/{app}")
        status = pdb.get("status", {})
        return bool(
            status.get("observedGeneration") == pdb["metadata"]["generation"]
            and status.get("currentHealthy") == 1
            and status.get("disruptionsAllowed") == 0
        )

    await kube.wait_for(computed, f"PodDisruptionBudget {app} computed")


def uids(pods: list[dict[str, Any]]) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}


async def on_the_node(kube: KubeCluster, ns: str, node: str, *, terminating: bool = False) -> dict[str, str]:
    """This namespace's pods bound to the node (and not terminating, unless asked): name -> uid."""
    items = (await kube.api.get(f"/api/v1/namespaces/{ns}/pods", params={"fieldSelector": f"spec.nodeName={node}"}))[
        "items"
    ]
    return uids([p for p in items if terminating or not p["metadata"].get("deletionTimestamp")])
