"""Decide-ahead through the running engine: while `queue.workers` plans run, up to `opa.batch_size` more
alerts are decided (their decisions share OPA batches) and wait for a worker's slot, still counted in the
queue's depth and capacity; an alert waiting behind another about the same pod is decided meanwhile (in
its own trace) and still runs after it; with caps limits nothing is decided ahead, and with caps that read
the pod an alert waiting behind its pod's is not decided before its turn; a decision that failed while its
alert waited is reported, counted and traced when the alert's turn comes."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from talon_opa.core import config
from talon_opa.core.kube import KubeConfig
from talon_opa.engine.lifecycle import decide_ahead, decide_waiting
from tests.e2e import engine_harness
from tests.e2e.engine_harness import RunningEngine, running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, scripted_registry

UNUSED_KUBE = KubeConfig(server="http://127.0.0.1:9")  # the scripted actionners never call Kubernetes
WAITING_RULES = """\
- rule: Any shell
  match:
    rules: [Terminal shell in container]
  actions:
    - action: Mark
      actionner: kubernetes:label
      parameters: {labels: {behaviour: wait}}
"""

# a native rule whose step OPA gives ill-shaped (an actionner that is not a string) for the alerts it matches
BROKEN_WHEN_MATCHED = """\
package talon.rules.broken_when_matched

name := "Broken when matched"

match if contains(input.output, "broken")

