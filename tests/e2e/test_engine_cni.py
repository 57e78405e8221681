"""calico:networkpolicy and cilium:networkpolicy through the running engine: alert → OPA plan → both
actionners against the real API server (serving the vendors' CRDs) as a ServiceAccount bound to the
ClusterRole `talon-opa rbac` prints for these rules; one trace per alert in a real Jaeger with a span
per action, and the counts on /metrics. Then the failure paths: Cilium's CRD gone, or being deleted, its step
fails with the server's answer and the hint to install Cilium, traced and counted, while the Calico step
still runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from talon_opa.core import config
from talon_opa.core.kube import KubeApiError, KubeConfig
from tests.e2e.engine_harness import RunningEngine, running_engine, sample
from tests.e2e.server_process import cli
from tests.harness.jaeger import Jaeger
from tests.harness.kube import CRD_PATH, KubeCluster

RULES = """\
- rule: Connection to a miner pool or a C2 server
  match:
    rules:
      - Detect outbound connections to common miner pool ports
      - Outbound Connection to C2 Servers
  actions:
    - action: Block the remote IP with Calico
      actionner: calico:networkpolicy
      parameters:
        order: 10
        allow_cidr:
          - "10.0.0.0/8"
    - action: Block the remote IP with Cilium
      actionner: cilium:networkpolicy
      parameters:
        allow_namespaces:
          - kube-system
"""
ACTIONS = "falcosecurity_falco_talon_actions_total"
CILIUM_CRD = "ciliumnetworkpolicies.cilium.io"
HOLD = "talon-opa.test/hold"  # a finalizer no controller removes: the test does


async def engine_account(kube: KubeCluster, namespace: str, rules: Path) -> KubeConfig:
    """The engine's identity: exactly the ClusterRole `talon-opa rbac` generates for the rules."""
    code, out = await cli("rbac", "-r", str(rules))
    assert code == 0, out
    role = yaml.safe_load(out)
    assert {
        "apiGroups": ["projectcalico.org"],
        "resources": ["networkpolicies"],
        "verbs": ["create", "delete", "get", "update"],
    } in role["rules"]
    return await kube.service_account_with_role(namespace, "talon-opa", role["rules"])


def alert(name: str, pod: str, ns: str, tag: str) -> dict[str, Any]:
    doc = sample(name, output_fields={"k8s.pod.name": pod, "k8s.ns.name": ns})
    doc["output"] = f"{doc['output']} test_target={ns}/{pod} {tag}"  # unique: dedup keeps it
    return doc


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


async def step_spans(jaeger: Jaeger, trace_id: str) -> list[dict[str, Any]]:
    """The two `run action` spans of the alert's one trace, in start order."""
    trace = await jaeger.trace(trace_id, min_spans=4)
    assert {s["traceID"] for s in trace["spans"]} == {trace_id}
    names = [s["operationName"] for s in trace["spans"]]
    assert names.count("receive alert") == 1
    assert names.count("decide plan") == 1
    spans = sorted((s for s in trace["spans"] if s["operationName"] == "run action"), key=lambda s: s["startTime"])
    assert [tags(s)["talon.actionner"] for s in spans] == ["calico:networkpolicy", "cilium:networkpolicy"], names
    return spans


async def post(e: RunningEngine, body: dict[str, Any]) -> str:
    reply = await e.post(json_body=body)
    assert reply.status == 200, reply.body
    trace_id: str = reply.body["trace_id"]
    return trace_id


async def test_rules_check_says_nothing_about_cannot_run(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)

    code, out = await cli("rules", "check", "-r", str(rules))

    assert code == 0, out
    assert "cannot run" not in out
    assert "warning" not in out.lower()


