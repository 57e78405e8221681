"""kubernetes:script — run a script (inline or from a file) in the pod's last container.

Talon copies the script into every container's /tmp/talon-script.sh and runs it in the last one; here
the script goes to the last container's shell as `-c` text, so no file is left in any container (the
other containers never ran it in Talon either).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from talon_opa.actionners.kubernetes.exec import EXEC_GRANTS, run_shell
from talon_opa.core.errors import StepFailed
from talon_opa.plugins.params import ParamProblem, param
from talon_opa.plugins.runtime import Actionner, Outcome
from talon_opa.plugins.spec import Spec

if TYPE_CHECKING:
    from talon_opa.core.events import Alert

MAX_SCRIPT = 96 * 1024  # one argv element holds at most 128 KiB on Linux; the alert's values come on top


@dataclass(frozen=True, kw_only=True, slots=True)
class ScriptParams:
    script: str | None = param(None, doc="the script text (give `script` or `file`, not both)")
    file: str | None = param(None, doc="path of a script file on the talon-opa host (must exist when the rules load)")
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


class Script(Actionner[ScriptParams]):
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

    async def run(self, alert: Alert, params: ScriptParams) -> Outcome:
        text = params.script or await _read(params.file or "")
        if len(text.encode()) > MAX_SCRIPT:
            raise StepFailed(
                f"the script is {len(text.encode())} bytes, more than {MAX_SCRIPT}",
                hint="keep the script small: ship a longer one in the image and call it",
            )
        return await run_shell(self.clients.kube, alert, params.shell, text, "the script", every=False)


async def _read(path: str) -> str:
    try:
        return await asyncio.to_thread(Path(path).read_text)
    except (OSError, UnicodeDecodeError) as e:
        raise StepFailed(f"cannot read the script file {path!r}: {e}", hint="check the `file` parameter") from e
