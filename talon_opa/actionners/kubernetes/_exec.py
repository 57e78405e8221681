"""What the exec-based actionners share: the pod's containers, a command run in one of them with its
output bounded, and how a result becomes an outcome or a failure (code and stderr tail)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from talon_opa.actionners.kubernetes._pods import PodRef
from talon_opa.core.errors import StepFailed
from talon_opa.core.kube import ExecOutput, KubeClient
from talon_opa.plugins.params import between, param
from talon_opa.plugins.spec import Grant

# exec over a WebSocket is an HTTP GET: the API server authorizes `get` on pods/exec, and `create` too
# since Kubernetes 1.35 (AuthorizePodWebsocketUpgradeCreatePermission); SPDY clients needed `create` only
EXEC_GRANTS = (Grant(("",), ("pods",), ("get",)), Grant(("",), ("pods/exec",), ("create", "get")))

MiB = 1024 * 1024
COMMAND_STDOUT_KEPT = MiB  # of a command's stdout (exec, script): the rest is read and dropped
TAIL = 1024  # bytes of stdout / stderr put on the span and in the error message
EXEC_IDLE_SECONDS = 30.0  # an exec that sends nothing for this long fails

# CSI sequences (colours, cursor moves) and OSC sequences (titles), as Talon strips them from output
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def max_bytes_param(default_mib: int, what: str) -> Any:
    """The `max_bytes` parameter: how much of a log, file or capture is kept (ours, not Talon's)."""
    return param(
        default_mib * MiB,
        doc=f"at most this many bytes of the {what} are kept (the rest is cut, with a note); 0: {default_mib} MiB",
        check=between(0),
        zero_is_default=True,
    )


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def tail(data: bytes, size: int = TAIL) -> str:
    """The last `size` bytes as text (what an error message or a span attribute can hold)."""
    text = data[-size:].decode(errors="replace")
    return ("…" + text) if len(data) > size else text


def containers(pod: Mapping[str, Any]) -> list[str]:
    """The names of the pod's containers, in spec order."""
    return [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name")]


@dataclass(frozen=True, slots=True)
class Ran:
    """A command run in one container."""

    container: str
    output: ExecOutput

    @property
    def failed(self) -> bool:
        return self.output.exit_code not in (0, None)

    def failure(self, what: str) -> str:
        """`<what> exited with code N in container 'c': <stderr tail>`."""
        code = self.output.exit_code
        err = tail(self.output.stderr).strip()
        return f"{what} exited with code {code} in the container '{self.container}'" + (f": {err}" if err else "")


async def run(
    kube: KubeClient,
    ref: PodRef,
    container: str,
    argv: Sequence[str],
    *,
    stdin: bytes | None = None,
    max_stdout: int | None = None,
    stop_at_limit: bool = True,
    idle: float = EXEC_IDLE_SECONDS,
) -> Ran:
    out = await kube.exec_bytes(
        ref.namespace,
        ref.name,
        argv,
        container=container,
        stdin=stdin,
        max_stdout=max_stdout,
        stop_at_limit=stop_at_limit,
        timeout=idle,
    )
    return Ran(container, out)


def require_containers(pod: Mapping[str, Any], ref: PodRef) -> list[str]:
    names = containers(pod)
    if not names:
        raise StepFailed(f"{ref} has no containers", hint="the pod spec lists no container to run the command in")
    return names


def exec_objects(ref: PodRef, ran: Ran) -> dict[str, str]:
    """What the span and the notifications show of a command: the pod, the exit code, output tails."""
    objects = {"pod": ref.name, "namespace": ref.namespace, "container": ran.container}
    objects["exit_code"] = "" if ran.output.exit_code is None else str(ran.output.exit_code)
    objects["stdout"] = strip_ansi(tail(ran.output.stdout))
    if ran.output.stderr:
        objects["stderr"] = strip_ansi(tail(ran.output.stderr))
    return objects
