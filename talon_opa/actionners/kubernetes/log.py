"""kubernetes:log — fetch the last lines of the pod's logs (optionally stored by an output)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from talon_opa.actionners.kubernetes import _exec, _pods
from talon_opa.core.errors import StepFailed
from talon_opa.plugins.params import between, param
from talon_opa.plugins.runtime import Actionner, Artifact, Outcome
from talon_opa.plugins.spec import Grant, Spec

if TYPE_CHECKING:
    from talon_opa.core.events import Alert


@dataclass(frozen=True, kw_only=True, slots=True)
class LogParams:
    tail_lines: int = param(
        20, doc="lines to fetch from the first container that has logs; 0: 20", check=between(0), zero_is_default=True
    )
    container: str = param("", doc="only this container (ours, not Talon's); empty: the first container with logs")
    max_bytes: int = _exec.max_bytes_param(1, "logs")


class Log(Actionner[LogParams]):
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

    async def run(self, alert: Alert, params: LogParams) -> Outcome:
        """Talon's order: each container in spec order, the first with non-empty logs wins (§3.7)."""
        kube = self.clients.kube
        ref = _pods.target(alert)
        pod = await _pods.get_pod(kube, ref)
        names = _exec.require_containers(pod, ref)
        if params.container:
            if params.container not in names:
                raise StepFailed(
                    f"{ref} has no container '{params.container}'", hint=f"its containers are: {', '.join(names)}"
                )
            names = [params.container]
        for name in names:
            got = await kube.log_bytes(
                ref.namespace, ref.name, container=name, tail_lines=params.tail_lines, limit=params.max_bytes
            )
            if not got.data:
                continue
            objects = {"pod": ref.name, "namespace": ref.namespace}
            message = f"the logs for the pod '{ref.name}' in the namespace '{ref.namespace}' has been downloaded"
            if got.truncated:
                message += f" (cut at {params.max_bytes} bytes: raise max_bytes for more)"
            artifact = Artifact("log", got.data, objects)
            extra = {"container": name, "bytes": str(len(got.data))} | ({"truncated": "true"} if got.truncated else {})
            return Outcome("success", message, objects | extra, artifact)
        return Outcome("success", f"{ref} has no logs", {"pod": ref.name, "namespace": ref.namespace})
