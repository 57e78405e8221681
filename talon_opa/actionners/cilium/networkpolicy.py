"""cilium:networkpolicy — deny egress from the pod's workload to the alert's remote IP (CiliumNetworkPolicy)."""

from __future__ import annotations

from typing import ClassVar

from talon_opa.actionners.kubernetes.networkpolicy import NetworkPolicyParams, policy_grants
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Spec


class CiliumNetworkPolicy(Planned):
    spec: ClassVar[Spec[NetworkPolicyParams]] = Spec(
        name="cilium:networkpolicy",
        kind="actionner",
        clients=("kube",),
        description=(
            "Create or update a CiliumNetworkPolicy (cilium.io/v2) denying egress from the pod's workload to the "
            "alert's remote IP, allowing the listed CIDRs and namespaces"
        ),
        params=NetworkPolicyParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name", "fd.sip|fd.rip"),
        grants=policy_grants("cilium.io", "ciliumnetworkpolicies"),
        example="""\
- action: Block the remote IP
  actionner: cilium:networkpolicy
  parameters:
    allow_cidr:
      - "192.168.0.0/16"
    allow_namespaces:
      - kube-system
""",
    )
