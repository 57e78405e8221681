"""calico:networkpolicy — deny egress from the pod's workload to the alert's remote IP (Calico v3 policy).

The object follows Falco Talon (reference §3.16): a `projectcalico.org/v3` NetworkPolicy named after the
pod's owner, `types: [Egress]`, `order`, a selector over the owner's selector labels, then egress rules in
this order: a Deny to the remote IP, an Allow to `allow_cidr`, an Allow to the `allow_namespaces`; with
neither list given, one Allow to 0.0.0.0/0 (only the remote IP is cut). Re-running for another IP of the
same workload adds it to the denied nets: denied IPs accumulate, the allow rules follow the parameters.
Unlike Talon, nets are split into one rule per IP family, since Calico refuses a rule that mixes them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from talon_opa.actionners.kubernetes import _pods
from talon_opa.actionners.kubernetes.networkpolicy import (
    NAMESPACE_NAME_LABEL,
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

API_VERSION = "projectcalico.org/v3"
# Calico's own labels on its policies (the tier label its admission policy sets): kept on update
_VENDOR_LABEL_PREFIX = "projectcalico.org/"
_DEFAULT_TIER = "default"
_SERVED_BY = (
    "networkpolicies.projectcalico.org (projectcalico.org/v3)",
    "install Calico with its projectcalico.org/v3 API (the calico-apiserver, or Calico 3.32+ v3 CRDs), "
    "or use kubernetes:networkpolicy",
)


def selector(labels: Mapping[str, str]) -> str:
    """Calico's selector for pods carrying all the labels, in key order (Talon's order was random)."""
    return " && ".join(f'{k} == "{v}"' for k, v in sorted(labels.items()))


def namespace_selector(namespaces: Sequence[str]) -> str:
    """Calico's selector for the namespaces named (by the label every namespace carries)."""
    return f"{NAMESPACE_NAME_LABEL} in {{ " + ", ".join(f"'{ns}'" for ns in namespaces) + " }"


def by_family(nets: Sequence[str]) -> list[list[str]]:
    """The nets split by IP family (IPv4 first), each kept in order; no empty group.

    Calico refuses a rule whose nets mix IPv4 and IPv6 ("rule contains both IPv4 and IPv6 CIDRs").
    """
    v4 = [n for n in nets if ipaddress.ip_network(n, strict=False).version == 4]
    v6 = [n for n in nets if n not in v4]
    return [group for group in (v4, v6) if group]


def deny_rules(denied: Sequence[str]) -> list[dict[str, Any]]:
    """A Deny rule to the denied nets, one per IP family."""
    return [{"action": "Deny", "destination": {"nets": group}} for group in by_family(denied)]


def egress_rules(denied: Sequence[str], params: NetworkPolicyParams) -> list[dict[str, Any]]:
    """Deny to the remote IPs, then the allow rules of the parameters (reference §3.16)."""
    rules = deny_rules(denied)
    if params.allow_cidr is None and params.allow_namespaces is None:
        return [*rules, {"action": "Allow", "destination": {"nets": ["0.0.0.0/0"]}}]
    rules += [{"action": "Allow", "destination": {"nets": group}} for group in by_family(params.allow_cidr or ())]
    if params.allow_namespaces:
        rules.append(
            {"action": "Allow", "destination": {"namespaceSelector": namespace_selector(params.allow_namespaces)}}
        )
    return rules


def policy(
    name: str, namespace: str, labels: Mapping[str, str], denied: Sequence[str], params: CalicoNetworkPolicyParams
) -> dict[str, Any]:
    spec = {
        "tier": _DEFAULT_TIER,
        "order": params.order,
        "selector": selector(labels),
        "types": ["Egress"],
        "egress": egress_rules(denied, params),
    }
    return managed_object(API_VERSION, "NetworkPolicy", name, namespace, labels, CalicoNetworkPolicy.spec.name, spec)


def denied_nets(policy: Mapping[str, Any]) -> list[str]:
    """The nets of every Deny egress rule of a policy, in order, once each."""
    nets: list[str] = []
    for rule in (policy.get("spec") or {}).get("egress") or []:
        if rule.get("action") == "Deny":
            nets += [n for n in (rule.get("destination") or {}).get("nets") or [] if n not in nets]
    return nets


def accumulate(existing: Mapping[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """The wanted policy, denying also every IP the existing one denies, keeping Calico's own labels."""
    earlier = denied_nets(existing)
    denied = [*earlier, *(n for n in denied_nets(wanted) if n not in earlier)]
    egress = [*deny_rules(denied), *(r for r in wanted["spec"]["egress"] if r.get("action") != "Deny")]
    vendor = {
        k: v
        for k, v in ((existing.get("metadata") or {}).get("labels") or {}).items()
        if k.startswith(_VENDOR_LABEL_PREFIX)
    }
    meta = wanted["metadata"]
    return {
        **wanted,
        "metadata": {**meta, "labels": {**meta["labels"], **vendor}},
        "spec": {**wanted["spec"], "egress": egress},
    }


@dataclass(frozen=True, kw_only=True, slots=True)
class CalicoNetworkPolicyParams(NetworkPolicyParams):
    allow_cidr: tuple[str, ...] | None = param(
        None,
        doc="CIDRs the workload may still reach; with neither list, all but the remote IP is allowed; "
        "an empty list allows none",
        check=each(cidr),
    )
    allow_namespaces: tuple[str, ...] | None = param(
        None, doc="namespaces the workload may still reach (Calico selector on kubernetes.io/metadata.name)"
    )
    order: int = param(0, doc="Calico policy order (lower is applied first)")


class CalicoNetworkPolicy(Actionner[CalicoNetworkPolicyParams], Reversible):
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
        reversible=True,
        example="""\
- action: Block the remote IP
  actionner: calico:networkpolicy
  parameters:
    order: 20
    allow_cidr:
      - "192.168.0.0/16"
""",
    )

    async def run(self, alert: Alert, params: CalicoNetworkPolicyParams) -> Outcome:
        kube = self.clients.kube
        ref = _pods.target(alert)
        cidr = remote_cidr(alert)
        pod = await _pods.get_pod(kube, ref)
        owner = await _pods.owner_of(kube, pod)
        wanted = policy(owner.name, ref.namespace, owner.selector, [cidr], params)
        collection = f"/apis/{API_VERSION}/namespaces/{quote(ref.namespace, safe='')}/networkpolicies"
        applied = await apply_policy(
            kube, collection, wanted, "Calico NetworkPolicy", prepare=accumulate, served_by=_SERVED_BY
        )
        return Outcome.done(
            f"the caliconetworkpolicy '{owner.name}' in the namespace '{ref.namespace}' {RESULT_TEXT[applied.result]}",
            pod=ref.name,
            namespace=ref.namespace,
            caliconetworkpolicy=owner.name,
        ).undone_by(
            applied.reversal(self.spec.name, f"caliconetworkpolicy '{owner.name}' in the namespace '{ref.namespace}'")
        )

    async def undo(self, reversal: Reversal) -> Undone:
        return await delete_policy(self.clients.kube, reversal)
