"""aws:s3, minio:s3 and gcp:gcs through the running engine: the artifact of kubernetes:log (scripted) lands
in a real S3-compatible server (moto; MinIO when built) or a real GCS emulator (fake-gcs-server) under
Talon's key, traced as `write output` under `run action`, counted; a missing bucket fails the step with
the server's reason and a hint."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from talon_opa.core import config
from talon_opa.core.kube import KubeConfig
from talon_opa.outputs.gcs import Gcs
from talon_opa.outputs.minio import Minio
from talon_opa.outputs.s3 import S3
from talon_opa.plugins.registry import Registry
from tests.e2e.engine_harness import running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, Recorder, ScriptedLog
from tests.harness import minio as minio_harness
from tests.harness import moto as moto_harness
from tests.harness.gcp_functions import FunctionsServer
from tests.harness.gcs import FakeGcs
from tests.harness.minio import MinioServer
from tests.harness.moto import Moto

UNUSED_KUBE = KubeConfig(server="http://127.0.0.1:9")  # the scripted log never calls it
# Talon's name: <UTC time>_<the artifact's objects>_<name>; the scripted log's objects are {pod}
KEY = re.compile(r"^\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ_(?P<pod>[a-z0-9-]+)_logs\.txt$")


def pod_of(name: str) -> str:
    m = KEY.match(name)
    return m["pod"] if m else f"(not Talon's name: {name})"


def registry() -> Registry:
    return Registry.of(ScriptedLog, S3, Minio, Gcs, Recorder)


def rules(target: str, good: dict[str, str], missing_bucket: str) -> str:
    params = ", ".join(f"{k}: {v!r}" for k, v in good.items())
    return f"""\
- rule: Keep the logs
  match:
    rules: [Terminal shell in container]
  notifiers: [recorder]
  actions:
    - action: Logs to the bucket
      actionner: kubernetes:log
      output:
        target: {target}
        parameters: {{{params}}}
    - action: Logs to a missing bucket
      actionner: kubernetes:log
      ignore_errors: true
      output:
        target: {target}
        parameters: {{bucket: {missing_bucket}}}
"""


@pytest.fixture
def aws_env(moto: Moto, monkeypatch: pytest.MonkeyPatch) -> config.Aws:
    """boto3's own endpoint variable points at moto; static keys from Talon's aws.* keys."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return config.Aws(
        region=moto_harness.REGION, access_key=moto_harness.ACCESS_KEY, secret_key=moto_harness.SECRET_KEY
    )


