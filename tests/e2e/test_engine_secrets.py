"""Secrets never leave the engine in clear: not in startup errors, log lines, spans or `rules print`.

The webhook receiver here is a test server speaking plain HTTP (the real one is the user's own service):
it answers 500 with a body echoing the request's Authorization header, as careless services do, so the
notifier's error text carries the secret and the engine must scrub it.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from talon_opa.cli import rules_check
from talon_opa.core import config, logs
from talon_opa.core.errors import TalonError
from talon_opa.core.kube import KubeConfig
from talon_opa.engine import server
from talon_opa.notifiers.webhook import Webhook
from talon_opa.plugins.params import param
from talon_opa.plugins.registry import Registry
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Spec
from tests.e2e.engine_harness import running_engine, shell_alert
from tests.e2e.engine_harness import test_config as engine_config
from tests.e2e.engine_plugins import ScriptedLabel

UNUSED_KUBE = KubeConfig(server="http://127.0.0.1:9")  # the scripted label never calls it; not dry-run
SECRET = "Bearer 9f7c2d-very-secret-header"
TOKEN = "intake-token-4b1e9a77"

RULES = """\
- rule: Label and tell the webhook
  match:
    rules: [Terminal shell in container]
  notifiers: [webhook]
  actions:
    - action: Label
      actionner: kubernetes:label
      parameters: {labels: {behaviour: ok}}
"""


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    out = io.StringIO()
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in (logs.get(), logging.getLogger("aiohttp"))]
    logs.setup("json", "info", stream=out)
    yield out
    for logger, handlers, level, propagate in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest_asyncio.fixture(loop_scope="session")
async def echoing_receiver() -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=500, text=f"refused, you sent {request.headers.get('Authorization')}")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    await runner.cleanup()


async def test_a_secret_in_a_notifiers_error_is_scrubbed_from_logs_and_spans(
    tmp_path: Path, echoing_receiver: str, captured_logs: io.StringIO
) -> None:
    spans = InMemorySpanExporter()
    notifiers = {"webhook": {"url": echoing_receiver, "custom_headers": {"Authorization": SECRET}}}
    alert = shell_alert(pod="api-1", output=f"08:21:07.114583261: Notice a shell, token {TOKEN} in argv")
    async with running_engine(
        tmp_path,
        RULES,
        registry=Registry.of(ScriptedLabel, Webhook),
        kube_config=UNUSED_KUBE,
        span_exporter=spans,
        notifiers=notifiers,
        auth=config.Auth(token=TOKEN),
        print_all_events=True,
    ) as engine:
        reply = await engine.post("/", json_body=alert, headers={"Authorization": f"Bearer {TOKEN}"})
        assert reply.status == 200
        await engine.drained()
        assert await engine.metric("falcosecurity_falco_talon_notifications_total", status="failure") == 1
    engine.engine.telemetry.flush()

    text = captured_logs.getvalue()
    failures = [json.loads(line) for line in text.splitlines() if '"notification"' in line]
    assert any(f.get("status") == "failure" and "<redacted>" in f.get("error", "") for f in failures), failures
    assert SECRET not in text
    assert TOKEN not in text  # the intake token, even inside an alert's output
    [send] = [s for s in spans.get_finished_spans() if s.name == "send notification"]
    assert send.status.description is not None
    assert "<redacted>" in send.status.description
    assert SECRET not in send.status.description
    for event in send.events:
        assert SECRET not in json.dumps(dict(event.attributes or {}))


async def test_a_startup_error_about_a_secret_setting_does_not_print_it(tmp_path: Path) -> None:
    header = "Authorization: Bearer very-secret-4c1d"  # a string where a map of headers belongs
    notifiers = {"webhook": {"url": "http://127.0.0.1:9/hook", "custom_headers": header}}
    with pytest.raises(TalonError) as e:
        async with running_engine(tmp_path, RULES, registry=Registry.of(ScriptedLabel, Webhook), notifiers=notifiers):
            pass
    assert "custom_headers: expected a map of strings, got a string ('<redacted>')" in str(e.value)
    assert "very-secret" not in str(e.value)


@dataclass(frozen=True, kw_only=True, slots=True)
class _VaultParams:
    path: str = param(doc="where", required=True)
    password: str = param(doc="the vault password", required=True, secret=True)


class _Vault(Planned):
    spec: ClassVar[Spec[_VaultParams]] = Spec(
        name="test:vault", kind="actionner", description="a plugin with a secret parameter", params=_VaultParams
    )


def test_rules_print_masks_parameters_declared_secret(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        """\
- rule: Store it
  match: {rules: [Terminal shell in container]}
  actions:
    - action: Vault
      actionner: test:vault
      parameters: {path: /kv/falco, Password: hunter2-secret}
"""
    )
    out = io.StringIO()
    args = argparse.Namespace(rules_command="print", rules=[str(rules)])
    assert rules_check.main(args, Registry.of(_Vault), out) == 0
    printed = yaml.safe_load(out.getvalue())
    assert printed[0]["actions"][0]["parameters"] == {"path": "/kv/falco", "Password": "<redacted>"}
    assert "hunter2" not in out.getvalue()


async def test_an_opa_token_with_quotes_and_backslashes_starts_and_decides(
    tmp_path: Path, captured_logs: io.StringIO
) -> None:
    token = 'op"a-tok\\en"}-x'
    opa = dataclasses.replace(config.Opa(), token=token, retry_initial_seconds=0.02, retry_max_seconds=0.3)
    async with running_engine(tmp_path, RULES.replace("  notifiers: [webhook]\n", ""), opa=opa) as e:
        assert (await e.post(json_body=shell_alert("tok-1"))).status == 200
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="dry_run") == 1
        # the child OPA really requires it: a request with another token is refused
        endpoint = e.engine.supervisor.endpoint()
        async with endpoint.session.get(f"{endpoint.base_url}/health", headers={"Authorization": "Bearer x"}) as r:
            assert r.status == 401
    assert token not in captured_logs.getvalue()


def test_an_opa_token_that_cannot_be_a_header_is_refused_without_printing_it() -> None:
    with pytest.raises(config.ConfigError) as e:
        config.load(None, {"OPA_TOKEN": "bad token-123\n"})
    assert "opa.token" in str(e.value)
    assert "token-123" not in str(e.value)


async def test_a_password_in_a_notifier_url_is_scrubbed_from_logs(tmp_path: Path, captured_logs: io.StringIO) -> None:
    password = "hook-pass%2Fword-9d2e"
    notifiers = {"webhook": {"url": f"http://falco:{password}@127.0.0.1:9/hook?pw={password}"}}
    async with running_engine(
        tmp_path, RULES, registry=Registry.of(ScriptedLabel, Webhook), kube_config=UNUSED_KUBE, notifiers=notifiers
    ) as e:
        assert (await e.post(json_body=shell_alert("pw-1", output=f"an alert quoting {password}"))).status == 200
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_notifications_total", status="failure") == 1
    text = captured_logs.getvalue()
    assert "an alert quoting" in text or '"notification"' in text
    assert password not in text
    assert "hook-pass/word" not in text


async def test_a_malformed_notifier_url_with_a_password_is_not_printed_by_the_startup_error(
    tmp_path: Path, captured_logs: io.StringIO
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    cfg = engine_config(rules, notifiers={"webhook": {"url": "htp:/falco:pw-malformed-77@hooks"}})
    assert await server.serve(cfg) == 1  # `talon-opa server`'s own path: logged, exit code 1
    text = captured_logs.getvalue()
    assert "engine did not start" in text
    assert "falco:<redacted>@hooks" in text
    assert "pw-malformed-77" not in text
