"""kubernetes:delete — delete the resource a Kubernetes audit alert is about."""

from __future__ import annotations

from typing import ClassVar

from talon_opa.plugins.params import NoParams
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Grant, Spec

# The kinds Talon deletes (`ka.target.resource`); anything else fails before the run.
CORE = ("configmaps", "namespaces", "secrets", "serviceaccounts", "services")
APPS = ("daemonsets", "deployments", "replicasets", "statefulsets")
RBAC = ("clusterroles", "roles")


class Delete(Planned):
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
