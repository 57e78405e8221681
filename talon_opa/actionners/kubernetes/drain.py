"""kubernetes:drain — cordon the pod's node, then evict its pods through the Eviction API.

As Falco Talon (reference §3.10): every pod of the node, in every namespace, is evicted unless
`ignore_daemonsets` / `ignore_statefulsets` or `min_healthy_replicas` say to leave it; `ignore_errors`
turns a partial drain into a success; `max_wait_period` waits for the evicted pods to leave the node.
Unlike Talon, the node is cordoned first (so evicted pods are not scheduled back onto it), a pod a
PodDisruptionBudget protects (the API's 429) is reported by name, `min_healthy_replicas` percentages are
of the ReplicaSet's desired replicas (rounded up), and pods of one ReplicaSet evicted by the same drain
count against its threshold (Talon checked each pod against the same count, in parallel).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from talon_opa.actionners.kubernetes import _pods
from talon_opa.actionners.kubernetes.cordon import cordon, node_of, uncordon
from talon_opa.actionners.kubernetes.terminate import required_ready
from talon_opa.core import backoff
from talon_opa.core.errors import StepFailed, TalonError
from talon_opa.core.kube import KubeApiError, KubeClient
from talon_opa.plugins.params import absolute_or_percent, between, param
from talon_opa.plugins.reversal import Reversal, Reversible, Undone
from talon_opa.plugins.runtime import Actionner, Outcome
from talon_opa.plugins.spec import Grant, Spec

if TYPE_CHECKING:
    from talon_opa.core.events import Alert

MIRROR = "kubernetes.io/config.mirror"  # a static pod's mirror: the kubelet owns it, evicting it does nothing
CONCURRENT_EVICTIONS = 8
LISTED = 20  # pods named in a message, at most
WAIT = backoff.Policy(initial=0.2, maximum=2.0)  # polling the node's pods while they leave


@dataclass(frozen=True, kw_only=True, slots=True)
class DrainParams:
    min_healthy_replicas: str | None = param(
        None,
        doc='skip ReplicaSet pods whose ReplicaSet would keep fewer ready pods: "2" or "50%" of its replicas',
        check=absolute_or_percent,
    )
    ignore_daemonsets: bool = param(False, doc="leave pods owned by a DaemonSet alone")
    ignore_statefulsets: bool = param(False, doc="leave pods owned by a StatefulSet alone")
    ignore_errors: bool = param(False, doc="report success even when some pods could not be evicted")
    max_wait_period: int = param(
        0,
        doc="seconds to wait for the evicted pods to leave the node; 0: no wait; keep it below the step's "
        "timeout (step_timeout_seconds, 30 by default), which the wait counts against",
        check=between(0),
    )
    wait_period_excluded_namespaces: tuple[str, ...] | None = param(
        None, doc="namespaces whose evicted pods max_wait_period does not wait for (Talon ignores it)"
    )


@dataclass
class _Drain:
    """What happened to each pod of the node (`namespace/name`, with the reason where there is one)."""

    evict: list[Mapping[str, Any]] = field(default_factory=list)  # pods to evict
    evicted: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # refused by a disruption budget (429)
    failed: list[str] = field(default_factory=list)  # any other error
    stuck: list[str] = field(default_factory=list)  # evicted but still on the node after max_wait_period
    leaving: dict[str, str] = field(default_factory=dict)  # uid -> pod, evicted or already terminating

    def summary(self, waited: bool) -> str:
        text = (
            f"{len(self.evicted)} evicted pods, {len(self.ignored)} ignored pods, "
            f"{len(self.blocked)} eviction errors, {len(self.failed)} other errors"
        )
        return text + (f", {len(self.stuck)} wait errors" if waited else "")

    def problems(self) -> list[str]:
        return self.blocked + self.failed + self.stuck


def _name(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _listed(items: Sequence[str]) -> str:
    more = len(items) - LISTED
    return "; ".join(items[:LISTED]) + (f"; and {more} more" if more > 0 else "")


class Drain(Actionner[DrainParams], Reversible):
    spec: ClassVar[Spec[DrainParams]] = Spec(
        name="kubernetes:drain",
        kind="actionner",
        clients=("kube",),
        description=(
            "Cordon the node running the pod, then evict its pods through the Eviction API (PodDisruptionBudgets apply)"
        ),
        params=DrainParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        grants=(
            Grant(("",), ("pods",), ("get", "list")),
            Grant(("",), ("pods/eviction",), ("create",)),
            Grant(("",), ("nodes",), ("get", "patch")),
            Grant(("apps",), ("replicasets",), ("get",)),
        ),
        reversible=True,
        example="""\
- action: Drain the node
  actionner: kubernetes:drain
  parameters:
    ignore_daemonsets: true
    ignore_statefulsets: true
    min_healthy_replicas: "50%"
    max_wait_period: 20
