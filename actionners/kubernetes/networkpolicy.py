"""kubernetes:networkpolicy — deny the egress of the pod's workload, except to the allowed CIDRs/namespaces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from actionners.base import Grant, Spec
from actionners.params import cidr, each, param

# The workload of a pod: the pod's first owner (ReplicaSet, DaemonSet, StatefulSet) gives the selector.
OWNER_LOOKUP_GRANTS = (
    Grant(("",), ("pods",), ("get",)),
    Grant(("apps",), ("replicasets", "daemonsets", "statefulsets"), ("get",)),
)


def policy_grants(api_group: str, resource: str) -> tuple[Grant, ...]:
    """What the three network-policy actionners need: their policy kind plus the owner lookup."""
    return (Grant((api_group,), (resource,), ("get", "create", "update")), *OWNER_LOOKUP_GRANTS)


@dataclass(frozen=True, kw_only=True, slots=True)
class NetworkPolicyParams:
    allow_cidr: tuple[str, ...] | None = param(
        None, doc="CIDRs the workload may still reach; none: all egress is denied", check=each(cidr)
    )
    allow_namespaces: tuple[str, ...] | None = param(
        None, doc="namespaces the workload may still reach (selected by kubernetes.io/metadata.name)"
    )


class NetworkPolicy:
    spec: ClassVar[Spec[NetworkPolicyParams]] = Spec(
        name="kubernetes:networkpolicy",
        kind="actionner",
        description="Create or update a NetworkPolicy denying all egress of the pod's workload but what is allowed",
        params=NetworkPolicyParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        grants=policy_grants("networking.k8s.io", "networkpolicies"),
        example="""\
- action: Isolate the pod
  actionner: kubernetes:networkpolicy
  parameters:
    allow_cidr:
      - "10.0.0.0/8"
    allow_namespaces:
      - kube-system
""",
    )
