"""Multi-cluster routing (`clusters`, `cluster_field`): an alert's cluster field picks the API server its
Kubernetes steps act on; an unknown cluster, or none without a default, fails those steps with the reason."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import pytest

from talon_opa.actionners.kubernetes import label
from talon_opa.core import config
from talon_opa.core.events import Alert
from talon_opa.core.kube import KubeConfig
from talon_opa.notifiers.k8sevents import K8sEvents
from talon_opa.plugins.registry import Registry
from talon_opa.plugins.runtime import Actionner, Outcome
from talon_opa.plugins.spec import Spec
from tests.e2e.engine_harness import running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, Recorder
from tests.e2e.test_engine_kube import LABEL_RULES, pod_labels
from tests.harness.kube import KubeCluster

MARK = "security.falco.org/suspicious"


def alert(pod: str, ns: str, cluster: str | None) -> dict[str, object]:
    doc = shell_alert(pod, ns, output=f"A shell was spawned pod={pod} ns={ns} cluster={cluster}")
    if cluster is not None:
        doc["output_fields"]["cluster"] = cluster  # what Falcosidekick adds for `customfields: cluster:<name>`
    return doc


async def test_each_alert_acts_on_the_cluster_it_names(kube: KubeCluster, tmp_path: Path) -> None:
    SCRIPT.reset()
    other = KubeCluster(tmp_path / "cluster-b")
    try:
        await other.start()
        ns = await kube.new_namespace("clusters")
        await other.create_namespace(ns)
        for cluster in (kube, other):
            for pod in ("api-1", "api-2"):
                await cluster.create_pod(ns, pod)
        async with running_engine(
            tmp_path,
            LABEL_RULES,
            registry=Registry.of(label.Label, Recorder),
            kube_config=None,  # no default cluster: every alert must name one
            clusters={"a": str(kube.kubeconfig), "b": str(other.kubeconfig)},
        ) as e:
            assert not e.engine.dry_run_only
            assert (await e.post(json_body=alert("api-1", ns, "a"))).status == 200
            await e.drained()
            assert MARK in await pod_labels(kube, ns, "api-1")
            assert MARK not in await pod_labels(other, ns, "api-1")

            assert (await e.post(json_body=alert("api-1", ns, "b"))).status == 200
            await e.drained()
            assert MARK in await pod_labels(other, ns, "api-1")
            assert await e.metric("falcosecurity_falco_talon_actions_total", status="success") == 2

            await e.post(json_body=alert("api-2", ns, "x"))
            await e.post(json_body=alert("api-2", ns, None))
            await e.drained()
            assert await e.metric("falcosecurity_falco_talon_actions_total", status="failure") == 2
        errors = sorted(n.error for n in SCRIPT.notes if n.status == "failure")
        assert len(errors) == 2, SCRIPT.notes
        assert any("the alert names cluster 'x', which is not in `clusters`: a, b" in err for err in errors), errors
        assert any("the alert names no cluster (output field 'cluster')" in err for err in errors), errors
        for cluster in (kube, other):
            assert MARK not in await pod_labels(cluster, ns, "api-2")
    finally:
        await other.stop()


class NoKubeLabel(Actionner[label.LabelParams]):
    """kubernetes:label's name and parameters, but declaring no client: a step that needs no Kubernetes."""

    spec: ClassVar[Spec[Any]] = dataclasses.replace(label.Label.spec, clients=())

    async def run(self, alert: Alert, params: label.LabelParams) -> Outcome:
        SCRIPT.calls.append(("no-kube", alert.pod_name() or "", "ok"))
        return Outcome.done("done without Kubernetes")


async def test_a_step_without_kubernetes_runs_whatever_cluster_the_alert_names(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    SCRIPT.reset()
    async with running_engine(
        tmp_path,
        LABEL_RULES,
        registry=Registry.of(NoKubeLabel, Recorder),
        kube_config=None,
        clusters={"a": str(kube.kubeconfig)},
    ) as e:
        await e.post(json_body=alert("api-9", namespace, "x"))
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="success") == 1
    assert SCRIPT.calls == [("no-kube", "api-9", "ok")]


