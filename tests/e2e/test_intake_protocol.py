"""The intake's own HTTP/1.1 protocol (engine/intake_protocol.py) against aiohttp's route, over real sockets.

Every request below goes to two engines started alike (real child OPA): one whose listener answers the usual
alert itself, one where aiohttp answers everything. Their answers must be the same bytes but for the Date
header and the random ids. Then what only the own protocol does: several requests in one read, a request
split across reads, a connection handed to aiohttp mid-way that keeps working, `Connection: close`.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from talon_opa.core import config
from talon_opa.engine.app import create_app
from talon_opa.engine.intake import RESERVED
from talon_opa.engine.lifecycle import Engine
from tests.e2e.engine_harness import DRY_RUN_RULES, RunningEngine, running_engine, shell_alert
from tests.e2e.engine_harness import test_config as engine_config
from tests.harness import gosender

TOKEN = "protocol-token"
LIMIT = 4096
EVENTS = "falcosecurity_falco_talon_events_total"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@pytest_asyncio.fixture(loop_scope="session")
async def engines(tmp_path: Path) -> AsyncIterator[tuple[RunningEngine, RunningEngine]]:
    """(own protocol, aiohttp only), same config."""
    intake, auth = config.Intake(max_body_bytes=LIMIT, read_timeout_seconds=2.0), config.Auth(token=TOKEN)
    async with (
        running_engine(tmp_path, DRY_RUN_RULES, intake=intake, auth=auth) as own,
        running_engine(tmp_path, DRY_RUN_RULES, own_protocol=False, intake=intake, auth=auth) as plain,
    ):
        yield own, plain


def host_port(e: RunningEngine) -> tuple[str, int]:
    host, port = e.url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """One HTTP answer (head and Content-Length body), after a `100 Continue` if one came."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    if head == CONTINUE:
        head += await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    m = re.search(rb"\r\nContent-Length: (\d+)\r\n", head, re.IGNORECASE)
    assert m, head
    return head + await asyncio.wait_for(reader.readexactly(int(m[1])), 10)


def request(body: bytes, *, path: bytes = b"/", headers: bytes = b"", token: bool = True) -> bytes:
    auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n" if token else b""
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: engine\r\n" + auth + headers
        + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip


def alert(output: str) -> bytes:
    return json.dumps(shell_alert(output=output)).encode()


Answer = tuple[bytes, list[bytes], object]


def normalised(answer: bytes) -> Answer:
    """Status line (after `100 Continue +`), sorted headers without Date, and the JSON body with ids replaced."""
    interim = answer.startswith(CONTINUE)
    head, _, body = answer.removeprefix(CONTINUE).partition(b"\r\n\r\n")
    status, *headers = head.split(b"\r\n")
    status = b"100 Continue + " + status if interim else status
    doc: object = json.loads(body) if b"application/json" in head else body
    if isinstance(doc, dict):
        random = ("id", "trace_id", "duplicate_of")  # a trace id is kept when it is the one sent in traceparent
        doc = {k: ("<id>" if k in random and v != TRACE_ID else v) for k, v in doc.items()}
    kept = sorted(h for h in headers if not h.lower().startswith((b"date:", b"content-length:")))
    return status, kept, doc


CASES = {
    "an alert": request(alert("one")),
    "its duplicate": request(alert("one")),
    "another path": request(alert("two"), path=b"/falco?source=sidekick"),
    "W3C trace headers": request(
        alert("three"), headers=b"traceparent: 00-%s-b7ad6b7169203331-01\r\n" % TRACE_ID.encode()
    ),
    "no token": request(alert("four"), token=False),
    "a wrong token": request(alert("five"), token=False, headers=b"Authorization: Bearer nope\r\n"),
    "malformed JSON": request(b"{"),
    "an empty body": request(b""),
    "not an object": request(b"[1]"),
    "text/plain": request(b"Warning x", headers=b"Content-Type: text/plain\r\n"),
    "a missing rule": request(b'{"output": "x"}'),
    "over the limit": request(b"{" + b" " * LIMIT + b"}"),
    "gzip": request(gzip.compress(alert("six")), headers=b"Content-Encoding: gzip\r\n"),
    "a GET": b"GET / HTTP/1.1\r\nHost: engine\r\n\r\n",
    "an engine route": b"GET /healthz HTTP/1.1\r\nHost: engine\r\n\r\n",
    "an engine API": request(b"{}", path=b"/v1/nothing"),
    "HTTP/1.0": request(alert("seven")).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    "chunked": b"POST / HTTP/1.1\r\nHost: engine\r\nAuthorization: Bearer " + TOKEN.encode()
    + b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[1\r\n1\r\n]\r\n0\r\n\r\n",
    "a percent-escaped reserved path": request(b"{}", path=b"/%68ealthz"),
    "a dot segment": request(b"{}", path=b"/v1/../metrics"),
    "Expect: 100-continue": request(alert("eleven"), headers=b"Expect: 100-continue\r\n"),
    "another Expect": request(alert("twelve"), headers=b"Expect: something\r\n"),
    "two Content-Lengths": request(alert("eight"), headers=b"Content-Length: 1\r\n"),
    "a NUL in a header": request(alert("nine"), headers=b"X-Note: a\x00b\r\n"),
    "a folded header": request(alert("ten"), headers=b"X-Note: a\r\n b\r\n"),
}  # fmt: skip


