"""kubernetes:download — copy a file out of the pod (an output is required)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.actionners.kubernetes.exec import EXEC_GRANTS
from talon_opa.plugins.params import param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Spec


@dataclass(frozen=True, kw_only=True, slots=True)
class DownloadParams:
    file: str = param(doc="path of the file in the container; ${VAR} takes alert values", required=True)


class Download(Planned):
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
