"""Runtime control flow, required fields, timeouts, notifications, dedup, queue limits and per-pod ordering,
through real HTTP, the real translator and a real child OPA (plugins scripted: see engine_plugins)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from talon_opa.core import config
from talon_opa.core.kube import KubeConfig
from tests.e2e.engine_harness import RunningEngine, running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, scripted_registry

UNUSED_KUBE = KubeConfig(server="http://127.0.0.1:9")  # scripted plugins never call it; not dry-run

FLOW_RULES = """\
- rule: A plain steps
  match:
    rules: [Terminal shell in container]
    output_fields: [k8s.pod.name=flow]
  notifiers: [recorder]
  actions:
    - action: A1 ok
      actionner: kubernetes:label
      parameters: {labels: {behaviour: ok}}
    - action: A2 fails
      actionner: kubernetes:label
      parameters: {labels: {behaviour: fail}}
    - action: A3 never
      actionner: kubernetes:label
      parameters: {labels: {behaviour: ok}}

- rule: B ignore errors
  match:
    rules: [Terminal shell in container]
    output_fields: [k8s.pod.name=flow]
  notifiers: [recorder]
  actions:
    - action: B1 fails but ignored
      actionner: kubernetes:label
      ignore_errors: true
      parameters: {labels: {behaviour: crash}}
    - action: B2 terminate fails, ignored, but ends the rule
      actionner: kubernetes:terminate
      ignore_errors: true
      parameters: {grace_period_seconds: 13}
    - action: B3 never
      actionner: kubernetes:label
      parameters: {labels: {behaviour: ok}}

- rule: C dry run keeps the flow
  match:
    rules: [Terminal shell in container]
    output_fields: [k8s.pod.name=flow]
  dry_run: true
  actions:
    - action: C1 terminate in dry run
      actionner: kubernetes:terminate
    - action: C2 never
      actionner: kubernetes:label
      parameters: {labels: {behaviour: ok}}

- rule: D forced continue and rule stop
  match:
    rules: [Terminal shell in container]
    output_fields: [k8s.pod.name=flow]
  continue: false
  actions:
    - action: D1 terminate told to continue
      actionner: kubernetes:terminate
      continue: true
    - action: D2 runs
      actionner: kubernetes:label
      parameters: {labels: {behaviour: ok}}

- rule: E after a rule that stops
  match:
    rules: [Terminal shell in container]
    output_fields: [k8s.pod.name=flow]
  actions:
    - action: E1 never
      actionner: kubernetes:label
      parameters: {labels: {behaviour: ok}}

- rule: Any other shell
  match:
    rules: [Terminal shell in container]
  notifiers: [recorder]
  actions:
    - action: Mark
      actionner: kubernetes:label
      parameters: {labels: {behaviour: wait}}
