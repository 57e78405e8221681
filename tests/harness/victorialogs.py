"""A real VictoriaLogs server on loopback: it accepts Loki's JSON push API at `/insert/loki/api/v1/push`
(so the loki notifier's `url` is `<base>/insert`) and answers LogsQL queries, which shows that what the
notifier pushes is accepted and stored by a real server. Basic auth on every endpoint (`-httpAuth.*`).

What it cannot show about Loki itself: the tenant header (`X-Scope-OrgID`; VictoriaLogs has its own
`AccountID`) and Loki's label-name and per-stream limits; tests/harness/receivers.py's `LokiPush` checks
those against the documented format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness import process
from tests.harness.process import Component, free_port


@dataclass
class VictoriaLogs:
    workdir: Path
    user: str = "falco"
    password: str = "vlogs-pass-6f3a"
    base: str = ""
    component: Component | None = field(default=None, init=False)

    @property
    def loki_url(self) -> str:
        """What the loki notifier's `url` is set to (it appends /loki/api/v1/push)."""
        return self.base + "/insert"

    def _auth(self) -> dict[str, str]:
        return {"Authorization": aiohttp.encode_basic_auth(self.user, self.password)}

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.component = process.start(
            "victoria-logs",
            "victoria-logs",
            [
                f"-httpListenAddr=127.0.0.1:{port}",
                f"-storageDataPath={self.workdir / 'data'}",
                f"-httpAuth.username={self.user}",
                f"-httpAuth.password={self.password}",
                "-loggerLevel=WARN",
            ],
            self.workdir,
        )
        await self.component.wait_ready(self._healthy)

    async def _healthy(self) -> bool:
        async with aiohttp.ClientSession() as s, s.get(self.base + "/health", headers=self._auth()) as r:
            return r.status == 200

    async def query(self, logsql: str) -> list[dict[str, Any]]:
        """The log entries matching a LogsQL query, after making recent pushes searchable."""
        async with aiohttp.ClientSession(headers=self._auth(), timeout=aiohttp.ClientTimeout(total=10)) as s:
            async with s.get(self.base + "/internal/force_flush") as r:
                assert r.status == 200, await r.text()
            async with s.get(self.base + "/select/logsql/query", params={"query": logsql}) as r:
                assert r.status == 200, await r.text()
                text = await r.text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def stop(self) -> None:
        if self.component:
            self.component.stop()
