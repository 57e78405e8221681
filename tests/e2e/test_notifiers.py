"""The k8sevents notifier against a real API server; the webhook notifier against a loopback receiver."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from talon_opa.catalog import default_registry
from talon_opa.core.errors import TalonError
from talon_opa.core.kube import KubeClient
from talon_opa.notifiers.k8sevents import K8sEvents
from talon_opa.notifiers.webhook import Webhook
from talon_opa.plugins import rbac
from talon_opa.plugins.clients import Clients
from talon_opa.plugins.notes import Note
from talon_opa.plugins.params import NoParams
from tests.e2e.engine_plugins import labelled_note
from tests.harness.kube import KubeCluster

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def note(namespace: str, pod: str, **changes: Any) -> Note:
    """`labelled_note` about another pod, with the alert's text."""
    about = {
        "event": "A shell was spawned in a container (user=root pod=api-1)",
        "objects": {"pod": pod, "namespace": namespace},
        "output": f"the pod '{pod}' in the namespace '{namespace}' has been labeled",
        "pod": pod,
        "namespace": namespace,
    }
    return labelled_note(TRACE_ID, **{**about, **changes})


# ---- k8sevents ---------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def events(kube: KubeCluster, namespace: str) -> AsyncIterator[K8sEvents]:
    """The notifier with a ServiceAccount holding exactly the ClusterRole generated for it."""
    rules = rbac.cluster_role(default_registry(), ["k8sevents"], "unused")["rules"]
    client = KubeClient(await kube.service_account_with_role(namespace, "notifier", rules))
    yield K8sEvents(Clients("k8sevents", {"kube": client}), NoParams())
    await client.close()


async def _events_about(kube: KubeCluster, ns: str, trace_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await kube.api.get(f"/api/v1/namespaces/{ns}/events"))["items"]
    return [e for e in items if trace_id in e.get("message", "")]


async def test_k8sevents_creates_the_event_on_the_pod(kube: KubeCluster, namespace: str, events: K8sEvents) -> None:
    pod = await kube.create_pod(namespace, "api-1")

    await events.notify(note(namespace, "api-1"))

    [event] = await _events_about(kube, namespace, TRACE_ID)
    assert event["metadata"]["name"].startswith("falco-talon-")
    assert event["involvedObject"] == {
        "kind": "Pod",
        "namespace": namespace,
        "name": "api-1",
        "uid": pod["metadata"]["uid"],
    }
    assert event["reason"] == "falco-talon:action:kubernetes:label:success"
    assert event["action"] == "kubernetes:label"
    assert event["type"] == "Normal"
    assert event["source"] == {"component": "falco-talon"}
    assert event["reportingComponent"] == "falcosecurity.org/falco-talon"  # reportingController, as served
    assert event["reportingInstance"] == "falco-talon"
    assert event["eventTime"]
    assert event["message"] == (
        "Status: success\n"
        "Message: action\n"
        "Rule: Label shells\n"
        "Action: Label the pod\n"
        "Actionner: kubernetes:label\n"
        "Event: A shell was spawned in a container (user=root pod=api-1)\n"
        f"Namespace: {namespace}\n"
        "Pod: api-1\n"
        f'Output: the pod "api-1" in the namespace "{namespace}" has been labeled\n'
        f"TraceID: {TRACE_ID}\n"
    )


async def test_k8sevents_falls_back_to_default_and_cuts_the_message(
    kube: KubeCluster, namespace: str, events: K8sEvents
) -> None:
    trace_id = "0123456789abcdef0123456789abcdef"
    failed = note(
        "no-such-namespace",
        "ghost",
        stage="output",
        status="failure",
        output_target="aws:s3",
        output="",
        error="é" * 1000,  # 2000 bytes: the message is cut to 1024 bytes without splitting a character
        trace_id=trace_id,
    )

    await events.notify(failed)

    [event] = await _events_about(kube, "default", "Status: failure")  # the trace id was cut off
    assert event["involvedObject"] == {"kind": "Pod", "namespace": "default", "name": "ghost"}
    assert event["reason"] == "falco-talon:output:aws:s3:failure"
    assert event["action"] == "aws:s3"
    assert len(event["message"].encode()) in (1023, 1024)
    assert event["message"].startswith("Status: failure\nMessage: output\n")


# ---- webhook -----------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A test server speaking the documented wire format (JSON over HTTP), because the real receiver is
    the user's own service: it records what arrived and answers with `status`."""

    status: int = 200
    answer: str = "ok"
    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, dict(request.headers), await request.read()))
        return web.Response(status=self.status, text=self.answer)


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_route("*", "/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.url = f"http://127.0.0.1:{port}/hook"
    yield rec
    await runner.cleanup()


async def _send(receiver: Receiver, n: Note, **settings: Any) -> None:
    decoded = Webhook.spec.decode({"url": receiver.url + "?token=secret", **settings})
    async with aiohttp.ClientSession() as session:
        await Webhook(Clients("webhook", {"http": session}), decoded).notify(n)


async def test_webhook_posts_talons_json_line(receiver: Receiver) -> None:
    await _send(receiver, note("payments", "api-1"), custom_headers={"Authorization": "Bearer t0k"})

    [(method, headers, body)] = receiver.seen
    assert method == "POST"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["User-Agent"] == "falco-talon"
    assert headers["Authorization"] == "Bearer t0k"
    doc = json.loads(body)
    assert list(doc) == [
        "objects",
        "trace_id",
        "rule",
        "event",
        "message",
        "output",
        "category",
        "actionner",
        "action",
        "status",
    ]
    assert doc == {
        "objects": {"Namespace": "payments", "Pod": "api-1"},
        "trace_id": TRACE_ID,
        "rule": "Label shells",
        "event": "A shell was spawned in a container (user=root pod=api-1)",
        "message": "action",
        "output": "the pod 'api-1' in the namespace 'payments' has been labeled",
        "category": "kubernetes",
        "actionner": "kubernetes:label",
        "action": "Label the pod",
        "status": "success",
    }


async def test_webhook_method_and_headers_are_configurable(receiver: Receiver) -> None:
    failed = note("payments", "api-1", status="failure", output="", objects={}, error="403 Forbidden")

    await _send(receiver, failed, http_method="put", content_type="application/json", user_agent="soar-bridge/1")

    [(method, headers, body)] = receiver.seen
    assert method == "PUT"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == "soar-bridge/1"
    doc = json.loads(body)
    assert "objects" not in doc
    assert "output" not in doc
    assert doc["error"] == "403 Forbidden"
    assert doc["status"] == "failure"


async def test_webhook_refusal_raises_with_status_and_a_cut_body(receiver: Receiver) -> None:
    receiver.status, receiver.answer = 503, "overloaded " + "x" * 5000

    with pytest.raises(TalonError) as caught:
        await _send(receiver, note("payments", "api-1"))

    text = str(caught.value)
    assert "HTTP 503: overloaded xxx" in text
    assert len(text) < 700
    assert "token=secret" not in text  # the query may carry a secret
    assert "/hook" in text
