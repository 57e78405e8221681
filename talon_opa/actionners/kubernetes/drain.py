"""kubernetes:drain — evict every pod of the pod's node."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.plugins.params import absolute_or_percent, param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Grant, Spec


@dataclass(frozen=True, kw_only=True, slots=True)
class DrainParams:
    min_healthy_replicas: str | None = param(
        None,
        doc='skip ReplicaSet pods whose ReplicaSet would keep fewer ready pods: "2" or "50%"',
        check=absolute_or_percent,
    )
    ignore_daemonsets: bool = param(False, doc="leave pods owned by a DaemonSet alone")
    ignore_statefulsets: bool = param(False, doc="leave pods owned by a StatefulSet alone")
    ignore_errors: bool = param(False, doc="report success even when some pods could not be evicted")
    max_wait_period: int = param(0, doc="seconds to wait for the evicted pods to leave the node; 0: no wait")
    wait_period_excluded_namespaces: tuple[str, ...] | None = param(
        None, doc="accepted for Talon compatibility; Talon ignores it"
    )


class Drain(Planned):
    spec: ClassVar[Spec[DrainParams]] = Spec(
        name="kubernetes:drain",
        kind="actionner",
        clients=("kube",),
        description="Evict every pod of the node running the pod (the node is not cordoned)",
        params=DrainParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        grants=(
            Grant(("",), ("pods",), ("get", "list")),
            Grant(("",), ("pods/eviction",), ("create",)),
            Grant(("apps",), ("replicasets",), ("get",)),
        ),
        example="""\
- action: Drain the node
  actionner: kubernetes:drain
  parameters:
    ignore_daemonsets: true
    ignore_statefulsets: true
    min_healthy_replicas: "50%"
    max_wait_period: 60
""",
    )