"""


@pytest_asyncio.fixture(loop_scope="session")
async def engine(tmp_path: Path) -> AsyncIterator[RunningEngine]:
    SCRIPT.reset()
    SCRIPT.gate.set()
    async with running_engine(tmp_path, FLOW_RULES, registry=scripted_registry(), kube_config=UNUSED_KUBE) as e:
        yield e


async def test_steps_follow_talons_control_flow(engine: RunningEngine) -> None:
    reply = await engine.post(json_body=shell_alert("flow", "payments"))
    assert reply.status == 200
    await engine.drained()
    assert SCRIPT.calls == [
        ("kubernetes:label", "flow", "ok"),  # A1
        ("kubernetes:label", "flow", "fail"),  # A2 fails: A3 skipped
        ("kubernetes:label", "flow", "crash"),  # B1 fails, ignore_errors: B2 runs
        ("kubernetes:terminate", "flow", "fail"),  # B2 fails, ignored, but terminate ends the rule
        # C1 dry run: nothing runs, and terminate's continue=false still ends the rule
        ("kubernetes:terminate", "flow", "ok"),  # D1 continue: true
        ("kubernetes:label", "flow", "ok"),  # D2; rule D stops later rules: E and "Any other shell" never run
    ]
    # each step sees Talon's context for itself only (no key of an earlier step leaks)
    assert SCRIPT.contexts[0]["falco-talon.rule"] == "A plain steps"
    assert SCRIPT.contexts[0]["falco-talon.action"] == "A1 ok"
    assert SCRIPT.contexts[1]["falco-talon.action"] == "A2 fails"
    assert SCRIPT.contexts[3]["falco-talon.action.ignore_errors"] == "true"
    assert SCRIPT.contexts[0]["falco-talon.action.parameters"] == '{"labels":{"behaviour":"ok"},"level":"pod"}'
    m = engine.metric
    assert await m("falcosecurity_falco_talon_actions_total", status="failure") == 3
    assert await m("falcosecurity_falco_talon_actions_total", status="success") == 3
    assert await m("falcosecurity_falco_talon_actions_total", status="dry_run", action="C1 terminate in dry run") == 1
    assert await m("falcosecurity_falco_talon_matches_total") == 4  # A, B, C, D (the plan stops at D)
    # every non-dry-run step of rules with the recorder is notified, failures with their reason
    notes = [(n.action, n.status) for n in SCRIPT.notes]
    assert notes == [
        ("A1 ok", "success"),
        ("A2 fails", "failure"),
        ("B1 fails but ignored", "failure"),
        ("B2 terminate fails, ignored, but ends the rule", "failure"),
    ]
    assert "scripted failure" in SCRIPT.notes[1].error
    assert "KeyError" in SCRIPT.notes[2].error
    assert {n.trace_id for n in SCRIPT.notes} == {reply.body["trace_id"]}
    assert SCRIPT.notes[0].objects == {"pod": "flow", "namespace": "payments"}
    # a failed step's notification names its objects too, as Talon's does (Namespace:/Pod: lines)
    assert [n.objects for n in SCRIPT.notes[1:]] == [{"pod": "flow", "namespace": "payments"}] * 3
    assert SCRIPT.notes[0].event.startswith("A shell was spawned")
    assert await m("falcosecurity_falco_talon_notifications_total", notifier="recorder", status="success") == 4


async def test_a_step_fails_naming_the_missing_field(engine: RunningEngine) -> None:
    SCRIPT.reset()
    SCRIPT.gate.set()
    alert = shell_alert("nopod")
    del alert["output_fields"]["k8s.pod.name"]
    await engine.post(json_body=alert)
    await engine.drained()
    assert SCRIPT.calls == []
    [note] = SCRIPT.notes
    assert note.status == "failure"
    assert "k8s.pod.name" in note.error
    assert await engine.metric("falcosecurity_falco_talon_actions_total", status="failure", action="Mark") == 1


async def test_a_failing_notifier_is_counted_not_silent(engine: RunningEngine) -> None:
    SCRIPT.reset()
    SCRIPT.gate.set()
    SCRIPT.fail_notifier = True
    await engine.post(json_body=shell_alert("notify-outage"))
    await engine.drained()
    assert SCRIPT.calls == [("kubernetes:label", "notify-outage", "wait")]
    assert await engine.metric("falcosecurity_falco_talon_notifications_total", status="failure") == 1


async def test_a_step_that_hangs_times_out(tmp_path: Path) -> None:
    SCRIPT.reset()
    rules = """\
- rule: Slow
  match: {rules: [Terminal shell in container]}
  notifiers: [recorder]
  actions:
    - action: Hang
      actionner: kubernetes:label
      parameters: {labels: {behaviour: sleep}}
