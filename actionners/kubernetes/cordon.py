"""kubernetes:cordon — mark the pod's node unschedulable."""

from __future__ import annotations

from typing import ClassVar

from actionners.base import Grant, Spec
from actionners.params import NoParams


class Cordon:
    spec: ClassVar[Spec[NoParams]] = Spec(
        name="kubernetes:cordon",
        kind="actionner",
        description="Cordon the node running the pod (no new pods are scheduled on it)",
        params=NoParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        grants=(Grant(("",), ("pods",), ("get",)), Grant(("",), ("nodes",), ("get", "patch"))),
        example="""\
- action: Cordon the node
  actionner: kubernetes:cordon
""",
    )
