"""The five response scenarios of ../shared/samples/rules/seed-scenarios.yaml, driven by the sample
alerts, end to end: the real engine (its own child OPA on the translated bundle) acts on the real API
server as a ServiceAccount bound to the ClusterRole that `talon-opa rbac -r seed-scenarios.yaml`
prints, and every alert leaves one trace in a real Jaeger and its counts on /metrics. Last, the failure
path those scenarios rely on: a target pod that is gone."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from talon_opa.core import config
from talon_opa.core.kube import KubeApiError, KubeConfig
from tests.e2e.engine_harness import RunningEngine, running_engine, sample
from tests.harness.jaeger import Jaeger
from tests.harness.kube import KubeCluster
from tests.harness.paths import SEED_RULES

SEED = SEED_RULES
REPO = Path(__file__).resolve().parents[2]


async def engine_account(kube: KubeCluster, namespace: str) -> KubeConfig:
    """The engine's identity: exactly the ClusterRole `talon-opa rbac` generates for the seed rules."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "talon_opa.cli.main", "rbac", "-r", str(SEED), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    role = yaml.safe_load(out)
    assert role["kind"] == "ClusterRole"
    return await kube.service_account_with_role(namespace, "talon-opa", role["rules"])


def alert(name: str, pod: str, ns: str, **fields: Any) -> dict[str, Any]:
    """A sample alert retargeted at our pod; the output text is made unique so dedup keeps it."""
    doc = sample(name, output_fields={"k8s.pod.name": pod, "k8s.ns.name": ns, **fields})
    doc["output"] = f"{doc['output']} test_target={ns}/{pod}"
    return doc


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


async def step_spans(jaeger: Jaeger, trace_id: str, steps: int) -> list[dict[str, Any]]:
    """The `run action` spans of the alert's one trace, in start order (waits for all of them)."""
    trace = await jaeger.trace(trace_id, min_spans=2 + steps)
    assert {s["traceID"] for s in trace["spans"]} == {trace_id}
    names = [s["operationName"] for s in trace["spans"]]
    assert names.count("receive alert") == 1
    assert names.count("decide plan") == 1
    spans = sorted((s for s in trace["spans"] if s["operationName"] == "run action"), key=lambda s: s["startTime"])
    assert len(spans) == steps, names
    return spans


