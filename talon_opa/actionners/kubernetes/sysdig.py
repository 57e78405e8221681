"""kubernetes:sysdig — capture the syscalls of the pod (or its node) from a privileged Job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.plugins.params import between, one_of, param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Grant, Spec


@dataclass(frozen=True, kw_only=True, slots=True)
class SysdigParams:
    image: str = param("issif/sysdig:latest", doc="image of the capture Job", zero_is_default=True)
    scope: str = param(
        "pod",
        doc="capture the pod's containers (pod) or the whole node (node)",
        check=one_of("pod", "node"),
        zero_is_default=True,
    )
    duration: int = param(5, doc="seconds of capture, 1 to 30; 0: 5", check=between(1, 30), zero_is_default=True)
    buffer_size: int = param(
        2048,
        doc="bytes kept per event (sysdig -s), at least 128; 0: 2048",
        check=between(128),
        zero_is_default=True,
    )


class Sysdig(Planned):
    spec: ClassVar[Spec[SysdigParams]] = Spec(
        name="kubernetes:sysdig",
        kind="actionner",
        clients=("kube",),
        description=(
            "Capture syscalls with sysdig from a privileged Job on the pod's node and store the capture with the "
            "output; stops the rule's later actions by default"
        ),
        params=SysdigParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        continues=False,
        output="required",
        grants=(
            Grant(("",), ("pods",), ("get", "list")),
            Grant(("",), ("pods/exec",), ("create",)),
            Grant(("batch",), ("jobs",), ("get", "create")),
        ),
        example="""\
- action: Capture the syscalls
  actionner: kubernetes:sysdig
  parameters:
    scope: pod
    duration: 10
    buffer_size: 1024
  output:
    target: local:file
    parameters:
      destination: /var/lib/talon-opa/artifacts
""",
    )
