"""The engine against a real API server: steps change real pods; API errors fail the step with the
API's reason, counted and notified."""

from __future__ import annotations

from pathlib import Path

import pytest

from talon_opa.actionners.kubernetes import label
from talon_opa.core.kube import KubeConfig
from tests.e2e.engine_harness import running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, kube_registry
from tests.harness.kube import KubeCluster
from tests.harness.paths import SEED_RULES

SEED = SEED_RULES

LABEL_RULES = """\
- rule: Shell in a container
  match:
    rules: [Terminal shell in container]
  notifiers: [recorder]
  actions:
    - action: Mark the pod
      actionner: kubernetes:label
      parameters:
        labels:
          security.falco.org/suspicious: "true"
"""


async def pod_labels(kube: KubeCluster, ns: str, name: str) -> dict[str, str]:
    pod = await kube.api.get(f"/api/v1/namespaces/{ns}/pods/{name}")
    return dict(pod["metadata"].get("labels") or {})


async def test_a_step_changes_the_real_pod(kube: KubeCluster, namespace: str, tmp_path: Path) -> None:
    SCRIPT.reset()
    await kube.create_pod(namespace, "api-1")
    async with running_engine(
        tmp_path, LABEL_RULES, registry=kube_registry(), kube_config=KubeConfig.from_file(kube.kubeconfig)
    ) as e:
        reply = await e.post(json_body=shell_alert("api-1", namespace))
        assert reply.status == 200
        await e.drained()
        assert (await pod_labels(kube, namespace, "api-1"))["security.falco.org/suspicious"] == "true"
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="success") == 1
        [note] = SCRIPT.notes
        assert (note.status, note.trace_id) == ("success", reply.body["trace_id"])


async def test_a_forbidden_api_call_fails_the_step_with_the_apis_reason(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    SCRIPT.reset()
    await kube.create_pod(namespace, "api-2")
    read_only = await kube.service_account_with_role(
        namespace, "reader", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    )
    async with running_engine(tmp_path, LABEL_RULES, registry=kube_registry(), kube_config=read_only) as e:
        await e.post(json_body=shell_alert("api-2", namespace))
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="failure") == 1
        [note] = SCRIPT.notes
        assert note.status == "failure"
        assert "403 Forbidden" in note.error
        assert "talon-opa rbac" in note.error  # the hint says what to do
    assert "security.falco.org/suspicious" not in await pod_labels(kube, namespace, "api-2")


@pytest.mark.skipif(not hasattr(label.Label, "run"), reason="kubernetes:label has no run yet")
async def test_the_shipped_label_actionner_labels_the_pod(kube: KubeCluster, namespace: str, tmp_path: Path) -> None:
    await kube.create_pod(namespace, "api-3")
    async with running_engine(
        tmp_path,
        LABEL_RULES.replace("  notifiers: [recorder]\n", ""),
        kube_config=KubeConfig.from_file(kube.kubeconfig),
    ) as e:
        await e.post(json_body=shell_alert("api-3", namespace))
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="success") == 1
    assert (await pod_labels(kube, namespace, "api-3"))["security.falco.org/suspicious"] == "true"


async def test_seed_scenario_labels_the_pod_and_records_a_kubernetes_event(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    seed = SEED.read_text()
    await kube.create_pod(namespace, "shell-1")
    async with running_engine(
        tmp_path,
        seed,
        kube_config=KubeConfig.from_file(kube.kubeconfig),
        default_notifiers=("k8sevents",),
    ) as e:
        reply = await e.post(json_body=shell_alert("shell-1", namespace))
        assert reply.status == 200
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_matches_total", rule="Shell in a container") == 1, (
            await e.metrics()
        )
        assert (
            await e.metric("falcosecurity_falco_talon_notifications_total", notifier="k8sevents", status="success") == 1
        ), await e.metrics()
    labels = await pod_labels(kube, namespace, "shell-1")
    assert labels["security.falco.org/suspicious"] == "true"
    assert labels["security.falco.org/reason"] == "shell"
    events = (await kube.api.get(f"/api/v1/namespaces/{namespace}/events"))["items"]
    assert any(ev["involvedObject"].get("name") == "shell-1" and "kubernetes:label" in ev["reason"] for ev in events), (
        events
    )
