"""What the caps policy knows about the alert's pod (`input.pod`, docs/caps.md), from the API server.

Looked up before the decision only when the `caps:` section needs it (`protected_labels`,
`keep_last_replica`): the pod's labels, whether it is ready, and the ready replicas of the workload that
owns it. A failed lookup is a fact too (`{"error": ...}`): the policy then holds the steps it cannot clear.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from talon_opa.core.kube import KubeApiError, KubeClient

LOOKUP_TIMEOUT = 5.0  # seconds per GET: the decision waits on it
# the owner kinds whose ready pods are counted, with where the count is in their status
_READY = {
    "ReplicaSet": ("apis/apps/v1", "replicasets", "readyReplicas"),
    "StatefulSet": ("apis/apps/v1", "statefulsets", "readyReplicas"),
    "DaemonSet": ("apis/apps/v1", "daemonsets", "numberReady"),
    "ReplicationController": ("api/v1", "replicationcontrollers", "readyReplicas"),
}


def _path(api: str, namespace: str, plural: str, name: str) -> str:
    return f"/{api}/namespaces/{quote(namespace, safe='')}/{plural}/{quote(name, safe='')}"


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


async def lookup(kube: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    """input.pod: {"labels", "ready", "workload": {"kind", "name", "ready_replicas"}}, or {"error": reason}."""
    try:
        pod = await kube.get(_path("api/v1", namespace, "pods", name), timeout=LOOKUP_TIMEOUT)
        meta = pod.get("metadata") or {}
        facts: dict[str, Any] = {"labels": dict(meta.get("labels") or {}), "ready": _ready(pod)}
        owners = [r for r in meta.get("ownerReferences") or [] if r.get("controller")] or meta.get("ownerReferences")
        if owners:
            kind, owner = str(owners[0].get("kind", "")), str(owners[0].get("name", ""))
            workload: dict[str, Any] = {"kind": kind, "name": owner}
            if kind in _READY:
                api, plural, key = _READY[kind]
                obj = await kube.get(_path(api, namespace, plural, owner), timeout=LOOKUP_TIMEOUT)
                workload["ready_replicas"] = int((obj.get("status") or {}).get(key) or 0)
            facts["workload"] = workload
        return facts
    except KubeApiError as e:
        return {"error": str(e)[:300]}
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        return {"error": f"looking up the pod {namespace}/{name}: {type(e).__name__}: {e}"[:300]}
