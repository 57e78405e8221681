"""kubernetes:terminate — delete the pod of the alert, unless its owner kind or replica health says no."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from talon_opa.actionners.kubernetes import _pods
from talon_opa.core.kube import KubeApiError
from talon_opa.plugins.params import absolute_or_percent, param
from talon_opa.plugins.runtime import Actionner, Outcome
from talon_opa.plugins.spec import Grant, Spec

if TYPE_CHECKING:
    from talon_opa.core.events import Alert


@dataclass(frozen=True, kw_only=True, slots=True)
class TerminateParams:
    grace_period_seconds: int = param(0, doc="seconds the pod has to stop before it is killed; 0: immediately")
    ignore_daemonsets: bool = param(False, doc="leave pods owned by a DaemonSet alone")
    ignore_statefulsets: bool = param(False, doc="leave pods owned by a StatefulSet alone")
    ignore_standalone_pods: bool = param(False, doc="leave pods without an owner alone")
    min_healthy_replicas: str | None = param(
        None,
        doc='skip when the ReplicaSet would keep fewer ready pods: a quoted count ("2") or percentage ("50%")',
        check=absolute_or_percent,
    )


def required_ready(min_healthy_replicas: str, desired: int) -> int:
    """How many ready pods the ReplicaSet must have for one of them to be terminated.

    "N" is N pods. "N%" is N percent of the ReplicaSet's desired replicas (`spec.replicas`), rounded up:
    a safety floor must never be met by fewer pods than the percentage says ("50%" of 3 is 2, not 1),
    as Kubernetes rounds a PodDisruptionBudget's percentage `minAvailable` up. (Talon used the
    percentage's number as a count: "50%" meant 50 pods; DESIGN §4.)
    """
    if min_healthy_replicas.endswith("%"):
        percent = int(min_healthy_replicas[:-1])
        return -(-desired * percent // 100)
    return int(min_healthy_replicas)


class Terminate(Actionner[TerminateParams]):
    spec: ClassVar[Spec[TerminateParams]] = Spec(
        name="kubernetes:terminate",
        kind="actionner",
        clients=("kube",),
        description="Terminate the pod (its owner may restart it); stops the rule's later actions by default",
        params=TerminateParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        continues=False,
        grants=(
            Grant(("",), ("pods",), ("get", "delete")),
            Grant(("apps",), ("replicasets",), ("get",)),
        ),
        example="""\
- action: Terminate the pod
  actionner: kubernetes:terminate
  parameters:
    grace_period_seconds: 5
    ignore_daemonsets: true
    ignore_statefulsets: true
    min_healthy_replicas: "33%"
""",
    )

    async def run(self, alert: Alert, params: TerminateParams) -> Outcome:
        kube = self.clients.kube
        ref = _pods.target(alert)
        try:
            pod = await kube.get(ref.path)
        except KubeApiError as e:
            if e.status != 404:
                raise
            return Outcome.done(f"{ref} was already gone", pod=ref.name, namespace=ref.namespace)
        skip = await self._reason_to_skip(pod, ref, params)
        if skip:
            return Outcome.ignored(f"{ref} was not terminated: {skip}", pod=ref.name, namespace=ref.namespace)
        uid = (pod.get("metadata") or {}).get("uid")
        options: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": params.grace_period_seconds,
        }
        if uid:
            options["preconditions"] = {"uid": uid}  # never the pod a controller made anew under the same name
        try:
            await kube.delete(ref.path, options)
        except KubeApiError as e:
            # 404: gone meanwhile; 409: the uid precondition failed, so the pod we looked at is gone
            if e.status not in (404, 409):
                raise
            return Outcome.done(f"{ref} was already gone", pod=ref.name, namespace=ref.namespace)
        return Outcome.done(f"{ref} has been terminated", pod=ref.name, namespace=ref.namespace)

    async def _reason_to_skip(self, pod: Mapping[str, Any], ref: _pods.PodRef, params: TerminateParams) -> str:
        """Why the parameters say to leave this pod alone, "" when they don't."""
        kind = _pods.pod_kind(pod)
        if kind == "DaemonSet" and params.ignore_daemonsets:
            return "it belongs to a DaemonSet and ignore_daemonsets is set"
        if kind == "StatefulSet" and params.ignore_statefulsets:
            return "it belongs to a StatefulSet and ignore_statefulsets is set"
        if kind == _pods.STANDALONE and params.ignore_standalone_pods:
            return "it has no owner and ignore_standalone_pods is set"
        if kind == "ReplicaSet" and params.min_healthy_replicas:
            kube = self.clients.kube
            owner = _pods.owner_reference(pod) or {}
            replica_set = await _pods.get_owner_object(kube, ref.namespace, kind, str(owner.get("name", "")))
            return _too_few_ready(replica_set, params.min_healthy_replicas)
        return ""


def _too_few_ready(replica_set: Mapping[str, Any], min_healthy_replicas: str) -> str:
    """Why the ReplicaSet has too few ready pods to lose one, "" when it has enough."""
    desired = int((replica_set.get("spec") or {}).get("replicas", 1) or 0)
    ready = int((replica_set.get("status") or {}).get("readyReplicas", 0) or 0)
    needed = required_ready(min_healthy_replicas, desired)
    if ready >= needed:
        return ""
    name = (replica_set.get("metadata") or {}).get("name", "")
    return (
        f"the ReplicaSet '{name}' has {ready} ready of {desired} desired replicas, "
        f"fewer than min_healthy_replicas {min_healthy_replicas} ({needed})"
    )
