"""kubernetes:log — fetch the last lines of the pod's logs (optionally stored by an output)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.plugins.params import between, param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Grant, Spec


@dataclass(frozen=True, kw_only=True, slots=True)
class LogParams:
    tail_lines: int = param(
        20, doc="lines to fetch from the first container that has logs; 0: 20", check=between(0), zero_is_default=True
    )


class Log(Planned):
    spec: ClassVar[Spec[LogParams]] = Spec(
        name="kubernetes:log",
        kind="actionner",
        clients=("kube",),
        description="Fetch the last log lines of the pod; stored by the output if one is given, else notified",
        params=LogParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        output="optional",
        grants=(Grant(("",), ("pods",), ("get",)), Grant(("",), ("pods/log",), ("get",))),
        example="""\
- action: Get the logs of the pod
  actionner: kubernetes:log
  parameters:
    tail_lines: 200
  output:
    target: aws:s3
    parameters:
      bucket: falco-artifacts
      prefix: logs/
""",
    )
