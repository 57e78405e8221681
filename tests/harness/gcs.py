"""A real GCS emulator on loopback: fake-gcs-server (built by tools/ from the Go module proxy), which speaks
Cloud Storage's JSON API (`/storage/v1/...`, `/upload/storage/v1/...`) and its XML API, in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp

from tests.harness import process
from tests.harness.process import Component, free_port


@dataclass
class FakeGcs:
    workdir: Path
    url: str = ""
    component: Component | None = field(default=None, init=False)

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        args = ["-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory"]
        args += ["-public-host", f"127.0.0.1:{port}", "-external-url", self.url, "-log-level", "info"]
        self.component = process.start("fake-gcs-server", "fake-gcs-server", args, self.workdir)
        await self.component.wait_ready(self._ok)

    def stop(self) -> None:
        if self.component:
            self.component.stop()

    async def _ok(self) -> bool:
        async with aiohttp.ClientSession() as s, s.get(self.url + "/storage/v1/b") as r:
            return r.status == 200

    async def create_bucket(self, name: str) -> None:
        async with aiohttp.ClientSession() as s, s.post(self.url + "/storage/v1/b", json={"name": name}) as r:
            assert r.status == 200, await r.text()

    async def objects(self, bucket: str) -> list[str]:
        async with aiohttp.ClientSession() as s, s.get(f"{self.url}/storage/v1/b/{bucket}/o") as r:
            assert r.status == 200, await r.text()
            return [str(o["name"]) for o in (await r.json()).get("items", [])]

    async def read(self, bucket: str, name: str) -> tuple[bytes, str]:
        """An object's bytes and content type."""
        url = f"{self.url}/storage/v1/b/{bucket}/o/{quote(name, safe='')}"
        async with aiohttp.ClientSession() as s, s.get(url, params={"alt": "media"}) as r:
            assert r.status == 200, await r.text()
            return await r.read(), r.headers.get("Content-Type", "")
