"""The AWS client's credential rules (Talon's), against a real moto server: static keys only with region,
access key and secret key all set, else the default chain; AssumeRole with the external id; the identity
checked once; and an unreachable endpoint fails with the reason."""

from __future__ import annotations

import asyncio

import pytest

from talon_opa.core import config
from talon_opa.core.aws import Aws, AwsError, Minio, Timeouts, aws_session
from tests.harness import moto as moto_harness
from tests.harness.moto import Moto
from tests.harness.process import free_port

CHAIN_KEY = "AKIACHAINKEY00000001"


@pytest.fixture
def chain_env(moto: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    """moto as the endpoint, and the default chain's environment keys."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CHAIN_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret-key")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")


@pytest.mark.usefixtures("chain_env")
@pytest.mark.parametrize(
    ("cfg", "key", "region"),
    [
        (
            config.Aws(region="us-east-1", access_key="AKIASTATIC", secret_key="static-secret"),
            "AKIASTATIC",
            "us-east-1",
        ),
        # without the region, Talon ignores the keys: the chain's (here the environment's) apply
        (config.Aws(access_key="AKIASTATIC", secret_key="static-key"), CHAIN_KEY, "eu-west-3"),
        (config.Aws(), CHAIN_KEY, "eu-west-3"),
        (config.Aws(region="ap-south-1"), CHAIN_KEY, "ap-south-1"),
    ],
)
def test_static_keys_only_when_region_and_both_keys_are_set(cfg: config.Aws, key: str, region: str) -> None:
    session = aws_session(cfg)
    assert session.get_credentials().access_key == key
    assert session.region_name == region


@pytest.mark.usefixtures("chain_env")
async def test_a_role_is_assumed_with_the_external_id_and_the_identity_is_the_role(moto: Moto) -> None:
    iam = moto.client("iam")
    role = await asyncio.to_thread(
        lambda: iam.create_role(RoleName="talon-opa-responder", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    )
    cfg = config.Aws(region=moto_harness.REGION, role_arn=role, external_id="talon-ext-42")
    identity = await Aws(cfg).identity()
    assert ":assumed-role/talon-opa-responder/talon-opa" in identity["Arn"]
    bodies = [e["body"] for e in await moto.recorded() if "Action=AssumeRole" in e["body"]]
    [assume] = [b for b in bodies if "talon-opa-responder" in b]
    assert "ExternalId=talon-ext-42" in assume
    assert "RoleSessionName=talon-opa" in assume


async def test_an_unreachable_endpoint_fails_with_the_reason_and_a_hint() -> None:
    minio = Minio(
        config.Minio(endpoint=f"127.0.0.1:{free_port()}", access_key="a", secret_key="b"),
        Timeouts(connect=1, read=1, total=15),
    )
    with pytest.raises(AwsError) as e:
        await minio.s3.bucket_exists("some-bucket")
    assert "s3:HeadBucket some-bucket: cannot reach the endpoint" in str(e.value)
    assert e.value.code == "Network"


async def test_a_pending_s3_call_leaves_the_event_loop_free() -> None:
    """The S3 endpoint is served by this very loop and answers only when told: were boto3 run on the loop,
    the request could not be read while the call waits (it would time out first)."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def endpoint(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        await release.wait()
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(endpoint, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    minio = Minio(config.Minio(endpoint=f"127.0.0.1:{port}", access_key="a", secret_key="b"), Timeouts(read=20))
    try:
        call = asyncio.create_task(minio.s3.bucket_exists("some-bucket"))
        async with asyncio.timeout(15):
            await arrived.wait()
        assert not call.done()  # the call waits in its thread while the loop serves the endpoint
        release.set()
        assert await call is False  # and the 404 means "no such bucket"
    finally:
        server.close()
        await server.wait_closed()
