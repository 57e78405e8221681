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
from talon_opa.plugins.reversal import Reversal, Reversible, Undone
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


async def patch_metadata(
    kube: KubeClient, path: str, field: Field, values: Mapping[str, str]
) -> Mapping[str, Any] | None:
    """Apply `values` to the labels (or annotations) of the object at `path`: the object as it was just
    before our patch, or None when it was already so (nothing written)."""
    for attempt in range(1, _ATTEMPTS + 1):
        obj: Mapping[str, Any] = await kube.get(path)
        ops = patch_ops(obj, field, values)
        if not ops:
            return None
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
        return obj
    raise AssertionError("unreachable")  # pragma: no cover


def metadata_reversal(
    actionner: str, path: str, what: str, field: Field, before: Mapping[str, Any], values: Mapping[str, str]
) -> Reversal | None:
    """How to undo `values` applied to `before` (the object as it was): each changed key with its value
    before and after (None: absent). None when nothing changed."""
    meta = before.get("metadata") or {}
    current: Mapping[str, str] = meta.get(field) or {}
    changes = {}
    for key, value in values.items():
        after = None if value == "" or value is None else value
        if current.get(key) != after:
            changes[key] = {"before": current.get(key), "after": after}
    if not changes:
        return None
    restored = ", ".join(
        f"{k}={c['before']}" if c["before"] is not None else f"remove {k}" for k, c in sorted(changes.items())
    )
    state = {"path": path, "uid": str(meta.get("uid") or ""), "what": what, "field": field, "changes": changes}
    return Reversal(actionner, f"{field} of {what}: {restored}", state)


def _restore_ops(obj: Mapping[str, Any], field: Field, restore: Mapping[str, str | None]) -> list[dict[str, Any]]:
    """The JSON-Patch putting each key back (None: removed), guarded by the resourceVersion read."""
    meta = obj.get("metadata") or {}
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion", "")}
    ]
    if meta.get(field) is None:
        ops.append({"op": "add", "path": f"/metadata/{field}", "value": {}})
    for key, value in restore.items():
        path = f"/metadata/{field}/{pointer(key)}"
        ops.append({"op": "remove", "path": path} if value is None else {"op": "add", "path": path, "value": value})
    return ops


async def undo_metadata(kube: KubeClient, reversal: Reversal) -> Undone:
    """Put each key we changed back as it was, unless someone changed it since (then: a conflict)."""
    state = reversal.state
    path, uid, what, field = str(state["path"]), str(state.get("uid") or ""), str(state["what"]), state["field"]
    changes: Mapping[str, Mapping[str, str | None]] = state["changes"]
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            obj = await kube.get(path)
        except KubeApiError as e:
            if e.status == 404:
                return Undone("already_undone", f"{what} is gone: nothing to undo")
            raise
        meta = obj.get("metadata") or {}
        if uid and meta.get("uid") != uid:
            return Undone("already_undone", f"{what} was deleted and made again: nothing of ours to undo")
        current: Mapping[str, str] = meta.get(field) or {}
        restore: dict[str, str | None] = {}
        conflicts: list[str] = []
        for key, change in sorted(changes.items()):
            now = current.get(key)
            if now == change["before"]:
                continue
            if now != change["after"]:
                conflicts.append(f"{key} (now {now!r}, we set {change['after']!r})")
                continue
            restore[key] = change["before"]
        if restore:
            try:
                await kube.patch(path, _restore_ops(obj, field, restore), patch_type="json")
            except KubeApiError as e:
                if e.status in (409, 422) and attempt < _ATTEMPTS:
                    continue  # written meanwhile: look again
                raise
        restored = ", ".join(sorted(restore))
        if conflicts:
            done = f"restored {restored}; " if restore else ""
            return Undone(
                "conflict",
                f"{field} of {what}: {done}left alone, changed by someone else since: {', '.join(conflicts)}",
            )
        if not restore:
            return Undone("already_undone", f"{field} of {what} are already as they were")
        return Undone("undone", f"{field} of {what} restored: {restored}")
    raise AssertionError("unreachable")  # pragma: no cover


async def run_metadata(
    kube: KubeClient, alert: Alert, field: Field, values: Mapping[str, str], level: str, actionner: str
) -> Outcome:
    """Label or annotate the alert's pod, or (level "node") the node running it; reversible."""
    ref = _pods.target(alert)
    pod = await _pods.get_pod(kube, ref)
    verb = _VERB[field]
    if level == "node":
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        if not node:
            raise StepFailed(f"{ref} runs on no node yet", hint="the pod is not scheduled; use level: pod")
        path = f"/api/v1/nodes/{quote(node, safe='')}"
        before = await patch_metadata(kube, path, field, values)
        reversal = (
            None if before is None else metadata_reversal(actionner, path, f"the node '{node}'", field, before, values)
        )
        return Outcome.done(f"the node '{node}' has been {verb}", node=node).undone_by(reversal)
    before = await patch_metadata(kube, ref.path, field, values)
    reversal = None if before is None else metadata_reversal(actionner, ref.path, str(ref), field, before, values)
    return Outcome.done(f"{ref} has been {verb}", pod=ref.name, namespace=ref.namespace).undone_by(reversal)


@dataclass(frozen=True, kw_only=True, slots=True)
class LabelParams:
    labels: Mapping[str, str] = param(
        doc='labels to set; an empty value ("") removes the label; values are strings (quote "true")',
        required=True,
        check=non_empty("should have at least one label", 'add a label, e.g. suspicious: "true"'),
    )
    level: str = param("pod", doc=LEVEL_DOC)


class Label(Actionner[LabelParams], Reversible):
    spec: ClassVar[Spec[LabelParams]] = Spec(
        name="kubernetes:label",
        kind="actionner",
        clients=("kube",),
        description="Add, change or remove labels of the pod or of its node",
        params=LabelParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        grants=POD_GRANTS + NODE_GRANTS,
        grants_for=lambda p: metadata_grants(p.level),
        reversible=True,
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
        return await run_metadata(kube, alert, "labels", params.labels, params.level, self.spec.name)

    async def undo(self, reversal: Reversal) -> Undone:
        return await undo_metadata(self.clients.kube, reversal)
