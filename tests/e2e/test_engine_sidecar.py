"""OPA as a sidecar: it polls the engine's bundle service, decisions wait until it has the engine's
revision, and a reload reaches it atomically."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

from talon_opa.core import config
from talon_opa.opa.process import free_port
from tests.conftest import OpaFactory
from tests.e2e.engine_harness import RunningEngine, running_engine, shell_alert

TOKEN = "sidecar-token"
RULES = """\
- rule: {name}
  match:
    rules: [Terminal shell in container]
  dry_run: true
  actions:
    - action: Mark
      actionner: kubernetes:label
      parameters:
        labels: {{suspicious: "true"}}
"""


async def wait_revision(e: RunningEngine, revision: str, within: float = 15) -> None:
    for _ in range(int(within / 0.1)):
        reply = await e.get("/readyz")
        if reply.status == 200 and reply.body["revision"] == revision:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"sidecar never reported {revision}: {reply.body}")


async def test_a_sidecar_polls_the_bundle_and_follows_reloads(opa: OpaFactory, tmp_path: Path) -> None:
    opa_port = free_port()
    opa_cfg = dataclasses.replace(config.Opa(), url=f"http://127.0.0.1:{opa_port}", retry_initial_seconds=0.05)
    async with running_engine(
        tmp_path,
        RULES.format(name="Old"),
        opa=opa_cfg,
        auth=config.Auth(token=TOKEN),
        listen_address="127.0.0.1",
        watch_rules=True,
        watch_interval_seconds=0.1,
    ) as e:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert (await e.get("/readyz")).status == 503  # no sidecar yet
        # an alert that arrives before the sidecar has the bundle waits for it
        early = await e.post(json_body=shell_alert("early"), headers=auth)
        assert early.status == 200

        async with e.http.get(e.url + "/v1/bundles/talon.tar.gz") as r:
            assert r.status == 401  # the bundle service is behind the intake's token
        placeholder = tmp_path / "placeholder"
        placeholder.mkdir()
        (placeholder / ".manifest").write_text(json.dumps({"revision": "placeholder", "roots": ["placeholder"]}))
        await opa(
            placeholder,
            extra_args=(
                f"--addr=127.0.0.1:{opa_port}",
                f"--set=services.engine.url={e.url}",
                f"--set=services.engine.credentials.bearer.token={TOKEN}",
                "--set=bundles.talon.service=engine",
                "--set=bundles.talon.resource=/v1/bundles/talon.tar.gz",
                "--set=bundles.talon.polling.min_delay_seconds=1",
                "--set=bundles.talon.polling.max_delay_seconds=1",
            ),
        )
        assert e.engine.built is not None
        old = e.engine.built.revision
        await wait_revision(e, old)
        await asyncio.wait_for(e.drained(), 15)
        assert await e.metric("falcosecurity_falco_talon_actions_total", rule="Old", status="dry_run") == 1

        e.rules.write_text(RULES.format(name="New"))
        for _ in range(100):
            if e.engine.built.revision != old:
                break
            await asyncio.sleep(0.1)
        await wait_revision(e, e.engine.built.revision)
        await e.post(json_body=shell_alert("later"), headers=auth)
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_actions_total", rule="New", status="dry_run") == 1
        assert await e.metric("talon_opa_alerts_failed_total") == 0
