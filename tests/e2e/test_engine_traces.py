"""One trace per alert, read back from a real Jaeger: receive alert → decide plan → run action
(→ send notification), continuing the sender's traceparent, failures with their status and error.type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from talon_opa.core import config
from talon_opa.core.kube import KubeConfig
from tests.e2e.engine_harness import DRY_RUN_RULES, running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, scripted_registry
from tests.harness.jaeger import Jaeger

PARENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"

FAILING_RULES = """\
- rule: Fails
  match: {rules: [Terminal shell in container]}
  notifiers: [recorder]
  actions:
    - action: Break
      actionner: kubernetes:label
      parameters: {labels: {behaviour: fail}}
"""


def otel(jaeger: Jaeger) -> config.Otel:
    return config.Otel(traces_enabled=True, collector_endpoint=jaeger.otlp_http, batch_delay_ms=50)


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


def by_name(trace: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["operationName"]: s for s in trace["spans"]}


async def test_an_alert_is_one_trace_continuing_the_senders(tmp_path: Path, jaeger: Jaeger) -> None:
    async with running_engine(tmp_path, DRY_RUN_RULES, otel=otel(jaeger)) as e:
        reply = await e.post(
            json_body=shell_alert("traced", "payments"),
            headers={"traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"},
        )
        assert reply.body["trace_id"] == PARENT_TRACE
        await e.drained()
        revision = e.engine.built.revision if e.engine.built else ""
    # the engine flushed its spans when it stopped
    names = await jaeger.span_names(PARENT_TRACE, min_spans=3)
    assert names == ["receive alert", "decide plan", "run action"]
    trace = await jaeger.trace(PARENT_TRACE, min_spans=3)
    spans = by_name(trace)
    root, decide, step = spans["receive alert"], spans["decide plan"], spans["run action"]
    assert [r["spanID"] for r in root["references"]] == [PARENT_SPAN]
    assert decide["references"][0]["spanID"] == root["spanID"]
    assert step["references"][0]["spanID"] == root["spanID"]
    d = tags(decide)
    assert d["talon.bundle.revision"] == revision
    assert d["talon.decision.id"]
    assert "Shell in a container" in str(d["talon.matched_rules"])
    s = tags(step)
    assert s["k8s.pod.name"] == "traced"
    assert s["k8s.namespace.name"] == "payments"
    assert s["talon.action.dry_run"] is True
    assert s["talon.actionner"] == "kubernetes:label"
    assert s["talon.status"] == "dry_run"
    assert tags(root)["talon.alert.rule"] == "Terminal shell in container"


async def test_a_failed_step_is_an_error_span_with_its_type_and_its_notification(
    tmp_path: Path, jaeger: Jaeger
) -> None:
    SCRIPT.reset()
    async with running_engine(
        tmp_path,
        FAILING_RULES,
        otel=otel(jaeger),
        registry=scripted_registry(),
        kube_config=KubeConfig(server="http://127.0.0.1:9"),
    ) as e:
        reply = await e.post(json_body=shell_alert("broken"))
        trace_id = reply.body["trace_id"]
        await e.drained()
    names = await jaeger.span_names(trace_id, min_spans=4)
    assert names == ["receive alert", "decide plan", "run action", "send notification"]
    spans = by_name(await jaeger.trace(trace_id, min_spans=4))
    step = tags(spans["run action"])
    assert step["otel.status_code"] == "ERROR"
    assert step["error.type"] == "StepFailed"
    assert "scripted failure" in step["otel.status_description"]
    note = spans["send notification"]
    assert note["references"][0]["spanID"] == spans["run action"]["spanID"]
    assert tags(note)["talon.notifier"] == "recorder"
    assert tags(spans["receive alert"])["otel.status_code"] == "ERROR"
    assert SCRIPT.notes[0].trace_id == trace_id
