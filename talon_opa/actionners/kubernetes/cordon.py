"""kubernetes:cordon — mark the pod's node unschedulable."""

from __future__ import annotations

from typing import ClassVar

from talon_opa.plugins.params import NoParams
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Grant, Spec


class Cordon(Planned):
    spec: ClassVar[Spec[NoParams]] = Spec(
        name="kubernetes:cordon",
        kind="actionner",
        clients=("kube",),
        description="Cordon the node running the pod (no new pods are scheduled on it)",
        params=NoParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        grants=(Grant(("",), ("pods",), ("get",)), Grant(("",), ("nodes",), ("get", "patch"))),
        example="""\
- action: Cordon the node
  actionner: kubernetes:cordon
""",
    )