actions := [{"action": "Bad", "actionner": 5, "parameters": {}}]
"""


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(250):  # bounded
        if await check():
            return
        await asyncio.sleep(0.02)


def gated_engine(
    tmp_path: Path, opa: config.Opa, exporter: InMemorySpanExporter, **more: Any
) -> AbstractAsyncContextManager[RunningEngine]:
    """The engine on WAITING_RULES with the scripted actionners (each step waits on SCRIPT's gate), 2 workers
    and room for 6 alerts, its spans kept by `exporter`."""
    return running_engine(
        tmp_path,
        WAITING_RULES,
        registry=scripted_registry(),
        kube_config=UNUSED_KUBE,
        queue=config.Queue(capacity=6, workers=2, drain_timeout_seconds=20),
        opa=opa,
        span_exporter=exporter,
        **more,
    )


async def decided_ahead(tmp_path: Path, caps: dict[str, Any] | None = None) -> tuple[float, InMemorySpanExporter]:
    """Two alerts about pod "same" then six about other pods, 2 workers, capacity 6, every step held by the
    gate: how many were decided while the first two plans ran; then the gate opens and everything runs."""
    SCRIPT.reset()  # the gate is closed: every step waits on it
    exporter = InMemorySpanExporter()
    async with gated_engine(tmp_path, dataclasses.replace(config.Opa(), batch_size=8), exporter, caps=caps or {}) as e:
        assert e.engine.decide_ahead == 8
        pods = ["same", "same", *(f"other-{i}" for i in range(6))]

        async def both_running() -> bool:
            return len(SCRIPT.calls) == 2

        async def decidable_decided() -> bool:  # at least the alerts that may be decided are
            return await e.metric("talon_opa_decision_duration_seconds_count") >= 7

        for i, pod in enumerate(pods):
            assert (await e.post(json_body=shell_alert(pod, output=f"shell {i} in {pod}"))).status == 200
            if i == 2:  # the first "same" and other-0 hold both workers before the rest fill the capacity
                await until(both_running)
                assert len(SCRIPT.calls) == 2
        await until(decidable_decided)
        await asyncio.sleep(0.1)
        decided = await e.metric("talon_opa_decision_duration_seconds_count")
        assert len(SCRIPT.calls) == 2
        # decided or not, an alert whose plan has not started still counts as waiting, against the capacity
        assert await e.metric("talon_opa_queue_depth") == 6
        assert (await e.post(json_body=shell_alert("one-too-many"))).status == 503
        SCRIPT.gate.set()
        await e.drained()
        assert sorted(c[1] for c in SCRIPT.calls) == sorted(pods)
        assert SCRIPT.max_running["same"] == 1
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="success") == 8
        assert await e.metric("talon_opa_decision_duration_seconds_count") == 8
    return decided, exporter


async def test_alerts_are_decided_ahead_of_the_workers_and_run_no_more_than_the_workers(tmp_path: Path) -> None:
    # 8 decided: 2 running, 5 waiting for a slot, and the second "same", behind the first, decided meanwhile
    decided, exporter = await decided_ahead(tmp_path)
    assert decided == 8
    spans = exporter.get_finished_spans()
    roots = {s.context.span_id: s for s in spans if s.name == "receive alert"}
    decisions = [s for s in spans if s.name == "decide plan"]
    assert len(roots) == 9  # one refused
    assert len(decisions) == 8
    # each decision in its own alert's trace, under its root span
    assert len({s.parent.span_id for s in decisions if s.parent and s.parent.span_id in roots}) == 8
    assert all(roots[s.parent.span_id].context.trace_id == s.context.trace_id for s in decisions if s.parent)


async def test_with_caps_reading_the_pod_an_alert_behind_its_pods_is_decided_in_its_turn(tmp_path: Path) -> None:
    # the caps read the pod (here for terminate steps only, so the label steps still run): the alerts
    # before it may change the pod
    caps = {"keep_last_replica": ["kubernetes:terminate"]}
    decided, _ = await decided_ahead(tmp_path, caps=caps)
    assert decided == 7  # the second "same" waits, undecided, behind the first


def test_nothing_is_decided_ahead_with_caps_limits_jetstream_or_without_batches(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    base = engine_harness.test_config(rules)
    assert decide_ahead(base) == base.opa.batch_size == 64
    caps = {"limits": {"kubernetes:terminate": {"per_namespace": 1, "window_seconds": 60}}}
    assert decide_ahead(dataclasses.replace(base, caps=caps)) == 0
    assert decide_ahead(dataclasses.replace(base, caps={"protected_namespaces": ["kube-system"]})) == 64
    assert decide_ahead(dataclasses.replace(base, queue=dataclasses.replace(base.queue, kind="nats"))) == 0
    assert decide_ahead(dataclasses.replace(base, opa=dataclasses.replace(base.opa, batch_size=1))) == 0
    assert decide_ahead(dataclasses.replace(base, opa=dataclasses.replace(base.opa, decide_ahead=False))) == 0
    assert decide_waiting(base)
    assert decide_waiting(dataclasses.replace(base, caps={"protected_namespaces": ["kube-system"]}))
    assert not decide_waiting(dataclasses.replace(base, caps={"keep_last_replica": ["kubernetes:terminate"]}))
    assert not decide_waiting(dataclasses.replace(base, caps=caps))


async def test_a_decision_that_failed_while_its_alert_waited_is_reported_in_its_turn(tmp_path: Path) -> None:
    SCRIPT.reset()  # the gate is closed: the first alert's step holds pod "same"
    native = tmp_path / "broken.rego"
    native.write_text(BROKEN_WHEN_MATCHED)
    opa = dataclasses.replace(config.Opa(), batch_size=8, rego=(str(native),))
    exporter = InMemorySpanExporter()
    async with gated_engine(tmp_path, opa, exporter) as e:
        assert (await e.post(json_body=shell_alert("same", output="shell 0 in same"))).status == 200

        async def first_running() -> bool:
            return len(SCRIPT.calls) == 1

        await until(first_running)
        broken = await e.post(json_body=shell_alert("same", output="broken shell 1 in same"))
        assert broken.status == 200
        assert (await e.post(json_body=shell_alert("same", output="shell 2 in same"))).status == 200

        async def all_decided() -> bool:
            return await e.metric("talon_opa_decision_duration_seconds_count") >= 2 and bool(
                await e.metric("talon_opa_opa_errors_total")
            )

        await until(all_decided)
        await asyncio.sleep(0.1)
        # decided while the first plan holds the pod, the broken one failed; nothing is reported before its turn
        assert await e.metric("talon_opa_opa_errors_total", kind="bad_answer") >= 1
        assert await e.metric("talon_opa_alerts_failed_total", stage="decide") == 0
        assert len(SCRIPT.calls) == 1
        SCRIPT.gate.set()
        await e.drained()
        assert await e.metric("talon_opa_alerts_failed_total", stage="decide") == 1
        assert [c[1] for c in SCRIPT.calls] == ["same", "same"]  # the first and the third, in order
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="success") == 2
    roots = [s for s in exporter.get_finished_spans() if s.name == "receive alert"]
    [failed] = [s for s in roots if s.status.status_code is StatusCode.ERROR]
    assert failed.context.trace_id == int(broken.body["trace_id"], 16)
    assert "actionner is not a string" in (failed.status.description or "")
