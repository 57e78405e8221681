"""A real OpenSearch node on loopback (one JVM, the jars tools/build resolved from Maven Central, the
launcher tools/opensearch/OpenSearchNode.java). It speaks the Elasticsearch REST API the notifier uses
(`_index_template`, `/<index>/_doc`) and lets the test read back what it stored (`_search`, `_mapping`,
`_settings`).

What it cannot show: authentication (no security plugin; tests/harness/receivers.py's ElasticsearchApi
checks the credentials on every request) and Elasticsearch-only behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from talon_opa.core import binaries
from tests.harness import process
from tests.harness.process import Component, free_port

HEAP = "-Xmx512m"


def command(port: int, home: Path) -> list[str]:
    """The JVM command line of the node (tools/path names the classpath file; the launcher is beside it)."""
    classpath = Path(binaries.find("opensearch"))
    cp = f"{classpath.parent}:{classpath.read_text().strip()}"
    return ["java", "-Xms256m", HEAP, "-cp", cp, "OpenSearchNode", str(port), str(home)]


@dataclass
class OpenSearch:
    workdir: Path
    url: str = ""
    component: Component | None = field(default=None, init=False)

    async def start(self) -> None:
        home = self.workdir / "home"
        (home / "config").mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.component = process.Component("opensearch", command(port, home), self.workdir / "opensearch.log")
        self.component.start()
        await self.component.wait_ready(self._green, within=180)

    async def _green(self) -> bool:
        async with aiohttp.ClientSession() as s, s.get(self.url + "/_cluster/health") as r:
            return r.status == 200 and (await r.json())["status"] in ("green", "yellow")

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as s:
            async with s.post(self.url + "/_refresh") as r:
                assert r.status == 200, await r.text()
            async with s.get(self.url + path) as r:
                assert r.status == 200, await r.text()
                return await r.json()

    async def search(self, index: str, query: dict[str, Any]) -> list[dict[str, Any]]:
        """The stored documents of `index` matching a query (after a refresh)."""
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{self.url}/{index}/_refresh") as r:
                assert r.status == 200, await r.text()
            async with s.post(f"{self.url}/{index}/_search", json={"query": query, "size": 100}) as r:
                assert r.status == 200, await r.text()
                hits = (await r.json())["hits"]["hits"]
        return [{"_index": h["_index"], **h["_source"]} for h in hits]

    def stop(self) -> None:
        if self.component:
            self.component.stop(grace=15.0)
