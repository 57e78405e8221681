"""local:file — store artifacts in a folder of the talon-opa host."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.plugins.params import param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Spec


@dataclass(frozen=True, kw_only=True, slots=True)
class FileParams:
    # Talon checks that the folder exists when the action runs, not when the rules load.
    destination: str = param(doc="existing folder where artifacts are written (mode 0600)", required=True)


class File(Planned):
    spec: ClassVar[Spec[FileParams]] = Spec(
        name="local:file",
        kind="output",
        description="Write the artifact to a local folder, named <time>_<namespace>_<pod>_<name>",
        params=FileParams,
        example="""\
- action: Get the logs of the pod
  actionner: kubernetes:log
  output:
    target: local:file
    parameters:
      destination: /var/lib/talon-opa/artifacts
""",
    )
