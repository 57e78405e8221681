"""kubernetes:label, :annotation, :terminate and :networkpolicy against a real API server.

Every actionner runs with a ServiceAccount bound to the ClusterRole generated from the registry's
grants (what `talon-opa rbac` would give it), so the declared RBAC is proven sufficient.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from talon_opa.actionners.kubernetes import _pods
from talon_opa.actionners.kubernetes.annotation import Annotation
from talon_opa.actionners.kubernetes.label import Label
from talon_opa.actionners.kubernetes.networkpolicy import NetworkPolicy
from talon_opa.actionners.kubernetes.terminate import Terminate
from talon_opa.catalog import default_registry
from talon_opa.core.config import Config
from talon_opa.core.errors import StepFailed
from talon_opa.core.events import Alert
from talon_opa.core.kube import KubeApiError, KubeClient
from talon_opa.plugins import rbac
from talon_opa.plugins.clients import ClientProvider
from talon_opa.plugins.params import NoParams
from talon_opa.plugins.runtime import Outcome
from tests.harness.kube import NODES, KubeCluster

REGISTRY = default_registry()
NP_PATH = "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"

Run = Callable[..., Awaitable[Outcome]]


def alert(namespace: str, pod: str) -> Alert:
    return Alert(rule="Terminal shell in container", output_fields={"k8s.ns.name": namespace, "k8s.pod.name": pod})


@pytest_asyncio.fixture(loop_scope="session")
async def run(kube: KubeCluster, namespace: str) -> AsyncIterator[Run]:
    """`await run(Plugin, namespace, pod, **params)`: the plugin built with a KubeClient whose ServiceAccount
    has exactly the ClusterRole generated for this use (`rules=` overrides the role's rules)."""
    session = aiohttp.ClientSession()
    clients: list[KubeClient] = []

    async def go(plugin: Any, ns: str, pod: str, *, rules: list[dict[str, Any]] | None = None, **raw: Any) -> Outcome:
        spec = plugin.spec
        if rules is None:
            rules = rbac.cluster_role(REGISTRY, [(spec.name, raw)], "unused")["rules"]
        account = f"sa-{secrets.token_hex(3)}"
        client = KubeClient(await kube.service_account_with_role(namespace, account, rules))
        clients.append(client)
        clients_ = ClientProvider(Config(), http=session, kube=client).clients_for(spec)
        outcome: Outcome = await plugin(clients_, NoParams()).run(alert(ns, pod), spec.decode(raw))
        return outcome

    yield go
    for c in clients:
        await c.close()
    await session.close()


async def read_pod(kube: KubeCluster, ns: str, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = await kube.api.get(_pods.pod_path(ns, name))
    return pod


async def gone(kube: KubeCluster, ns: str, name: str, uid: str) -> bool:
    try:
        pod = await read_pod(kube, ns, name)
    except KubeApiError as e:
        return e.status == 404
    return bool(pod["metadata"]["uid"] != uid)


# ---- label / annotation ------------------------------------------------------------------------


async def test_label_adds_changes_and_removes_pod_labels(kube: KubeCluster, namespace: str, run: Run) -> None:
    await kube.create_pod(namespace, "api-1", labels={"keep": "1", "stale": "x"})
    labels = {"security.falco.org/suspicious": "true", "stale": ""}

    outcome = await run(Label, namespace, "api-1", labels=labels)

    assert outcome.status == "success"
    assert outcome.message == f"the pod 'api-1' in the namespace '{namespace}' has been labeled"
    assert dict(outcome.objects) == {"pod": "api-1", "namespace": namespace}
    pod = await read_pod(kube, namespace, "api-1")
    assert pod["metadata"]["labels"] == {"app": "api-1", "keep": "1", "security.falco.org/suspicious": "true"}

    # the same step again converges without writing
    again = await run(Label, namespace, "api-1", labels=labels)
    assert again.status == "success"
    assert (await read_pod(kube, namespace, "api-1"))["metadata"]["resourceVersion"] == pod["metadata"][
        "resourceVersion"
    ]

    await run(Label, namespace, "api-1", labels={"security.falco.org/suspicious": "false", "keep": ""})
    labels_now = (await read_pod(kube, namespace, "api-1"))["metadata"]["labels"]
    assert labels_now == {"app": "api-1", "security.falco.org/suspicious": "false"}


async def test_label_works_on_a_pod_without_labels(kube: KubeCluster, namespace: str, run: Run) -> None:
    tpl = kube.pod_template("bare")["spec"]
    await kube.api.post(
        f"/api/v1/namespaces/{namespace}/pods",
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"}, "spec": {**tpl, "nodeName": NODES[0]}},
    )
    assert "labels" not in (await read_pod(kube, namespace, "bare"))["metadata"]

    await run(Label, namespace, "bare", labels={"quarantine": "true", "absent": ""})

    assert (await read_pod(kube, namespace, "bare"))["metadata"]["labels"] == {"quarantine": "true"}


async def test_label_at_node_level_labels_the_pods_node(kube: KubeCluster, namespace: str, run: Run) -> None:
    await kube.create_pod(namespace, "api-1", node=NODES[1])
    key = f"talon-test.example.com/{namespace}"  # nodes are shared: a key of this test's own

    outcome = await run(Label, namespace, "api-1", labels={key: "suspicious"}, level="node")

    assert outcome.message == f"the node '{NODES[1]}' has been labeled"
    assert dict(outcome.objects) == {"node": NODES[1]}
    node = await kube.api.get(f"/api/v1/nodes/{NODES[1]}")
    assert node["metadata"]["labels"][key] == "suspicious"

    await run(Label, namespace, "api-1", labels={key: "changed"}, level="node")
    assert (await kube.api.get(f"/api/v1/nodes/{NODES[1]}"))["metadata"]["labels"][key] == "changed"

    await run(Label, namespace, "api-1", labels={key: ""}, level="node")
    assert key not in (await kube.api.get(f"/api/v1/nodes/{NODES[1]}"))["metadata"]["labels"]
    assert (await read_pod(kube, namespace, "api-1"))["metadata"]["labels"] == {"app": "api-1"}


async def test_annotation_adds_and_removes_pod_annotations(kube: KubeCluster, namespace: str, run: Run) -> None:
    await kube.create_pod(namespace, "api-1")

    outcome = await run(Annotation, namespace, "api-1", annotations={"falco.org/alert": "shell", "gone": ""})

    assert outcome.message == f"the pod 'api-1' in the namespace '{namespace}' has been annotated"
    pod = await read_pod(kube, namespace, "api-1")
    assert pod["metadata"]["annotations"] == {"falco.org/alert": "shell"}
    assert pod["metadata"]["labels"] == {"app": "api-1"}  # labels untouched

    await run(Annotation, namespace, "api-1", annotations={"falco.org/alert": ""})
    assert not (await read_pod(kube, namespace, "api-1"))["metadata"].get("annotations")


async def test_label_of_a_missing_pod_fails_naming_it(namespace: str, run: Run) -> None:
    with pytest.raises(StepFailed, match=f"the pod 'nope' in the namespace '{namespace}' doesn't exist") as e:
        await run(Label, namespace, "nope", labels={"a": "b"})
    assert "or never existed" in e.value.hint  # never "was deleted": nothing says it ever existed


# ---- terminate ---------------------------------------------------------------------------------


async def test_terminate_deletes_a_deployment_pod_and_the_replicaset_replaces_it(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    await kube.create_workload("Deployment", namespace, "web", replicas=2)
    pods = await kube.wait_running(namespace, "app=web", 2)
    victim = pods[0]["metadata"]

    outcome = await run(Terminate, namespace, victim["name"])

    assert outcome.status == "success"
    assert outcome.message == f"the pod '{victim['name']}' in the namespace '{namespace}' has been terminated"
    assert dict(outcome.objects) == {"pod": victim["name"], "namespace": namespace}
    assert await gone(kube, namespace, victim["name"], victim["uid"])  # grace 0: immediately

    async def replaced() -> bool:
        names = {p["metadata"]["name"] for p in await kube.running_pods(namespace, "app=web")}
        return len(names) == 2 and victim["name"] not in names

    await kube.wait_for(replaced, "a replacement pod")

    # the same step again: the pod is already gone, which is what was asked
    again = await run(Terminate, namespace, victim["name"])
    assert again.status == "success"
    assert again.message.endswith("was already gone")


@pytest.mark.parametrize(("kind", "flag"), [("DaemonSet", "ignore_daemonsets"), ("StatefulSet", "ignore_statefulsets")])
async def test_terminate_skips_daemonset_and_statefulset_pods_when_asked(
    kube: KubeCluster, namespace: str, run: Run, kind: str, flag: str
) -> None:
    await kube.create_workload(kind, namespace, "agent", replicas=1)
    pod = (await kube.wait_running(namespace, "app=agent", 1))[0]["metadata"]

    outcome = await run(Terminate, namespace, pod["name"], **{flag: True})

    assert outcome.status == "ignored"
    assert outcome.message == (
        f"the pod '{pod['name']}' in the namespace '{namespace}' was not terminated: "
        f"it belongs to a {kind} and {flag} is set"
    )
    assert (await read_pod(kube, namespace, pod["name"]))["metadata"]["uid"] == pod["uid"]

    done = await run(Terminate, namespace, pod["name"])  # without the flag it goes
    assert done.status == "success"
    assert await gone(kube, namespace, pod["name"], pod["uid"])


async def test_terminate_standalone_pod(kube: KubeCluster, namespace: str, run: Run) -> None:
    pod = (await kube.create_pod(namespace, "lonely"))["metadata"]

    skipped = await run(Terminate, namespace, "lonely", ignore_standalone_pods=True)
    assert skipped.status == "ignored"
    assert skipped.message.endswith("it has no owner and ignore_standalone_pods is set")
    assert not await gone(kube, namespace, "lonely", pod["uid"])

    outcome = await run(Terminate, namespace, "lonely", grace_period_seconds=0)
    assert outcome.status == "success"
    assert await gone(kube, namespace, "lonely", pod["uid"])


async def _replica_set_with(kube: KubeCluster, ns: str, name: str, *, ready: int, desired: int) -> None:
    """A ReplicaSet with `ready` running pods and `desired` replicas: the rest can never be scheduled."""
    base = f"/apis/apps/v1/namespaces/{ns}/replicasets"
    await kube.api.post(
        base,
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": name},
            "spec": {
                "replicas": ready,
                "selector": {"matchLabels": {"app": name}},
                "template": kube.pod_template(name),
            },
        },
    )
    await kube.wait_running(ns, f"app={name}", ready)
    await kube.api.patch(
        f"{base}/{name}",
        {"spec": {"replicas": desired, "template": {"spec": {"nodeSelector": {"talon-test/none": "none"}}}}},
    )
    await _wait_ready_replicas(kube, ns, name, ready, desired)


async def _wait_ready_replicas(kube: KubeCluster, ns: str, name: str, ready: int, desired: int) -> None:
    async def settled() -> bool:
        rs = await kube.api.get(f"/apis/apps/v1/namespaces/{ns}/replicasets/{name}")
        status = rs.get("status", {})
        return bool(
            status.get("observedGeneration") == rs["metadata"]["generation"]
            and status.get("replicas") == desired
            and status.get("readyReplicas", 0) == ready
        )

    await kube.wait_for(settled, f"ReplicaSet {name}: {ready} ready of {desired}")


async def test_terminate_min_healthy_replicas_absolute_and_percent(kube: KubeCluster, namespace: str, run: Run) -> None:
    """Ready pods are compared with "N" or with "N%" of the desired replicas rounded up."""
    await _replica_set_with(kube, namespace, "rs", ready=2, desired=4)
    pods = await kube.running_pods(namespace, "app=rs")
    first, second = (p["metadata"] for p in pods[:2])

    # 2 ready of 4: "3" needs 3; "75%" of 4 is 3; "60%" of 4 is 2.4, rounded up to 3
    for threshold, needed in (("3", 3), ("75%", 3), ("60%", 3)):
        outcome = await run(Terminate, namespace, first["name"], min_healthy_replicas=threshold)
        assert outcome.status == "ignored", threshold
        assert outcome.message.endswith(
            f"the ReplicaSet 'rs' has 2 ready of 4 desired replicas, fewer than min_healthy_replicas "
            f"{threshold} ({needed})"
        )
    assert not await gone(kube, namespace, first["name"], first["uid"])

    # "2": 2 ready is enough
    outcome = await run(Terminate, namespace, first["name"], min_healthy_replicas="2")
    assert outcome.status == "success"
    assert await gone(kube, namespace, first["name"], first["uid"])
    await _wait_ready_replicas(kube, namespace, "rs", 1, 4)

    # 1 ready of 4: "50%" needs 2 (Talon read it as 50 pods), "25%" needs 1
    outcome = await run(Terminate, namespace, second["name"], min_healthy_replicas="50%")
    assert outcome.status == "ignored"
    assert outcome.message.endswith("fewer than min_healthy_replicas 50% (2)")
    outcome = await run(Terminate, namespace, second["name"], min_healthy_replicas="25%")
    assert outcome.status == "success"
    assert await gone(kube, namespace, second["name"], second["uid"])


async def test_terminate_without_delete_permission_is_a_clear_forbidden_error(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    pod = (await kube.create_pod(namespace, "api-1"))["metadata"]
    rules = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get"]},
    ]

    with pytest.raises(KubeApiError) as caught:
        await run(Terminate, namespace, "api-1", rules=rules)

    assert caught.value.status == 403
    assert 'cannot delete resource "pods"' in str(caught.value)
    assert "talon-opa rbac" in caught.value.hint
    assert not await gone(kube, namespace, "api-1", pod["uid"])


# ---- networkpolicy -----------------------------------------------------------------------------


async def _deployment_pod(kube: KubeCluster, ns: str, name: str) -> tuple[str, str]:
    """A Deployment's running pod: (pod name, ReplicaSet name)."""
    await kube.create_workload("Deployment", ns, name, replicas=1)
    pod = (await kube.wait_running(ns, f"app={name}", 1))[0]["metadata"]
    return pod["name"], pod["ownerReferences"][0]["name"]


async def test_networkpolicy_created_then_updated_idempotently(kube: KubeCluster, namespace: str, run: Run) -> None:
    pod, replica_set = await _deployment_pod(kube, namespace, "web")
    path = f"{NP_PATH.format(ns=namespace)}/{replica_set}"

    outcome = await run(NetworkPolicy, namespace, pod, allow_cidr=["10.0.0.0/8"], allow_namespaces=["kube-system"])

    assert outcome.status == "success"
    assert outcome.message == f"the networkpolicy '{replica_set}' in the namespace '{namespace}' has been created"
    assert dict(outcome.objects) == {"pod": pod, "namespace": namespace, "networkpolicy": replica_set}
    policy = await kube.api.get(path)
    assert policy["metadata"]["labels"] == {"app": "web", "app.k8s.io/managed-by": "falco-talon"}
    assert policy["metadata"]["annotations"] == {"talon-opa/actionner": "kubernetes:networkpolicy"}
    assert policy["spec"] == {
        "podSelector": {"matchLabels": {"app": "web"}},  # pod-template-hash dropped: every pod of the Deployment
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [
                    {"ipBlock": {"cidr": "10.0.0.0/8"}},
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}},
                ]
            }
        ],
    }

    again = await run(NetworkPolicy, namespace, pod, allow_cidr=["10.0.0.0/8"], allow_namespaces=["kube-system"])
    assert again.message.endswith("was already up to date")
    assert (await kube.api.get(path))["metadata"]["resourceVersion"] == policy["metadata"]["resourceVersion"]

    deny_all = await run(NetworkPolicy, namespace, pod)
    assert deny_all.message.endswith("has been updated")
    assert (await kube.api.get(path))["spec"] == {
        "podSelector": {"matchLabels": {"app": "web"}},
        "policyTypes": ["Egress"],
    }


