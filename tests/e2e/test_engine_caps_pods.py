"""Caps that decide from the alert's pod (docs/caps.md): the engine looks the pod up in the real API server
(input.pod) and the caps policy holds a termination of a pod with a protected label, or of the last ready
replica of its workload; the held step is not run, and is reported, traced and counted."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from talon_opa.actionners.kubernetes.terminate import Terminate
from talon_opa.core import config
from talon_opa.core.kube import KubeConfig
from talon_opa.plugins.registry import Registry
from tests.e2e.engine_harness import running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, TERMINATE_SHELLS, Recorder
from tests.harness.kube import KubeCluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "caps" / "config.yaml"


async def ready_replicas(kube: KubeCluster, ns: str, app: str, count: int) -> list[str]:
    """Wait until the Deployment's ReplicaSet reports `count` ready pods; their names."""

    async def check() -> bool:
        items = (await kube.api.get(f"/apis/apps/v1/namespaces/{ns}/replicasets"))["items"]
        return any(
            rs["metadata"]["name"].startswith(f"{app}-") and (rs.get("status") or {}).get("readyReplicas") == count
            for rs in items
        )

    await kube.wait_for(check, f"{count} ready replica(s) of {app}")
    return [p["metadata"]["name"] for p in await kube.running_pods(ns, f"app={app}")]


async def pod_uid(kube: KubeCluster, ns: str, name: str) -> str | None:
    items = (await kube.api.get(f"/api/v1/namespaces/{ns}/pods"))["items"]
    return next((p["metadata"]["uid"] for p in items if p["metadata"]["name"] == name), None)


async def test_protected_labels_and_the_last_ready_replica_hold_a_termination(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    SCRIPT.reset()
    caps = config.load(EXAMPLE, env={}).caps  # the example: protected_labels and keep_last_replica
    assert caps["protected_labels"] == {"talon-opa.io/protected": "true"}
    vault = (await kube.create_pod(namespace, "vault-0", labels={"talon-opa.io/protected": "true"}))["metadata"]
    await kube.create_workload("Deployment", namespace, "web", replicas=1)
    await kube.create_workload("Deployment", namespace, "api", replicas=2)
    [web] = await ready_replicas(kube, namespace, "web", 1)
    api = await ready_replicas(kube, namespace, "api", 2)
    web_uid = await pod_uid(kube, namespace, web)
    spans = InMemorySpanExporter()
    async with running_engine(
        tmp_path,
        TERMINATE_SHELLS,
        registry=Registry.of(Terminate, Recorder),
        kube_config=KubeConfig.from_file(kube.kubeconfig),
        span_exporter=spans,
        caps=caps,
    ) as e:
        for pod in ("vault-0", web, api[0]):  # the alerts carry no label: the engine reads them from the API
            assert (await e.post(json_body=shell_alert(pod, namespace))).status == 200
            await e.drained()
        m = e.metric
        assert await m("falcosecurity_falco_talon_actions_total", status="held", actionner="kubernetes:terminate") == 2
        assert await m("falcosecurity_falco_talon_actions_total", status="success") == 1
    assert await pod_uid(kube, namespace, "vault-0") == vault["uid"]  # not run
    assert await pod_uid(kube, namespace, web) == web_uid
    assert await pod_uid(kube, namespace, api[0]) is None  # one of two ready replicas: terminated
    protected = "label talon-opa.io/protected=true is protected"
    last = f'the pod is the last ready replica of ReplicaSet "{web.rsplit("-", 1)[0]}" (1 ready)'
    notes = {n.pod: (n.status, n.error) for n in SCRIPT.notes}
    assert notes["vault-0"] == ("failure", f"held: {protected}")
    assert notes[web] == ("failure", f"held: {last}")
    assert notes[api[0]] == ("success", "")
    held = [
        (s.attributes or {}).get("talon.held")
        for s in spans.get_finished_spans()
        if s.name == "run action" and (s.attributes or {}).get("talon.status") == "held"
    ]
    assert held == [protected, last]


async def test_a_pod_the_engine_cannot_read_is_treated_as_protected(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    SCRIPT.reset()
    pod = (await kube.create_pod(namespace, "unread-0"))["metadata"]
    may_only_delete = await kube.service_account_with_role(
        namespace, "deleter", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}]
    )
    caps = config.parse_caps({"protected_labels": {"talon-opa.io/protected": "true"}})
    async with running_engine(
        tmp_path, TERMINATE_SHELLS, registry=Registry.of(Terminate, Recorder), kube_config=may_only_delete, caps=caps
    ) as e:
        assert (await e.post(json_body=shell_alert("unread-0", namespace))).status == 200
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="held") == 1
    [note] = SCRIPT.notes
    assert note.error.startswith("held: cannot check the pod's protected labels: GET /api/v1/namespaces/")
    assert "403" in note.error
    assert await pod_uid(kube, namespace, "unread-0") == pod["uid"]
