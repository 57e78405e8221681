"""Smoke tests: every real component the project builds starts and does its job on loopback."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import aiohttp
import nats as nats_client
import pytest
from nats.js.api import StreamConfig

from tests.conftest import OpaFactory
from tests.harness.jaeger import Jaeger
from tests.harness.kube import KubeCluster
from tests.harness.nats import Nats


async def test_smoke_deployment_pod_runs_on_a_kwok_node(kube: KubeCluster, namespace: str) -> None:
    await kube.create_workload("Deployment", namespace, "web", replicas=2)
    pods = await kube.wait_running(namespace, "app=web", count=2)
    assert {p["spec"]["nodeName"] for p in pods} <= {"kwok-node-1", "kwok-node-2"}
    owner = pods[0]["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ReplicaSet"


async def test_smoke_exec_through_the_api_server(kube: KubeCluster, namespace: str) -> None:
    await kube.create_pod(namespace, "shell")
    await kube.wait_running(namespace, "app=shell")
    marker = uuid.uuid4().hex
    result = await kube.api.exec(namespace, "shell", ["sh", "-c", f"echo {marker}; echo oops >&2; exit 3"])
    assert result.stdout.strip() == marker
    assert result.stderr.strip() == "oops"
    assert result.exit_code == 3


async def test_smoke_logs_through_the_api_server(kube: KubeCluster, namespace: str) -> None:
    marker = uuid.uuid4().hex
    with kube.container_log.open("a") as f:
        f.write(f"2026-11-22T10:00:00.000000000Z stdout F hello {marker}\n")
    await kube.create_pod(namespace, "logger")
    await kube.wait_running(namespace, "app=logger")
    logs = await kube.api.logs(namespace, "logger", tail_lines=5)
    assert marker in logs


async def test_smoke_service_account_gets_only_its_role(kube: KubeCluster, namespace: str) -> None:
    from talon_opa.core.kube import KubeApiError, KubeClient

    await kube.create_pod(namespace, "target")
    config = await kube.service_account_with_role(
        namespace, "reader", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
    )
    client = KubeClient(config)
    try:
        pod = await client.get(f"/api/v1/namespaces/{namespace}/pods/target")
        assert pod["metadata"]["name"] == "target"
        with pytest.raises(KubeApiError, match=r"(?i)forbidden") as refused:
            await client.delete(f"/api/v1/namespaces/{namespace}/pods/target")
        assert refused.value.status == 403
        assert await client.get(f"/api/v1/namespaces/{namespace}/pods/target")
    finally:
        await client.close()


async def test_smoke_opa_answers_from_a_bundle(opa: OpaFactory, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "smoke").mkdir(parents=True)
    (bundle / ".manifest").write_text(json.dumps({"revision": "smoke-1", "roots": ["smoke"]}))
    (bundle / "smoke" / "smoke.rego").write_text("package smoke\n\nanswer := input.x * data.smoke.factor\n")
    (bundle / "smoke" / "data.json").write_text(json.dumps({"factor": 6}))
    server = await opa(bundle)
    async with aiohttp.ClientSession(connector=server.connector()) as http:
        async with http.post(f"{server.base_url}/v1/data/smoke/answer", json={"input": {"x": 7}}) as r:
            assert r.status == 200
            assert (await r.json())["result"] == 42
        async with http.post(f"{server.base_url}/v1/data/smoke/missing", json={"input": {}}) as r:
            assert "result" not in await r.json()


async def test_smoke_span_sent_over_otlp_is_read_back(jaeger: Jaeger) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "talon-opa-smoke"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{jaeger.otlp_http}/v1/traces")))
    tracer = provider.get_tracer("smoke")
    with tracer.start_as_current_span("receive alert") as span:
        span.set_attribute("talon.smoke", "yes")
        trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()
    trace = await jaeger.trace(trace_id)
    (s,) = trace["spans"]
    assert s["operationName"] == "receive alert"
    assert {"key": "talon.smoke", "type": "string", "value": "yes"} in s["tags"]


async def test_smoke_jetstream_message_consumed_exactly_once(nats: Nats) -> None:
    nc = await nats_client.connect(nats.url)
    try:
        js = nc.jetstream()
        stream = f"SMOKE{uuid.uuid4().hex[:8]}"
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.*"]))
        ack = await js.publish(f"{stream}.alert", b"payload-1", headers={"Nats-Msg-Id": "m1"})
        dup = await js.publish(f"{stream}.alert", b"payload-1", headers={"Nats-Msg-Id": "m1"})
        assert dup.duplicate
        assert dup.seq == ack.seq
        sub = await js.pull_subscribe(f"{stream}.*", durable="worker")
        (msg,) = await sub.fetch(1, timeout=5)
        assert msg.data == b"payload-1"
        await msg.ack()
        try:
            again = await sub.fetch(1, timeout=1)
        except TimeoutError:
            again = []
        assert again == []
        info = await js.consumer_info(stream, "worker")
        assert info.num_ack_pending == 0
        assert info.num_pending == 0
    finally:
        await nc.close()
