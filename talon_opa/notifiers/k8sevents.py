"""k8sevents — record each result as a Kubernetes Event on the pod."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from talon_opa.core.kube import KubeApiError
from talon_opa.plugins.params import NoParams
from talon_opa.plugins.runtime import Notifier
from talon_opa.plugins.spec import Grant, Spec

if TYPE_CHECKING:
    from talon_opa.core.kube import KubeClient
    from talon_opa.plugins.notes import Note

TALON = "falco-talon"
MESSAGE_LIMIT = 1024  # bytes: the API server refuses a longer Event message
FALLBACK_NAMESPACE = "default"


def message(note: Note) -> str:
    """Talon's plain-text template (reference §5.3), `\\r\\n` → `\\n`, `'` → `"`, cut to 1024 bytes."""
    lines = [f"Status: {note.status}", f"Message: {note.message}"]
    for title, value in (
        ("Rule", note.rule),
        ("Action", note.action),
        ("Actionner", note.actionner),
        ("Event", note.event),
    ):
        if value:
            lines.append(f"{title}: {value}")
    objects = note.titled_objects()
    lines += [f"{key}: {objects[key]}" for key in sorted(objects)]
    for title, value in (("Error", note.error), ("Output", note.output), ("OutputTarget", note.output_target)):
        if value:
            lines.append(f"{title}: {value}")
    lines.append(f"TraceID: {note.trace_id}")
    text = ("\n".join(lines) + "\n").replace("\r\n", "\n").replace("'", '"')
    # cut on a byte count, dropping a character split by the cut (the API wants valid UTF-8)
    return text.encode()[:MESSAGE_LIMIT].decode(errors="ignore")


def event(note: Note, namespace: str, pod_uid: str | None, now: dt.datetime) -> dict[str, Any]:
    """The core/v1 Event Talon creates for a result."""
    source = note.output_target or note.actionner  # Talon names the output target at the output stage
    involved: dict[str, Any] = {"kind": "Pod", "namespace": namespace, "name": _pod(note)}
    if pod_uid:
        involved["uid"] = pod_uid
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{TALON}-", "namespace": namespace},
        "involvedObject": involved,
        "reason": f"{TALON}:{note.message}:{source}:{note.status}",
        "action": source,
        "message": message(note),
        "type": "Normal",
        "eventTime": now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "source": {"component": TALON},
        "reportingComponent": f"falcosecurity.org/{TALON}",  # Go field ReportingController
        "reportingInstance": TALON,
    }


def _object(objects: Mapping[str, str], key: str) -> str:
    return next((v for k, v in objects.items() if k.lower() == key), "")


def _pod(note: Note) -> str:
    # the step's objects as Talon; a failed step has none, then the alert's pod
    return _object(note.objects, "pod") or note.pod


def _namespace(note: Note) -> str:
    return _object(note.objects, "namespace") or note.namespace


class K8sEvents(Notifier[NoParams]):
    spec: ClassVar[Spec[NoParams]] = Spec(
        name="k8sevents",
        kind="notifier",
        clients=("kube",),
        description="Create a Kubernetes Event about the pod for each action and output result",
        params=NoParams,
        grants=(
            Grant(("",), ("events",), ("create",)),
            Grant(("",), ("namespaces", "pods"), ("get",)),
        ),
        example="""\
default_notifiers:
  - k8sevents
""",
    )

    async def notify(self, note: Note) -> None:
        kube = self.clients.kube
        namespace = _namespace(note)
        if not namespace or not await _found(kube, f"/api/v1/namespaces/{quote(namespace, safe='')}"):
            namespace = FALLBACK_NAMESPACE
        base = f"/api/v1/namespaces/{quote(namespace, safe='')}"
        pod_uid: str | None = None
        pod = _pod(note)
        if pod:
            found = await _found(kube, f"{base}/pods/{quote(pod, safe='')}")
            pod_uid = (found.get("metadata") or {}).get("uid") if found else None
        await kube.post(f"{base}/events", event(note, namespace, pod_uid, dt.datetime.now(dt.UTC)))


async def _found(kube: KubeClient, path: str) -> dict[str, Any] | None:
    """The object at `path`, None when it does not exist."""
    try:
        found: dict[str, Any] = await kube.get(path)
    except KubeApiError as e:
        if e.status == 404:
            return None
        raise
    return found
