"""Real component processes for tests: free loopback ports, a log file each, readiness, clean teardown.

Every process is started in its own process group and registered, so that a crashed or interrupted
run still leaves no stray process behind (the registry is emptied at exit), and a failing test gets the
tail of every live component log attached to its report (see conftest.py).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from talon_opa.core import binaries
from talon_opa.opa.process import free_port

LIVE: list[Component] = []


class ComponentFailed(RuntimeError):
    """A component exited or never became ready; the message carries its log tail."""


@dataclass
class Component:
    name: str
    args: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                list(self.args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
                cwd=self.cwd,
                start_new_session=True,
            )
        LIVE.append(self)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def wait_ready(self, probe: Callable[[], Awaitable[bool]], within: float = 60.0) -> None:
        """Poll `probe` until it returns True; fail with the log tail if the process dies or time runs out."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.alive:
                code = self.proc.returncode if self.proc else None
                raise ComponentFailed(f"{self.name} exited with {code}; log tail:\n{self.log_tail()}")
            with contextlib.suppress(Exception):
                if await probe():
                    return
            await asyncio.sleep(0.1)
        raise ComponentFailed(f"{self.name} not ready after {within}s; log tail:\n{self.log_tail()}")

    def stop(self, grace: float = 5.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self in LIVE:
            LIVE.remove(self)


def start(name: str, binary: str, args: Sequence[str], workdir: Path, **kw: object) -> Component:
    """Start the component `binary` (a name for tools/path) with `args`, logging to workdir/<name>.log."""
    c = Component(name, [binaries.find(binary), *args], workdir / f"{name}.log", **kw)  # type: ignore[arg-type]
    c.start()
    return c


def stop_all() -> None:
    for c in reversed(list(LIVE)):
        c.stop(grace=2.0)


atexit.register(stop_all)
__all__ = ["Component", "ComponentFailed", "free_port", "start", "stop_all"]
