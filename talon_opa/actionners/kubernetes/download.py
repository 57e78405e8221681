"""kubernetes:download — copy a file out of the pod (an output is required)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from talon_opa.actionners.kubernetes import _exec, _pods, _shell
from talon_opa.actionners.kubernetes.exec import EXEC_GRANTS
from talon_opa.core.errors import StepFailed
from talon_opa.plugins.params import param
from talon_opa.plugins.runtime import Actionner, Artifact, Outcome
from talon_opa.plugins.spec import Spec

if TYPE_CHECKING:
    from talon_opa.core.events import Alert


@dataclass(frozen=True, kw_only=True, slots=True)
class DownloadParams:
    file: str = param(doc="path of the file in the container; ${NAME} takes an alert value", required=True)
    max_bytes: int = _exec.max_bytes_param(64, "file")


class Download(Actionner[DownloadParams]):
    spec: ClassVar[Spec[DownloadParams]] = Spec(
        name="kubernetes:download",
        kind="actionner",
        clients=("kube",),
        description="Download a file from the first container of the pod that has it, and store it with the output",
        params=DownloadParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        output="required",
        grants=EXEC_GRANTS,
        example="""\
- action: Download the binary
  actionner: kubernetes:download
  parameters:
    file: "${FD_NAME}"
  output:
    target: local:file
    parameters:
      destination: /var/lib/talon-opa/artifacts
""",
    )

    async def run(self, alert: Alert, params: DownloadParams) -> Outcome:
        """`cat <file>` in each container in spec order; the first that succeeds wins (Talon §3.11).

        The path is one argv element (no shell): alert values in it are data whatever they hold.
        """
        kube = self.clients.kube
        path = _shell.expand(params.file, _shell.environment(alert))
        if not path.strip():
            raise StepFailed(
                f"the file path {params.file!r} is empty for this alert",
                hint="the alert lacks the field the path names; narrow the rule's match to alerts that carry it",
            )
        ref = _pods.target(alert)
        pod = await _pods.get_pod(kube, ref)
        failures = []
        for name in _exec.require_containers(pod, ref):
            ran = await _exec.run(kube, ref, name, ["cat", "--", path], max_stdout=params.max_bytes)
            if ran.failed:
                failures.append(ran.failure(f"cat {path!r}"))
                continue
            objects = {"pod": ref.name, "namespace": ref.namespace, "file": path}
            message = f"the file '{path}' has been downloaded"
            extra = {"container": name, "bytes": str(len(ran.output.stdout))}
            if ran.output.truncated:
                message += f" (cut at {params.max_bytes} bytes: raise max_bytes for more)"
                extra["truncated"] = "true"
            return Outcome("success", message, objects | extra, Artifact(path, ran.output.stdout, objects))
        raise StepFailed("; ".join(failures) + f" ({ref})", hint="no container of the pod could read the file")
