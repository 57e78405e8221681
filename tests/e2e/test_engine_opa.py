"""The engine's child OPA: killed mid-stream it is restarted, and the queued alerts are decided after."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from talon_opa.core import config
from talon_opa.core.errors import OpaError
from tests.e2e.engine_harness import DRY_RUN_RULES, running_engine, shell_alert


async def test_opa_killed_mid_stream_is_restarted_and_queued_alerts_are_decided(tmp_path: Path) -> None:
    async with running_engine(tmp_path, DRY_RUN_RULES) as e:
        supervisor = e.engine.supervisor
        first_pid = supervisor.pid
        assert first_pid is not None
        n_before, n_after = 5, 20
        for i in range(n_before):
            assert (await e.post(json_body=shell_alert(f"before-{i}"))).status == 200
        os.kill(first_pid, signal.SIGKILL)
        # sent while OPA is dead or restarting: accepted at once, decided once it is back
        replies = await asyncio.gather(*(e.post(json_body=shell_alert(f"after-{i}")) for i in range(n_after)))
        assert {r.status for r in replies} == {200}
        await asyncio.wait_for(e.drained(), 30)
        assert supervisor.restarts >= 1
        assert supervisor.pid not in (None, first_pid)
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="dry_run") == n_before + n_after
        assert await e.metric("talon_opa_opa_errors_total", kind="exited") >= 1
        assert await e.metric("talon_opa_alerts_failed_total") == 0
        ready = await e.get("/readyz")
        assert ready.status == 200


async def test_readyz_is_503_while_opa_is_down(tmp_path: Path) -> None:
    async with running_engine(tmp_path, DRY_RUN_RULES) as e:
        supervisor = e.engine.supervisor
        # stop the restarts for a moment by holding the supervisor's lock, then kill the child
        async with supervisor._lock:
            pid = supervisor.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.3)
            reply = await e.get("/readyz")
            assert reply.status == 503
            assert reply.body["reason"] == "opa unreachable"
        for _ in range(100):
            if (await e.get("/readyz")).status == 200:
                break
            await asyncio.sleep(0.1)
        assert (await e.get("/readyz")).status == 200


def _key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


async def test_the_child_runs_only_bundles_signed_by_our_key(tmp_path: Path) -> None:
    private, public = _key_pair(tmp_path, "signing")
    _, other = _key_pair(tmp_path, "other")
    signed = dataclasses.replace(
        config.Opa(), signing_key=str(private), verification_key=str(public), retry_initial_seconds=0.02
    )
    async with running_engine(tmp_path, DRY_RUN_RULES, opa=signed) as e:
        assert e.engine.built is not None
        assert e.engine.built.path.name.endswith(".tar.gz")
        assert (await e.post(json_body=shell_alert("signed"))).status == 200
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="dry_run") == 1
    wrong_key = dataclasses.replace(signed, verification_key=str(other))
    with pytest.raises(OpaError, match="verification"):
        async with running_engine(tmp_path, DRY_RUN_RULES, opa=wrong_key):
            pass


@pytest.mark.parametrize(("gc_percent", "gogc"), [(250, "250"), (0, None)])
async def test_the_child_gets_the_configured_gogc(tmp_path: Path, gc_percent: int, gogc: str | None) -> None:
    opa = dataclasses.replace(config.Opa(), gc_percent=gc_percent)
    async with running_engine(tmp_path, DRY_RUN_RULES, opa=opa) as e:
        pid = e.engine.supervisor.pid
        environ = (await asyncio.to_thread(Path(f"/proc/{pid}/environ").read_bytes)).split(b"\0")
        found = {k.decode(): v.decode() for k, _, v in (x.partition(b"=") for x in environ if x)}
        assert found.get("GOGC") == (gogc if gogc is not None else os.environ.get("GOGC"))
        assert (await e.post(json_body=shell_alert())).status == 200
        await asyncio.wait_for(e.drained(), 30)
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="dry_run") == 1


async def test_readyz_says_why_at_once_while_opa_is_frozen_and_nothing_is_lost(tmp_path: Path) -> None:
    async with running_engine(tmp_path, DRY_RUN_RULES) as e:
        pid = e.engine.supervisor.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            reply = await e.get("/readyz")
            assert reply.status == 503
            assert reply.body["reason"] == "opa unreachable"
            assert "did not answer within" in reply.body["error"]
            assert (await e.post(json_body=shell_alert("frozen"))).status == 200  # accepted, waits for OPA
        finally:
            os.kill(pid, signal.SIGCONT)
        await asyncio.wait_for(e.drained(), 30)
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="dry_run") == 1
        assert (await e.get("/readyz")).status == 200