def test_clusters_are_read_from_the_file_and_checked(tmp_path: Path) -> None:
    prod = tmp_path / "prod.yaml"
    prod.write_text("{}")
    path = tmp_path / "config.yaml"
    path.write_text(f"clusters:\n  prod: {prod}\ncluster_field: k8s.cluster\n")
    cfg = config.load(path, {})
    assert dict(cfg.clusters) == {"prod": str(prod)}
    assert cfg.cluster_field == "k8s.cluster"
    assert dict(config.load(None, {}).clusters) == {}
    assert config.load(None, {}).cluster_field == "cluster"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("clusters:\n  prod: /nonexistent/prod.yaml\n", "'clusters.prod'"),
        ("clusters:\n  prod: [a]\n", "'clusters.prod'"),
        ("clusters:\n  prod:\n", "'clusters.prod'"),
        ("clusters: /etc/kube\n", "'clusters'"),
    ],
)
def test_a_bad_cluster_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as e:
        config.load(path, {})
    assert f"config key {key}" in str(e.value)


def test_an_empty_cluster_field_is_refused_when_clusters_are_set(tmp_path: Path) -> None:
    prod = tmp_path / "prod.yaml"
    prod.write_text("{}")
    path = tmp_path / "config.yaml"
    path.write_text(f"clusters:\n  prod: {prod}\ncluster_field: ''\n")
    with pytest.raises(config.ConfigError, match="'cluster_field'"):
        config.load(path, {})


async def events_about(cluster: KubeCluster, ns: str, pod: str) -> list[dict[str, Any]]:
    items = (await cluster.api.get(f"/api/v1/namespaces/{ns}/events"))["items"]
    return [ev for ev in items if ev["involvedObject"].get("name") == pod]


async def test_k8sevents_records_the_event_in_the_cluster_the_alert_names(kube: KubeCluster, tmp_path: Path) -> None:
    SCRIPT.reset()
    other = KubeCluster(tmp_path / "cluster-b")
    try:
        await other.start()
        ns = await kube.new_namespace("events")
        await other.create_namespace(ns)
        for cluster in (kube, other):
            await cluster.create_pod(ns, "api-1")
        async with running_engine(
            tmp_path,
            LABEL_RULES,
            registry=Registry.of(label.Label, Recorder, K8sEvents),
            kube_config=KubeConfig.from_file(kube.kubeconfig),  # the default cluster is `a`'s API server
            clusters={"a": str(kube.kubeconfig), "b": str(other.kubeconfig)},
            default_notifiers=("k8sevents",),
        ) as e:
            assert (await e.post(json_body=alert("api-1", ns, "b"))).status == 200
            await e.drained()
            ok = await e.metric("falcosecurity_falco_talon_notifications_total", notifier="k8sevents", status="success")
            assert ok == 1
            [event] = await events_about(other, ns, "api-1")
            assert "kubernetes:label" in event["reason"]
            assert (
                event["involvedObject"]["uid"]
                == (await other.api.get(f"/api/v1/namespaces/{ns}/pods/api-1"))["metadata"]["uid"]
            )
            assert await events_about(kube, ns, "api-1") == []  # not in the default cluster

            assert (await e.post(json_body=alert("api-1", ns, "a"))).status == 200
            await e.drained()
            assert len(await events_about(kube, ns, "api-1")) == 1
            assert len(await events_about(other, ns, "api-1")) == 1

            await e.post(json_body=alert("api-1", ns, "x"))  # not configured: the step and the Event fail
            await e.drained()
            failed = await e.metric(
                "falcosecurity_falco_talon_notifications_total", notifier="k8sevents", status="failure"
            )
            assert failed == 1
        for cluster in (kube, other):
            assert len(await events_about(cluster, ns, "api-1")) == 1
    finally:
        await other.stop()
