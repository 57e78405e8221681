"""kubernetes:delete, :cordon and :drain against a real API server (with its controller-manager, so
ReplicaSets, DaemonSets and PodDisruptionBudgets have status).

Every actionner runs with a ServiceAccount bound to the ClusterRole generated from the registry's
grants (what `talon-opa rbac` gives it), so the declared RBAC is proven sufficient. Cordon and drain act
on a node of their own: the session's two nodes stay schedulable for the other tests.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, ClassVar

import aiohttp
import pytest
import pytest_asyncio

from talon_opa.actionners.kubernetes.cordon import Cordon
from talon_opa.actionners.kubernetes.delete import Delete, object_path
from talon_opa.actionners.kubernetes.drain import Drain
from talon_opa.actionners.kubernetes.terminate import Terminate
from talon_opa.catalog import default_registry
from talon_opa.core.config import Config
from talon_opa.core.errors import StepFailed, TalonError
from talon_opa.core.events import Alert
from talon_opa.core.kube import KubeApiError, KubeClient
from talon_opa.plugins import rbac
from talon_opa.plugins.clients import ClientProvider
from talon_opa.plugins.params import NoParams
from talon_opa.plugins.runtime import Outcome
from tests.e2e.kube_nodes import guarded_by_a_budget, on_node, on_the_node, uids
from tests.e2e.kube_nodes import node as node  # the fixture
from tests.harness.kube import KubeCluster

REGISTRY = default_registry()

Run = Callable[..., Awaitable[Outcome]]


def pod_alert(namespace: str, pod: str) -> Alert:
    return Alert(rule="Terminal shell in container", output_fields={"k8s.ns.name": namespace, "k8s.pod.name": pod})


def audit_alert(resource: str, name: str, namespace: str | None = None) -> Alert:
    fields = {"ka.target.resource": resource, "ka.target.name": name}
    if namespace is not None:
        fields["ka.target.namespace"] = namespace
    return Alert(rule="K8s object created", source="k8s_audit", output_fields=fields)


@pytest_asyncio.fixture(loop_scope="session")
async def run(kube: KubeCluster, namespace: str) -> AsyncIterator[Run]:
    """`await run(Plugin, alert, **params)`: the plugin with a KubeClient whose ServiceAccount has exactly the
    ClusterRole generated for this use; `client=` hands a KubeClient subclass built on that account."""
    session = aiohttp.ClientSession()
    clients: list[KubeClient] = []

    async def go(plugin: Any, alert: Alert, *, client: type[KubeClient] = KubeClient, **raw: Any) -> Outcome:
        spec = plugin.spec
        rules = rbac.cluster_role(REGISTRY, [(spec.name, raw)], "unused")["rules"]
        account = f"sa-{secrets.token_hex(3)}"
        kube_client = client(await kube.service_account_with_role(namespace, account, rules))
        clients.append(kube_client)
        provided = ClientProvider(Config(), http=session, kube=kube_client).clients_for(spec)
        outcome: Outcome = await plugin(provided, NoParams()).run(alert, spec.decode(raw))
        return outcome

    yield go
    for c in clients:
        await c.close()
    await session.close()


async def exists(kube: KubeCluster, path: str, uid: str | None = None) -> bool:
    try:
        obj = await kube.api.get(path)
    except KubeApiError as e:
        if e.status == 404:
            return False
        raise
    return uid is None or obj["metadata"]["uid"] == uid


def pod_path(ns: str, name: str) -> str:
    return f"/api/v1/namespaces/{ns}/pods/{name}"


# ---- delete ------------------------------------------------------------------------------------

_OBJECTS: Mapping[str, Callable[[KubeCluster, str], dict[str, Any]]] = {
    "configmaps": lambda k, n: {"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}},
    "secrets": lambda k, n: {"apiVersion": "v1", "kind": "Secret", "stringData": {"token": "x"}},
    "serviceaccounts": lambda k, n: {"apiVersion": "v1", "kind": "ServiceAccount"},
    "services": lambda k, n: {"apiVersion": "v1", "kind": "Service", "spec": {"ports": [{"port": 80}]}},
    "roles": lambda k, n: {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "rules": []},
    "deployments": lambda k, n: {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": n}}, "template": k.pod_template(n)},
    },
    "replicasets": lambda k, n: {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": n}}, "template": k.pod_template(n)},
    },
    "statefulsets": lambda k, n: {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "spec": {
            "replicas": 0,
            "serviceName": n,
            "selector": {"matchLabels": {"app": n}},
            "template": k.pod_template(n),
        },
    },
    "daemonsets": lambda k, n: {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "spec": {
            "selector": {"matchLabels": {"app": n}},
            "template": {**k.pod_template(n), "spec": {**k.pod_template(n)["spec"], "nodeSelector": {"none": "x"}}},
        },
    },
}


async def test_delete_removes_each_namespaced_kind_talon_deletes(kube: KubeCluster, namespace: str, run: Run) -> None:
    for resource, body in _OBJECTS.items():
        name = f"target-{resource}"
        path = object_path(resource, name, namespace)
        collection = path.rsplit("/", 1)[0]
        await kube.api.post(collection, {**body(kube, name), "metadata": {"name": name}})
        assert await exists(kube, path)

        outcome = await run(Delete, audit_alert(resource, name, namespace))

        assert outcome.status == "success"
        what = resource[:-1]
        assert outcome.message == f"the {what} '{name}' in the namespace '{namespace}' has been deleted"
        assert dict(outcome.objects) == {"name": name, "resource": resource, "namespace": namespace}

        async def deleted(p: str = path) -> bool:
            return not await exists(kube, p)

        await kube.wait_for(deleted, f"{resource}/{name} deleted")

        again = await run(Delete, audit_alert(resource, name, namespace))
        assert again.status == "success"
        assert again.message == f"the {what} '{name}' in the namespace '{namespace}' was already gone"


async def test_delete_removes_a_namespace_and_a_clusterrole(kube: KubeCluster, run: Run) -> None:
    doomed = await kube.new_namespace("doomed")
    role = f"doomed-{secrets.token_hex(3)}"
    await kube.api.post(
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role}, "rules": []},
    )

    # a k8saudit alert about a cluster-scoped object may carry an empty ka.target.namespace
    gone_role = await run(Delete, audit_alert("clusterroles", role, ""))
    gone_ns = await run(Delete, audit_alert("namespaces", doomed))

    assert gone_role.message == f"the clusterrole '{role}' has been deleted"
    assert gone_ns.message == f"the namespace '{doomed}' has been deleted"
    assert not await exists(kube, f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{role}")
    ns = await kube.api.get(f"/api/v1/namespaces/{doomed}")  # the namespace controller finishes the job
    assert ns["metadata"].get("deletionTimestamp")
    assert ns["status"]["phase"] == "Terminating"


@pytest.mark.parametrize(
    ("resource", "name", "message"),
    [
        ("pods", "api-1", "the resource 'pods' doesn't exist or its type is not yet managed"),
        ("nodes", "kwok-node-1", "the resource 'nodes' doesn't exist or its type is not yet managed"),
        ("configmaps", "..", "the configmap name '..' is not a valid Kubernetes object name"),
        ("secrets", ".", "the secret name '.' is not a valid Kubernetes object name"),
        ("roles", "a/../../b", "the role name 'a/../../b' is not a valid Kubernetes object name"),
    ],
)
async def test_delete_refuses_kinds_and_names_it_must_not_touch(
    kube: KubeCluster, namespace: str, run: Run, resource: str, name: str, message: str
) -> None:
    await kube.create_pod(namespace, "api-1")

    with pytest.raises(StepFailed) as caught:
        await run(Delete, audit_alert(resource, name, namespace))

    assert caught.value.args[0] == message
    # `configmaps/..` would reach the namespace itself: it is still there, and so is its pod
    assert (await kube.api.get(f"/api/v1/namespaces/{namespace}"))["status"]["phase"] == "Active"
    assert await exists(kube, pod_path(namespace, "api-1"))


@pytest.mark.parametrize("name", ["..", "."])
async def test_a_pod_named_with_dots_never_reaches_its_namespace(kube: KubeCluster, namespace: str, name: str) -> None:
    """The HTTP client resolves `pods/..` to the namespace itself: with an account allowed to delete
    namespaces (a cluster-admin install), terminating a pod named `..` would delete the namespace."""
    await kube.create_pod(namespace, "api-1")
    async with aiohttp.ClientSession() as session:
        provided = ClientProvider(Config(), http=session, kube=kube.api).clients_for(Terminate.spec)
        with pytest.raises(TalonError, match=re.escape("a name in it is '.' or '..'")):
            await Terminate(provided, NoParams()).run(pod_alert(namespace, name), Terminate.spec.decode({}))

    assert (await kube.api.get(f"/api/v1/namespaces/{namespace}"))["status"]["phase"] == "Active"
    assert await exists(kube, pod_path(namespace, "api-1"))


async def test_delete_of_a_namespaced_kind_without_namespace_fails_naming_the_field(run: Run) -> None:
    with pytest.raises(StepFailed, match="the alert names no namespace for the configmap 'cfg'") as caught:
        await run(Delete, audit_alert("configmaps", "cfg"))
    assert "ka.target.namespace" in caught.value.hint


class _Recreating(KubeClient):
    """Between our GET and our DELETE, someone deletes the object and creates another under its name."""

    admin: ClassVar[KubeClient]
    body: ClassVar[dict[str, Any]]
    created: ClassVar[dict[str, Any]]

    async def delete(self, path: str, body: Any = None, **kw: Any) -> Any:
        await self.admin.delete(path)
        type(self).created = await self.admin.post(path.rsplit("/", 1)[0], self.body)
        return await super().delete(path, body, **kw)


async def test_delete_never_deletes_an_object_created_anew_under_the_same_name(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"v": "new"}}
    await kube.api.post(f"/api/v1/namespaces/{namespace}/configmaps", {**body, "data": {"v": "old"}})

    class Client(_Recreating):
        pass

    Client.admin, Client.body = kube.api, body
    outcome = await run(Delete, audit_alert("configmaps", "cfg", namespace), client=Client)

    assert outcome.message == f"the configmap 'cfg' in the namespace '{namespace}' was already gone"
    fresh = await kube.api.get(f"/api/v1/namespaces/{namespace}/configmaps/cfg")
    assert fresh["data"] == {"v": "new"}
    assert fresh["metadata"]["uid"] == Client.created["metadata"]["uid"]


# ---- cordon ------------------------------------------------------------------------------------


async def test_cordon_marks_the_pods_node_unschedulable_once(
    kube: KubeCluster, namespace: str, node: str, run: Run
) -> None:
    await kube.create_pod(namespace, "api-1", node=node)
    assert not (await kube.api.get(f"/api/v1/nodes/{node}"))["spec"].get("unschedulable")

    outcome = await run(Cordon, pod_alert(namespace, "api-1"))

    assert outcome.status == "success"
    assert outcome.message == f"the node '{node}' has been cordoned"
    assert dict(outcome.objects) == {"node": node}
    cordoned = await kube.api.get(f"/api/v1/nodes/{node}")
    assert cordoned["spec"]["unschedulable"] is True
    assert await exists(kube, pod_path(namespace, "api-1"))  # cordon evicts nothing

    again = await run(Cordon, pod_alert(namespace, "api-1"), client=_Writes)
    assert again.message == f"the node '{node}' was already cordoned"
    assert (await kube.api.get(f"/api/v1/nodes/{node}"))["spec"]["unschedulable"] is True
    assert _Writes.seen == []  # read, found cordoned, nothing written


class _Writes(KubeClient):
    """Records the writes it sends."""

    seen: ClassVar[list[tuple[str, str]]] = []

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        if method != "GET":
            self.seen.append((method, path))
        return await super().request(method, path, **kw)


async def test_cordon_of_a_pod_not_scheduled_fails_naming_it(kube: KubeCluster, namespace: str, run: Run) -> None:
    tpl = kube.pod_template("pending")
    tpl["spec"]["nodeSelector"] = {"talon-test/none": "none"}  # never scheduled
    await kube.api.post(
        f"/api/v1/namespaces/{namespace}/pods",
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pending"}, "spec": tpl["spec"]},
    )

    with pytest.raises(StepFailed, match=f"the pod 'pending' in the namespace '{namespace}' runs on no node yet"):
        await run(Cordon, pod_alert(namespace, "pending"))


# ---- drain -------------------------------------------------------------------------------------


async def test_drain_cordons_evicts_and_reports_the_pods_a_budget_keeps(
    kube: KubeCluster, namespace: str, node: str, run: Run
) -> None:
    await on_node(kube, "Deployment", namespace, "web", node, replicas=2)
    await on_node(kube, "Deployment", namespace, "guarded", node)
    await on_node(kube, "DaemonSet", namespace, "agent", node)
    await on_node(kube, "StatefulSet", namespace, "db", node)
    await kube.create_pod(namespace, "lonely", node=node)
    web = uids(await kube.wait_running(namespace, "app=web", 2))
    [guarded] = uids(await kube.wait_running(namespace, "app=guarded")).items()
    [agent] = uids(await kube.wait_running(namespace, "app=agent")).items()
    [db] = uids(await kube.wait_running(namespace, "app=db")).items()
    await kube.wait_running(namespace, "app=lonely")
    await guarded_by_a_budget(kube, namespace, "guarded")

    with pytest.raises(StepFailed) as caught:
        await run(Drain, pod_alert(namespace, db[0]), ignore_daemonsets=True, ignore_statefulsets=True)

    message = str(caught.value)
    assert message.startswith(f"the node '{node}' has not been fully drained: ")
    assert (
        f"not evicted: {namespace}/{guarded[0]} (Cannot evict pod as it would violate the pod's disruption budget"
        in (message)
    )
    assert "ignore_errors: true" in caught.value.hint
    assert (await kube.api.get(f"/api/v1/nodes/{node}"))["spec"]["unschedulable"] is True

    async def only_kept_ones_left() -> bool:
        return await on_the_node(kube, namespace, node) == dict([guarded, agent, db])

    await kube.wait_for(only_kept_ones_left, "web and lonely evicted, the others kept")
    # the Deployment replaced its evicted pods, but not on the cordoned node
    replacements = await kube.running_pods(namespace, "app=web")
    assert not set(uids(replacements).values()) & set(web.values())

    # again, accepting a partial drain and waiting for the pods to leave: nothing left to evict but the guarded pod
    outcome = await run(
        Drain,
        pod_alert(namespace, db[0]),
        ignore_daemonsets=True,
        ignore_statefulsets=True,
        ignore_errors=True,
        max_wait_period=60,
    )
    assert outcome.status == "success"
    assert outcome.message.startswith(f"the node '{node}' has been drained, errors are ignored: ")
    assert f"{namespace}/{guarded[0]}" in outcome.objects["not_evicted"]
    assert await on_the_node(kube, namespace, node) == dict([guarded, agent, db])


async def test_drain_evicts_daemonset_and_statefulset_pods_unless_ignored_and_waits_for_them(
    kube: KubeCluster, namespace: str, node: str, run: Run
) -> None:
    await on_node(kube, "DaemonSet", namespace, "agent", node)
    await on_node(kube, "StatefulSet", namespace, "db", node)
    await kube.create_pod(namespace, "witness", node=node)
    [agent] = uids(await kube.wait_running(namespace, "app=agent")).items()
    [db] = uids(await kube.wait_running(namespace, "app=db")).items()
    await kube.wait_running(namespace, "app=witness")

    outcome = await run(Drain, pod_alert(namespace, "witness"), max_wait_period=60)

    assert outcome.status == "success"
    assert outcome.message.startswith(f"the node '{node}' has been drained: ")
    assert outcome.message.endswith(", 0 wait errors")
    # max_wait_period: when the step returns, the evicted pods have left the node, not just begun to
    left = await on_the_node(kube, namespace, node, terminating=True)
    assert db[1] not in left.values()
    assert "witness" not in left
    assert agent[1] not in left.values()  # evicted (its DaemonSet may put a new one back: cordon is tolerated)


async def test_drain_min_healthy_replicas_counts_each_pod_it_evicts(
    kube: KubeCluster, namespace: str, node: str, run: Run
) -> None:
    """ "N%" is of the ReplicaSet's desired replicas, rounded up, and each eviction lowers the ready count."""
    await on_node(kube, "Deployment", namespace, "web", node, replicas=3)
    pods = await kube.wait_running(namespace, "app=web", 3)
    replica_set = pods[0]["metadata"]["ownerReferences"][0]["name"]

    async def ready(n: int) -> None:
        async def settled() -> bool:
            rs = await kube.api.get(f"/apis/apps/v1/namespaces/{namespace}/replicasets/{replica_set}")
            return bool(rs.get("status", {}).get("readyReplicas", 0) == n)

        await kube.wait_for(settled, f"ReplicaSet {replica_set}: {n} ready")

    await ready(3)
    first = pods[0]["metadata"]["name"]

    # "100%" of 3 needs 3 ready: the first pod goes (3 >= 3), then 2 are left, fewer than 3
    outcome = await run(Drain, pod_alert(namespace, first), min_healthy_replicas="100%", max_wait_period=60)
    assert outcome.status == "success"
    assert ", 2 ignored pods, 0 eviction errors, 0 other errors" in outcome.message  # ignored: not errors
    assert len(await on_the_node(kube, namespace, node)) == 2
    await ready(2)  # its replacement cannot run on the cordoned node

    # "50%" of 3 is 1.5, so 2 ready: one more goes (2 >= 2), the last stays (Talon's check let every pod go)
    remaining = sorted(await on_the_node(kube, namespace, node))
    outcome = await run(Drain, pod_alert(namespace, remaining[0]), min_healthy_replicas="50%", max_wait_period=60)
    assert ", 1 ignored pods, 0 eviction errors" in outcome.message
    assert len(await on_the_node(kube, namespace, node)) == 1
    await ready(1)

    # "1": 1 ready is enough for the last one
    [last] = await on_the_node(kube, namespace, node)
    await run(Drain, pod_alert(namespace, last), min_healthy_replicas="1", max_wait_period=60)
    assert await on_the_node(kube, namespace, node) == {}


