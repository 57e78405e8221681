"""kubernetes:exec — run a shell command in every container of the pod."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from talon_opa.actionners.kubernetes import _exec, _pods, _shell
from talon_opa.core.errors import StepFailed
from talon_opa.core.kube import KubeClient
from talon_opa.plugins.params import param
from talon_opa.plugins.runtime import Actionner, Outcome
from talon_opa.plugins.spec import Spec

if TYPE_CHECKING:
    from talon_opa.core.events import Alert

EXEC_GRANTS = _exec.EXEC_GRANTS


@dataclass(frozen=True, kw_only=True, slots=True)
class ExecParams:
    command: str = param(
        doc="the command, run as `<shell> -c <command>`; ${NAME} reads an alert value (e.g. ${PROC_PID}), "
        "set for the shell as a variable, never pasted into the text",
        required=True,
    )
    shell: str = param("/bin/sh", doc="the shell in the container", zero_is_default=True)


async def run_shell(kube: KubeClient, alert: Alert, shell: str, text: str, what: str, *, every: bool) -> Outcome:
    """Run `text` with `shell -c` (alert values as variables) in every container (`every`) or the last one.

    Every container runs even after one fails; any non-zero exit fails the step with the code and the
    stderr tail. The outcome's message is the last container's stdout (ANSI sequences removed, as Talon).
    """
    ref = _pods.target(alert)
    pod = await _pods.get_pod(kube, ref)
    names = _exec.require_containers(pod, ref)
    command, used = _shell.script(text, _shell.environment(alert))
    argv = [shell, "-c", command]
    runs = [
        await _exec.run(kube, ref, name, argv, max_stdout=_exec.COMMAND_STDOUT_KEPT, stop_at_limit=False)
        for name in (names if every else names[-1:])
    ]
    failed = [r for r in runs if r.failed]
    if failed:
        raise StepFailed(
            "; ".join(r.failure(what) for r in failed) + f" ({ref})",
            hint="the command ran and failed in the container: see its stderr",
        )
    last = runs[-1]
    objects = _exec.exec_objects(ref, last)
    if used:
        objects["variables"] = ",".join(used)
    stdout = _exec.strip_ansi(last.output.stdout.decode(errors="replace"))
    if last.output.truncated:
        stdout += f"\n[talon-opa: stdout cut at {_exec.COMMAND_STDOUT_KEPT} bytes]"
        objects["truncated"] = "true"
    return Outcome("success", stdout, objects)


class Exec(Actionner[ExecParams]):
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
    command: kill -9 "${PROC_PID}"
""",
    )

    async def run(self, alert: Alert, params: ExecParams) -> Outcome:
        return await run_shell(self.clients.kube, alert, params.shell, params.command, "the command", every=True)