""",
    )

    async def run(self, alert: Alert, params: DrainParams) -> Outcome:
        kube = self.clients.kube
        node = await node_of(kube, alert)
        reversal = await cordon(kube, node, self.spec.name)  # undoing a drain uncordons; evictions stay
        drain = _Drain()
        await self._plan(kube, await _pods_on(kube, node), params, drain)
        await _evict_all(kube, drain)
        waited = params.max_wait_period > 0
        if waited:
            excluded = tuple(f"{ns}/" for ns in params.wait_period_excluded_namespaces or ())
            drain.leaving = {uid: name for uid, name in drain.leaving.items() if not name.startswith(excluded)}
            if drain.leaving:
                await _wait_gone(kube, node, drain, params.max_wait_period)
        summary = drain.summary(waited)
        problems = drain.problems()
        if problems and not params.ignore_errors:
            raise StepFailed(
                f"the node '{node}' has not been fully drained: {summary}; not evicted: {_listed(problems)}",
                hint="a PodDisruptionBudget that allows no disruption keeps its pods (scale the workload up or "
                "relax the budget); set ignore_errors: true to accept a partial drain",
            )
        objects = {"node": node}
        if problems:
            objects["not_evicted"] = ", ".join(p.split(" ", 1)[0] for p in problems[:LISTED])
            message = f"the node '{node}' has been drained, errors are ignored: {summary}; not evicted: "
            return Outcome("success", message + _listed(problems), objects).undone_by(reversal)
        return Outcome("success", f"the node '{node}' has been drained: {summary}", objects).undone_by(reversal)

    async def undo(self, reversal: Reversal) -> Undone:
        return await uncordon(self.clients.kube, reversal)

    async def _plan(
        self, kube: KubeClient, pods: Sequence[Mapping[str, Any]], params: DrainParams, drain: _Drain
    ) -> None:
        """Sort the node's pods into those to evict and those the parameters leave alone."""
        # per ReplicaSet: its ready pods minus those this drain evicts, and the ready pods it must keep
        budgets: dict[tuple[str, str], list[int]] = {}
        for pod in pods:
            meta = pod.get("metadata") or {}
            name = _name(pod)
            if meta.get("deletionTimestamp"):
                drain.leaving[str(meta.get("uid", ""))] = name  # already terminating: only waited for
                continue
            if MIRROR in (meta.get("annotations") or {}):
                drain.ignored.append(f"{name} (a static pod: its kubelet owns it)")
                continue
            kind = _pods.pod_kind(pod)
            if kind == "DaemonSet" and params.ignore_daemonsets:
                drain.ignored.append(f"{name} (DaemonSet, ignore_daemonsets)")
                continue
            if kind == "StatefulSet" and params.ignore_statefulsets:
                drain.ignored.append(f"{name} (StatefulSet, ignore_statefulsets)")
                continue
            if kind == "ReplicaSet" and params.min_healthy_replicas:
                namespace = str(meta.get("namespace", ""))
                owner = str((_pods.owner_reference(pod) or {}).get("name", ""))
                key = (namespace, owner)
                if key not in budgets:
                    try:
                        rs = await _pods.get_owner_object(kube, namespace, "ReplicaSet", owner)
                    except TalonError as e:
                        drain.failed.append(f"{name} ({e})")
                        continue
                    desired = int((rs.get("spec") or {}).get("replicas", 1) or 0)
                    ready = int((rs.get("status") or {}).get("readyReplicas", 0) or 0)
                    budgets[key] = [ready, required_ready(params.min_healthy_replicas, desired)]
                budget = budgets[key]
                if budget[0] < budget[1]:  # as terminate: a pod goes only while ready >= the threshold
                    drain.ignored.append(
                        f"{name} (its ReplicaSet '{owner}' has {budget[0]} ready pods left, fewer than "
                        f"min_healthy_replicas {params.min_healthy_replicas} ({budget[1]}))"
                    )
                    continue
                if _ready(pod):
                    budget[0] -= 1  # this eviction takes one ready pod away
            drain.evict.append(pod)


async def _pods_on(kube: KubeClient, node: str) -> list[Mapping[str, Any]]:
    """Every pod bound to the node, in every namespace (pages of 500)."""
    pods: list[Mapping[str, Any]] = []
    token = ""
    while True:
        params = {"fieldSelector": f"spec.nodeName={node}", "limit": "500"}
        if token:
            params["continue"] = token
        page = await kube.get("/api/v1/pods", params=params)
        pods += page.get("items") or []
        token = (page.get("metadata") or {}).get("continue") or ""
        if not token:
            return pods


async def _evict_all(kube: KubeClient, drain: _Drain) -> None:
    """Evict the planned pods, a few at a time; each result lands in its list."""
    slots = asyncio.Semaphore(CONCURRENT_EVICTIONS)

    async def evict(pod: Mapping[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        name, uid = _name(pod), str(meta.get("uid", ""))
        async with slots:
            try:
                await kube.evict(str(meta.get("namespace", "")), str(meta.get("name", "")), uid=uid or None)
            except KubeApiError as e:
                if e.status == 429:  # a disruption budget allows no disruption now
                    drain.blocked.append(f"{name} ({e.api_message})")
                elif e.status in (404, 409):  # gone meanwhile, or replaced by a new pod of the same name
                    drain.evicted.append(name)
                else:
                    drain.failed.append(f"{name} ({e.status} {e.reason}: {e.api_message})")
                return
            except Exception as e:  # a connection error, a timeout: this pod's failure, the others go on
                drain.failed.append(f"{name} ({type(e).__name__}: {e})")
                return
        drain.evicted.append(name)
        drain.leaving[uid] = name

    async with asyncio.TaskGroup() as tasks:
        for pod in drain.evict:
            tasks.create_task(evict(pod), name=f"talon-opa-evict-{_name(pod)}")


async def _wait_gone(kube: KubeClient, node: str, drain: _Drain, seconds: int) -> None:
    """Wait until the evicted pods have left the node, at most `seconds`; those left are wait errors."""
    deadline = time.monotonic() + seconds
    waits = backoff.Backoff(WAIT)
    while True:
        present = {str((p.get("metadata") or {}).get("uid", "")) for p in await _pods_on(kube, node)}
        remaining = [name for uid, name in drain.leaving.items() if uid in present]
        left = deadline - time.monotonic()
        if not remaining:
            return
        if left <= 0:
            drain.stuck += [f"{name} (still on the node after {seconds}s)" for name in remaining]
            return
        await asyncio.sleep(min(waits.next(), left))
