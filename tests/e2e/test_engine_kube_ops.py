"""kubernetes:delete, :cordon and :drain, and the local:file output, through the running engine: real
rules → bundle → child OPA, the shipped actionners acting on the real API server as a ServiceAccount
bound to the ClusterRole `talon-opa rbac -r rules.yaml` prints, a span per action in a real Jaeger,
and the counts on /metrics."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from talon_opa.core import config
from talon_opa.core.kube import KubeApiError, KubeConfig
from talon_opa.outputs.file import File
from talon_opa.plugins.registry import Registry
from tests.e2e.engine_harness import RunningEngine, running_engine, sample, shell_alert
from tests.e2e.engine_plugins import SCRIPT, Recorder, ScriptedLog
from tests.e2e.kube_nodes import guarded_by_a_budget, on_node, on_the_node, uids
from tests.e2e.kube_nodes import node as node  # the fixture
from tests.harness.jaeger import Jaeger
from tests.harness.kube import KubeCluster

REPO = Path(__file__).resolve().parents[2]
ACTIONS = "falcosecurity_falco_talon_actions_total"

RULES = """\
- rule: Remove what the audit saw created
  match:
    rules: [K8s ConfigMap Created]
  actions:
    - action: Delete it
      actionner: kubernetes:delete

- rule: Quarantine the node
  match:
    rules: [Terminal shell in container]
  actions:
    - action: Cordon the node
      actionner: kubernetes:cordon
    - action: Drain the node
      actionner: kubernetes:drain
      parameters:
        ignore_daemonsets: true
        max_wait_period: 20
"""


async def engine_account(kube: KubeCluster, namespace: str, rules: Path) -> KubeConfig:
    """The engine's identity: exactly the ClusterRole `talon-opa rbac -r rules` prints."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "talon_opa.cli.main", "rbac", "-r", str(rules), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    role = yaml.safe_load(out)
    return await kube.service_account_with_role(namespace, "talon-opa", role["rules"])


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


async def step_spans(jaeger: Jaeger, trace_id: str, steps: int) -> list[dict[str, Any]]:
    trace = await jaeger.trace(trace_id, min_spans=2 + steps)
    spans = sorted((s for s in trace["spans"] if s["operationName"] == "run action"), key=lambda s: s["startTime"])
    assert len(spans) == steps, [s["operationName"] for s in trace["spans"]]
    return spans


async def post(e: RunningEngine, body: dict[str, Any]) -> str:
    reply = await e.post(json_body=body)
    assert reply.status == 200, reply.body
    trace_id: str = reply.body["trace_id"]
    return trace_id


async def test_delete_cordon_and_drain_act_trace_and_count(
    kube: KubeCluster, namespace: str, node: str, tmp_path: Path, jaeger: Jaeger
) -> None:
    await kube.api.post(
        f"/api/v1/namespaces/{namespace}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dropper"}, "data": {"payload": "x"}},
    )
    await on_node(kube, "Deployment", namespace, "web", node, replicas=2)
    await on_node(kube, "Deployment", namespace, "guarded", node)
    web = uids(await kube.wait_running(namespace, "app=web", 2))
    [guarded] = uids(await kube.wait_running(namespace, "app=guarded")).items()
    await guarded_by_a_budget(kube, namespace, "guarded")
    (tmp_path / "rules.yaml").write_text(RULES)
    account = await engine_account(kube, namespace, tmp_path / "rules.yaml")
    audit = sample(
        "k8saudit-create-privileged-pod",
        rule="K8s ConfigMap Created",
        output=f"ConfigMap created (name=dropper ns={namespace})",
        output_fields={
            "ka.target.resource": "configmaps",
            "ka.target.name": "dropper",
            "ka.target.namespace": namespace,
        },
    )
    otel = config.Otel(traces_enabled=True, collector_endpoint=jaeger.otlp_http, batch_delay_ms=50)

    async with running_engine(tmp_path, RULES, kube_config=account, otel=otel) as e:
        delete_trace = await post(e, audit)
        shell_trace = await post(e, shell_alert(next(iter(web)), namespace))
        await e.drained()
        count = e.metric
        assert await count(ACTIONS, actionner="kubernetes:delete", status="success") == 1
        assert await count(ACTIONS, actionner="kubernetes:cordon", status="success") == 1
        # the budget keeps one pod: the drain is partial, and that is a failure, counted as one
        assert await count(ACTIONS, actionner="kubernetes:drain", status="failure") == 1
        assert await count(ACTIONS, actionner="kubernetes:drain", status="success") == 0

    with pytest.raises(KubeApiError) as gone:
        await kube.api.get(f"/api/v1/namespaces/{namespace}/configmaps/dropper")
    assert gone.value.status == 404
    assert (await kube.api.get(f"/api/v1/nodes/{node}"))["spec"]["unschedulable"] is True
    assert await on_the_node(kube, namespace, node, terminating=True) == dict([guarded])

    [delete_step] = await step_spans(jaeger, delete_trace, 1)
    assert tags(delete_step)["talon.actionner"] == "kubernetes:delete"
    assert tags(delete_step)["talon.object.name"] == "dropper"
    assert tags(delete_step)["talon.object.resource"] == "configmaps"
    assert tags(delete_step).get("otel.status_code") != "ERROR"
    cordon_step, drain_step = await step_spans(jaeger, shell_trace, 2)
    assert tags(cordon_step)["talon.actionner"] == "kubernetes:cordon"
    assert tags(cordon_step)["talon.object.node"] == node
    assert tags(cordon_step).get("otel.status_code") != "ERROR"
    assert tags(drain_step)["talon.actionner"] == "kubernetes:drain"
    assert tags(drain_step)["otel.status_code"] == "ERROR"
    description = tags(drain_step)["otel.status_description"]
    assert f"the node '{node}' has not been fully drained" in description
    assert f"{namespace}/{guarded[0]} (Cannot evict pod as it would violate the pod's disruption budget" in description


