"""A child OPA server: started on loopback (TCP or a unix socket), ready once its bundle is active.

Starting is two steps, `spawn` (no event loop needed: `talon-opa server` spawns its OPA before it has
imported the rest of the engine, so OPA loads the bundle meanwhile) and `wait_ready`; `start` does both.

The child dies with its parent: on Linux it asks the kernel (prctl PR_SET_PDEATHSIG) for a SIGTERM when
the process that started it ends, even by SIGKILL, so no OPA is left running as an orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from talon_opa.core import binaries
from talon_opa.core.errors import OpaError

if TYPE_CHECKING:  # imported when first used: OPA is spawned (engine/prestart.py) before aiohttp is imported
    import aiohttp

_HANDED_OUT: set[int] = set()
READY_POLL_S = 0.01  # OPA answers /health in about a millisecond: polling often starts decisions sooner
STOP_WITHIN_S = 5.0  # after SIGTERM, then SIGKILL
EXIT_POLL_S = 0.01

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None  # loaded before any fork


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` making the child get SIGTERM when this process ends (Linux; elsewhere None).

    The kernel sends it when the thread that forked the child ends: the main thread (which spawns the
    first OPA, then runs the event loop) or the event loop's thread, both living as long as the engine.
    """
    if _LIBC is None:
        return None
    libc, parent = _LIBC, os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would ever stop us
            os._exit(1)

    return preexec


def free_port() -> int:
    """A free loopback port, never one this process handed out already (the server binds it later)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclass
class OpaProcess:
    """`opa run --server` on a bundle (a directory or a .tar.gz).

    `unix_socket` serves the data API on a socket file instead of TCP; a token, when set, is required
    on every request (OPA's token authentication with a one-line authz policy in the bundle-less
    `system.authz` package).
    """

    bundle: Path
    unix_socket: bool = False
    verification_key: Path | None = None
    token: str | None = None
    log_path: Path | None = None
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)  # set in the child's environment (e.g. GOGC)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _dir: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False, repr=False)
    addr: str = field(default="", init=False)

    @property
    def base_url(self) -> str:
        return "http://opa" if self.unix_socket else f"http://{self.addr}"

    @property
    def socket_path(self) -> str | None:
        return self.addr if self.unix_socket else None

    def connector(self) -> aiohttp.BaseConnector:
        import aiohttp

        if self.unix_socket:
            return aiohttp.UnixConnector(path=self.addr)
        return aiohttp.TCPConnector(limit=64)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def start(self, ready_within: float = 30.0) -> None:
        self.spawn()
        await self.wait_ready(ready_within)

    def spawn(self) -> None:
        """Start the OPA process (blocking only for the fork and exec); `wait_ready` then waits for its bundle."""
        self._dir = tempfile.TemporaryDirectory(prefix="talon-opa-opa-")
        work = Path(self._dir.name)
        if self.unix_socket:
            self.addr = str(work / "opa.sock")
            listen = f"unix://{self.addr}"
        else:
            self.addr = f"127.0.0.1:{free_port()}"
            listen = self.addr
        args = [
            binaries.find("opa"),
            "run",
            "--server",
            f"--addr={listen}",
            "--disable-telemetry",
            "--log-level=error",
            "--bundle",
            str(self.bundle),
            *self.extra_args,
        ]
        if self.verification_key is not None:
            args += [f"--verification-key={self.verification_key}"]
        if self.token:
            # a second bundle owning only system.authz: every request must carry the token
            authz = work / "authz"
            authz.mkdir()
            (authz / ".manifest").write_text('{"roots": ["system/authz"]}')
            (authz / "authz.rego").write_text(
                # a JSON string is a Rego string literal: quotes and backslashes in the token stay inside it
                "package system.authz\n\ndefault allow := false\n\n"
                f"allow if input.identity == {json.dumps(self.token)}\n"
            )
            args += ["--authentication=token", "--authorization=basic", str(authz)]
        with open(self.log_path or work / "opa.log", "ab") as log:  # the child keeps its own copy
            self._proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=work,
                env={**os.environ, **self.env} if self.env else None,
                preexec_fn=die_with_parent(),  # prctl only, before exec
            )

    async def wait_ready(self, ready_within: float = 30.0) -> None:
        """Wait until the spawned OPA reports its bundle active; OpaError (and OPA stopped) if it does not."""
        await self._wait_ready(ready_within)
        if self.token and self._dir is not None:
            # OPA has loaded its token policy: the token need not stay on disk (it would outlive a SIGKILL)
            shutil.rmtree(Path(self._dir.name) / "authz", ignore_errors=True)

    async def _wait_ready(self, ready_within: float) -> None:
        import aiohttp

        deadline = asyncio.get_running_loop().time() + ready_within
        last = ""
        async with aiohttp.ClientSession(connector=self.connector()) as http:
            while asyncio.get_running_loop().time() < deadline:
                if self._proc is not None and self._proc.poll() is not None:
                    raise OpaError(f"opa exited with {self._proc.returncode}: {self.log_tail()}")
                try:
                    async with http.get(
                        f"{self.base_url}/health?bundles",
                        headers=self.headers(),
                        timeout=aiohttp.ClientTimeout(2),
                    ) as r:
                        if r.status == 200:
                            return
                        last = f"HTTP {r.status}: {await r.text()}"
                except (aiohttp.ClientError, OSError) as e:
                    last = str(e)
                await asyncio.sleep(READY_POLL_S)
        await self.stop()
        raise OpaError(f"opa not ready after {ready_within}s ({last}): {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        path = self.log_path or (Path(self._dir.name) / "opa.log" if self._dir else None)
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.wait_for(_exited(proc), STOP_WITHIN_S)
            except TimeoutError:
                proc.kill()
                await _exited(proc)
        if self._dir is not None:
            with contextlib.suppress(OSError):
                self._dir.cleanup()
            self._dir = None


async def _exited(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a child to exit (and reap it) without blocking the event loop."""
    while proc.poll() is None:  # noqa: ASYNC110 - a child's exit, polled briefly after a signal
        await asyncio.sleep(EXIT_POLL_S)


def new_token() -> str:
    return secrets.token_urlsafe(24)
