"""A real Jaeger v2 (memory storage) on loopback: OTLP/HTTP and OTLP/gRPC in, the query API out."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.harness import process
from tests.harness.process import Component, free_port


@dataclass
class Jaeger:
    workdir: Path
    otlp_http: str = ""  # base URL, e.g. http://127.0.0.1:PORT (POST /v1/traces)
    otlp_grpc: str = ""  # host:port
    query: str = ""  # base URL of the query API
    component: Component | None = field(default=None, init=False)

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ports = {k: free_port() for k in ("grpc", "http", "query", "query_grpc", "health")}
        config = {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
                "pipelines": {
                    "traces": {
                        "receivers": ["otlp"],
                        "processors": ["batch"],
                        "exporters": ["jaeger_storage_exporter"],
                    }
                },
                "telemetry": {
                    "metrics": {"level": "none"},
                    "traces": {"level": "none"},
                    "logs": {"level": "warn"},
                },
            },
            "extensions": {
                "jaeger_storage": {"backends": {"mem": {"memory": {"max_traces": 100000}}}},
                "jaeger_query": {
                    "storage": {"traces": "mem"},
                    "http": {"endpoint": f"127.0.0.1:{ports['query']}"},
                    "grpc": {"endpoint": f"127.0.0.1:{ports['query_grpc']}"},
                },
                "healthcheckv2": {"use_v2": True, "http": {"endpoint": f"127.0.0.1:{ports['health']}"}},
            },
            "receivers": {
                "otlp": {
                    "protocols": {
                        "grpc": {"endpoint": f"127.0.0.1:{ports['grpc']}"},
                        "http": {"endpoint": f"127.0.0.1:{ports['http']}"},
                    }
                }
            },
            "processors": {"batch": {"timeout": "100ms"}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "mem"}},
        }
        cfg = self.workdir / "jaeger.yaml"
        cfg.write_text(yaml.safe_dump(config))
        self.otlp_http = f"http://127.0.0.1:{ports['http']}"
        self.otlp_grpc = f"127.0.0.1:{ports['grpc']}"
        self.query = f"http://127.0.0.1:{ports['query']}"
        self.component = process.start("jaeger", "jaeger", [f"--config={cfg}"], self.workdir)
        await self.component.wait_ready(lambda: _ok(f"http://127.0.0.1:{ports['health']}/status"), within=60)
        await self.component.wait_ready(lambda: _ok(f"{self.query}/api/services"), within=30)

    def stop(self) -> None:
        if self.component:
            self.component.stop()

    async def trace(self, trace_id: str, *, min_spans: int = 1, within: float = 15.0) -> dict[str, Any]:
        """The trace as Jaeger's query API returns it, once it has at least `min_spans` spans."""
        deadline = time.monotonic() + within
        last: Any = None
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                async with s.get(f"{self.query}/api/traces/{trace_id}") as r:
                    if r.status == 200:
                        body = await r.json()
                        data = body.get("data") or []
                        if data and len(data[0].get("spans", [])) >= min_spans:
                            return dict(data[0])
                        last = body
                    else:
                        last = f"HTTP {r.status}: {await r.text()}"
                await asyncio.sleep(0.2)
        raise TimeoutError(f"trace {trace_id} with >= {min_spans} span(s) not in Jaeger after {within}s: {last}")

    async def span_names(self, trace_id: str, *, min_spans: int = 1) -> list[str]:
        trace = await self.trace(trace_id, min_spans=min_spans)
        spans = sorted(trace["spans"], key=lambda s: (s["startTime"], s["operationName"]))
        return [s["operationName"] for s in spans]


async def _ok(url: str) -> bool:
    async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
        return r.status == 200
