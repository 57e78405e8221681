"""Intake through real HTTP, with the real rules → bundle → child OPA path behind it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from talon_opa.core import config
from tests.e2e.engine_harness import DRY_RUN_RULES, RunningEngine, running_engine, shell_alert

TOKEN = "s3cret-token"


@pytest_asyncio.fixture(loop_scope="session")
async def engine(tmp_path: Path) -> AsyncIterator[RunningEngine]:
    async with running_engine(tmp_path, DRY_RUN_RULES, intake=config.Intake(max_body_bytes=4096)) as e:
        yield e


async def assert_nothing_queued(engine: RunningEngine) -> None:
    assert engine.engine.queue.unfinished == 0
    assert await engine.metric("falcosecurity_falco_talon_events_total") == 0
    assert await engine.metric("talon_opa_queue_depth") == 0


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b'{"rule": "Terminal shell in container", ', "", "malformed JSON"),
        (b"", "", "empty body"),
        (b"[1, 2]", "", "JSON object"),
        (b'{"rule": 5}', "rule", "string"),
        (b'{"output_fields": ["a"]}', "output_fields", "object"),
        (b'{"time": "yesterday"}', "time", "RFC 3339"),
    ],
)
async def test_intake_refuses_bad_json_with_400_naming_the_field(
    engine: RunningEngine, body: bytes, field: str, words: str
) -> None:
    reply = await engine.post(data=body, headers={"Content-Type": "application/json"})
    assert reply.status == 400
    assert reply.body["field"] == field
    assert words in reply.body["error"]
    await assert_nothing_queued(engine)
    assert await engine.metric("talon_opa_intake_rejected_total", status="400") == 1


async def test_intake_refuses_text_plain_with_415_and_the_falco_hint(engine: RunningEngine) -> None:
    reply = await engine.post(data="08:21:07.114583261: Notice A shell", headers={"Content-Type": "text/plain"})
    assert reply.status == 415
    assert "json_output" in reply.body["hint"]
    assert set(reply.body) >= {"error", "field"}
    await assert_nothing_queued(engine)


async def test_intake_refuses_an_oversized_body_with_413(engine: RunningEngine) -> None:
    alert = shell_alert()
    alert["output_fields"]["padding"] = "x" * 5000
    reply = await engine.post(json_body=alert)
    assert reply.status == 413
    assert "4096" in reply.body["error"]
    assert "max_body_bytes" in reply.body["hint"]

    # chunked, without Content-Length: refused while reading
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    async with engine.http.post(engine.url + "/", data=chunks(), headers={"Content-Type": "application/json"}) as r:
        assert r.status == 413
        assert (await r.json())["field"] == ""
    await assert_nothing_queued(engine)


async def test_intake_refuses_other_methods_and_reserves_v1(engine: RunningEngine) -> None:
    reply = await engine.get("/")
    assert reply.status == 405
    assert reply.body["field"] == "method"
    reply = await engine.post("/v1/anything", json_body=shell_alert())
    assert reply.status == 404
    await assert_nothing_queued(engine)


async def test_healthz_and_readyz_report_the_active_bundle(engine: RunningEngine) -> None:
    reply = await engine.get("/healthz")
    assert (reply.status, reply.body) == (200, {"status": "ok"})
    reply = await engine.get("/readyz")
    assert reply.status == 200
    assert engine.engine.built is not None
    assert reply.body["revision"] == engine.engine.built.revision


async def test_a_valid_alert_is_queued_and_answered_with_id_and_trace_id(engine: RunningEngine) -> None:
    reply = await engine.post(json_body=shell_alert("api-7"))
    assert reply.status == 200
    assert set(reply.body) == {"id", "trace_id"}
    assert len(reply.body["trace_id"]) == 32
    # any non-reserved path is intake too (Talon's catch-all)
    reply = await engine.post("/falco/events", json_body=shell_alert("api-8"))
    assert reply.status == 200
    await engine.drained()
    assert await engine.metric("falcosecurity_falco_talon_events_total") == 2
    assert await engine.metric("falcosecurity_falco_talon_actions_total", status="dry_run") == 2


async def test_an_incoming_traceparent_is_continued(engine: RunningEngine) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    reply = await engine.post(
        json_body=shell_alert("api-9"), headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    )
    assert reply.status == 200
    assert reply.body["trace_id"] == trace_id


async def test_a_token_is_required_when_configured(tmp_path: Path) -> None:
    async with running_engine(tmp_path, DRY_RUN_RULES, auth=config.Auth(token=TOKEN)) as e:
        reply = await e.post(json_body=shell_alert())
        assert reply.status == 401
        assert reply.body["field"] == "Authorization"
        assert "missing" in reply.body["error"]
        reply = await e.post(json_body=shell_alert(), headers={"Authorization": "Bearer wrong"})
        assert reply.status == 401
        assert "invalid" in reply.body["error"]
        assert await e.metric("falcosecurity_falco_talon_events_total") == 0
        reply = await e.post(json_body=shell_alert(), headers={"Authorization": f"Bearer {TOKEN}"})
        assert reply.status == 200
        await e.drained()


async def test_a_custom_token_header_works_for_falcosidekick(tmp_path: Path) -> None:
    async with running_engine(tmp_path, DRY_RUN_RULES, auth=config.Auth(token=TOKEN, header="X-Talon-Token")) as e:
        assert (await e.post(json_body=shell_alert())).status == 401
        reply = await e.post(json_body=shell_alert(), headers={"X-Talon-Token": TOKEN})
        assert reply.status == 200, json.dumps(reply.body)
