"""Hostile and unlucky input through real HTTP (issue 14): compressed bodies, bad bytes in headers, deep
nesting, a time with a newline, bad request lines, slow clients and too many connections. Every refusal
is JSON naming the field; nothing refused is queued; what is accepted is decided (real child OPA)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from talon_opa.core import config, events
from tests.e2e.engine_harness import DRY_RUN_RULES, RunningEngine, running_engine, shell_alert

TOKEN = "hostile-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json", **AUTH}
LIMIT = 4096


@pytest_asyncio.fixture(loop_scope="session")
async def engine(tmp_path: Path) -> AsyncIterator[RunningEngine]:
    intake = config.Intake(max_body_bytes=LIMIT, read_timeout_seconds=1.0, max_connections=8)
    async with running_engine(tmp_path, DRY_RUN_RULES, intake=intake, auth=config.Auth(token=TOKEN)) as e:
        yield e


def host_port(e: RunningEngine) -> tuple[str, int]:
    host, port = e.url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


async def raw(e: RunningEngine, data: bytes) -> bytes:
    """Send raw bytes, read the whole answer (the server closes after it)."""
    reader, writer = await asyncio.open_connection(*host_port(e))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def json_body(answer: bytes) -> dict[str, object]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/json" in head, answer
    doc = json.loads(body)
    assert isinstance(doc, dict)
    return doc


async def nothing_queued(e: RunningEngine) -> None:
    assert e.engine.queue.unfinished == 0
    assert await e.metric("falcosecurity_falco_talon_events_total") == 0


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate", "raw-deflate"])
async def test_a_compressed_alert_is_decompressed_and_decided(tmp_path: Path, coding: str) -> None:
    body = json.dumps(shell_alert(f"gz-{coding}")).encode()
    if coding in ("gzip", "x-gzip"):
        sent = gzip.compress(body)
    elif coding == "deflate":
        sent = zlib.compress(body)
    else:  # "deflate" without its zlib wrapper, as some clients send it
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        sent, coding = c.compress(body) + c.flush(), "deflate"
    async with running_engine(tmp_path, DRY_RUN_RULES) as e:
        reply = await e.post(data=sent, headers={"Content-Type": "application/json", "Content-Encoding": coding})
        assert reply.status == 200, reply.body
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="dry_run") == 1


@pytest.mark.parametrize(
    ("coding", "sent", "status", "words"),
    [
        ("gzip", b'{"rule": "plain JSON, not gzip"}', 400, "cannot be decompressed"),
        ("deflate", b"\x00\x01\x02 not deflate", 400, "cannot be decompressed"),
        ("gzip", gzip.compress(b'{"rule": "x"}')[:-12], 400, "truncated"),
        ("br", b"{}", 415, "not supported"),
        ("gzip, br", b"{}", 415, "not supported"),
        ("bogus", b"{}", 415, "not supported"),
    ],
)
async def test_an_undecodable_or_unsupported_encoding_is_refused_naming_the_header(
    engine: RunningEngine, coding: str, sent: bytes, status: int, words: str
) -> None:
    reply = await engine.post(data=sent, headers={**JSON, "Content-Encoding": coding})
    assert reply.status == status, reply.body
    assert reply.body["field"] == "Content-Encoding"
    assert words in reply.body["error"]
    await nothing_queued(engine)


async def test_a_zip_bomb_stops_at_the_body_limit(engine: RunningEngine) -> None:
    bomb = gzip.compress(b'{"rule": "' + b"a" * 20 * 1024 * 1024 + b'"}')  # 20 MiB in ~20 KiB
    assert len(bomb) > LIMIT  # over the limit as sent: 413 before decompressing anything
    reply = await engine.post(data=bomb, headers={**JSON, "Content-Encoding": "gzip"})
    assert reply.status == 413
    small_bomb = gzip.compress(b" " * (10 * LIMIT) + b"{}")
    assert len(small_bomb) < LIMIT  # under the limit as sent, over it decompressed
    reply = await engine.post(data=small_bomb, headers={**JSON, "Content-Encoding": "gzip"})
    assert reply.status == 413
    assert "decompressed" in reply.body["error"]
    await nothing_queued(engine)


async def test_a_non_utf8_authorization_header_is_a_401(engine: RunningEngine) -> None:
    answer = await raw(
        engine, b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xc3\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer
    assert json_body(answer)["field"] == "Authorization"
    await nothing_queued(engine)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"output_fields": {"a": ' + b'{"b": ' * 40 + b"1" + b"}" * 40 + b"}}", "output_fields"),
        (b'{"output_fields": {"a": ' + b"[" * 400 + b"]" * 400 + b"}}", "output_fields"),
        (b'{"tags": ' + b"[" * 500 + b"]" * 500 + b"}", "tags"),
        (b'{"context": {"x": ' + b"[" * 40 + b"]" * 40 + b"}}", "context"),
    ],
)
async def test_values_nested_too_deep_are_refused_at_intake(engine: RunningEngine, body: bytes, field: str) -> None:
    reply = await engine.post(data=body, headers=JSON)
    assert reply.status == 400, reply.body
    assert reply.body["field"] == field
    assert f"more than {events.MAX_DEPTH} levels" in reply.body["error"]
    await nothing_queued(engine)


async def test_nesting_up_to_the_limit_is_accepted_and_decided(tmp_path: Path) -> None:
    value: object = "leaf"
    for _ in range(events.MAX_DEPTH):
        value = [value]
    alert = shell_alert("deep-ok")
    alert["output_fields"]["deep"] = value
    alert["tags"] = [value]
    async with running_engine(tmp_path, DRY_RUN_RULES) as e:
        reply = await e.post(json_body=alert)
        assert reply.status == 200, reply.body
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="dry_run") == 1
        assert await e.metric("talon_opa_alerts_failed_total") == 0


async def test_a_time_ending_in_a_newline_is_refused(engine: RunningEngine) -> None:
    reply = await engine.post(json_body=shell_alert() | {"time": "2026-07-14T08:21:07.114583261Z\n"}, headers=AUTH)
    assert reply.status == 400
    assert reply.body["field"] == "time"
    await nothing_queued(engine)


@pytest.mark.parametrize("body_size", [0, 100_000, 4_000_000])  # a big body: no reset before the answer
async def test_an_invalid_method_gets_a_json_400_naming_the_method(engine: RunningEngine, body_size: int) -> None:
    answer = await raw(
        engine, b"FOO@ / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % body_size + b"x" * body_size
    )
    assert b" 400 " in answer.split(b"\r\n", 1)[0], answer
    doc = json_body(answer)
    assert doc["field"] == "method"
    assert "method" in str(doc["error"]).lower()


@pytest.mark.parametrize("header", [b"X-Big: " + b"a" * 20000, b"X-Nul: \x00", b"Bad Name: x"])
async def test_a_bad_header_gets_a_json_400_naming_the_headers(engine: RunningEngine, header: bytes) -> None:
    answer = await raw(engine, b"POST / HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nContent-Length: 2\r\n\r\n{}")
    assert b" 400 " in answer.split(b"\r\n", 1)[0], answer
    assert json_body(answer)["field"] == "headers"


async def test_a_client_trickling_its_headers_is_disconnected(engine: RunningEngine) -> None:
    reader, writer = await asyncio.open_connection(*host_port(engine))

    async def trickle() -> None:  # one header byte every 0.1 s, never ending the headers (bounded: 30 s)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        for _ in range(300):
            writer.write(b"a")
            await writer.drain()
            await asyncio.sleep(0.1)

    task = asyncio.create_task(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(), 40)
    except ConnectionError:
        answer = b""
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        writer.close()
    assert answer == b"", answer  # closed, no request was ever handled
    await nothing_queued(engine)


async def test_a_body_sent_too_slowly_gets_a_408(engine: RunningEngine) -> None:
    reader, writer = await asyncio.open_connection(*host_port(engine))
    try:
        writer.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 20)  # the body never completes
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert json_body(answer)["field"] == "body"
    await nothing_queued(engine)


async def test_connections_beyond_the_limit_get_a_503_and_the_rest_still_work(engine: RunningEngine) -> None:
    idle = [await asyncio.open_connection(*host_port(engine)) for _ in range(8)]
    try:
        answer = await raw(engine, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"Retry-After: 1" in answer
        assert "max_connections" in str(json_body(answer)["hint"])
    finally:
        for _, w in idle:
            w.close()
    for _ in range(100):  # the idle connections are closed: the limit frees up
        if (await engine.get("/healthz")).status == 200:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the engine still refused connections after the idle ones closed")
