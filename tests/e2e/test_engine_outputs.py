"""The output stage: an artifact goes to the step's output target, traced as `write output`, counted,
and notified (stage "output"); an output failure or an empty artifact fails the step."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from talon_opa.core.kube import KubeConfig
from tests.e2e.engine_harness import running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, scripted_registry

RULES = """\
- rule: Keep the logs
  match:
    rules: [Terminal shell in container]
  notifiers: [recorder]
  actions:
    - action: Get logs
      actionner: kubernetes:log
      output:
        target: local:file
        parameters: {destination: /var/artifacts}
    - action: Get logs to a broken disk
      actionner: kubernetes:log
      output:
        target: local:file
        parameters: {destination: /fail}
    - action: After a failed output
      actionner: kubernetes:label
      parameters: {labels: {behaviour: ok}}
"""


async def test_an_artifact_is_written_traced_counted_and_notified(tmp_path: Path) -> None:
    SCRIPT.reset()
    spans = InMemorySpanExporter()
    async with running_engine(
        tmp_path,
        RULES,
        registry=scripted_registry(),
        kube_config=KubeConfig(server="http://127.0.0.1:9"),
        span_exporter=spans,
    ) as e:
        reply = await e.post(json_body=shell_alert("art-1"))
        await e.drained()
        [(destination, artifact)] = SCRIPT.artifacts
        assert (destination, artifact.data) == ("/var/artifacts", b"logs of art-1\n")
        assert await e.metric("falcosecurity_falco_talon_outputs_total", target="local:file", status="success") == 1
        assert await e.metric("falcosecurity_falco_talon_outputs_total", target="local:file", status="failure") == 1
        assert await e.metric("falcosecurity_falco_talon_actions_total", action="After a failed output") == 0
    stages = [(n.action, n.stage, n.status, n.output_target) for n in SCRIPT.notes]
    assert stages == [
        ("Get logs", "action", "success", ""),
        ("Get logs", "output", "success", "local:file"),
        ("Get logs to a broken disk", "action", "success", ""),
        ("Get logs to a broken disk", "output", "failure", "local:file"),
    ]
    assert "disk full" in SCRIPT.notes[3].error
    assert all(n.trace_id == reply.body["trace_id"] for n in SCRIPT.notes)
    finished = spans.get_finished_spans()
    writes = [s for s in finished if s.name == "write output"]
    assert len(writes) == 2
    steps = {s.context.span_id: s for s in finished if s.name == "run action"}
    assert all(w.parent is not None and w.parent.span_id in steps for w in writes)
    by_action = {str((s.attributes or {}).get("talon.action")): s for s in steps.values()}
    failed_step = by_action["Get logs to a broken disk"]
    assert failed_step.status.status_code.name == "ERROR"
    assert (failed_step.attributes or {})["error.type"] == "OSError"
    assert by_action["Get logs"].status.status_code.name == "OK"


async def test_an_empty_artifact_fails_the_output(tmp_path: Path) -> None:
    SCRIPT.reset()
    async with running_engine(
        tmp_path, RULES, registry=scripted_registry(), kube_config=KubeConfig(server="http://127.0.0.1:9")
    ) as e:
        await e.post(json_body=shell_alert("empty"))
        await e.drained()
        assert SCRIPT.artifacts == []
        output_notes = [n for n in SCRIPT.notes if n.stage == "output"]
        assert output_notes[0].status == "failure"
        assert "no artifact" in output_notes[0].error
