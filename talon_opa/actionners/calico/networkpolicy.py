"""calico:networkpolicy — deny egress from the pod's workload to the alert's remote IP (Calico v3 policy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.actionners.kubernetes.networkpolicy import NetworkPolicyParams, policy_grants
from talon_opa.plugins.params import param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Spec


@dataclass(frozen=True, kw_only=True, slots=True)
class CalicoNetworkPolicyParams(NetworkPolicyParams):
    order: int = param(0, doc="Calico policy order (lower is applied first)")


class CalicoNetworkPolicy(Planned):
    spec: ClassVar[Spec[CalicoNetworkPolicyParams]] = Spec(
        name="calico:networkpolicy",
        kind="actionner",
        clients=("kube",),
        description=(
            "Create or update a Calico NetworkPolicy (projectcalico.org/v3) denying egress from the pod's workload "
            "to the alert's remote IP, allowing the listed CIDRs and namespaces"
        ),
        params=CalicoNetworkPolicyParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name", "fd.sip|fd.rip"),
        # Talon asks for `caliconetworkpolicies`, which does not exist: the resource is `networkpolicies`.
        grants=policy_grants("projectcalico.org", "networkpolicies"),
        example="""\
- action: Block the remote IP
  actionner: calico:networkpolicy
  parameters:
    order: 20
    allow_cidr:
      - "192.168.0.0/16"
""",
    )
