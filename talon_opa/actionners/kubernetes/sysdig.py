"""kubernetes:sysdig — capture the syscalls of the pod (or its node) from a privileged Job."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from talon_opa.actionners.kubernetes import _capture, _exec, _pods
from talon_opa.core.errors import StepFailed
from talon_opa.core.kube import KubeClient
from talon_opa.plugins.params import between, one_of, param
from talon_opa.plugins.runtime import Actionner, Artifact, Outcome
from talon_opa.plugins.spec import Grant, Spec

if TYPE_CHECKING:
    from talon_opa.core.events import Alert

ARTIFACT = "sysdig.scap.gz"
CONTAINER = "falco-talon-sysdig"
TTL_SECONDS = 60  # the Job's container sleeps this long; Talon's defaultTTL
_RUNTIME_PREFIX = re.compile(r"^[a-z0-9-]+://")


@dataclass(frozen=True, kw_only=True, slots=True)
class SysdigParams:
    image: str = param("issif/sysdig:latest", doc="image of the capture Job", zero_is_default=True)
    scope: str = param(
        "pod",
        doc="capture the pod's containers (pod) or the whole node (node)",
        check=one_of("pod", "node"),
        zero_is_default=True,
    )
    duration: int = param(5, doc="seconds of capture, 1 to 30; 0: 5", check=between(1, 30), zero_is_default=True)
    buffer_size: int = param(
        2048,
        doc="bytes kept per event (sysdig -s), at least 128; 0: 2048",
        check=between(128),
        zero_is_default=True,
    )
    max_bytes: int = _exec.max_bytes_param(64, "capture")


def job(name: str, namespace: str, node: str, image: str, now: dt.datetime) -> dict[str, Any]:
    """Talon's capture Job (§3.13): one privileged root pod on the node, the host's / at /host."""
    labels = {
        "app.kubernetes.io/managed-by": "falco-talon",
        "app.kubernetes.io/name": CONTAINER,
        "app.kubernetes.io/part-of": "falco-talon",
    }
    end_at = (now + dt.timedelta(seconds=TTL_SECONDS)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": {"end-at": end_at}},
        "spec": {
            "activeDeadlineSeconds": TTL_SECONDS + 5,
            "ttlSecondsAfterFinished": 3600,
            "backoffLimit": 1,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeName": node,
                    "restartPolicy": "Never",
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [
                        {
                            "name": CONTAINER,
                            "image": image,
                            "command": ["sleep", str(TTL_SECONDS)],
                            "securityContext": {"privileged": True, "runAsUser": 0},
                            "volumeMounts": [{"name": "host", "mountPath": "/host"}],
                        }
                    ],
                    "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
                },
            },
        },
    }


def container_ids(pod: Mapping[str, Any]) -> list[str]:
    """The first 12 characters of each container's runtime id (what sysdig's container.id holds)."""
    ids = []
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        cid = _RUNTIME_PREFIX.sub("", str(status.get("containerID") or ""))
        if cid:
            ids.append(cid[:12])
    return ids


def capture_command(params: SysdigParams, path: str, ids: list[str]) -> str:
    """Talon's sysdig command line; scope pod filters on the pod's containers."""
    command = (
        f"sysdig --modern-bpf --cri /run/containerd/containerd.sock -M {params.duration} "
        f"-s {params.buffer_size} -z -w {path}"
    )
    if params.scope == "pod":
        command += f' "container.id in ({",".join(ids)})"'
    return command + " || [ $? -eq 0 ] && echo OK || exit 1"


async def job_pod(kube: KubeClient, namespace: str, name: str) -> str:
    """The Job's pod once it runs and is ready (Talon polls ≤20 s)."""
    seen: list[dict[str, Any]] = []

    async def ready() -> str | None:
        listing = await kube.get(
            f"/api/v1/namespaces/{quote(namespace, safe='')}/pods",
            params={"labelSelector": f"batch.kubernetes.io/job-name={name}"},
        )
        seen[:] = listing.get("items") or []
        for pod in seen:
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            if (pod.get("status") or {}).get("phase") == "Running" and statuses and statuses[0].get("ready"):
                return str(pod["metadata"]["name"])
        return None

    found = await _capture.poll(ready)
    if found is None:
        phases = ", ".join(str((p.get("status") or {}).get("phase")) for p in seen) or "no pod yet"
        raise StepFailed(
            f"the job '{name}' in the namespace '{namespace}' for the sysdig capture is not ready ({phases})",
            hint="check that the node can pull the image and admits privileged pods",
        )
    return found


class Sysdig(Actionner[SysdigParams]):
    spec: ClassVar[Spec[SysdigParams]] = Spec(
        name="kubernetes:sysdig",
        kind="actionner",
        clients=("kube",),
        description=(
            "Capture syscalls with sysdig from a privileged Job on the pod's node and store the capture with the "
            "output; stops the rule's later actions by default"
        ),
        params=SysdigParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        continues=False,
        output="required",
        grants=(
            Grant(("",), ("pods",), ("get", "list")),
            *_exec.EXEC_GRANTS[1:],
            Grant(("batch",), ("jobs",), ("get", "create")),
        ),
        example="""\
- action: Capture the syscalls
  actionner: kubernetes:sysdig
  parameters:
    scope: pod
    duration: 10
    buffer_size: 1024
  output:
    target: local:file
    parameters:
      destination: /var/lib/talon-opa/artifacts
""",
    )

    async def run(self, alert: Alert, params: SysdigParams) -> Outcome:
        kube = self.clients.kube
        ref = _pods.target(alert)
        pod = await _pods.get_pod(kube, ref)
        _exec.require_containers(pod, ref)
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        if not node:
            raise StepFailed(f"{ref} runs on no node yet", hint="the capture runs on the pod's node")
        ids = container_ids(pod)
        if params.scope == "pod" and not ids:
            raise StepFailed(
                f"the containers of {ref} report no container id, so the capture cannot select them",
                hint="wait until the pod's containers started, or use scope: node",
            )
        name = f"{CONTAINER}-{_capture.suffix()}"
        body = job(name, ref.namespace, node, params.image, dt.datetime.now(dt.UTC))
        await kube.post(f"/apis/batch/v1/namespaces/{quote(ref.namespace, safe='')}/jobs", body)
        capture_pod = _pods.PodRef(ref.namespace, await job_pod(kube, ref.namespace, name))
        path = f"/tmp/talon-opa-{name}.scap.gz"
        data, truncated = await _capture.capture(
            kube,
            capture_pod,
            CONTAINER,
            capture_command(params, path, ids),
            path,
            duration=params.duration,
            max_bytes=params.max_bytes,
        )
        objects = {"pod": ref.name, "namespace": ref.namespace, "job": name}
        message = f"a sysdig capture '{ARTIFACT}' has been created"
        extra = {"node": node, "bytes": str(len(data))}
        if truncated:
            message += f" (cut at {params.max_bytes} bytes: raise max_bytes for more)"
            extra["truncated"] = "true"
        return Outcome("success", message, objects | extra, Artifact(ARTIFACT, data, objects))
