"""calico:networkpolicy and cilium:networkpolicy against a real API server serving the vendors' CRDs.

The API server serves Calico's projectcalico.org/v3 NetworkPolicy CRD (with the admission policies the
Tigera operator installs beside it) and Cilium's CiliumNetworkPolicy CRD, both copied out of the vendors'
Go modules by tools/, so every object the actionners write is validated against the real schema. Every
actionner runs as a ServiceAccount bound to exactly the ClusterRole `talon-opa rbac` generates for it.

What this cannot show: that Calico's or Cilium's dataplane enforces the policies (no CNI runs here; kwok
pods have no network), nor the checks only a calico-apiserver makes beyond the CRD schema.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from talon_opa.actionners.calico.networkpolicy import CalicoNetworkPolicy
from talon_opa.actionners.cilium.networkpolicy import CiliumNetworkPolicy
from talon_opa.catalog import default_registry
from talon_opa.core.config import Config
from talon_opa.core.errors import StepFailed
from talon_opa.core.events import Alert
from talon_opa.core.kube import KubeApiError, KubeClient
from talon_opa.plugins import rbac
from talon_opa.plugins.clients import ClientProvider
from talon_opa.plugins.params import NoParams
from talon_opa.plugins.runtime import Outcome
from tests.harness.kube import KubeCluster

REGISTRY = default_registry()
CALICO = "/apis/projectcalico.org/v3/namespaces/{ns}/networkpolicies"
CILIUM = "/apis/cilium.io/v2/namespaces/{ns}/ciliumnetworkpolicies"
MANAGED = {"app.k8s.io/managed-by": "falco-talon"}

Run = Callable[..., Awaitable[Outcome]]
Prepare = Callable[..., Awaitable[Callable[[Alert], Awaitable[Outcome]]]]


def alert(namespace: str, pod: str, **fields: Any) -> Alert:
    return Alert(
        rule="Outbound Connection to C2 Servers",
        output_fields={"k8s.ns.name": namespace, "k8s.pod.name": pod, **fields},
    )


@pytest_asyncio.fixture(loop_scope="session")
async def prepare(kube: KubeCluster, namespace: str) -> AsyncIterator[Prepare]:
    """`step = await prepare(Plugin, **params)`, then `await step(alert)`: the plugin built with a KubeClient
    (of class `client=`) whose ServiceAccount has exactly the ClusterRole generated for this use (`rules=`
    overrides the role's rules)."""
    session = aiohttp.ClientSession()
    clients: list[KubeClient] = []

    async def build(
        plugin: Any,
        *,
        rules: list[dict[str, Any]] | None = None,
        client: type[KubeClient] = KubeClient,
        **raw: Any,
    ) -> Callable[[Alert], Awaitable[Outcome]]:
        spec = plugin.spec
        if rules is None:
            rules = rbac.cluster_role(REGISTRY, [(spec.name, raw)], "unused")["rules"]
        account = f"sa-{secrets.token_hex(3)}"
        kube_client = client(await kube.service_account_with_role(namespace, account, rules))
        clients.append(kube_client)
        provided = ClientProvider(Config(), http=session, kube=kube_client).clients_for(spec)
        instance, params = plugin(provided, NoParams()), spec.decode(raw)

        async def step(event: Alert) -> Outcome:
            outcome: Outcome = await instance.run(event, params)
            return outcome

        return step

    yield build
    for c in clients:
        await c.close()
    await session.close()


@pytest_asyncio.fixture(loop_scope="session")
async def run(prepare: Prepare) -> Run:
    """`await run(Plugin, alert, **params)`: `prepare`, then the step on the alert."""

    async def go(plugin: Any, event: Alert, **kw: Any) -> Outcome:
        return await (await prepare(plugin, **kw))(event)

    return go


async def deployment_pod(kube: KubeCluster, ns: str, name: str) -> tuple[str, str]:
    """A Deployment's running pod: (pod name, ReplicaSet name)."""
    await kube.create_workload("Deployment", ns, name, replicas=1, labels={"tier": "backend"})
    pod = (await kube.wait_running(ns, f"app={name}", 1))[0]["metadata"]
    return pod["name"], pod["ownerReferences"][0]["name"]


# ---- calico ------------------------------------------------------------------------------------


async def test_calico_policy_created_as_talon_does_then_converges_and_accumulates_denied_ips(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    pod, replica_set = await deployment_pod(kube, namespace, "web")
    other = await kube.new_namespace("allowed")
    path = f"{CALICO.format(ns=namespace)}/{replica_set}"
    params = {"order": 20, "allow_cidr": ["10.0.0.0/8", "192.168.0.0/16"], "allow_namespaces": [other, "kube-system"]}

    outcome = await run(CalicoNetworkPolicy, alert(namespace, pod, **{"fd.rip": "203.0.113.7"}), **params)

    assert outcome.status == "success"
    assert outcome.message == (
        f"the caliconetworkpolicy '{replica_set}' in the namespace '{namespace}' has been created"
    )
    assert dict(outcome.objects) == {"pod": pod, "namespace": namespace, "caliconetworkpolicy": replica_set}
    policy = await kube.api.get(path)
    assert policy["apiVersion"] == "projectcalico.org/v3"
    assert policy["kind"] == "NetworkPolicy"
    # Calico's own admission policy (which the Tigera operator installs with v3 CRDs) adds its tier label;
    # ours are Talon's plus the selector labels
    assert kube.calico_admission == "v1"
    assert policy["metadata"]["labels"] == {"app": "web", **MANAGED, "projectcalico.org/tier": "default"}
    assert policy["metadata"]["annotations"] == {"talon-opa/actionner": "calico:networkpolicy"}
    assert policy["spec"] == {
        "tier": "default",
        "order": 20,
        "selector": 'app == "web"',  # the Deployment's selector: pod-template-hash and `tier` are not in it
        "types": ["Egress"],
        "egress": [
            {"action": "Deny", "destination": {"nets": ["203.0.113.7/32"]}},
            {"action": "Allow", "destination": {"nets": ["10.0.0.0/8", "192.168.0.0/16"]}},
            {
                "action": "Allow",
                "destination": {"namespaceSelector": f"kubernetes.io/metadata.name in {{ '{other}', 'kube-system' }}"},
            },
        ],
    }
    # the namespace selector matches the label the API server puts on every namespace
    assert (await kube.api.get(f"/api/v1/namespaces/{other}"))["metadata"]["labels"][
        "kubernetes.io/metadata.name"
    ] == other

    again = await run(CalicoNetworkPolicy, alert(namespace, pod, **{"fd.rip": "203.0.113.7"}), **params)
    assert again.message.endswith("was already up to date")
    assert (await kube.api.get(path))["metadata"]["resourceVersion"] == policy["metadata"]["resourceVersion"]

    # another IP (fd.sip when there is no fd.rip), no allow lists: the denied IPs accumulate, allow all else
    more = await run(CalicoNetworkPolicy, alert(namespace, pod, **{"fd.sip": "198.51.100.9"}))
    assert more.message.endswith("has been updated")
    updated = await kube.api.get(path)
    assert updated["spec"]["egress"] == [
        {"action": "Deny", "destination": {"nets": ["203.0.113.7/32", "198.51.100.9/32"]}},
        {"action": "Allow", "destination": {"nets": ["0.0.0.0/0"]}},
    ]
    assert updated["spec"]["order"] == 0  # Talon always sets the order, 0 by default
    assert updated["metadata"]["annotations"] == {"talon-opa/actionner": "calico:networkpolicy"}

    # the first IP again: already denied, nothing to write
    same = await run(CalicoNetworkPolicy, alert(namespace, pod, **{"fd.rip": "203.0.113.7"}))
    assert same.message.endswith("was already up to date")


async def test_calico_standalone_pod_ipv6_and_empty_allow_list(kube: KubeCluster, namespace: str, run: Run) -> None:
    await kube.create_pod(namespace, "api-1", labels={"tier": "api"})

    await run(CalicoNetworkPolicy, alert(namespace, "api-1", **{"fd.rip": "2001:db8::7"}), allow_cidr=[])

    policy = await kube.api.get(f"{CALICO.format(ns=namespace)}/api-1")  # a standalone pod names its policy
    assert policy["spec"]["selector"] == 'app == "api-1" && tier == "api"'  # keys in order
    # an empty allow list (not an absent one) allows nothing: only the Deny rule; IPv6 gets /128
    assert policy["spec"]["egress"] == [{"action": "Deny", "destination": {"nets": ["2001:db8::7/128"]}}]

    # an IPv4 address next: Calico refuses a rule mixing the families, so each has its Deny rule
    await run(CalicoNetworkPolicy, alert(namespace, "api-1", **{"fd.rip": "203.0.113.7"}), allow_cidr=[])
    assert (await kube.api.get(f"{CALICO.format(ns=namespace)}/api-1"))["spec"]["egress"] == [
        {"action": "Deny", "destination": {"nets": ["203.0.113.7/32"]}},
        {"action": "Deny", "destination": {"nets": ["2001:db8::7/128"]}},
    ]


async def test_calico_takes_over_a_policy_falco_talon_created_keeping_its_denied_ips(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    pod, replica_set = await deployment_pod(kube, namespace, "web")
    talons = {  # as Falco Talon writes it: its label, its namespace selector key, no annotation of ours
        "apiVersion": "projectcalico.org/v3",
        "kind": "NetworkPolicy",
        "metadata": {"name": replica_set, "labels": {"app": "web", **MANAGED}},
        "spec": {
            "order": 0,
            "selector": 'app == "web"',
            "types": ["Egress"],
            "egress": [
                {"action": "Deny", "destination": {"nets": ["192.0.2.1/32"]}},
                {"action": "Allow", "destination": {"namespaceSelector": "k8s.io/metadata.name in { 'dns' }"}},
            ],
        },
    }
    await kube.api.post(CALICO.format(ns=namespace), talons)

    outcome = await run(
        CalicoNetworkPolicy, alert(namespace, pod, **{"fd.rip": "203.0.113.7"}), allow_namespaces=["dns"]
    )

    assert outcome.message.endswith("has been updated")
    policy = await kube.api.get(f"{CALICO.format(ns=namespace)}/{replica_set}")
    assert policy["metadata"]["annotations"] == {"talon-opa/actionner": "calico:networkpolicy"}
    assert policy["spec"]["egress"] == [
        {"action": "Deny", "destination": {"nets": ["192.0.2.1/32", "203.0.113.7/32"]}},
        {"action": "Allow", "destination": {"namespaceSelector": "kubernetes.io/metadata.name in { 'dns' }"}},
    ]


async def test_talons_calico_rbac_resource_does_not_exist_ours_is_enough(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    pod, _ = await deployment_pod(kube, namespace, "web")
    event = alert(namespace, pod, **{"fd.rip": "203.0.113.7"})
    generated = rbac.cluster_role(REGISTRY, [("calico:networkpolicy", {})], "unused")["rules"]
    talons = [
        {**r, "resources": ["caliconetworkpolicies"]} if r["apiGroups"] == ["projectcalico.org"] else r
        for r in generated
    ]
    assert talons != generated

    with pytest.raises(KubeApiError) as caught:
        await run(CalicoNetworkPolicy, event, rules=talons)

    assert caught.value.status == 403
    assert 'resource "networkpolicies" in API group "projectcalico.org"' in str(caught.value)
    assert (await run(CalicoNetworkPolicy, event)).message.endswith("has been created")


# ---- cilium ------------------------------------------------------------------------------------


async def test_cilium_policy_created_as_talon_does_then_converges_and_accumulates_rules(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    pod, replica_set = await deployment_pod(kube, namespace, "web")
    path = f"{CILIUM.format(ns=namespace)}/{replica_set}"
    params = {"allow_cidr": ["10.0.0.0/8"], "allow_namespaces": ["kube-system"]}

    outcome = await run(CiliumNetworkPolicy, alert(namespace, pod, **{"fd.rip": "203.0.113.7"}), **params)

    assert outcome.status == "success"
    assert outcome.message == (
        f"the ciliumnetworkpolicy '{replica_set}' in the namespace '{namespace}' has been created"
    )
    assert dict(outcome.objects) == {"pod": pod, "namespace": namespace, "ciliumnetworkpolicy": replica_set}
    policy = await kube.api.get(path)
    assert policy["apiVersion"] == "cilium.io/v2"
    assert policy["kind"] == "CiliumNetworkPolicy"
    assert policy["metadata"]["labels"] == {"app": "web", **MANAGED}
    assert policy["metadata"]["annotations"] == {"talon-opa/actionner": "cilium:networkpolicy"}
    kube_system = {
        "toEndpoints": [
            {
                "matchExpressions": [
                    {"key": "k8s:io.kubernetes.pod.namespace", "operator": "In", "values": ["kube-system"]}
                ]
            }
        ]
    }
    assert policy["spec"] == {
        "description": "Network policy created by Falco Talon",
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "egressDeny": [{"toCIDR": ["203.0.113.7/32"]}],
        "egress": [{"toCIDR": ["10.0.0.0/8"]}, kube_system],
    }

    again = await run(CiliumNetworkPolicy, alert(namespace, pod, **{"fd.rip": "203.0.113.7"}), **params)
    assert again.message.endswith("was already up to date")
    assert (await kube.api.get(path))["metadata"]["resourceVersion"] == policy["metadata"]["resourceVersion"]

    # another IP and another allow list: every rule is kept, each new one added once
    more = await run(
        CiliumNetworkPolicy,
        alert(namespace, pod, **{"fd.sip": "2001:db8::9"}),
        allow_cidr=["10.0.0.0/8", "172.16.0.0/12"],
    )
    assert more.message.endswith("has been updated")
    spec = (await kube.api.get(path))["spec"]
    assert spec["egressDeny"] == [{"toCIDR": ["203.0.113.7/32"]}, {"toCIDR": ["2001:db8::9/128"]}]
    assert spec["egress"] == [{"toCIDR": ["10.0.0.0/8"]}, kube_system, {"toCIDR": ["10.0.0.0/8", "172.16.0.0/12"]}]

    same = await run(CiliumNetworkPolicy, alert(namespace, pod, **{"fd.rip": "203.0.113.7"}), **params)
    assert same.message.endswith("was already up to date")


async def test_cilium_allow_namespaces_alone_is_kept_and_no_lists_allow_all_else(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    await kube.create_pod(namespace, "api-1", labels={"tier": "api"})
    await kube.create_pod(namespace, "api-2", labels={"tier": "worker"})

    await run(CiliumNetworkPolicy, alert(namespace, "api-1", **{"fd.rip": "203.0.113.7"}), allow_namespaces=["dns"])
    await run(CiliumNetworkPolicy, alert(namespace, "api-2", **{"fd.rip": "203.0.113.7"}))

    only_ns = (await kube.api.get(f"{CILIUM.format(ns=namespace)}/api-1"))["spec"]
    # Talon dropped this rule unless allow_cidr was set too
    assert only_ns["egress"] == [
        {
            "toEndpoints": [
                {"matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "In", "values": ["dns"]}]}
            ]
        }
    ]
    assert only_ns["endpointSelector"] == {"matchLabels": {"app": "api-1", "tier": "api"}}
    no_lists = (await kube.api.get(f"{CILIUM.format(ns=namespace)}/api-2"))["spec"]
    assert no_lists["egress"] == [{"toCIDR": ["0.0.0.0/0"]}]


# ---- both: refusals and failures ---------------------------------------------------------------

FOREIGN: Mapping[str, tuple[type[Any], str, dict[str, Any]]] = {
    "calico": (
        CalicoNetworkPolicy,
        CALICO,
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "NetworkPolicy",
            "spec": {"selector": "all()", "types": ["Ingress"], "ingress": [{"action": "Allow"}]},
        },
    ),
    "cilium": (
        CiliumNetworkPolicy,
        CILIUM,
        {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "spec": {"endpointSelector": {}, "ingress": [{"fromEntities": ["cluster"]}]},
        },
    ),
}


@pytest.mark.parametrize("vendor", sorted(FOREIGN))
async def test_a_policy_we_did_not_create_is_never_overwritten(
    kube: KubeCluster, namespace: str, run: Run, vendor: str
) -> None:
    plugin, collection, body = FOREIGN[vendor]
    pod, replica_set = await deployment_pod(kube, namespace, "web")
    foreign = {**body, "metadata": {"name": replica_set, "labels": {"owner": "platform-team"}}}
    created = await kube.api.post(collection.format(ns=namespace), foreign)

    with pytest.raises(StepFailed, match="was not created by talon-opa or Falco Talon") as caught:
        await run(plugin, alert(namespace, pod, **{"fd.rip": "203.0.113.7"}), allow_cidr=["10.0.0.0/8"])

    assert "app.k8s.io/managed-by=falco-talon" in caught.value.hint
    after = await kube.api.get(f"{collection.format(ns=namespace)}/{replica_set}")
    assert after["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert after["spec"] == created["spec"]


NOT_SERVED = {
    "calico": (CalicoNetworkPolicy, "networkpolicies.projectcalico.org", "install Calico"),
    "cilium": (CiliumNetworkPolicy, "ciliumnetworkpolicies.cilium.io", "install Cilium (its CRDs)"),
}


@pytest.mark.parametrize("vendor", sorted(NOT_SERVED))
async def test_without_the_vendors_crd_the_step_fails_naming_it_with_the_hint_to_install(
    kube: KubeCluster, namespace: str, run: Run, vendor: str
) -> None:
    plugin, crd, hint = NOT_SERVED[vendor]
    await kube.create_pod(namespace, "api-1")
    removed = await kube.remove_crd(crd)
    try:
        with pytest.raises(StepFailed) as caught:
            await run(plugin, alert(namespace, "api-1", **{"fd.rip": "203.0.113.7"}))
    finally:
        await kube.install_crd(removed)
        if vendor == "calico":
            await kube.install_calico_admission()

    assert str(caught.value).startswith(f"the API server does not serve {crd}")
    assert "404" in str(caught.value)  # the server's answer, as it gave it
    assert hint in caught.value.hint


@pytest.mark.parametrize("plugin", [CalicoNetworkPolicy, CiliumNetworkPolicy])
async def test_a_remote_ip_that_is_not_an_ip_fails_before_any_write(
    kube: KubeCluster, namespace: str, run: Run, plugin: Any
) -> None:
    await kube.create_pod(namespace, "api-1")

    with pytest.raises(StepFailed, match=r"the alert's remote IP 'example\.com' \(fd\.rip/fd\.sip\) is not an IP"):
        await run(plugin, alert(namespace, "api-1", **{"fd.rip": "example.com"}))

    assert (await kube.api.get(CALICO.format(ns=namespace)))["items"] == []
    assert (await kube.api.get(CILIUM.format(ns=namespace)))["items"] == []


class _TogetherClient(KubeClient):
    """Creates wait until both writers are about to create: their lookups are done, one POST must lose."""

    barrier = asyncio.Barrier(2)

    async def post(self, path: str, body: Any, **kw: Any) -> Any:
        if path.endswith(("/networkpolicies", "/ciliumnetworkpolicies")):
            async with asyncio.timeout(30):
                await self.barrier.wait()
        return await super().post(path, body, **kw)


@pytest.mark.parametrize("vendor", ["calico", "cilium"])
async def test_concurrent_alerts_about_two_pods_of_one_workload_deny_both_ips(
    kube: KubeCluster, namespace: str, prepare: Prepare, vendor: str
) -> None:
    # per-pod ordering does not serialise them: both write the one policy named after the ReplicaSet
    await kube.create_workload("Deployment", namespace, "web", replicas=2)
    pods = await kube.wait_running(namespace, "app=web", 2)
    [first, second] = [p["metadata"]["name"] for p in pods[:2]]
    replica_set = pods[0]["metadata"]["ownerReferences"][0]["name"]
    plugin, collection = (CalicoNetworkPolicy, CALICO) if vendor == "calico" else (CiliumNetworkPolicy, CILIUM)
    _TogetherClient.barrier = asyncio.Barrier(2)
    steps = [await prepare(plugin, client=_TogetherClient) for _ in range(2)]

    outcomes = await asyncio.gather(
        steps[0](alert(namespace, first, **{"fd.rip": "203.0.113.1"})),
        steps[1](alert(namespace, second, **{"fd.rip": "203.0.113.2"})),
    )

    # both created at once: the one refused (409) looked again and updated what the other made
    assert sorted(o.message.split(" ")[-1] for o in outcomes) == ["created", "updated"]
    spec = (await kube.api.get(f"{collection.format(ns=namespace)}/{replica_set}"))["spec"]
    if vendor == "calico":
        assert sorted(spec["egress"][0]["destination"]["nets"]) == ["203.0.113.1/32", "203.0.113.2/32"]
    else:
        assert sorted(r["toCIDR"][0] for r in spec["egressDeny"]) == ["203.0.113.1/32", "203.0.113.2/32"]
