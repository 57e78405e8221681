"""A real nats-server with JetStream on loopback (file store in the test's temp dir)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.harness import process
from tests.harness.process import Component, free_port


@dataclass
class Nats:
    workdir: Path
    url: str = ""
    component: Component | None = field(default=None, init=False)

    port: int = 0
    monitor: int = 0

    async def start(self) -> None:
        """Start (again, on the same ports and store, after `stop`)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port, self.monitor = free_port(), free_port()
        port, monitor = self.port, self.monitor
        self.url = f"nats://127.0.0.1:{port}"
        self.component = process.start(
            "nats-server",
            "nats-server",
            ["-a", "127.0.0.1", "-p", str(port), "-m", str(monitor), "-js", "-sd", str(self.workdir / "js")],
            self.workdir,
        )
        await self.component.wait_ready(lambda: _ok(f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true"))

    def stop(self) -> None:
        if self.component:
            self.component.stop()


async def _ok(url: str) -> bool:
    async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
        return r.status == 200
