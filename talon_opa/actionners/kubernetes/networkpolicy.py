"""kubernetes:networkpolicy — deny the egress of the pod's workload, except to the allowed CIDRs/namespaces."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from talon_opa.actionners.kubernetes import _pods
from talon_opa.core.errors import StepFailed
from talon_opa.core.kube import KubeApiError, KubeClient
from talon_opa.plugins.params import cidr, each, param
from talon_opa.plugins.reversal import Reversal, Reversible, Undone
from talon_opa.plugins.runtime import Actionner, Outcome
from talon_opa.plugins.spec import Grant, Spec

if TYPE_CHECKING:
    from talon_opa.core.events import Alert

# Talon's label on the policies it makes: kept, so Talon users' tooling still finds them, and the
# mark of a policy we may overwrite (we never touch one without it).
MANAGED_BY = "app.k8s.io/managed-by"
MANAGED_BY_VALUE = "falco-talon"
# ours, to tell a talon-opa policy from a Talon one
ANNOTATION = "talon-opa/actionner"
# the namespace label every namespace carries (Talon used `k8s.io/metadata.name`, which none has)
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
_ATTEMPTS = 3

# The workload of a pod: the pod's first owner (ReplicaSet, DaemonSet, StatefulSet) gives the selector.
OWNER_LOOKUP_GRANTS = (
    Grant(("",), ("pods",), ("get",)),
    Grant(("apps",), ("replicasets", "daemonsets", "statefulsets"), ("get",)),
)


def policy_grants(api_group: str, resource: str) -> tuple[Grant, ...]:
    """What the three network-policy actionners need: their policy kind (delete: to undo) plus the owner lookup."""
    return (Grant((api_group,), (resource,), ("get", "create", "update", "delete")), *OWNER_LOOKUP_GRANTS)


@dataclass(frozen=True, slots=True)
class Applied:
    """What apply_policy did ("created", "updated" or "unchanged"), to the policy at `path` with `uid`."""

    result: str
    path: str
    uid: str

    def reversal(self, actionner: str, what: str) -> Reversal | None:
        """Delete the policy, when we created it (an updated one was created by an earlier action: its undo)."""
        if self.result != "created":
            return None
        return Reversal(actionner, f"delete the {what}", {"path": self.path, "uid": self.uid, "what": what})


async def delete_policy(kube: KubeClient, reversal: Reversal) -> Undone:
    """Delete the policy we created, by uid: never one made again under the same name."""
    path, uid, what = str(reversal.state["path"]), str(reversal.state.get("uid") or ""), str(reversal.state["what"])
    try:
        current = await kube.get(path)
    except KubeApiError as e:
        if e.status == 404:
            return Undone("already_undone", f"the {what} is already gone")
        raise
    if uid and (current.get("metadata") or {}).get("uid") != uid:
        return Undone("already_undone", f"the {what} was deleted and made again since: not ours, left alone")
    options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
    if uid:
        options["preconditions"] = {"uid": uid}
    try:
        await kube.delete(path, options)
    except KubeApiError as e:
        if e.status in (404, 409):  # deleted meanwhile, or (409) the uid no longer matches
            return Undone("already_undone", f"the {what} was deleted meanwhile")
        raise
    return Undone("undone", f"the {what} has been deleted")


# what apply_policy did, as the step's message says it
RESULT_TEXT = {"created": "has been created", "updated": "has been updated", "unchanged": "was already up to date"}


def remote_cidr(alert: Alert) -> str:
    """The alert's remote IP (fd.rip, else fd.sip) as a one-address CIDR: /32, or /128 for IPv6."""
    text = alert.remote_ip()
    if not text:
        raise StepFailed("the alert names no remote IP", hint="the alert needs fd.rip or fd.sip")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError as e:
        raise StepFailed(
            f"the alert's remote IP {text!r} (fd.rip/fd.sip) is not an IP address",
            hint="narrow the rule's match to network alerts whose fd.rip/fd.sip is an IP",
        ) from e
    return f"{ip}/{ip.max_prefixlen}"


def egress_peers(allow_cidr: Sequence[str] | None, allow_namespaces: Sequence[str] | None) -> list[dict[str, Any]]:
    """The `to` peers of the one egress rule: each allowed CIDR, then each allowed namespace."""
    peers: list[dict[str, Any]] = [{"ipBlock": {"cidr": c}} for c in allow_cidr or ()]
    peers += [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: ns}}} for ns in allow_namespaces or ()]
    return peers


def policy_object(
    name: str,
    namespace: str,
    selector: Mapping[str, str],
    allow_cidr: Sequence[str] | None,
    allow_namespaces: Sequence[str] | None,
    actionner: str,
) -> dict[str, Any]:
    """The NetworkPolicy denying all egress of the selected pods but to the allowed peers (reference §3.4)."""
    spec: dict[str, Any] = {"podSelector": {"matchLabels": dict(selector)}, "policyTypes": ["Egress"]}
    peers = egress_peers(allow_cidr, allow_namespaces)
    if peers:  # no rule at all: every egress is denied
        spec["egress"] = [{"to": peers}]
    return managed_object("networking.k8s.io/v1", "NetworkPolicy", name, namespace, selector, actionner, spec)