"""
    async with running_engine(
        tmp_path, rules, registry=scripted_registry(), kube_config=UNUSED_KUBE, step_timeout_seconds=0.3
    ) as e:
        await e.post(json_body=shell_alert("slow"))
        await asyncio.wait_for(e.drained(), 10)
        [note] = SCRIPT.notes
        assert note.status == "failure"
        assert "did not finish within 0.3s" in note.error
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="failure") == 1


async def test_alerts_for_the_same_pod_never_race(engine: RunningEngine) -> None:
    SCRIPT.reset()  # the gate is closed: "Any other shell" waits on it
    for i in range(3):
        assert (await engine.post(json_body=shell_alert("same", output=f"shell {i} in same"))).status == 200
    for i in range(3):
        assert (await engine.post(json_body=shell_alert(f"other-{i}"))).status == 200
    for _ in range(100):
        if len(SCRIPT.calls) >= 4:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    pods = [c[1] for c in SCRIPT.calls]
    assert pods.count("same") == 1  # the other two wait behind it
    assert sorted(p for p in pods if p != "same") == ["other-0", "other-1", "other-2"]  # others in parallel
    SCRIPT.gate.set()
    await engine.drained()
    assert [c[1] for c in SCRIPT.calls].count("same") == 3
    assert SCRIPT.max_running["same"] == 1
    assert all(n.status == "success" for n in SCRIPT.notes)


async def test_duplicates_within_the_window_run_once(engine: RunningEngine) -> None:
    SCRIPT.reset()
    SCRIPT.gate.set()
    first = await engine.post(json_body=shell_alert("dup", output="12:00:00.000000000: Notice same text"))
    again = await engine.post(json_body=shell_alert("dup", output="12:00:00.000000000: Notice same text"))
    other = await engine.post(json_body=shell_alert("dup", output="12:00:00.000000000: Notice other text"))
    assert (first.status, again.status, other.status) == (200, 200, 200)
    assert again.body["duplicate_of"] == first.body["id"]
    assert "duplicate_of" not in other.body
    await engine.drained()
    assert len(SCRIPT.calls) == 2
    assert await engine.metric("talon_opa_dedup_hits_total") == 1


async def test_a_configured_dedup_key_groups_by_rule_and_pod(tmp_path: Path) -> None:
    SCRIPT.reset()
    SCRIPT.gate.set()
    dedup = config.Deduplication(time_window_seconds=5, key=("rule", "k8s.pod.name"))
    async with running_engine(
        tmp_path, FLOW_RULES, registry=scripted_registry(), kube_config=UNUSED_KUBE, deduplication=dedup
    ) as e:
        a = await e.post(json_body=shell_alert("keyed", output="one"))
        b = await e.post(json_body=shell_alert("keyed", output="two"))
        c = await e.post(json_body=shell_alert("keyed-2", output="one"))
        assert b.body["duplicate_of"] == a.body["id"]
        assert "duplicate_of" not in c.body
        await e.drained()
        assert sorted(c[1] for c in SCRIPT.calls) == ["keyed", "keyed-2"]


async def test_a_full_queue_answers_503_and_loses_nothing(tmp_path: Path) -> None:
    SCRIPT.reset()  # gate closed: the first alert holds the only worker
    queue = config.Queue(capacity=2, workers=1, drain_timeout_seconds=10)
    async with running_engine(
        tmp_path, FLOW_RULES, registry=scripted_registry(), kube_config=UNUSED_KUBE, queue=queue
    ) as e:
        assert (await e.post(json_body=shell_alert("q-0"))).status == 200
        for _ in range(100):
            if SCRIPT.calls:
                break
            await asyncio.sleep(0.02)
        assert (await e.post(json_body=shell_alert("q-1"))).status == 200
        assert (await e.post(json_body=shell_alert("q-2"))).status == 200
        full = await e.post(json_body=shell_alert("q-3"))
        assert full.status == 503
        assert full.headers["Retry-After"] == "1"
        assert "queue full" in full.body["error"]
        assert await e.metric("talon_opa_queue_depth") == 2
        SCRIPT.gate.set()
        await e.drained()
        # refused was not remembered by dedup: sending it again works
        assert (await e.post(json_body=shell_alert("q-3"))).status == 200
        await e.drained()
        assert sorted(c[1] for c in SCRIPT.calls) == ["q-0", "q-1", "q-2", "q-3"]
        assert await e.metric("talon_opa_intake_rejected_total", status="503") == 1


async def test_a_queue_full_by_bytes_answers_503_and_loses_nothing(tmp_path: Path) -> None:
    SCRIPT.reset()  # gate closed: the first alert holds the only worker
    queue = config.Queue(capacity=100, workers=1, drain_timeout_seconds=10, max_bytes=12_000)
    intake = config.Intake(max_body_bytes=12_000)

    def big(pod: str) -> dict[str, object]:
        alert = shell_alert(pod)
        alert["output_fields"]["padding"] = "x" * 5000  # ~5.5 KB each: two fit in 12,000 bytes, not three
        return alert

    async with running_engine(
        tmp_path, FLOW_RULES, registry=scripted_registry(), kube_config=UNUSED_KUBE, queue=queue, intake=intake
    ) as e:
        assert (await e.post(json_body=big("b-0"))).status == 200
        for _ in range(100):
            if SCRIPT.calls:
                break
            await asyncio.sleep(0.02)
        assert (await e.post(json_body=big("b-1"))).status == 200  # b-0 runs (held), b-1 waits
        full = await e.post(json_body=big("b-2"))  # the running alert's body counts too: it is still in memory
        assert full.status == 503
        assert full.headers["Retry-After"] == "1"
        assert "queue.max_bytes" in full.body["error"]
        assert await e.metric("talon_opa_queue_depth") == 1  # by bytes, far below the count capacity
        SCRIPT.gate.set()
        await e.drained()
        assert (await e.post(json_body=big("b-2"))).status == 200
        await e.drained()
        assert sorted(c[1] for c in SCRIPT.calls) == ["b-0", "b-1", "b-2"]


@pytest.mark.parametrize("n", [20])
async def test_sigterm_style_drain_finishes_every_accepted_alert(tmp_path: Path, n: int) -> None:
    SCRIPT.reset()
    async with running_engine(tmp_path, FLOW_RULES, registry=scripted_registry(), kube_config=UNUSED_KUBE) as e:
        for i in range(n):
            assert (await e.post(json_body=shell_alert(f"drain-{i}"))).status == 200
        engine = e.engine

        async def release() -> None:
            await asyncio.sleep(0.3)
            SCRIPT.gate.set()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(release())
            left = await engine.queue.drain(10)  # what the engine does on SIGTERM
        assert left == 0
        assert (await e.post(json_body=shell_alert("late"))).status == 503
    assert len(SCRIPT.calls) == n