FILE_RULES = """\
- rule: Keep the logs
  match:
    rules: [Terminal shell in container]
  notifiers: [recorder]
  actions:
    - action: Get logs
      actionner: kubernetes:log
      output:
        target: local:file
        parameters: {{destination: {good}}}
    - action: Get logs into a missing folder
      actionner: kubernetes:log
      ignore_errors: true
      output:
        target: local:file
        parameters: {{destination: {missing}}}
"""


async def test_local_file_stores_the_artifact_of_a_step_traced_and_counted(tmp_path: Path) -> None:
    """The artifact comes from the scripted kubernetes:log (tests/e2e/engine_plugins.py); local:file is real."""
    SCRIPT.reset()
    good, missing = tmp_path / "artifacts", tmp_path / "missing"
    good.mkdir()
    spans = InMemorySpanExporter()

    async with running_engine(
        tmp_path,
        FILE_RULES.format(good=good, missing=missing),
        registry=Registry.of(ScriptedLog, File, Recorder),
        kube_config=KubeConfig(server="http://127.0.0.1:9"),  # the scripted log never calls it
        span_exporter=spans,
    ) as e:
        await post(e, shell_alert("../../etc/api-1", "payments"))
        await e.drained()
        count = e.metric
        assert await count("falcosecurity_falco_talon_outputs_total", target="local:file", status="success") == 1
        assert await count("falcosecurity_falco_talon_outputs_total", target="local:file", status="failure") == 1
        assert await count("falcosecurity_falco_talon_actions_total", action="Get logs", status="success") == 1

    [name] = os.listdir(good)
    written = good / name
    assert written.read_bytes() == b"logs of ../../etc/api-1\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert name.endswith("_.._.._etc_api-1_logs.txt")  # the artifact names only the pod
    assert sorted(os.listdir(tmp_path)) == ["artifacts", "rules.yaml"]
    outputs = [(n.action, n.status, n.output) for n in SCRIPT.notes if n.stage == "output"]
    assert outputs[0] == ("Get logs", "success", f"the file '{name}' has been copied to '{written}'")
    failed = [n for n in SCRIPT.notes if n.stage == "output" and n.status == "failure"]
    assert len(failed) == 1
    assert f"folder '{missing}' does not exist" in failed[0].error

    finished = spans.get_finished_spans()
    steps = {s.context.span_id: s for s in finished if s.name == "run action"}
    writes = [s for s in finished if s.name == "write output"]
    assert len(steps) == 2
    assert all(w.parent is not None and w.parent.span_id in steps for w in writes)
    assert sorted(w.status.status_code.name for w in writes) == ["ERROR", "OK"]
    assert all((w.attributes or {})["talon.output.target"] == "local:file" for w in writes)