def managed_object(
    api_version: str,
    kind: str,
    name: str,
    namespace: str,
    selector: Mapping[str, str],
    actionner: str,
    spec: dict[str, Any],
) -> dict[str, Any]:
    """A policy object of any kind as the three actionners write it: Talon's labels, our annotation."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**selector, MANAGED_BY: MANAGED_BY_VALUE},
            "annotations": {ANNOTATION: actionner},
        },
        "spec": spec,
    }


# Given the policy in the cluster and the one wanted, the object to converge to (calico and cilium
# carry over what they accumulate: denied IPs, vendor labels).
Prepare = Callable[[Mapping[str, Any], dict[str, Any]], dict[str, Any]]


def _converged(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    meta, want = existing.get("metadata") or {}, wanted["metadata"]
    annotations = meta.get("annotations") or {}
    return (
        existing.get("spec") == wanted["spec"]
        and (meta.get("labels") or {}) == want["labels"]
        and all(annotations.get(k) == v for k, v in want["annotations"].items())
    )


async def apply_policy(
    kube: KubeClient,
    collection: str,
    wanted: dict[str, Any],
    what: str,
    *,
    prepare: Prepare | None = None,
    served_by: tuple[str, str] | None = None,
) -> Applied:
    """Create the policy, or update it when we made it ("created", "updated" or "unchanged", with its uid).

    `collection` is the API path of the namespace's policies of this kind. A policy of the same name
    without our managed-by label belongs to someone else: it is never overwritten. `prepare` turns the
    existing policy and the wanted one into the object to update to (default: the wanted one).
    `served_by` is (resource, hint) for a kind a CNI serves: when the API server does not serve it,
    the step fails naming the resource, with the hint to install the CNI.
    """
    name = wanted["metadata"]["name"]
    path = f"{collection}/{quote(name, safe='')}"
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            existing = await kube.get(path)
        except KubeApiError as e:
            if e.status != 404:
                raise
            try:
                created = await kube.post(collection, wanted)
            except KubeApiError as e2:
                if e2.status == 409 and attempt < _ATTEMPTS:
                    continue  # created meanwhile: look again
                if (e2.status == 404 or e2.crd_terminating) and served_by is not None:
                    resource, hint = served_by
                    serves = "is removing" if e2.crd_terminating else "does not serve"
                    raise StepFailed(
                        f"the API server {serves} {resource} (POST {collection}: {e2.status} {e2.api_message.strip()})",
                        hint=hint,
                    ) from e2
                raise
            return Applied("created", path, str(((created or {}).get("metadata") or {}).get("uid") or ""))
        meta = existing.get("metadata") or {}
        if (meta.get("labels") or {}).get(MANAGED_BY) != MANAGED_BY_VALUE:
            raise StepFailed(
                f"the {what} '{name}' in the namespace '{meta.get('namespace', '')}' exists and was not "
                "created by talon-opa or Falco Talon: refusing to overwrite it",
                hint=f"rename or delete that {what}, or label it {MANAGED_BY}={MANAGED_BY_VALUE} "
                "to let talon-opa manage it",
            )
        target = prepare(existing, wanted) if prepare is not None else wanted
        uid = str(meta.get("uid") or "")
        if _converged(existing, target):
            return Applied("unchanged", path, uid)
        body = {
            **target,
            "metadata": {
                **target["metadata"],
                "resourceVersion": meta.get("resourceVersion"),
                "annotations": {**(meta.get("annotations") or {}), **target["metadata"]["annotations"]},
            },
        }
        try:
            await kube.put(path, body)
        except KubeApiError as e:
            if e.status in (404, 409) and attempt < _ATTEMPTS:
                continue  # deleted or changed meanwhile: look again
            raise
        return Applied("updated", path, uid)
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True, kw_only=True, slots=True)
class NetworkPolicyParams:
    allow_cidr: tuple[str, ...] | None = param(
        None, doc="CIDRs the workload may still reach; none: all egress is denied", check=each(cidr)
    )
    allow_namespaces: tuple[str, ...] | None = param(
        None, doc="namespaces the workload may still reach (selected by kubernetes.io/metadata.name)"
    )


class NetworkPolicy(Actionner[NetworkPolicyParams], Reversible):
    spec: ClassVar[Spec[NetworkPolicyParams]] = Spec(
        name="kubernetes:networkpolicy",
        kind="actionner",
        clients=("kube",),
        description="Create or update a NetworkPolicy denying all egress of the pod's workload but what is allowed",
        params=NetworkPolicyParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        grants=policy_grants("networking.k8s.io", "networkpolicies"),
        reversible=True,
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

    async def run(self, alert: Alert, params: NetworkPolicyParams) -> Outcome:
        kube = self.clients.kube
        ref = _pods.target(alert)
        pod = await _pods.get_pod(kube, ref)
        owner = await _pods.owner_of(kube, pod)
        wanted = policy_object(
            owner.name, ref.namespace, owner.selector, params.allow_cidr, params.allow_namespaces, self.spec.name
        )
        collection = f"/apis/networking.k8s.io/v1/namespaces/{quote(ref.namespace, safe='')}/networkpolicies"
        applied = await apply_policy(kube, collection, wanted, "NetworkPolicy")
        what = f"networkpolicy '{owner.name}' in the namespace '{ref.namespace}'"
        return Outcome.done(
            f"the {what} {RESULT_TEXT[applied.result]}", pod=ref.name, namespace=ref.namespace, networkpolicy=owner.name
        ).undone_by(applied.reversal(self.spec.name, what))

    async def undo(self, reversal: Reversal) -> Undone:
        return await delete_policy(self.clients.kube, reversal)