def spans_by_name(spans: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for s in spans.get_finished_spans():
        out.setdefault(s.name, []).append(s)
    return out


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def assert_traced(spans: InMemorySpanExporter, target: str, reason: str) -> None:
    """One `write output` per step, each under its `run action`; the failed one carries the reason."""
    named = spans_by_name(spans)
    steps = {s.context.span_id: s for s in named["run action"]}
    writes = named["write output"]
    assert len(writes) == 2
    assert all(w.parent is not None and w.parent.span_id in steps for w in writes)
    assert {attrs(w)["talon.output.target"] for w in writes} == {target}
    by_action = {attrs(s)["talon.action"]: s for s in steps.values()}
    assert by_action["Logs to the bucket"].status.status_code.name == "OK"
    failed = by_action["Logs to a missing bucket"]
    assert failed.status.status_code.name == "ERROR"
    assert reason in (failed.status.description or "")


def output_notes() -> list[tuple[str, str, str]]:
    return [(n.action, n.status, n.error) for n in SCRIPT.notes if n.stage == "output"]


async def test_aws_s3_stores_the_artifact_under_talons_key_and_a_missing_bucket_fails(
    tmp_path: Path, moto: Moto, aws_env: config.Aws
) -> None:
    SCRIPT.reset()
    s3 = moto.client("s3")
    await asyncio.to_thread(s3.create_bucket, Bucket="talon-artifacts")
    spans = InMemorySpanExporter()
    good = {"bucket": "talon-artifacts", "prefix": "/falco/logs/"}
    async with running_engine(
        tmp_path,
        rules("aws:s3", good, "no-such-bucket"),
        registry=registry(),
        kube_config=UNUSED_KUBE,
        span_exporter=spans,
        aws=aws_env,
    ) as e:
        assert (await e.post(json_body=shell_alert("s3-pod-1"))).status == 200
        await e.drained()
        ok = await e.metric("falcosecurity_falco_talon_outputs_total", target="aws:s3", status="success")
        failed = await e.metric("falcosecurity_falco_talon_outputs_total", target="aws:s3", status="failure")
        assert (ok, failed) == (1, 1)
    listed = await asyncio.to_thread(s3.list_objects_v2, Bucket="talon-artifacts")
    [key] = [o["Key"] for o in listed.get("Contents", [])]
    prefix, _, name = key.partition("/logs/")
    assert prefix == "falco"  # one leading and one trailing '/' dropped, as Talon
    assert pod_of(name) == "s3-pod-1", key
    body = await asyncio.to_thread(lambda: s3.get_object(Bucket="talon-artifacts", Key=key)["Body"].read())
    assert body == b"logs of s3-pod-1\n"
    [(_, ok_status, _), (_, bad_status, error)] = output_notes()
    assert (ok_status, bad_status) == ("success", "failure")
    assert "NoSuchBucket" in error
    assert "create the bucket" in error
    ok_note = next(n for n in SCRIPT.notes if n.stage == "output" and n.status == "success")
    assert ok_note.output == f"the file 'logs.txt' has been uploaded as the key '{key}' to the bucket 'talon-artifacts'"
    await assert_traced(spans, "aws:s3", "NoSuchBucket")


@pytest.fixture(params=["moto", "minio"])
def s3_server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[config.Minio, Any]:
    """minio.* pointing at a real MinIO (when built) or at moto speaking the S3 API; and a client to check."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # the endpoint comes from minio.endpoint only
    if request.param == "minio":
        server: MinioServer = request.getfixturevalue("minio_server")
        keys = (minio_harness.ROOT_USER, minio_harness.ROOT_PASSWORD)
        return config.Minio(endpoint=server.endpoint, access_key=keys[0], secret_key=keys[1]), server.client()
    m: Moto = request.getfixturevalue("moto")
    keys = (moto_harness.ACCESS_KEY, moto_harness.SECRET_KEY)
    return config.Minio(endpoint=m.url.removeprefix("http://"), access_key=keys[0], secret_key=keys[1]), m.client("s3")


async def test_minio_s3_checks_the_bucket_then_stores_with_its_key_rule(
    tmp_path: Path, s3_server: tuple[config.Minio, Any]
) -> None:
    """minio:s3 talks path-style to `minio.endpoint` with its keys; BucketExists first, as Talon."""
    SCRIPT.reset()
    minio, s3 = s3_server
    await asyncio.to_thread(s3.create_bucket, Bucket="minio-artifacts")
    spans = InMemorySpanExporter()
    good = {"bucket": "minio-artifacts", "prefix": "/captures/"}
    async with running_engine(
        tmp_path,
        rules("minio:s3", good, "no-such-minio-bucket"),
        registry=registry(),
        kube_config=UNUSED_KUBE,
        span_exporter=spans,
        minio=minio,
    ) as e:
        await e.post(json_body=shell_alert("minio-pod-1"))
        await e.drained()
        ok = await e.metric("falcosecurity_falco_talon_outputs_total", target="minio:s3", status="success")
        failed = await e.metric("falcosecurity_falco_talon_outputs_total", target="minio:s3", status="failure")
        assert (ok, failed) == (1, 1)
    listed = await asyncio.to_thread(s3.list_objects_v2, Bucket="minio-artifacts")
    [key] = [o["Key"] for o in listed.get("Contents", [])]
    assert key.startswith("captures/")  # the leading '/' dropped: the key MinIO stores, on every server
    assert pod_of(key.removeprefix("captures/")) == "minio-pod-1", key
    head = await asyncio.to_thread(lambda: s3.get_object(Bucket="minio-artifacts", Key=key))
    assert head["Body"].read() == b"logs of minio-pod-1\n"
    assert head["ContentType"] == "text/plain; charset=UTF-8"
    [(_, _, _), (_, status, error)] = output_notes()
    ok_note = next(n for n in SCRIPT.notes if n.stage == "output" and n.status == "success")
    assert ok_note.output == f"the file 'logs.txt' has been uploaded as the key '{key}' to the bucket 'minio-artifacts'"
    assert status == "failure"
    assert "the bucket 'no-such-minio-bucket' does not exist" in error
    assert "create the bucket" in error
    await assert_traced(spans, "minio:s3", "does not exist")


async def test_gcp_gcs_uploads_through_the_json_api_and_a_missing_bucket_fails(
    tmp_path: Path, fake_gcs: FakeGcs, gcp_functions: FunctionsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The credentials are a service-account key whose token endpoint is the test token server."""
    SCRIPT.reset()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.url)
    await fake_gcs.create_bucket("gcs-artifacts")
    key_file = gcp_functions.write_key(tmp_path / "key.json")
    spans = InMemorySpanExporter()
    async with running_engine(
        tmp_path,
        rules("gcp:gcs", {"bucket": "gcs-artifacts", "prefix": "falco"}, "no-such-gcs-bucket"),
        registry=registry(),
        kube_config=UNUSED_KUBE,
        span_exporter=spans,
        gcp=config.Gcp(credentials_path=str(key_file)),
    ) as e:
        await e.post(json_body=shell_alert("gcs-pod-1"))
        await e.drained()
        ok = await e.metric("falcosecurity_falco_talon_outputs_total", target="gcp:gcs", status="success")
        failed = await e.metric("falcosecurity_falco_talon_outputs_total", target="gcp:gcs", status="failure")
        assert (ok, failed) == (1, 1)
    [name] = await fake_gcs.objects("gcs-artifacts")
    assert name.startswith("falco/")
    assert pod_of(name.removeprefix("falco/")) == "gcs-pod-1", name
    assert await fake_gcs.read("gcs-artifacts", name) == (b"logs of gcs-pod-1\n", "application/octet-stream")
    assert "access" in gcp_functions.issued.values()  # a token was obtained with the key
    [_, (_, status, error)] = output_notes()
    assert status == "failure"
    assert "no-such-gcs-bucket" in error
    assert "404" in error
    await assert_traced(spans, "gcp:gcs", "404")


