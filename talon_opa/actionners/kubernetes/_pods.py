"""What the kubernetes actionners share: the alert's pod, its owner workload and selector, its kind.

The owner lookup follows Falco Talon (reference §3.1): the pod's first owner reference; a ReplicaSet,
DaemonSet or StatefulSet gives that object's `spec.selector.matchLabels`; a pod without owner stands
for itself with its own labels; any other owner kind is an error. The per-revision labels
(`pod-template-hash`, `pod-template-generation`, `controller-revision-hash`) are dropped so the
selector keeps matching the workload's pods across rollouts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from talon_opa.core.errors import StepFailed
from talon_opa.core.kube import KubeApiError, KubeClient

if TYPE_CHECKING:
    from talon_opa.core.events import Alert

STANDALONE = "StandalonePod"  # Talon's PodKind for a pod without owner
REVISION_LABELS = frozenset({"pod-template-hash", "pod-template-generation", "controller-revision-hash"})
_OWNER_PLURALS = {"ReplicaSet": "replicasets", "DaemonSet": "daemonsets", "StatefulSet": "statefulsets"}


@dataclass(frozen=True, slots=True)
class PodRef:
    """The pod an alert is about."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"the pod '{self.name}' in the namespace '{self.namespace}'"

    @property
    def path(self) -> str:
        return pod_path(self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Owner:
    """The workload a pod belongs to: its kind and name, and the labels selecting its pods."""

    kind: str  # "ReplicaSet", "DaemonSet", "StatefulSet" or STANDALONE
    name: str
    selector: Mapping[str, str] = field(default_factory=dict)


def pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"


def target(alert: Alert) -> PodRef:
    """The alert's pod and namespace (Talon's accessors, §1.4); a missing one fails naming the fields."""
    name, namespace = alert.pod_name(), alert.namespace()
    if not name:
        raise StepFailed(
            "the alert names no pod", hint="the alert needs k8s.pod.name (or ka.target.pod.name / ka.target.name)"
        )
    if not namespace:
        raise StepFailed("the alert names no namespace", hint="the alert needs k8s.ns.name (or ka.target.namespace)")
    return PodRef(namespace, name)


async def get_pod(kube: KubeClient, ref: PodRef) -> dict[str, Any]:
    """GET the pod; a missing pod fails with Talon's message."""
    try:
        pod: dict[str, Any] = await kube.get(ref.path)
    except KubeApiError as e:
        if e.status == 404:
            raise StepFailed(
                f"{ref} doesn't exist",
                hint="it was deleted before the action ran, or never existed: check the alert's pod and namespace",
            ) from e
        raise
    return pod


def owner_reference(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod's first owner reference (the one Talon looks at), None when it has none."""
    refs = (pod.get("metadata") or {}).get("ownerReferences") or []
    return refs[0] if refs else None


def pod_kind(pod: Mapping[str, Any]) -> str:
    """Talon's PodKind: the first owner's kind ("ReplicaSet", "DaemonSet"...) or "StandalonePod"."""
    ref = owner_reference(pod)
    return str(ref.get("kind") or STANDALONE) if ref is not None else STANDALONE


def selector_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """Labels without the per-revision ones."""
    return {k: v for k, v in (labels or {}).items() if k not in REVISION_LABELS}


async def get_owner_object(kube: KubeClient, namespace: str, kind: str, name: str) -> dict[str, Any]:
    """GET a ReplicaSet, DaemonSet or StatefulSet by name."""
    path = f"/apis/apps/v1/namespaces/{quote(namespace, safe='')}/{_OWNER_PLURALS[kind]}/{quote(name, safe='')}"
    try:
        obj: dict[str, Any] = await kube.get(path)
    except KubeApiError as e:
        if e.status == 404:
            raise StepFailed(
                f"the {kind} '{name}' owning a pod in the namespace '{namespace}' doesn't exist",
                hint="it was deleted before the action ran, or never existed",
            ) from e
        raise
    return obj


async def owner_of(kube: KubeClient, pod: Mapping[str, Any]) -> Owner:
    """The pod's workload and the labels that select its pods (reference §3.1)."""
    meta = pod.get("metadata") or {}
    name, namespace = str(meta.get("name", "")), str(meta.get("namespace", ""))
    ref = owner_reference(pod)
    if ref is None:
        owner = Owner(STANDALONE, name, selector_labels(meta.get("labels")))
    else:
        kind, owner_name = str(ref.get("kind", "")), str(ref.get("name", ""))
        if kind not in _OWNER_PLURALS:
            raise StepFailed(
                f"can't find the owner and/or labels for the pod '{name}' in namespace '{namespace}': "
                f"it is owned by a {kind or 'resource of unknown kind'} '{owner_name}'",
                hint="this works for pods owned by a ReplicaSet, DaemonSet or StatefulSet, or by nothing",
            )
        obj = await get_owner_object(kube, namespace, kind, owner_name)
        match_labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels")
        owner = Owner(kind, owner_name, selector_labels(match_labels))
    if not owner.selector:
        # An empty podSelector selects every pod of the namespace: never act on that by accident.
        raise StepFailed(
            f"can't find the owner and/or labels for the pod '{name}' in namespace '{namespace}': "
            f"the {owner.kind} '{owner.name}' has no selector labels",
            hint="give the workload a selector with matchLabels (or the standalone pod some labels)",
        )
    return owner


def path_segment(value: str, what: str) -> str:
    """An alert value used as one segment of an API path, refused when it would name another path.

    `.` and `..` are resolved away by the HTTP client before the request leaves (`pods/..` would
    become the namespace itself), and `/` or `%` would split or re-encode the segment: the API
    server refuses such names for every object, so no real object is ever named that way.
    """
    if value in (".", "..") or "/" in value or "%" in value or not value:
        raise StepFailed(
            f"the {what} {value!r} is not a valid Kubernetes object name",
            hint="the alert's value cannot name an object; check what sent this alert",
        )
    return value
