"""kubernetes:tcpdump — capture the pod's network traffic from an ephemeral container."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from talon_opa.actionners.kubernetes import _capture, _exec, _pods
from talon_opa.plugins.params import between, param
from talon_opa.plugins.runtime import Actionner, Artifact, Outcome
from talon_opa.plugins.spec import Grant, Spec

if TYPE_CHECKING:
    from talon_opa.core.events import Alert

ARTIFACT = "tcpdump.pcap"


@dataclass(frozen=True, kw_only=True, slots=True)
class TcpdumpParams:
    image: str = param("issif/tcpdump:latest", doc="image of the ephemeral capture container", zero_is_default=True)
    duration: int = param(5, doc="seconds of capture; 0: 5", check=between(0), zero_is_default=True)
    snaplen: int = param(0, doc="bytes kept per packet (tcpdump -s); 0: whole packets", check=between(0))
    max_bytes: int = _exec.max_bytes_param(64, "capture")


def ephemeral_container(name: str, params: TcpdumpParams, target: str) -> dict[str, Any]:
    """Talon's capture container (§3.12); it sleeps long enough for the capture (Talon: always 60 s)."""
    return {
        "name": name,
        "image": params.image,
        "imagePullPolicy": "Always",
        "command": ["sleep", str(max(60, params.duration + 60))],
        "stdin": True,
        "targetContainerName": target,
        "securityContext": {"privileged": True, "runAsUser": 0},
    }


def capture_command(params: TcpdumpParams, path: str) -> str:
    """Talon's script: tcpdump for `duration` seconds; `timeout`'s 124 means the capture ran its course."""
    return (
        f"timeout {params.duration}s tcpdump -n -i any -s {params.snaplen} -w {path} "
        "|| [ $? -eq 124 ] && echo OK || exit 1"
    )


class Tcpdump(Actionner[TcpdumpParams]):
    spec: ClassVar[Spec[TcpdumpParams]] = Spec(
        name="kubernetes:tcpdump",
        kind="actionner",
        clients=("kube",),
        description=(
            "Capture the pod's traffic with tcpdump in an ephemeral container and store the pcap with the output; "
            "stops the rule's later actions by default"
        ),
        params=TcpdumpParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        continues=False,
        output="required",
        grants=(
            Grant(("",), ("pods",), ("get",)),
            Grant(("",), ("pods/ephemeralcontainers",), ("patch",)),
            *_exec.EXEC_GRANTS[1:],
        ),
        example="""\
- action: Capture the traffic
  actionner: kubernetes:tcpdump
  parameters:
    duration: 10
    snaplen: 512
  output:
    target: aws:s3
    parameters:
      bucket: falco-artifacts
      prefix: captures/
""",
    )

    async def run(self, alert: Alert, params: TcpdumpParams) -> Outcome:
        kube = self.clients.kube
        ref = _pods.target(alert)
        pod = await _pods.get_pod(kube, ref)
        target = _exec.require_containers(pod, ref)[0]
        name = f"falco-talon-tcpdump-{_capture.suffix()}"
        body = {"spec": {"ephemeralContainers": [ephemeral_container(name, params, target)]}}
        await kube.patch(ref.path + "/ephemeralcontainers", body, patch_type="strategic")
        await _capture.wait_running(kube, ref, name, ephemeral=True)
        path = f"/tmp/talon-opa-{name}.pcap"
        data, truncated = await _capture.capture(
            kube,
            ref,
            name,
            capture_command(params, path),
            path,
            duration=params.duration,
            max_bytes=params.max_bytes,
        )
        objects = {"pod": ref.name, "namespace": ref.namespace}
        message = f"the traffic of {ref} has been captured for {params.duration}s"
        extra = {"container": name, "bytes": str(len(data))}
        if truncated:
            message += f" (cut at {params.max_bytes} bytes: raise max_bytes for more)"
            extra["truncated"] = "true"
        return Outcome("success", message, objects | extra, Artifact(ARTIFACT, data, objects))
