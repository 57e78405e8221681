"""Decide-ahead through the running engine: while `queue.workers` plans run, up to `opa.batch_size` more
alerts are decided (their decisions share OPA batches) and wait for a worker's slot, still counted in the
queue's depth and capacity; alerts about the same pod still run one after the other; with caps limits
nothing is decided ahead."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from talon_opa.core import config
from talon_opa.core.kube import KubeConfig
from talon_opa.engine.lifecycle import decide_ahead
from tests.e2e import engine_harness
from tests.e2e.engine_harness import running_engine, shell_alert
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


async def test_alerts_are_decided_ahead_of_the_workers_and_run_no_more_than_the_workers(tmp_path: Path) -> None:
    SCRIPT.reset()  # the gate is closed: every step waits on it
    queue = config.Queue(capacity=6, workers=2, drain_timeout_seconds=20)
    opa = dataclasses.replace(config.Opa(), batch_size=8)
    async with running_engine(
        tmp_path, WAITING_RULES, registry=scripted_registry(), kube_config=UNUSED_KUBE, queue=queue, opa=opa
    ) as e:
        assert e.engine.decide_ahead == 8
        pods = ["same", "same", *(f"other-{i}" for i in range(6))]
        for i, pod in enumerate(pods):
            assert (await e.post(json_body=shell_alert(pod, output=f"shell {i} in {pod}"))).status == 200
            if i == 2:  # the first "same" and other-0 hold both workers before the rest fill the capacity
                for _ in range(250):  # bounded
                    if len(SCRIPT.calls) == 2:
                        break
                    await asyncio.sleep(0.02)
                assert len(SCRIPT.calls) == 2
        for _ in range(250):  # bounded: until the alerts that may be decided are
            if await e.metric("talon_opa_decision_duration_seconds_count") >= 7:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        # 7 decided (the second "same" waits behind the first, undecided), 2 running, 5 waiting for a slot
        assert await e.metric("talon_opa_decision_duration_seconds_count") == 7
        assert len(SCRIPT.calls) == 2
        # decided or not, an alert whose plan has not started still counts as waiting, against the capacity
        assert await e.metric("talon_opa_queue_depth") == 6
        assert (await e.post(json_body=shell_alert("one-too-many"))).status == 503
        SCRIPT.gate.set()
        await e.drained()
        assert sorted(c[1] for c in SCRIPT.calls) == sorted(pods)
        assert SCRIPT.max_running["same"] == 1
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="success") == 8


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
