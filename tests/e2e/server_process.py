"""`talon-opa` as a real process for the end-to-end tests: the server (without this machine's Kubernetes
credentials), its readiness, and one-shot CLI commands."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[2]


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without the machine's Kubernetes credentials, plus `extra`."""
    base = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    return {**base, **(extra or {})}


async def spawn_server(
    config: Path | None, rules: Path, log: Path, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """`talon-opa server [-c config] -r rules`, its output in `log`; not waited for (see `wait_ready`)."""
    args = ["server", *(["-c", str(config)] if config is not None else []), "-r", str(rules)]
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "talon_opa.cli.main", *args, stdout=out, stderr=out, env=server_env(env), cwd=REPO
        )


async def wait_ready(
    url: str, proc: asyncio.subprocess.Process, within: float = 60, ssl_context: ssl.SSLContext | None = None
) -> None:
    """Until the server's /readyz answers 200 (https: trusting `ssl_context`); fails if it exits first."""
    connector = aiohttp.TCPConnector(ssl=ssl_context) if ssl_context is not None else None
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(int(within / 0.1)):
            assert proc.returncode is None, "the server exited"
            try:
                async with http.get(url + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("server not ready")


async def stop_server(proc: asyncio.subprocess.Process, *, gracefully: bool = True) -> int | None:
    """SIGTERM and its exit code within 60 s (`gracefully`); otherwise, or if it is still running, SIGKILL."""
    if gracefully and proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(proc.wait(), 60)
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    return proc.returncode


def log_lines(log: Path) -> list[dict[str, Any]]:
    """The JSON lines of a server's log."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """A one-shot `talon-opa` command: its exit code and its output (stdout and stderr together)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "talon_opa.cli.main",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()
