"""kubernetes:terminate — delete the pod of the alert, unless its owner kind or replica health says no."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from actionners.base import Grant, Spec
from actionners.params import absolute_or_percent, param


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


class Terminate:
    spec: ClassVar[Spec[TerminateParams]] = Spec(
        name="kubernetes:terminate",
        kind="actionner",
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
