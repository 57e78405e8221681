"""kubernetes:script — copy a script into the pod's containers and run it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from talon_opa.actionners.kubernetes.exec import EXEC_GRANTS
from talon_opa.plugins.params import ParamProblem, param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Spec


@dataclass(frozen=True, kw_only=True, slots=True)
class ScriptParams:
    script: str | None = param(None, doc="the script text (give `script` or `file`, not both)")
    file: str | None = param(None, doc="path of a script file on the talon-opa host, read when the rules load")
    shell: str = param("/bin/sh", doc="the shell that runs the script in the container", zero_is_default=True)

    def problems(self) -> list[ParamProblem]:
        """Exactly one of `script` and `file`; the file must exist (checked at load, as Talon does)."""
        if not self.script and not self.file:
            return [ParamProblem("script", "missing parameter 'script' or 'file'", "add `script: |` or `file: <path>`")]
        if self.script and self.file:
            return [ParamProblem("file", "'script' and 'file' can't be set at the same time", "keep only one of them")]
        if self.file and not os.path.exists(self.file):
            return [ParamProblem("file", f"the file {self.file!r} does not exist", "give the path of an existing file")]
        return []


class Script(Planned):
    spec: ClassVar[Spec[ScriptParams]] = Spec(
        name="kubernetes:script",
        kind="actionner",
        clients=("kube",),
        description="Copy a script into every container of the pod and run it in the last one",
        params=ScriptParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        grants=EXEC_GRANTS,
        example="""\
- action: Collect process details
  actionner: kubernetes:script
  parameters:
    shell: /bin/sh
    script: |
      ps aux
      cat /proc/${PROC_PID}/cmdline
""",
    )
