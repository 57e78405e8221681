"""Replicas on NATS JetStream (queue.kind: nats): a real nats-server, real engines with real child OPAs.

Two engines in this process share one stream: both take alerts, a duplicate is dropped whichever replica
it reaches, two alerts for one pod never run at the same time across replicas, and with NATS down the
intake refuses (503) instead of accepting what it cannot store. The SIGKILL test of real `talon-opa server`
processes is in test_engine_jetstream_kill.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from talon_opa.core import config
from talon_opa.core.events import decode_alert
from talon_opa.core.kube import KubeConfig
from talon_opa.engine.intake import new_alert_id
from talon_opa.engine.work import WorkItem
from tests.e2e.engine_harness import RunningEngine, running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, scripted_registry
from tests.harness.nats import Nats

UNUSED_KUBE = KubeConfig(server="http://127.0.0.1:9")  # scripted plugins never call it; not dry-run

RULES = """\
- rule: Label
  match:
    rules: [Terminal shell in container]
  actions:
    - action: Mark
      actionner: kubernetes:label
      parameters: {labels: {behaviour: wait}}
"""


def nats_queue(url: str, stream: str, **more: Any) -> config.Queue:
    return config.Queue(
        capacity=100, workers=4, drain_timeout_seconds=10, kind="nats", nats_url=url, nats_stream=stream,
        partitions=4, ack_wait_seconds=5, **more,
    )  # fmt: skip


async def _replicas(stack: AsyncExitStack, tmp_path: Path, url: str, n: int) -> list[RunningEngine]:
    stream = f"T{uuid.uuid4().hex[:8].upper()}"
    engines = []
    for i in range(n):
        work = tmp_path / f"replica{i}"
        work.mkdir()
        engines.append(
            await stack.enter_async_context(
                running_engine(
                    work, RULES, registry=scripted_registry(), kube_config=UNUSED_KUBE, queue=nats_queue(url, stream)
                )
            )
        )
    return engines


async def _until(check: Callable[[], Awaitable[bool]], seconds: float = 30) -> None:
    """Poll state outside this process (NATS, other replicas) until `check` holds; bounded."""
    async with asyncio.timeout(seconds):
        while not await check():  # noqa: ASYNC110 - the state is in other processes: nothing to wait on
            await asyncio.sleep(0.05)


async def test_replicas_share_one_queue_and_drop_duplicates_across_replicas(tmp_path: Path, nats: Nats) -> None:
    SCRIPT.reset()
    SCRIPT.gate.set()
    async with AsyncExitStack() as stack:
        a, b = await _replicas(stack, tmp_path, nats.url, 2)
        for i in range(40):
            reply = await (a if i % 2 else b).post(json_body=shell_alert(f"pod-{i}"))
            assert reply.status == 200, reply.body
        first = await a.post(json_body=shell_alert("twice", output="the same alert, sent to both replicas"))
        again = await b.post(json_body=shell_alert("twice", output="the same alert, sent to both replicas"))
        assert first.status == again.status == 200
        assert again.body["duplicate"] is True
        # nothing can be answered without awaiting JetStream: accept_now leaves it to `accept`, doing nothing
        body = json.dumps(shell_alert("not-sent")).encode()
        item = WorkItem(new_alert_id(), decode_alert(body, "application/json"), body, "application/json")
        assert a.engine.acceptor.accept_now(item) is None
        assert await a.metric("falcosecurity_falco_talon_events_total") == 21

        async def all_ran() -> bool:
            return len(SCRIPT.calls) == 41

        await _until(all_ran)
        await asyncio.sleep(0.5)  # nothing more arrives: each alert ran once
        assert len(SCRIPT.calls) == 41
        assert sorted(pod for _, pod, _ in SCRIPT.calls) == sorted([f"pod-{i}" for i in range(40)] + ["twice"])
        done = [await e.metric("falcosecurity_falco_talon_actions_total", status="success") for e in (a, b)]
        assert sum(done) == 41
        assert min(done) > 0, done  # both replicas took work
        assert await b.metric("talon_opa_dedup_hits_total") == 1


async def test_two_alerts_for_one_pod_never_run_at_once_across_replicas(tmp_path: Path, nats: Nats) -> None:
    SCRIPT.reset()
    async with AsyncExitStack() as stack:
        a, b = await _replicas(stack, tmp_path, nats.url, 2)
        for i in range(6):
            reply = await (a if i % 2 else b).post(json_body=shell_alert("busy", output=f"alert {i} about busy"))
            assert reply.status == 200

        async def one_waits() -> bool:
            return SCRIPT.running.get("busy", 0) == 1

        await _until(one_waits)

        async def depth_reported() -> bool:  # the whole stream's depth, on every replica's gauge
            return all([await e.metric("talon_opa_queue_depth") == 6 for e in (a, b)])

        await _until(depth_reported)
        assert SCRIPT.max_running["busy"] == 1
        SCRIPT.gate.set()

        async def all_ran() -> bool:
            return len(SCRIPT.calls) == 6

        await _until(all_ran)
        assert SCRIPT.max_running["busy"] == 1


async def test_with_nats_down_the_intake_refuses_then_recovers_by_itself(tmp_path: Path) -> None:
    SCRIPT.reset()
    SCRIPT.gate.set()
    server = Nats(tmp_path / "nats")
    await server.start()
    try:
        async with AsyncExitStack() as stack:
            (engine,) = await _replicas(stack, tmp_path, server.url, 1)
            assert (await engine.post(json_body=shell_alert("before"))).status == 200
            server.stop()

            async def refused() -> bool:
                reply = await engine.post(json_body=shell_alert(f"down-{uuid.uuid4().hex[:6]}"))
                if reply.status == 200:
                    return False
                assert reply.status == 503, reply.body
                assert reply.headers["Retry-After"]
                assert "the queue is unavailable" in reply.body["error"]
                return True

            await _until(refused)
            ready = await engine.get("/readyz")
            assert (ready.status, ready.body["reason"]) == (503, "nats unreachable")
            await server.start()

            async def accepted() -> bool:
                return (await engine.post(json_body=shell_alert(f"back-{uuid.uuid4().hex[:6]}"))).status == 200

            await _until(accepted)
            assert (await engine.get("/readyz")).status == 200

            async def ran() -> bool:
                return any(pod == "before" for _, pod, _ in SCRIPT.calls) and any(
                    pod.startswith("back-") for _, pod, _ in SCRIPT.calls
                )

            await _until(ran)
    finally:
        server.stop()


async def test_pipelined_alerts_are_answered_in_order_once_stored(tmp_path: Path, nats: Nats) -> None:
    """The intake's own protocol awaits JetStream for each alert in turn (engine/intake_protocol.py): a
    duplicate is known as one, and a last request with `Connection: close` is answered before the close."""
    async with AsyncExitStack() as stack:
        (engine,) = await _replicas(stack, tmp_path, nats.url, 1)
        host, port = engine.url.split("//", 1)[1].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        bodies = [json.dumps(shell_alert(pod=pod)).encode() for pod in ("pipe-1", "pipe-1", "pipe-2")]
        heads = [b"", b"", b"Connection: close\r\n"]
        writer.write(
            b"".join(
                b"POST / HTTP/1.1\r\nHost: e\r\n%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
                for head, body in zip(heads, bodies, strict=True)
            )
        )
        answers = (await asyncio.wait_for(reader.read(), 30)).split(b"HTTP/1.1 ")[1:]
        writer.close()
        assert [a[:3] for a in answers] == [b"200"] * 3, answers
        docs = [json.loads(a.partition(b"\r\n\r\n")[2]) for a in answers]
        assert "duplicate" not in docs[0]
        assert docs[1]["duplicate_of"] == docs[0]["id"]
        assert b"\r\nConnection: close\r\n" in answers[2]
        assert "duplicate" not in docs[2]
