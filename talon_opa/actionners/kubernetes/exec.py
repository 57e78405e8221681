"""kubernetes:exec — run a shell command in every container of the pod."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.plugins.params import param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Grant, Spec

EXEC_GRANTS = (Grant(("",), ("pods",), ("get",)), Grant(("",), ("pods/exec",), ("create",)))


@dataclass(frozen=True, kw_only=True, slots=True)
class ExecParams:
    command: str = param(doc="the command, run as `<shell> -c <command>`; ${VAR} takes alert values", required=True)
    shell: str = param("/bin/sh", doc="the shell in the container", zero_is_default=True)


class Exec(Planned):
    spec: ClassVar[Spec[ExecParams]] = Spec(
        name="kubernetes:exec",
        kind="actionner",
        clients=("kube",),
        description="Run a command in every container of the pod; the output is the last container's stdout",
        params=ExecParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        grants=EXEC_GRANTS,
        example="""\
- action: Kill the shell
  actionner: kubernetes:exec
  parameters:
    shell: /bin/sh
    command: kill -9 ${PROC_PID}
""",
    )