async def pod(kube: KubeCluster, ns: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = await kube.api.get(f"/api/v1/namespaces/{ns}/pods/{name}")
    return found


def otel(jaeger: Jaeger) -> config.Otel:
    return config.Otel(traces_enabled=True, collector_endpoint=jaeger.otlp_http, batch_delay_ms=50)


async def post(e: RunningEngine, body: dict[str, Any]) -> str:
    reply = await e.post(json_body=body)
    assert reply.status == 200, reply.body
    trace_id: str = reply.body["trace_id"]
    return trace_id


async def test_crypto_mining_labels_and_isolates_the_workload(
    kube: KubeCluster, namespace: str, tmp_path: Path, jaeger: Jaeger
) -> None:
    await kube.create_workload("Deployment", namespace, "inventory", replicas=1)
    [target] = await kube.wait_running(namespace, "app=inventory")
    name = target["metadata"]["name"]
    replicaset = target["metadata"]["ownerReferences"][0]["name"]
    account = await engine_account(kube, namespace)
    async with running_engine(tmp_path, SEED.read_text(), kube_config=account, otel=otel(jaeger)) as e:
        trace_id = await post(e, alert("falco-detect-crypto-miners-stratum", name, namespace))
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_matches_total", rule="Crypto mining") == 1
        assert await e.metric("falcosecurity_falco_talon_actions_total", rule="Crypto mining", status="success") == 2
    assert (await pod(kube, namespace, name))["metadata"]["labels"]["security.falco.org/suspicious"] == "true"
    policy = await kube.api.get(f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{replicaset}")
    assert policy["spec"]["policyTypes"] == ["Egress"]
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app": "inventory"}}
    assert policy["spec"]["egress"] == [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]
    assert policy["metadata"]["labels"]["app.k8s.io/managed-by"] == "falco-talon"
    label_step, isolate_step = await step_spans(jaeger, trace_id, 2)
    assert tags(label_step)["talon.actionner"] == "kubernetes:label"
    assert tags(isolate_step)["talon.actionner"] == "kubernetes:networkpolicy"
    for span in (label_step, isolate_step):
        assert tags(span)["k8s.pod.name"] == name
        assert tags(span)["k8s.namespace.name"] == namespace
        assert tags(span).get("otel.status_code") != "ERROR"


async def test_privilege_escalation_terminates_the_pod_and_stops_there(
    kube: KubeCluster, namespace: str, tmp_path: Path, jaeger: Jaeger
) -> None:
    await kube.create_workload("Deployment", namespace, "inventory", replicas=1)
    [target] = await kube.wait_running(namespace, "app=inventory")
    name = target["metadata"]["name"]
    account = await engine_account(kube, namespace)
    async with running_engine(tmp_path, SEED.read_text(), kube_config=account, otel=otel(jaeger)) as e:
        # the drop-and-execute alert also matches nothing else; the escape alert is Critical
        trace_id = await post(e, alert("falco-drop-and-execute-new-binary-in-container", name, namespace))
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_matches_total", rule="Privilege escalation") == 1
        assert (
            await e.metric(
                "falcosecurity_falco_talon_actions_total", actionner="kubernetes:terminate", status="success"
            )
            == 1
        )
    with pytest.raises(KubeApiError) as gone:
        await pod(kube, namespace, name)
    assert gone.value.status == 404
    # the Deployment replaces it: terminate does not delete workloads
    [replacement] = await kube.wait_running(namespace, "app=inventory")
    assert replacement["metadata"]["name"] != name
    [step] = await step_spans(jaeger, trace_id, 1)
    assert tags(step)["talon.actionner"] == "kubernetes:terminate"


async def test_shell_in_a_container_labels_the_pod_outside_system_namespaces(
    kube: KubeCluster, namespace: str, tmp_path: Path, jaeger: Jaeger
) -> None:
    await kube.create_pod(namespace, "payments-api")
    account = await engine_account(kube, namespace)
    async with running_engine(tmp_path, SEED.read_text(), kube_config=account, otel=otel(jaeger)) as e:
        trace_id = await post(e, alert("falco-terminal-shell-in-container", "payments-api", namespace))
        # the same shell in kube-system matches no rule: nothing runs
        ignored = await post(e, alert("falco-terminal-shell-in-container", "coredns", "kube-system"))
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_matches_total", rule="Shell in a container") == 1
        assert await e.metric("falcosecurity_falco_talon_events_total") == 2
    labels = (await pod(kube, namespace, "payments-api"))["metadata"]["labels"]
    assert labels["security.falco.org/suspicious"] == "true"
    assert labels["security.falco.org/reason"] == "shell"
    [step] = await step_spans(jaeger, trace_id, 1)
    assert tags(step)["talon.actionner"] == "kubernetes:label"
    quiet = await jaeger.trace(ignored, min_spans=2)
    assert "run action" not in {s["operationName"] for s in quiet["spans"]}


async def test_credential_access_labels_for_investigation_and_reports_a_hostless_alert(
    kube: KubeCluster, namespace: str, tmp_path: Path, jaeger: Jaeger
) -> None:
    await kube.create_pod(namespace, "reader")
    account = await engine_account(kube, namespace)
    async with running_engine(tmp_path, SEED.read_text(), kube_config=account, otel=otel(jaeger)) as e:
        await post(e, alert("falco-read-sensitive-file-untrusted", "reader", namespace))
        # "Find AWS Credentials" comes from the host: no pod, so the label step fails naming the field
        host_alert = sample("falco-find-aws-credentials-on-host")
        failed_trace = await post(e, host_alert)
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_matches_total", rule="Credential access") == 2
        assert (
            await e.metric("falcosecurity_falco_talon_actions_total", rule="Credential access", status="success") == 1
        )
        assert (
            await e.metric("falcosecurity_falco_talon_actions_total", rule="Credential access", status="failure") == 1
        )
    assert (await pod(kube, namespace, "reader"))["metadata"]["labels"]["security.falco.org/investigate"] == "true"
    [step] = await step_spans(jaeger, failed_trace, 1)
    assert tags(step)["otel.status_code"] == "ERROR"
    assert "the alert has no field 'k8s." in tags(step)["otel.status_description"]


async def test_data_exfiltration_isolates_pods_of_sensitive_namespaces_only(
    kube: KubeCluster, tmp_path: Path, jaeger: Jaeger
) -> None:
    for ns in ("payments", "vault"):
        try:
            await kube.create_namespace(ns)
        except KubeApiError as exists:
            if exists.status != 409:
                raise
    await kube.create_workload("Deployment", "payments", "payments-api", replicas=1)
    [target] = await kube.wait_running("payments", "app=payments-api")
    name = target["metadata"]["name"]
    replicaset = target["metadata"]["ownerReferences"][0]["name"]
    shop = await kube.new_namespace("shop")
    await kube.create_pod(shop, "storefront")
    account = await engine_account(kube, "payments")
    async with running_engine(tmp_path, SEED.read_text(), kube_config=account, otel=otel(jaeger)) as e:
        trace_id = await post(e, alert("falco-outbound-connection-to-c2-servers", name, "payments"))
        # the same behaviour in a namespace that is not sensitive matches no rule
        await post(e, alert("falco-redirect-stdout-stdin-to-network", "storefront", shop))
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_matches_total", rule="Data exfiltration") == 1
    policy = await kube.api.get(f"/apis/networking.k8s.io/v1/namespaces/payments/networkpolicies/{replicaset}")
    assert policy["spec"]["egress"] == [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app": "payments-api"}}
    policies = await kube.api.get(f"/apis/networking.k8s.io/v1/namespaces/{shop}/networkpolicies")
    assert policies["items"] == []
    [step] = await step_spans(jaeger, trace_id, 1)
    assert tags(step)["talon.actionner"] == "kubernetes:networkpolicy"
    assert tags(step)["talon.action.ignore_errors"] is True


MISSING_POD_RULES = """\
- rule: First
  match: {rules: [Terminal shell in container]}
  actions:
    - action: Label it
      actionner: kubernetes:label
      parameters: {labels: {security.falco.org/suspicious: "true"}}
    - action: Annotate it
      actionner: kubernetes:annotation
      parameters: {annotations: {security.falco.org/seen: "true"}}
- rule: Second
  match: {rules: [Terminal shell in container]}
  actions:
    - action: Label it again
      actionner: kubernetes:label
      parameters: {labels: {security.falco.org/second: "true"}}
"""


async def test_a_missing_target_pod_fails_its_step_ends_its_rule_and_the_next_rule_still_runs(
    kube: KubeCluster, namespace: str, tmp_path: Path, jaeger: Jaeger
) -> None:
    account = await kube.service_account_with_role(
        namespace,
        "talon-opa",
        [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}],
    )
    async with running_engine(tmp_path, MISSING_POD_RULES, kube_config=account, otel=otel(jaeger)) as e:
        trace_id = await post(e, alert("falco-terminal-shell-in-container", "gone-1", namespace))
        await e.drained()
        actions = "falcosecurity_falco_talon_actions_total"
        assert await e.metric(actions, rule="First", actionner="kubernetes:label", status="failure") == 1
        assert await e.metric(actions, rule="First", actionner="kubernetes:annotation") == 0  # the rule ended
        assert await e.metric(actions, rule="Second", actionner="kubernetes:label", status="failure") == 1
    first, second = await step_spans(jaeger, trace_id, 2)
    for span in (first, second):
        assert tags(span)["otel.status_code"] == "ERROR"
        assert f"the pod 'gone-1' in the namespace '{namespace}' doesn't exist" in tags(span)["otel.status_description"]
    assert tags(first)["talon.rule"] == "First"
    assert tags(second)["talon.rule"] == "Second"
