"""kubernetes:delete — delete the resource a Kubernetes audit alert is about."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from talon_opa.actionners.kubernetes import _pods
from talon_opa.core.errors import StepFailed
from talon_opa.core.kube import KubeApiError
from talon_opa.plugins.params import NoParams
from talon_opa.plugins.runtime import Actionner, Outcome
from talon_opa.plugins.spec import Grant, Spec

if TYPE_CHECKING:
    from talon_opa.core.events import Alert

# The kinds Talon deletes (`ka.target.resource`); anything else fails before the run.
CORE = ("configmaps", "namespaces", "secrets", "serviceaccounts", "services")
APPS = ("daemonsets", "deployments", "replicasets", "statefulsets")
RBAC = ("clusterroles", "roles")
CLUSTER_SCOPED = frozenset({"namespaces", "clusterroles"})
_API = {
    **dict.fromkeys(CORE, "/api/v1"),
    **dict.fromkeys(APPS, "/apis/apps/v1"),
    **dict.fromkeys(RBAC, "/apis/rbac.authorization.k8s.io/v1"),
}


def object_path(resource: str, name: str, namespace: str | None) -> str:
    """The API path of a kind Talon deletes (namespaced unless a namespace or a clusterrole)."""
    base = _API[resource]
    if resource in CLUSTER_SCOPED:
        return f"{base}/{resource}/{quote(name, safe='')}"
    return f"{base}/namespaces/{quote(namespace or '', safe='')}/{resource}/{quote(name, safe='')}"


class Delete(Actionner[NoParams]):
    spec: ClassVar[Spec[NoParams]] = Spec(
        name="kubernetes:delete",
        kind="actionner",
        clients=("kube",),
        description=(
            "Delete the resource a Kubernetes audit alert is about (ka.target.*): a namespace, configmap, secret, "
            "deployment, daemonset, statefulset, replicaset, service, serviceaccount, role or clusterrole; "
            "stops the rule's later actions by default"
        ),
        params=NoParams,
        # Talon also lists ka.target.namespace, but namespaces and clusterroles have none: checked at run time.
        needs_fields=("ka.target.resource", "ka.target.name"),
        continues=False,
        grants=(
            Grant(("",), CORE, ("get", "delete")),
            Grant(("apps",), APPS, ("get", "delete")),
            Grant(("rbac.authorization.k8s.io",), RBAC, ("get", "delete")),
        ),
        example="""\
- action: Delete the new role
  actionner: kubernetes:delete
""",
    )

    async def run(self, alert: Alert, params: NoParams) -> Outcome:
        kube = self.clients.kube
        resource, name, namespace = _target(alert)
        what = resource[:-1]  # Talon's words: "the configmap 'x'"
        where = "" if resource in CLUSTER_SCOPED else f" in the namespace '{namespace}'"
        subject = f"the {what} '{name}'{where}"
        objects = {"name": name, "resource": resource, "namespace": namespace or ""}
        path = object_path(resource, name, namespace)
        try:
            obj: Mapping[str, Any] = await kube.get(path)
        except KubeApiError as e:
            if e.status != 404:
                raise
            return Outcome("success", f"{subject} was already gone", objects)
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        uid = (obj.get("metadata") or {}).get("uid")
        if uid:
            # the object the alert is about, never one created anew under the same name since
            options["preconditions"] = {"uid": uid}
        try:
            await kube.delete(path, options)
        except KubeApiError as e:
            # 404: deleted meanwhile; 409: the uid precondition failed, so the object we read is gone
            if e.status not in (404, 409):
                raise
            return Outcome("success", f"{subject} was already gone", objects)
        return Outcome("success", f"{subject} has been deleted", objects)


def _target(alert: Alert) -> tuple[str, str, str | None]:
    """The alert's resource kind, name and namespace (None for cluster-scoped kinds), checked like Talon."""
    resource = alert.target_resource() or ""
    if resource not in _API:
        raise StepFailed(
            f"the resource '{resource}' doesn't exist or its type is not yet managed",
            hint="kubernetes:delete deletes " + ", ".join(sorted(_API)) + " (ka.target.resource)",
        )
    name = _pods.path_segment(alert.target_name() or "", f"{resource[:-1]} name")
    if resource in CLUSTER_SCOPED:
        return resource, name, None
    namespace = alert.target_namespace()
    if not namespace:
        raise StepFailed(
            f"the alert names no namespace for the {resource[:-1]} '{name}'",
            hint="the alert needs ka.target.namespace: only namespaces and clusterroles have none",
        )
    return resource, name, _pods.path_segment(namespace, "namespace")