async def test_every_answer_is_the_same_as_aiohttps(engines: tuple[RunningEngine, RunningEngine]) -> None:
    answers: dict[str, list[Answer]] = {}
    for e in engines:
        for name, data in CASES.items():
            reader, writer = await asyncio.open_connection(*host_port(e))
            writer.write(data)
            answer = await read_answer(reader)
            writer.close()
            answers.setdefault(name, []).append(normalised(answer))
    for name, (mine, aiohttps) in answers.items():
        assert mine == aiohttps, name
    assert answers["an alert"][0][0] == b"HTTP/1.1 200 OK"
    assert answers["its duplicate"][0][2]["duplicate"] is True  # type: ignore[index]
    assert answers["no token"][0][0] == b"HTTP/1.1 401 Unauthorized"
    assert answers["over the limit"][0][0] == b"HTTP/1.1 413 Request Entity Too Large"
    assert answers["W3C trace headers"][0][2]["trace_id"] == TRACE_ID  # type: ignore[index]
    assert answers["Expect: 100-continue"][0][0] == b"100 Continue + HTTP/1.1 200 OK"
    own, plain = engines
    assert await own.metric(EVENTS) == await plain.metric(EVENTS) > 0
    for e in engines:
        await e.drained()


async def test_requests_of_one_read_and_a_connection_handed_to_aiohttp(
    engines: tuple[RunningEngine, RunningEngine],
) -> None:
    own = engines[0]
    before = await own.metric(EVENTS)
    reader, writer = await asyncio.open_connection(*host_port(own))
    # three alerts in one write: three answers, in order
    writer.write(request(alert("p1")) + request(alert("p2")) + request(b"{"))
    first, second, third = [await read_answer(reader) for _ in range(3)]
    assert first.startswith(b"HTTP/1.1 200"), first
    assert second.startswith(b"HTTP/1.1 200"), second
    assert third.startswith(b"HTTP/1.1 400"), third
    assert json.loads(first.partition(b"\r\n\r\n")[2])["id"] != json.loads(second.partition(b"\r\n\r\n")[2])["id"]
    # an alert split across reads (head in two, body in three)
    data = request(alert("split"))
    for piece in (data[:20], data[20:60], data[60:-30], data[-30:-5], data[-5:]):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.05)
    assert (await read_answer(reader)).startswith(b"HTTP/1.1 200")
    # a client waiting for `100 Continue` before its body, twice
    for n in range(2):
        data = request(alert(f"continue {n}"), headers=b"Expect: 100-continue\r\n")
        head, _, body = data.partition(b"\r\n\r\n")
        writer.write(head + b"\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == CONTINUE
        writer.write(body)
        assert (await read_answer(reader)).startswith(b"HTTP/1.1 200")
    # a request this protocol does not take, pipelined after an alert: aiohttp takes the connection from it
    writer.write(request(alert("p3")) + b"GET /healthz HTTP/1.1\r\nHost: engine\r\n\r\n")
    assert (await read_answer(reader)).startswith(b"HTTP/1.1 200")
    health = await read_answer(reader)
    assert health.startswith(b"HTTP/1.1 200"), health
    assert health.endswith(b'{"status": "ok"}'), health
    # ... and keeps serving alerts on it
    writer.write(request(alert("p4")))
    assert (await read_answer(reader)).startswith(b"HTTP/1.1 200")
    writer.close()
    await own.drained()
    assert await own.metric(EVENTS) == before + 7


async def test_connection_close_is_honoured(engines: tuple[RunningEngine, RunningEngine]) -> None:
    reader, writer = await asyncio.open_connection(*host_port(engines[0]))
    writer.write(request(alert("closing"), headers=b"Connection: close\r\n") + request(alert("never read")))
    answer = await read_answer(reader)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert b"\r\nConnection: close\r\n" in answer, answer
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed; the request after it is not answered
    writer.close()


@pytest.mark.parametrize("own_protocol", [True, False])
async def test_a_refused_alert_queues_nothing(tmp_path: Path, own_protocol: bool) -> None:
    async with running_engine(tmp_path, DRY_RUN_RULES, own_protocol=own_protocol) as e:
        reader, writer = await asyncio.open_connection(*host_port(e))
        writer.write(request(b'{"rule": 1}', token=False))
        answer = await read_answer(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert e.engine.queue.unfinished == 0
        assert await e.metric(EVENTS) == 0


def test_the_protocol_leaves_every_engine_route_to_aiohttp(tmp_path: Path) -> None:
    """Each route of the app but the intake's catch-all is a path the own protocol hands to aiohttp."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(DRY_RUN_RULES)
    app = create_app(Engine(engine_config(rules)))
    paths = [r.canonical for r in app.router.resources()]
    assert paths[-1] == "/{tail}"  # the intake, last
    for path in paths[:-1]:
        assert path.encode() in RESERVED or path.startswith("/v1/"), path


async def test_a_go_client_posting_like_falcosidekick(tmp_path: Path) -> None:
    """Go's net/http client (Falcosidekick's) with a custom token header: every alert answered 200 and decided,
    over the few connections it keeps alive, all served by the own protocol."""
    header, token = "X-Falco-Token", "sidekick-secret"
    auth, queue = config.Auth(token=token, header=header), config.Queue(capacity=1000, workers=4)
    async with running_engine(tmp_path, DRY_RUN_RULES, auth=auth, queue=queue) as e:
        summary = await asyncio.to_thread(gosender.send, e.url + "/", 200, 4, header, token)
        assert summary["statuses"] == {"200": 200}, summary
        assert summary["errors"] == 0, summary
        assert 1 <= summary["connections"] <= 4, summary  # kept alive: never closed, never dialled again
        await e.drained()
        assert await e.metric(EVENTS) == 200
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="dry_run") == 200  # a step each
        refused = await asyncio.to_thread(gosender.send, e.url + "/", 3, 1, header, "wrong")
        assert refused["statuses"] == {"401": 3}, refused
