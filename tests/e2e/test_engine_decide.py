"""The OPA client against a real OPA: a missing or ill-shaped result is an OpaError (not retried), a
refused token too; an unreachable OPA is retried until it answers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from engine.decide import Endpoint, OpaClient
from engine.errors import OpaError
from engine.opa_process import free_port
from tests.conftest import OpaFactory

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
