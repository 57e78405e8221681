"""The audit trail shipped to an output in segments (`audit.output`, docs/audit.md), through the running
engine and a real S3 server (moto, which the suite starts by default): segments land in the bucket in
order, `talon-opa audit verify` checks the downloaded folder (and their concatenation) as one chain; an
upload that fails is counted and retried while alerts go on; a restart ships from where it stopped."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from talon_opa.core import config, logs
from talon_opa.core.kube import KubeConfig
from talon_opa.outputs.minio import Minio
from talon_opa.plugins.registry import Registry
from tests.e2e.engine_harness import RunningEngine, running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, Recorder, ScriptedLabel
from tests.e2e.test_engine_audit import RULES, talon_opa
from tests.e2e.test_engine_reload import wait_metric
from tests.harness import moto as moto_harness
from tests.harness.moto import Moto

UNUSED_KUBE = KubeConfig(server="http://127.0.0.1:9")  # scripted plugins never call it
SHIPPED = "talon_opa_audit_segments_shipped_total"
FAILED = "talon_opa_audit_ship_failures_total"


@pytest.fixture
def s3(moto: Moto, monkeypatch: pytest.MonkeyPatch) -> tuple[config.Minio, Any]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    keys = (moto_harness.ACCESS_KEY, moto_harness.SECRET_KEY)
    minio = config.Minio(endpoint=moto.url.removeprefix("http://"), access_key=keys[0], secret_key=keys[1])
    return minio, moto.client("s3")


def shipping(path: Path, bucket: str, **changes: Any) -> config.Audit:
    audit = config.Audit(
        path=str(path),
        output="minio:s3",
        output_parameters={"bucket": bucket, "prefix": "trails"},
        segment_lines=2,
        segment_seconds=3600,  # only full segments, and the rest at shutdown
    )
    return dataclasses.replace(audit, **changes)


async def post(e: RunningEngine, pods: list[str]) -> None:
    for pod in pods:
        assert (await e.post(json_body=shell_alert(pod, "payments"))).status == 200
        await e.drained()
    assert e.engine.audit is not None
    await e.engine.audit.flushed()


async def download(s3: Any, bucket: str, folder: Path) -> list[str]:
    await asyncio.to_thread(folder.mkdir)
    listed = await asyncio.to_thread(s3.list_objects_v2, Bucket=bucket)
    keys = sorted(o["Key"] for o in listed.get("Contents", []))

    def fetch(key: str) -> None:
        (folder / key.rsplit("/", 1)[-1]).write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    for key in keys:
        await asyncio.to_thread(fetch, key)
    return keys


def engine_args(s3: tuple[config.Minio, Any], audit: config.Audit) -> dict[str, Any]:
    return {
        "registry": Registry.of(ScriptedLabel, Recorder, Minio),
        "kube_config": UNUSED_KUBE,
        "minio": s3[0],
        "audit": audit,
    }


async def test_the_trail_is_shipped_in_segments_that_verify_as_one_chain(
    tmp_path: Path, s3: tuple[config.Minio, Any]
) -> None:
    SCRIPT.reset()
    SCRIPT.gate.set()
    client = s3[1]
    await asyncio.to_thread(client.create_bucket, Bucket="audit-trails", ObjectLockEnabledForBucket=True)
    retention = {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}
    await asyncio.to_thread(
        client.put_object_lock_configuration,
        Bucket="audit-trails",
        ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": retention},
    )
    trail = tmp_path / "audit.jsonl"
    async with running_engine(tmp_path, RULES, **engine_args(s3, shipping(trail, "audit-trails"))) as e:
        await post(e, ["api-1", "api-2", "api-3", "api-4", "api-5"])
        await wait_metric(e, SHIPPED, 2)  # two full segments; the fifth line waits for its segment to fill
        assert await e.metric("talon_opa_audit_lines_unshipped") == 1
    keys = await download(client, "audit-trails", tmp_path / "shipped")
    assert len(keys) == 3  # the last one at shutdown
    assert all(k.startswith("trails/") and k.endswith(".jsonl") for k in keys)
    locked = await asyncio.to_thread(client.head_object, Bucket="audit-trails", Key=keys[0])
    assert locked["ObjectLockMode"] == "COMPLIANCE"  # the bucket's default retention applies to each segment
    names = sorted(p.name for p in (tmp_path / "shipped").iterdir())
    assert [n[-32:] for n in names] == [
        "-000000000001-000000000002.jsonl",
        "-000000000003-000000000004.jsonl",
        "-000000000005-000000000005.jsonl",
    ]
    whole = b"".join((tmp_path / "shipped" / n).read_bytes() for n in names)
    assert whole == trail.read_bytes()  # byte for byte: the segments are the trail

    done = talon_opa("audit", "verify", str(tmp_path / "shipped"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "intact, 5 line(s), 5 alert(s)" in done.stdout
    assert "(3 segment(s))" in done.stdout
    local = talon_opa("audit", "verify", str(trail))
    head = local.stdout.rsplit("head ", 1)[1].strip()
    assert done.stdout.rstrip().endswith(f"head {head}")
    assert talon_opa("audit", "verify", str(tmp_path / "shipped"), "--head", head).returncode == 0

    concatenated = tmp_path / "concatenated.jsonl"
    concatenated.write_bytes(whole)
    assert talon_opa("audit", "verify", str(concatenated)).returncode == 0

    # a segment missing in the middle breaks the chain, named by the segment that follows it
    (tmp_path / "shipped" / names[1]).unlink()
    broken = talon_opa("audit", "verify", str(tmp_path / "shipped"))
    assert broken.returncode == 1
    assert f"{names[2]}:1: chain broken" in broken.stdout


async def test_a_failed_upload_is_counted_and_retried_while_alerts_go_on(
    tmp_path: Path, s3: tuple[config.Minio, Any], caplog: pytest.LogCaptureFixture
) -> None:
    SCRIPT.reset()
    SCRIPT.gate.set()
    client = s3[1]
    trail = tmp_path / "audit.jsonl"
    async with running_engine(tmp_path, RULES, **engine_args(s3, shipping(trail, "late-bucket"))) as e:
        await post(e, ["api-1", "api-2"])  # the bucket does not exist yet: the upload fails
        await wait_metric(e, FAILED, 1)
        assert await e.metric(SHIPPED) == 0
        await post(e, ["api-3", "api-4"])  # alerts go on, and are recorded
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="success") == 4
        ready = await e.get("/readyz")
        assert ready.status == 200
        assert "does not exist" in ready.body["audit_shipping"]
        await asyncio.to_thread(client.create_bucket, Bucket="late-bucket")
        await wait_metric(e, SHIPPED, 2, within=30)  # retried with backoff, then the backlog, in order
        assert "audit_shipping" not in (await e.get("/readyz")).body
    failed = [r for r in caplog.records if r.getMessage() == "audit segment upload failed"]
    assert len(failed) == 1  # once per failure streak, with the output's reason
    assert "late-bucket" in logs.fields(failed[0])["error"]
    keys = await download(client, "late-bucket", tmp_path / "shipped")
    assert len(keys) == 2
    assert talon_opa("audit", "verify", str(tmp_path / "shipped")).returncode == 0


async def test_a_restart_ships_from_where_it_stopped(tmp_path: Path, s3: tuple[config.Minio, Any]) -> None:
    SCRIPT.reset()
    SCRIPT.gate.set()
    client = s3[1]
    await asyncio.to_thread(client.create_bucket, Bucket="restarts")
    trail = tmp_path / "audit.jsonl"
    for pods in (["api-1", "api-2", "api-3"], ["api-4", "api-5"]):
        async with running_engine(tmp_path, RULES, **engine_args(s3, shipping(trail, "restarts"))) as e:
            await post(e, pods)
    keys = await download(client, "restarts", tmp_path / "shipped")
    assert [k[-31:] for k in keys] == [  # each line once: 1-2, 3 (at the first shutdown), 4-5
        "000000000001-000000000002.jsonl",
        "000000000003-000000000003.jsonl",
        "000000000004-000000000005.jsonl",
    ]
    done = talon_opa("audit", "verify", str(tmp_path / "shipped"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "intact, 5 line(s)" in done.stdout


def test_audit_output_needs_audit_path(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("audit:\n  output: local:file\n  output_parameters: {destination: /tmp}\n")
    with pytest.raises(config.ConfigError, match=r"audit\.output'"):
        config.load(path, env={})
    path.write_text("audit:\n  path: /tmp/a.jsonl\n  output_parameters: [x]\n")
    with pytest.raises(config.ConfigError, match=r"audit\.output_parameters"):
        config.load(path, env={})


def test_the_shipping_example_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "audit" / "shipping.yaml"
    audit = config.load(example, env={}).audit
    assert (audit.output, audit.segment_lines, audit.segment_seconds) == ("aws:s3", 1000, 60)
    assert dict(audit.output_parameters) == {"bucket": "talon-opa-audit", "prefix": "trails/prod-eu-1"}


@pytest.mark.parametrize(
    ("changes", "what"),
    [
        ({"output": "nope:x"}, "'audit.output' names 'nope:x', which is not an output that runs"),
        ({"output_parameters": {}}, "'audit.output_parameters' is invalid for minio:s3"),
    ],
)
async def test_a_bad_audit_output_stops_the_engine_naming_the_key(
    tmp_path: Path, s3: tuple[config.Minio, Any], changes: dict[str, Any], what: str
) -> None:
    audit = shipping(tmp_path / "audit.jsonl", "b", **changes)
    with pytest.raises(config.ConfigError, match=re.escape(what)):
        async with running_engine(tmp_path, RULES, **engine_args(s3, audit)):
            pass
