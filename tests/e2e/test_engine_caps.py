"""Blast-radius caps decided in Rego (docs/caps.md), through real HTTP, the real translator and a real child
OPA: the engine counts the steps that ran (input.counters), the caps policy marks a step `held`, the executor
reports it instead of running it."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from talon_opa.core import config
from talon_opa.core.kube import KubeConfig
from tests.e2e.engine_harness import running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, TERMINATE_SHELLS, scripted_registry

UNUSED_KUBE = KubeConfig(server="http://127.0.0.1:9")  # scripted plugins never call it; not dry-run


CAPS = config.parse_caps(
    {
        "limits": {"kubernetes:terminate": {"per_namespace": 3, "window_seconds": 600}},
        "protected_namespaces": ["kube-system"],
    }
)

HELD_REASON = 'cap reached: 3 kubernetes:terminate in namespace "payments" in the last 600s (limit 3)'


async def test_the_fourth_terminate_in_a_namespace_is_held(tmp_path: Path) -> None:
    SCRIPT.reset()
    SCRIPT.gate.set()
    spans = InMemorySpanExporter()
    async with running_engine(
        tmp_path,
        TERMINATE_SHELLS,
        registry=scripted_registry(),
        kube_config=UNUSED_KUBE,
        span_exporter=spans,
        caps=CAPS,
    ) as e:
        for i in range(4):  # one after the other: each decision sees the steps that ran before it
            assert (await e.post(json_body=shell_alert(f"pod-{i}", "payments"))).status == 200
            await e.drained()
        assert (await e.post(json_body=shell_alert("other-0", "shop"))).status == 200
        await e.drained()
        terminations = [c for c in SCRIPT.calls if c[0] == "kubernetes:terminate"]
        assert terminations == [
            ("kubernetes:terminate", "pod-0", "ok"),
            ("kubernetes:terminate", "pod-1", "ok"),
            ("kubernetes:terminate", "pod-2", "ok"),
            ("kubernetes:terminate", "other-0", "ok"),  # another namespace still runs
        ]
        m = e.metric
        assert await m("falcosecurity_falco_talon_actions_total", status="held") == 1
        assert await m("falcosecurity_falco_talon_actions_total", status="held", action="Terminate") == 1
        assert (
            await m("falcosecurity_falco_talon_actions_total", status="success", actionner="kubernetes:terminate") == 4
        )
        # an alert in a protected namespace: every step held
        assert (await e.post(json_body=shell_alert("sys-0", "kube-system"))).status == 200
        await e.drained()
        assert not [c for c in SCRIPT.calls if c[1] == "sys-0"]
        assert await m("falcosecurity_falco_talon_actions_total", status="held") == 2
    held_notes = [n for n in SCRIPT.notes if n.error.startswith("held:")]
    assert [(n.pod, n.action, n.status) for n in held_notes] == [
        ("pod-3", "Terminate", "failure"),
        ("sys-0", "Terminate", "failure"),
    ]
    assert held_notes[0].error == f"held: {HELD_REASON}"
    assert held_notes[1].error == 'held: namespace "kube-system" is protected'
    held_spans = [
        s
        for s in spans.get_finished_spans()
        if s.name == "run action" and (s.attributes or {}).get("talon.status") == "held"
    ]
    assert [(s.attributes or {}).get("talon.held") for s in held_spans] == [
        HELD_REASON,
        'namespace "kube-system" is protected',
    ]
    assert HELD_REASON in str(held_spans[0].status.description)


async def test_without_caps_nothing_is_held(tmp_path: Path) -> None:
    SCRIPT.reset()
    SCRIPT.gate.set()
    async with running_engine(tmp_path, TERMINATE_SHELLS, registry=scripted_registry(), kube_config=UNUSED_KUBE) as e:
        for i in range(4):
            await e.post(json_body=shell_alert(f"free-{i}", "payments"))
            await e.drained()
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="held") == 0
    assert len([c for c in SCRIPT.calls if c[0] == "kubernetes:terminate"]) == 4


FLOW_RULES = """\
- rule: Held ends the rule
  match:
    rules: [Terminal shell in container]
  actions:
    - action: Label held
      actionner: kubernetes:label
      parameters: {labels: {behaviour: ok}}
    - action: Never
      actionner: kubernetes:terminate

- rule: Held but ignore_errors
  match:
    rules: [Terminal shell in container]
  actions:
    - action: Label held, ignored
      actionner: kubernetes:label
      ignore_errors: true
      parameters: {labels: {behaviour: ok}}
    - action: Terminate runs
      actionner: kubernetes:terminate
"""


async def test_a_held_step_flows_like_a_failed_one(tmp_path: Path) -> None:
    SCRIPT.reset()
    SCRIPT.gate.set()
    caps = config.parse_caps({"limits": {"kubernetes:label": {"per_namespace": 0, "window_seconds": 60}}})
    async with running_engine(
        tmp_path, FLOW_RULES, registry=scripted_registry(), kube_config=UNUSED_KUBE, caps=caps
    ) as e:
        await e.post(json_body=shell_alert("flow-0", "payments"))
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="held") == 2
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="skipped") == 0
    # the first rule ends at its held step; the second goes on (ignore_errors)
    assert SCRIPT.calls == [("kubernetes:terminate", "flow-0", "ok")]
