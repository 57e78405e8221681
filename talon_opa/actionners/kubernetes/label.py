"""kubernetes:label — add, change or remove labels of the pod or of its node."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import quote

from talon_opa.actionners.kubernetes import _pods
from talon_opa.core.errors import StepFailed
from talon_opa.core.kube import KubeApiError, KubeClient
from talon_opa.plugins.params import non_empty, param
from talon_opa.plugins.runtime import Actionner, Outcome
from talon_opa.plugins.spec import Grant, Spec

if TYPE_CHECKING:
    from talon_opa.core.events import Alert

POD_GRANTS = (Grant(("",), ("pods",), ("get", "patch")),)
NODE_GRANTS = (Grant(("",), ("pods",), ("get",)), Grant(("",), ("nodes",), ("get", "patch")))


def metadata_grants(level: str) -> tuple[Grant, ...]:
    """What patching the pod's (or its node's) metadata needs; shared by label and annotation."""
    return NODE_GRANTS if level == "node" else POD_GRANTS


LEVEL_DOC = '"node": the node running the pod; anything else: the pod'

Field = Literal["labels", "annotations"]
_VERB: Mapping[Field, str] = {"labels": "labeled", "annotations": "annotated"}
_ATTEMPTS = 3  # the object changed between our GET and our PATCH: read it again, at most this often


def pointer(key: str) -> str:
    """A JSON Pointer token (RFC 6901): `~` → `~0`, `/` → `~1` (`app.k8s.io/x` → `app.k8s.io~1x`)."""
    return key.replace("~", "~0").replace("/", "~1")


def patch_ops(obj: Mapping[str, Any], field: Field, values: Mapping[str, str]) -> list[dict[str, Any]]:
    """The JSON-Patch turning the object's labels (or annotations) into `values`; [] when nothing changes.

    A value "" removes the key (only when present, so a re-run converges); a missing map is created first.
    The patch starts with a test of the resourceVersion read, so it never applies to a newer object.
    """
    meta = obj.get("metadata") or {}
    current: Mapping[str, str] | None = meta.get(field)
    ops: list[dict[str, Any]] = []
    for key, value in values.items():
        path = f"/metadata/{field}/{pointer(key)}"
        if value == "" or value is None:
            if current is not None and key in current:
                ops.append({"op": "remove", "path": path})
        elif current is None or current.get(key) != value:
            ops.append({"op": "add", "path": path, "value": value})
    if not ops:
        return []
    head: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion", "")}
    ]
    if current is None and any(op["op"] == "add" for op in ops):
        head.append({"op": "add", "path": f"/metadata/{field}", "value": {}})
    return head + ops


async def patch_metadata(kube: KubeClient, path: str, field: Field, values: Mapping[str, str]) -> bool:
    """Apply `values` to the labels (or annotations) of the object at `path`; False when already so."""
    for attempt in range(1, _ATTEMPTS + 1):
        obj = await kube.get(path)
        ops = patch_ops(obj, field, values)
        if not ops:
            return False
        try:
            await kube.patch(path, ops, patch_type="json")
        except KubeApiError as e:
            # 422 from a failed `test` (or 409): someone else wrote in between; anything else is final
            if e.status not in (409, 422) or attempt == _ATTEMPTS:
                raise
            fresh = await kube.get(path)
            if (fresh.get("metadata") or {}).get("resourceVersion") == (obj.get("metadata") or {}).get(
                "resourceVersion"
            ):
                raise  # not a concurrent write: the patch itself is refused (e.g. an invalid label value)
            continue
        return True
    raise AssertionError("unreachable")  # pragma: no cover


async def run_metadata(kube: KubeClient, alert: Alert, field: Field, values: Mapping[str, str], level: str) -> Outcome:
    """Label or annotate the alert's pod, or (level "node") the node running it."""
    ref = _pods.target(alert)
    pod = await _pods.get_pod(kube, ref)
    verb = _VERB[field]
    if level == "node":
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        if not node:
            raise StepFailed(f"{ref} runs on no node yet", hint="the pod is not scheduled; use level: pod")
        await patch_metadata(kube, f"/api/v1/nodes/{quote(node, safe='')}", field, values)
        return Outcome.done(f"the node '{node}' has been {verb}", node=node)
    await patch_metadata(kube, ref.path, field, values)
    return Outcome.done(f"{ref} has been {verb}", pod=ref.name, namespace=ref.namespace)


@dataclass(frozen=True, kw_only=True, slots=True)
class LabelParams:
    labels: Mapping[str, str] = param(
        doc='labels to set; an empty value ("") removes the label; values are strings (quote "true")',
        required=True,
        check=non_empty("should have at least one label", 'add a label, e.g. suspicious: "true"'),
    )
    level: str = param("pod", doc=LEVEL_DOC)


class Label(Actionner[LabelParams]):
    spec: ClassVar[Spec[LabelParams]] = Spec(
        name="kubernetes:label",
        kind="actionner",
        clients=("kube",),
        description="Add, change or remove labels of the pod or of its node",
        params=LabelParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        grants=POD_GRANTS + NODE_GRANTS,
        grants_for=lambda p: metadata_grants(p.level),
        example="""\
- action: Label the pod
  actionner: kubernetes:label
  parameters:
    level: pod
    labels:
      security.falco.org/suspicious: "true"
      stale-label: ""
""",
    )

    async def run(self, alert: Alert, params: LabelParams) -> Outcome:
        kube = self.clients.kube
        return await run_metadata(kube, alert, "labels", params.labels, params.level)
