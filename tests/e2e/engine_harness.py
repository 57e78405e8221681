"""The real engine for e2e tests: real rules → bundle → child OPA, real HTTP on a loopback port."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.sdk.trace.export import SpanExporter

from talon_opa.core import config
from talon_opa.core.kube import KubeConfig
from talon_opa.engine import server
from talon_opa.engine.app import create_app
from talon_opa.engine.lifecycle import Engine
from talon_opa.engine.listener import Runner
from talon_opa.opa.process import free_port
from talon_opa.plugins.registry import Registry
from tests.harness.paths import ALERTS


def sample(name: str, **changes: Any) -> dict[str, Any]:
    """A sample alert (samples/alerts/NAME.json) with top-level keys changed or output fields merged."""
    doc: dict[str, Any] = json.loads((ALERTS / f"{name}.json").read_text())
    fields = changes.pop("output_fields", None)
    doc.update(changes)
    if fields:
        doc["output_fields"] = {**doc.get("output_fields", {}), **fields}
    return doc


def shell_alert(pod: str = "api-1", ns: str = "payments", output: str | None = None) -> dict[str, Any]:
    """'Terminal shell in container' about ns/pod; the output text is unique per pod unless given."""
    return sample(
        "falco-terminal-shell-in-container",
        output=output or f"08:21:07.114583261: Notice A shell was spawned pod={pod} ns={ns}",
        output_fields={"k8s.pod.name": pod, "k8s.ns.name": ns},
    )


@dataclass
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str]


@dataclass
class RunningEngine:
    engine: Engine
    url: str
    http: aiohttp.ClientSession
    rules: Path

    async def post(
        self,
        path: str = "/",
        *,
        json_body: Any = None,
        data: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        method: str = "POST",
    ) -> Reply:
        kw: dict[str, Any] = {"headers": dict(headers or {})}
        if json_body is not None:
            kw["json"] = json_body
        elif data is not None:
            kw["data"] = data
        async with self.http.request(method, self.url + path, **kw) as r:
            text = await r.text()
            try:
                body: Any = json.loads(text) if text else None
            except ValueError:
                body = text
            return Reply(r.status, body, dict(r.headers))

    async def get(self, path: str) -> Reply:
        return await self.post(path, method="GET")

    async def drained(self) -> None:
        await self.engine.drained()

    async def metrics(self) -> str:
        async with self.http.get(self.url + "/metrics") as r:
            assert r.status == 200
            return await r.text()

    async def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0 when absent)."""
        text = await self.metrics()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            m = re.match(r"^([^{ ]+)(?:\{(.*)\})? (\S+)$", line)
            if m is None or m.group(1) != name:
                continue
            found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total


def test_config(rules: Path, **changes: Any) -> config.Config:
    """A config for tests: loopback, a free port, fast OPA retries, short windows unless changed."""
    opa = dataclasses.replace(config.Opa(), retry_initial_seconds=0.02, retry_max_seconds=0.3, ready_timeout_seconds=30)
    base = config.Config(
        listen_port=free_port(),
        rules_files=(str(rules),),
        watch_rules=False,
        log_format="json",
        opa=opa,
        queue=config.Queue(capacity=100, workers=4, drain_timeout_seconds=20),
    )
    return dataclasses.replace(base, **changes)


@asynccontextmanager
async def running_engine(
    tmp_path: Path,
    rules_yaml: str,
    *,
    kube_config: KubeConfig | None = None,
    registry: Registry | None = None,
    span_exporter: SpanExporter | None = None,
    connector: aiohttp.BaseConnector | None = None,
    own_protocol: bool = True,
    **changes: Any,
) -> AsyncIterator[RunningEngine]:
    """Start the engine (rules → bundle → child OPA) and its HTTP listener; drain and stop at exit."""
    rules = tmp_path / "rules.yaml"
    if not rules.exists():
        rules.write_text(rules_yaml)
    cfg = test_config(rules, **changes)
    before = set(asyncio.all_tasks())  # other engines of the test may run beside this one
    engine = Engine(cfg, kube_config=kube_config, registry=registry, span_exporter=span_exporter)
    app = create_app(engine)
    runner = Runner(app, cfg.intake, own_protocol=own_protocol)  # False: aiohttp answers every request
    await runner.setup()
    try:
        tls = server.ssl_context(cfg.tls)
        site = web.TCPSite(runner, cfg.address, cfg.listen_port, ssl_context=tls)
        await site.start()
        scheme = "https" if tls else "http"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), connector=connector) as http:
            yield RunningEngine(engine, f"{scheme}://{cfg.address}:{cfg.listen_port}", http, rules)
    finally:
        await runner.cleanup()
    leaked = [
        t.get_name() for t in asyncio.all_tasks() - before if t.get_name().startswith("talon-opa-") and not t.done()
    ]
    assert not leaked, f"the engine left tasks running: {leaked}"


DRY_RUN_RULES = """\
- rule: Shell in a container
  match:
    rules:
      - Terminal shell in container
  dry_run: true
  actions:
    - action: Mark the pod
      actionner: kubernetes:label
      parameters:
        labels:
          security.falco.org/suspicious: "true"
"""
