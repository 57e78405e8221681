"""cilium:networkpolicy — deny egress from the pod's workload to the alert's remote IP (CiliumNetworkPolicy).

The object follows Falco Talon (reference §3.17): a `cilium.io/v2` CiliumNetworkPolicy named after the
pod's owner, selecting the owner's pods, with an `egressDeny` rule to the remote IP and `egress` rules
allowing `allow_cidr` and the `allow_namespaces`; with neither list given, egress to 0.0.0.0/0 is allowed
(only the remote IP is cut). Re-running for the same workload keeps the policy's rules and adds the new
ones that are not there yet: denied IPs and allow rules accumulate, each rule once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from talon_opa.actionners.kubernetes import _pods
from talon_opa.actionners.kubernetes.networkpolicy import (
    RESULT_TEXT,
    NetworkPolicyParams,
    apply_policy,
    delete_policy,
    managed_object,
    policy_grants,
    remote_cidr,
)
from talon_opa.plugins.params import cidr, each, param
from talon_opa.plugins.reversal import Reversal, Reversible, Undone
from talon_opa.plugins.runtime import Actionner, Outcome
from talon_opa.plugins.spec import Spec

if TYPE_CHECKING:
    from talon_opa.core.events import Alert

API_VERSION = "cilium.io/v2"
DESCRIPTION = "Network policy created by Falco Talon"  # Talon's text, kept
# the label Cilium gives every endpoint: the name of its pod's namespace (Talon used `k8s.io/metadata.name`,
# which no endpoint carries)
NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"
_SERVED_BY = (
    "ciliumnetworkpolicies.cilium.io (cilium.io/v2)",
    "install Cilium (its CRDs), or use kubernetes:networkpolicy",
)


@dataclass(frozen=True, kw_only=True, slots=True)
class CiliumNetworkPolicyParams(NetworkPolicyParams):
    allow_cidr: tuple[str, ...] | None = param(
        None,
        doc="CIDRs the workload may still reach; with neither list, all but the remote IP is allowed; "
        "an empty list allows none",
        check=each(cidr),
    )
    allow_namespaces: tuple[str, ...] | None = param(
        None, doc="namespaces the workload may still reach (endpoints labelled k8s:io.kubernetes.pod.namespace)"
    )


def allow_rules(params: NetworkPolicyParams) -> list[dict[str, Any]]:
    """The `egress` rules of the parameters (reference §3.17)."""
    if params.allow_cidr is None and params.allow_namespaces is None:
        return [{"toCIDR": ["0.0.0.0/0"]}]
    rules: list[dict[str, Any]] = []
    if params.allow_cidr:
        rules.append({"toCIDR": list(params.allow_cidr)})
    if params.allow_namespaces:  # Talon added this rule only when allow_cidr was set too
        selector = {
            "matchExpressions": [{"key": NAMESPACE_LABEL, "operator": "In", "values": list(params.allow_namespaces)}]
        }
        rules.append({"toEndpoints": [selector]})
    return rules


def policy(
    name: str, namespace: str, labels: Mapping[str, str], cidr: str, params: NetworkPolicyParams
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "description": DESCRIPTION,
        "endpointSelector": {"matchLabels": dict(labels)},
        "egressDeny": [{"toCIDR": [cidr]}],
    }
    allow = allow_rules(params)
    if allow:
        spec["egress"] = allow
    return managed_object(
        API_VERSION, "CiliumNetworkPolicy", name, namespace, labels, CiliumNetworkPolicy.spec.name, spec
    )


def _merged(existing: list[Any], new: list[Any]) -> list[Any]:
    return [*existing, *(rule for rule in new if rule not in existing)]


def accumulate(existing: Mapping[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """The wanted policy keeping the existing one's rules: each new deny and allow rule added once."""
    old, spec = existing.get("spec") or {}, dict(wanted["spec"])
    spec["egressDeny"] = _merged(list(old.get("egressDeny") or []), spec["egressDeny"])
    egress = _merged(list(old.get("egress") or []), spec.get("egress", []))
    if egress:
        spec["egress"] = egress
    return {**wanted, "spec": spec}


class CiliumNetworkPolicy(Actionner[CiliumNetworkPolicyParams], Reversible):
    spec: ClassVar[Spec[CiliumNetworkPolicyParams]] = Spec(
        name="cilium:networkpolicy",
        kind="actionner",
        clients=("kube",),
        description=(
            "Create or update a CiliumNetworkPolicy (cilium.io/v2) denying egress from the pod's workload to the "
            "alert's remote IP, allowing the listed CIDRs and namespaces"
        ),
        params=CiliumNetworkPolicyParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name", "fd.sip|fd.rip"),
        grants=policy_grants("cilium.io", "ciliumnetworkpolicies"),
        reversible=True,
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

    async def run(self, alert: Alert, params: CiliumNetworkPolicyParams) -> Outcome:
        kube = self.clients.kube
        ref = _pods.target(alert)
        cidr = remote_cidr(alert)
        pod = await _pods.get_pod(kube, ref)
        owner = await _pods.owner_of(kube, pod)
        wanted = policy(owner.name, ref.namespace, owner.selector, cidr, params)
        collection = f"/apis/{API_VERSION}/namespaces/{quote(ref.namespace, safe='')}/ciliumnetworkpolicies"
        applied = await apply_policy(
            kube, collection, wanted, "CiliumNetworkPolicy", prepare=accumulate, served_by=_SERVED_BY
        )
        return Outcome.done(
            f"the ciliumnetworkpolicy '{owner.name}' in the namespace '{ref.namespace}' {RESULT_TEXT[applied.result]}",
            pod=ref.name,
            namespace=ref.namespace,
            ciliumnetworkpolicy=owner.name,
        ).undone_by(
            applied.reversal(self.spec.name, f"ciliumnetworkpolicy '{owner.name}' in the namespace '{ref.namespace}'")
        )

    async def undo(self, reversal: Reversal) -> Undone:
        return await delete_policy(self.clients.kube, reversal)