async def test_minio_s3_refused_by_the_server_fails_with_its_reason(tmp_path: Path, minio_server: MinioServer) -> None:
    """A real MinIO refuses a wrong secret key: the step fails with MinIO's answer, nothing is stored."""
    SCRIPT.reset()
    s3 = minio_server.client()
    await asyncio.to_thread(s3.create_bucket, Bucket="guarded-artifacts")
    wrong = config.Minio(endpoint=minio_server.endpoint, access_key=minio_harness.ROOT_USER, secret_key="wrong-secret")
    async with running_engine(
        tmp_path,
        rules("minio:s3", {"bucket": "guarded-artifacts"}, "no-such-minio-bucket"),
        registry=registry(),
        kube_config=UNUSED_KUBE,
        minio=wrong,
    ) as e:
        await e.post(json_body=shell_alert("minio-pod-2"))
        await e.drained()
        failed = await e.metric("falcosecurity_falco_talon_outputs_total", target="minio:s3", status="failure")
    assert failed == 1  # the first step's; its failure ended the rule
    [(_, status, error)] = output_notes()
    assert status == "failure"
    assert "s3:HeadBucket guarded-artifacts: 403" in error
    assert "fix the keys" in error
    listed = await asyncio.to_thread(s3.list_objects_v2, Bucket="guarded-artifacts")
    assert listed.get("Contents", []) == []