class _FlakyEvictions(KubeClient):
    """The connection drops while evicting the pod named "flaky"."""

    async def evict(self, namespace: str, pod: str, **kw: Any) -> None:
        if pod == "flaky":
            raise ConnectionResetError("scripted: connection reset")
        await super().evict(namespace, pod, **kw)


async def test_drain_names_a_pod_whose_eviction_failed_and_evicts_the_others(
    kube: KubeCluster, namespace: str, node: str, run: Run
) -> None:
    for name in ("flaky", "fine"):
        await kube.create_pod(namespace, name, node=node)
        await kube.wait_running(namespace, f"app={name}")
    before = await on_the_node(kube, namespace, node)

    with pytest.raises(StepFailed) as caught:
        await run(Drain, pod_alert(namespace, "fine"), client=_FlakyEvictions, max_wait_period=60)

    message = caught.value.args[0]
    assert ", 0 eviction errors, 1 other errors, 0 wait errors; " in message
    assert message.endswith(f"not evicted: {namespace}/flaky (ConnectionResetError: scripted: connection reset)")
    assert await on_the_node(kube, namespace, node, terminating=True) == {"flaky": before["flaky"]}


async def test_drain_reports_pods_still_on_the_node_after_max_wait_period(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    """A node no kubelet (nor kwok) runs: an evicted pod stays terminating there, as behind a hung kubelet."""
    name = f"hung-{secrets.token_hex(3)}"
    await kube.api.post("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    try:
        uid = (await kube.create_pod(namespace, "stuck", node=name))["metadata"]["uid"]

        with pytest.raises(StepFailed) as caught:
            await run(Drain, pod_alert(namespace, "stuck"), max_wait_period=1)

        message = caught.value.args[0]
        assert "1 evicted pods, 0 ignored pods, 0 eviction errors, 0 other errors, 1 wait errors" in message
        assert message.endswith(f"not evicted: {namespace}/stuck (still on the node after 1s)")
        pod = await kube.api.get(pod_path(namespace, "stuck"))
        assert (pod["metadata"]["uid"], bool(pod["metadata"].get("deletionTimestamp"))) == (uid, True)
    finally:
        await kube.api.delete(f"/api/v1/nodes/{name}")


async def test_drain_does_not_wait_for_pods_of_excluded_namespaces(kube: KubeCluster, namespace: str, run: Run) -> None:
    name = f"hung-{secrets.token_hex(3)}"
    await kube.api.post("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    try:
        await kube.create_pod(namespace, "stuck", node=name)

        outcome = await run(
            Drain, pod_alert(namespace, "stuck"), max_wait_period=1, wait_period_excluded_namespaces=[namespace]
        )

        assert outcome.message == f"the node '{name}' has been drained: " + (
            "1 evicted pods, 0 ignored pods, 0 eviction errors, 0 other errors, 0 wait errors"
        )
        assert (await kube.api.get(pod_path(namespace, "stuck")))["metadata"].get("deletionTimestamp")
    finally:
        await kube.api.delete(f"/api/v1/nodes/{name}")