async def test_networkpolicy_allow_namespaces_selects_the_namespace_name_label(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    await kube.create_pod(namespace, "api-1", labels={"tier": "api"})
    other = await kube.new_namespace("allowed")

    await run(NetworkPolicy, namespace, "api-1", allow_namespaces=[other])

    policy = await kube.api.get(f"{NP_PATH.format(ns=namespace)}/api-1")  # a standalone pod names its policy
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app": "api-1", "tier": "api"}}
    selector = policy["spec"]["egress"][0]["to"][0]["namespaceSelector"]["matchLabels"]
    # the selector matches the label the API server puts on every namespace (Talon's key matched none)
    labels = (await kube.api.get(f"/api/v1/namespaces/{other}"))["metadata"]["labels"]
    assert selector == {"kubernetes.io/metadata.name": other}
    assert all(labels.get(k) == v for k, v in selector.items())


async def test_networkpolicy_never_clobbers_a_policy_it_did_not_create(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    pod, replica_set = await _deployment_pod(kube, namespace, "web")
    foreign: Mapping[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": replica_set, "labels": {"owner": "platform-team"}},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    created = await kube.api.post(NP_PATH.format(ns=namespace), foreign)

    with pytest.raises(StepFailed, match="was not created by talon-opa or Falco Talon") as caught:
        await run(NetworkPolicy, namespace, pod, allow_cidr=["10.0.0.0/8"])

    assert "app.k8s.io/managed-by=falco-talon" in caught.value.hint
    after = await kube.api.get(f"{NP_PATH.format(ns=namespace)}/{replica_set}")
    assert after["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert after["spec"] == foreign["spec"]


async def test_networkpolicy_refuses_a_pod_owned_by_a_job(kube: KubeCluster, namespace: str, run: Run) -> None:
    template = kube.pod_template("batch")
    template["spec"]["restartPolicy"] = "Never"
    await kube.api.post(
        f"/apis/batch/v1/namespaces/{namespace}/jobs",
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "batch"}, "spec": {"template": template}},
    )

    async def job_pod() -> str:
        items = (await kube.api.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": "app=batch"}))[
            "items"
        ]
        return str(items[0]["metadata"]["name"]) if items else ""

    pod = await kube.wait_for(job_pod, "the Job's pod")

    with pytest.raises(StepFailed, match=f"can't find the owner and/or labels for the pod '{pod}'") as caught:
        await run(NetworkPolicy, namespace, pod)

    assert "owned by a Job 'batch'" in str(caught.value)
    assert (await kube.api.get(NP_PATH.format(ns=namespace)))["items"] == []


# ---- concurrency and refusals ------------------------------------------------------------------


class _RacingClient(KubeClient):
    """Another writer changes the pod between our GET and our first PATCH."""

    raced = False

    async def patch(self, path: str, body: Any, *, patch_type: str = "merge", **kw: Any) -> Any:
        if not self.raced:
            self.raced = True
            await self.other.patch(path, {"metadata": {"labels": {"stale": None, "other": "writer"}}})
        return await super().patch(path, body, patch_type=patch_type, **kw)

    other: KubeClient


async def test_label_rereads_a_pod_changed_by_another_writer(kube: KubeCluster, namespace: str) -> None:
    await kube.create_pod(namespace, "api-1", labels={"stale": "x"})
    client = _RacingClient(kube.api.config)
    client.other = kube.api
    try:
        async with aiohttp.ClientSession() as session:
            params = Label.spec.decode({"labels": {"stale": "", "quarantine": "true"}})
            clients_ = ClientProvider(Config(), http=session, kube=client).clients_for(Label.spec)
            await Label(clients_, NoParams()).run(alert(namespace, "api-1"), params)
    finally:
        await client.close()

    assert client.raced
    labels = (await read_pod(kube, namespace, "api-1"))["metadata"]["labels"]
    assert labels == {"app": "api-1", "other": "writer", "quarantine": "true"}


async def test_label_with_an_invalid_value_fails_with_the_api_reason(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    await kube.create_pod(namespace, "api-1")

    with pytest.raises(KubeApiError) as caught:
        await run(Label, namespace, "api-1", labels={"quarantine": "not a valid value!"})

    assert caught.value.status == 422
    assert "metadata.labels" in str(caught.value)