async def test_engine_isolates_the_workload_with_calico_and_cilium_and_reports_a_missing_crd(
    kube: KubeCluster, namespace: str, tmp_path: Path, jaeger: Jaeger
) -> None:
    await kube.create_workload("Deployment", namespace, "inventory", replicas=1)
    [target] = await kube.wait_running(namespace, "app=inventory")
    pod = target["metadata"]["name"]
    replica_set = target["metadata"]["ownerReferences"][0]["name"]
    (tmp_path / "rules.yaml").write_text(RULES)
    account = await engine_account(kube, namespace, tmp_path / "rules.yaml")
    otel = config.Otel(traces_enabled=True, collector_endpoint=jaeger.otlp_http, batch_delay_ms=50)
    calico_path = f"/apis/projectcalico.org/v3/namespaces/{namespace}/networkpolicies/{replica_set}"
    cilium_path = f"/apis/cilium.io/v2/namespaces/{namespace}/ciliumnetworkpolicies/{replica_set}"

    async with running_engine(tmp_path, RULES, kube_config=account, otel=otel) as e:
        # the miner alert carries fd.rip, the C2 alert fd.sip; both about the same pod, run in order
        miner = await post(e, alert("falco-outbound-connection-to-miner-pool-ports", pod, namespace, "1"))
        c2 = await post(e, alert("falco-outbound-connection-to-c2-servers", pod, namespace, "2"))
        await e.drained()
        assert await e.metric(ACTIONS, actionner="calico:networkpolicy", status="success") == 2
        assert await e.metric(ACTIONS, actionner="cilium:networkpolicy", status="success") == 2
        assert await e.metric(ACTIONS, status="failure") == 0

        calico = await kube.api.get(calico_path)
        assert calico["metadata"]["labels"]["app.k8s.io/managed-by"] == "falco-talon"
        assert calico["metadata"]["annotations"] == {"talon-opa/actionner": "calico:networkpolicy"}
        assert calico["spec"]["selector"] == 'app == "inventory"'
        assert calico["spec"]["order"] == 10
        assert calico["spec"]["types"] == ["Egress"]
        assert calico["spec"]["egress"] == [
            {"action": "Deny", "destination": {"nets": ["203.0.113.77/32", "198.51.100.66/32"]}},
            {"action": "Allow", "destination": {"nets": ["10.0.0.0/8"]}},
        ]
        cilium = await kube.api.get(cilium_path)
        assert cilium["metadata"]["annotations"] == {"talon-opa/actionner": "cilium:networkpolicy"}
        assert cilium["spec"]["endpointSelector"] == {"matchLabels": {"app": "inventory"}}
        assert cilium["spec"]["egressDeny"] == [{"toCIDR": ["203.0.113.77/32"]}, {"toCIDR": ["198.51.100.66/32"]}]
        assert cilium["spec"]["egress"] == [
            {
                "toEndpoints": [
                    {
                        "matchExpressions": [
                            {"key": "k8s:io.kubernetes.pod.namespace", "operator": "In", "values": ["kube-system"]}
                        ]
                    }
                ]
            }
        ]

        removed = await kube.remove_crd(CILIUM_CRD)
        try:
            failed = await post(e, alert("falco-outbound-connection-to-miner-pool-ports", pod, namespace, "3"))
            await e.drained()
        finally:
            await kube.install_crd(removed)
        assert await e.metric(ACTIONS, actionner="calico:networkpolicy", status="success") == 3
        assert await e.metric(ACTIONS, actionner="cilium:networkpolicy", status="failure") == 1

        # Cilium being uninstalled: its CRD deleted but held (an object of it keeps a finalizer), so the
        # API server still serves the resource and refuses creates with 403 "terminating". That is no
        # missing permission: the step says the resource is being removed, with the hint to install Cilium.
        crd = await kube.api.get(f"{CRD_PATH}/{CILIUM_CRD}")
        collection = f"/apis/cilium.io/v2/namespaces/{namespace}/ciliumnetworkpolicies"
        spec: dict[str, Any] = {"endpointSelector": {}, "ingress": [{}]}
        held = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "spec": spec}
        await kube.api.post(collection, {**held, "metadata": {"name": "held", "finalizers": [HOLD]}})
        await kube.api.delete(f"{CRD_PATH}/{CILIUM_CRD}")
        try:

            async def creates_refused() -> bool:
                try:
                    await kube.api.post(collection, {**held, "metadata": {"name": "probe"}})
                except KubeApiError as e:
                    return e.crd_terminating
                await kube.api.delete(f"{collection}/probe")
                return False

            await kube.wait_for(creates_refused, "creates refused while the CRD is terminating")
            held_back = await post(e, alert("falco-outbound-connection-to-miner-pool-ports", pod, namespace, "4"))
            await e.drained()
        finally:
            await kube.api.patch(f"{collection}/held", {"metadata": {"finalizers": None}})
            await kube.wait_crd_gone(crd)
            await kube.install_crd(removed)
        assert await e.metric(ACTIONS, actionner="calico:networkpolicy", status="success") == 4
        assert await e.metric(ACTIONS, actionner="cilium:networkpolicy", status="failure") == 2

    for trace_id in (miner, c2):
        for span in await step_spans(jaeger, trace_id):
            assert tags(span)["k8s.pod.name"] == pod
            assert tags(span)["k8s.namespace.name"] == namespace
            assert tags(span).get("otel.status_code") != "ERROR"
    calico_step, cilium_step = await step_spans(jaeger, failed)
    assert tags(calico_step).get("otel.status_code") != "ERROR"
    assert tags(calico_step)["talon.result"].endswith("was already up to date")
    assert tags(cilium_step)["otel.status_code"] == "ERROR"
    assert (
        "the API server does not serve ciliumnetworkpolicies.cilium.io" in tags(cilium_step)["otel.status_description"]
    )
    assert "install Cilium" in tags(cilium_step)["otel.status_description"]
    _, cilium_step = await step_spans(jaeger, held_back)
    assert tags(cilium_step)["otel.status_code"] == "ERROR"
    description = tags(cilium_step)["otel.status_description"]
    assert "the API server is removing ciliumnetworkpolicies.cilium.io" in description
    assert "custom resource definition is terminating" in description
    assert "lacks this permission" not in description
    assert "install Cilium" in description
