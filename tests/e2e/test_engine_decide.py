"""The OPA client against a real OPA: a missing or ill-shaped result is an OpaError (not retried), a
refused token too; an unreachable OPA is retried until it answers. Micro-batched decisions give each
alert exactly its own plan (or its own error), whatever the bundle."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from talon_opa.catalog import default_registry
from talon_opa.core.errors import OpaError
from talon_opa.core.events import decode_alert
from talon_opa.engine import reload
from talon_opa.engine.batcher import Batcher
from talon_opa.engine.reload import DROP_DECISION_PATH
from talon_opa.opa.client import Endpoint, OpaClient
from talon_opa.opa.plan import Plan
from talon_opa.opa.process import free_port
from tests.conftest import OpaFactory
from tests.harness.paths import ALERTS, SEED_RULES

PLAN = {
    "matched_rules": ["R"],
    "steps": [
        {
            "rule": "R",
            "action": "A",
            "actionner": "kubernetes:label",
            "parameters": {"labels": {"a": "b"}},
            "continue": False,
            "ignore_errors": True,
            "dry_run": False,
            "output": None,
            "notifiers": ["slack"],
        }
    ],
}


def bundle(tmp_path: Path, plan_rego: str, revision: str = "r1") -> Path:
    b = tmp_path / f"bundle-{revision}"
    (b / "talon").mkdir(parents=True)
    (b / ".manifest").write_text(json.dumps({"revision": revision, "roots": ["talon"]}))
    (b / "talon" / "plan.rego").write_text(f"package talon\n\n{plan_rego}\n")
    return b


async def test_a_plan_is_parsed_with_its_revision(opa: OpaFactory, tmp_path: Path) -> None:
    server = await opa(bundle(tmp_path, f"plan := {json.dumps(PLAN)}"), unix_socket=True, token="tok")
    ep = Endpoint.open(server.base_url, server.connector(), server.headers())
    try:
        plan = await OpaClient(lambda: ep).decide({"rule": "x"})
        assert plan.matched_rules == ("R",)
        [step] = plan.steps
        assert (step.continue_, step.ignore_errors, step.notifiers) == (False, True, ("slack",))
        assert plan.revision == "r1"
        assert await OpaClient(lambda: ep).revisions() >= {"r1"}
    finally:
        await ep.close()


@pytest.mark.parametrize(
    ("rego", "words"),
    [
        ("other := 1", "no result"),
        ('plan := {"matched_rules": "R", "steps": []}', "matched_rules"),
        ('plan := {"matched_rules": [], "steps": [{"rule": "R"}]}', "steps[0].action"),
        (
            'plan := {"matched_rules": [], "steps": [{"rule": "R", "action": "A", "actionner": "x", '
            '"continue": "no"}]}',
            "steps[0].continue",
        ),
    ],
)
async def test_a_missing_or_ill_shaped_plan_is_an_opa_error(
    opa: OpaFactory, tmp_path: Path, rego: str, words: str
) -> None:
    server = await opa(bundle(tmp_path, rego))
    ep = Endpoint.open(server.base_url, server.connector(), server.headers())
    errors: list[str] = []
    try:
        with pytest.raises(OpaError, match=words.replace("[", r"\[").replace("]", r"\]")):
            await OpaClient(lambda: ep, on_error=errors.append).decide({})
        assert errors == ["bad_answer"]  # once: not retried
    finally:
        await ep.close()


async def test_a_refused_token_is_an_error_not_a_retry(opa: OpaFactory, tmp_path: Path) -> None:
    server = await opa(bundle(tmp_path, f"plan := {json.dumps(PLAN)}"), token="right")
    ep = Endpoint.open(server.base_url, server.connector(), {"Authorization": "Bearer wrong"})
    try:
        with pytest.raises(OpaError, match="401"):
            await OpaClient(lambda: ep).decide({})
    finally:
        await ep.close()


async def test_an_unreachable_opa_is_retried_until_it_answers(opa: OpaFactory, tmp_path: Path) -> None:
    dead = Endpoint.open(f"http://127.0.0.1:{free_port()}", aiohttp.TCPConnector(), {})
    current = [dead]
    errors: list[str] = []
    client = OpaClient(lambda: current[0], retry_initial=0.02, retry_max=0.1, on_error=errors.append)
    decision = asyncio.ensure_future(client.decide({}))
    await asyncio.sleep(0.3)
    assert not decision.done()
    server = await opa(bundle(tmp_path, f"plan := {json.dumps(PLAN)}"))
    live = Endpoint.open(server.base_url, server.connector(), server.headers())
    current[0] = live
    try:
        plan = await asyncio.wait_for(decision, 10)
        assert plan.attempts > 1
        assert plan.matched_rules == ("R",)
        assert set(errors) == {"unavailable"}
    finally:
        await dead.close()
        await live.close()


async def _batcher(
    client: OpaClient, max_size: int = 64, max_bytes: int = 4 * 1024 * 1024, in_flight: int = 1
) -> tuple[Batcher, asyncio.Task[None]]:
    batcher = Batcher(client, max_size=max_size, max_bytes=max_bytes, in_flight=in_flight)
    task = asyncio.get_running_loop().create_task(batcher.run(), name="test-batcher")
    await asyncio.sleep(0)  # running: later alerts are batched
    return batcher, task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _burst() -> list[dict[str, Any]]:
    """Every sample alert, plus variants that match or miss the seed rules by their fields and tags."""
    alerts = [decode_alert(p.read_bytes()).opa_input() for p in sorted(ALERTS.glob("*.json"))]
    for base in list(alerts):
        alerts.append({**base, "output_fields_str": {**base["output_fields_str"], "k8s.ns.name": "kube-system"}})
        alerts.append({**base, "tags_set": {}, "priority_rank": 0})
    return alerts


async def test_a_burst_decided_in_batches_gets_exactly_the_plans_decided_one_by_one(
    opa: OpaFactory, tmp_path: Path
) -> None:
    built = reload.build([str(SEED_RULES)], default_registry(), tmp_path)
    decision_ids = ("--set=decision_logs.console=true", f"--set=decision_logs.drop_decision={DROP_DECISION_PATH}")
    server = await opa(built.path, unix_socket=True, token="tok", extra_args=decision_ids)
    ep = Endpoint.open(server.base_url, server.connector(), server.headers())
    client = OpaClient(lambda: ep)
    alerts = _burst()
    try:
        alone = [await client.decide(a) for a in alerts]
        assert any(p.steps for p in alone)
        assert any(not p.matched_rules for p in alone)
        batcher, task = await _batcher(client, max_size=16)
        try:
            batched = await asyncio.gather(*(batcher.decide(a) for a in alerts))
        finally:
            await _stop(task)
        assert [(p.matched_rules, p.steps) for p in batched] == [(p.matched_rules, p.steps) for p in alone]
        assert {p.revision for p in batched} == {built.revision}
        assert max(p.batch_size for p in batched) == 16  # the burst went in full batches...
        ids = [p.decision_id for p in batched]
        assert all(ids)
        assert len(set(ids)) == -(-len(alerts) // 16)  # ...one decision each
    finally:
        await ep.close()


async def test_batches_in_flight_are_bounded_and_each_alert_gets_its_own_plan(opa: OpaFactory, tmp_path: Path) -> None:
    built = reload.build([str(SEED_RULES)], default_registry(), tmp_path)
    server = await opa(built.path, unix_socket=True, token="tok")
    ep = Endpoint.open(server.base_url, server.connector(), server.headers())
    client = OpaClient(lambda: ep)
    alerts = _burst() * 4
    try:
        alone = [await client.decide(a) for a in alerts]
        for in_flight in (1, 3):
            batcher, task = await _batcher(client, max_size=8, in_flight=in_flight)
            seen = 0
            decisions = asyncio.gather(*(batcher.decide(a) for a in alerts))
            try:
                while not decisions.done():  # bounded by the decisions; samples the requests under way
                    seen = max(seen, ep.in_flight)
                    await asyncio.sleep(0)
                batched = await decisions
            finally:
                await _stop(task)
            assert seen == in_flight
            assert [(p.matched_rules, p.steps) for p in batched] == [(p.matched_rules, p.steps) for p in alone]
            assert max(p.batch_size for p in batched) == 8
    finally:
        await ep.close()


async def test_stopping_fails_every_alert_of_the_batches_under_way(tmp_path: Path) -> None:
    dead = Endpoint.open(f"http://127.0.0.1:{free_port()}", aiohttp.TCPConnector(), {})
    batcher, task = await _batcher(OpaClient(lambda: dead, retry_initial=0.02, retry_max=0.05), max_size=2, in_flight=2)
    try:
        decisions = [asyncio.ensure_future(batcher.decide(a)) for a in _burst()[:5]]
        await asyncio.sleep(0.2)  # two batches retry, the fifth alert waits
        assert not any(d.done() for d in decisions)
        await _stop(task)
        results = await asyncio.wait_for(asyncio.gather(*decisions, return_exceptions=True), 5)
        assert [str(r) for r in results] == ["the engine stopped before the alert was decided (send it again)"] * 5
    finally:
        await dead.close()


async def test_large_alerts_are_batched_up_to_max_bytes(opa: OpaFactory, tmp_path: Path) -> None:
    built = reload.build([str(SEED_RULES)], default_registry(), tmp_path)
    server = await opa(built.path, unix_socket=True, token="tok")
    ep = Endpoint.open(server.base_url, server.connector(), server.headers())
    alerts = _burst()[:12]
    try:
        batcher, task = await _batcher(OpaClient(lambda: ep), max_size=16, max_bytes=3000)
        try:
            sizes = [1000] * 11 + [5000]  # 3 of 1000 bytes fit in 3000; one of 5000 goes alone
            plans = await asyncio.gather(*(batcher.decide(a, size=n) for a, n in zip(alerts, sizes, strict=True)))
        finally:
            await _stop(task)
        assert max(p.batch_size for p in plans) == 3
        assert plans[-1].batch_size == 1
    finally:
        await ep.close()


async def test_a_bundle_without_the_batch_entrypoint_is_decided_alert_by_alert(opa: OpaFactory, tmp_path: Path) -> None:
    server = await opa(bundle(tmp_path, f"plan := {json.dumps(PLAN)}"))
    ep = Endpoint.open(server.base_url, server.connector(), server.headers())
    batcher, task = await _batcher(OpaClient(lambda: ep))
    try:
        plans = await asyncio.gather(*(batcher.decide({"rule": str(i)}) for i in range(5)))
        assert [p.matched_rules for p in plans] == [("R",)] * 5
        assert {p.batch_size for p in plans} == {1}
    finally:
        await _stop(task)
        await ep.close()


async def test_an_ill_shaped_plan_in_a_batch_fails_that_alert_only(opa: OpaFactory, tmp_path: Path) -> None:
    rego = (
        f'plan := {json.dumps(PLAN)} if input.rule != "bad"\n\n'
        'plan := {"matched_rules": "R", "steps": []} if input.rule == "bad"\n\n'
        'batch := {"plans": [p | some a in input.alerts; p := plan with input as a]}'
    )
    server = await opa(bundle(tmp_path, rego))
    ep = Endpoint.open(server.base_url, server.connector(), server.headers())
    errors: list[str] = []
    batcher, task = await _batcher(OpaClient(lambda: ep, on_error=errors.append))
    try:
        results = await asyncio.gather(
            *(batcher.decide({"rule": r}) for r in ("good", "bad", "good")), return_exceptions=True
        )
        good, bad, good_again = results
        assert isinstance(good, Plan)
        assert isinstance(good_again, Plan)
        assert (good.batch_size, good.matched_rules) == (3, ("R",))
        assert isinstance(bad, OpaError)
        assert "matched_rules" in str(bad)
        assert errors == ["bad_answer"]
    finally:
        await _stop(task)
        await ep.close()


async def test_a_batch_waits_for_an_unreachable_opa_and_each_alert_hears_of_the_retries(
    opa: OpaFactory, tmp_path: Path
) -> None:
    built = reload.build([str(SEED_RULES)], default_registry(), tmp_path)
    dead = Endpoint.open(f"http://127.0.0.1:{free_port()}", aiohttp.TCPConnector(), {})
    current = [dead]
    client = OpaClient(lambda: current[0], retry_initial=0.02, retry_max=0.1)
    batcher, task = await _batcher(client)
    retries: list[list[int]] = [[], [], []]

    def retrying(i: int) -> Callable[[int, OpaError], None]:
        return lambda attempt, error: retries[i].append(attempt)

    alerts = _burst()[:3]
    decisions = [asyncio.ensure_future(batcher.decide(a, on_retry=retrying(i))) for i, a in enumerate(alerts)]
    await asyncio.sleep(0.3)
    assert not any(d.done() for d in decisions)
    server = await opa(built.path)
    live = Endpoint.open(server.base_url, server.connector(), server.headers())
    current[0] = live
    try:
        plans = await asyncio.wait_for(asyncio.gather(*decisions), 10)
        assert all(p.attempts > 1 and p.batch_size == 3 for p in plans)
        assert all(r and r == list(range(1, len(r) + 1)) for r in retries)
        assert [(p.matched_rules, p.steps) for p in plans] == [
            ((await client.decide(a)).matched_rules, (await client.decide(a)).steps) for a in alerts
        ]
    finally:
        await _stop(task)
        await dead.close()
        await live.close()


class _FailsOnce(OpaClient):
    """The real client, whose first batch breaks with an error that is not OPA's."""

    failed = False

    async def decide_batch_once(self, inputs: Sequence[Mapping[str, Any]]) -> list[Plan | OpaError]:
        if not self.failed:
            self.failed = True
            raise ValueError("not OPA's fault")
        return await super().decide_batch_once(inputs)


async def test_an_unexpected_error_fails_its_batch_and_the_batcher_goes_on(opa: OpaFactory, tmp_path: Path) -> None:
    built = reload.build([str(SEED_RULES)], default_registry(), tmp_path)
    server = await opa(built.path)
    ep = Endpoint.open(server.base_url, server.connector(), server.headers())
    batcher, task = await _batcher(_FailsOnce(lambda: ep))
    alerts = _burst()[:2]
    try:
        first = await asyncio.gather(*(batcher.decide(a) for a in alerts), return_exceptions=True)
        assert [type(r) for r in first] == [ValueError, ValueError]
        again = await asyncio.gather(*(batcher.decide(a) for a in alerts))
        assert {p.batch_size for p in again} == {2}
        assert not task.done()
    finally:
        await _stop(task)
        await ep.close()
