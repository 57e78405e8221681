"""The six notifiers through the running engine (real rules → bundle → child OPA, the engine's own HTTP
session and step deadline): default_notifiers and a rule's notifiers both receive each result, with the
alert's trace id; a failing receiver is logged, traced and counted and leaves the alert's steps alone.

Receivers: a real SMTP server (aiosmtpd, STARTTLS + AUTH) and the wire-format test servers of
tests/harness/receivers.py (Slack, Loki, Elasticsearch, and the webhook, whose real receiver is the user's).
The scripted kubernetes:label of engine_plugins.py produces the steps; the kube config points at an unused
port so the engine is not in dry-run (the scripted actionner never calls it).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from talon_opa.core import logs
from talon_opa.core.errors import TalonError
from talon_opa.core.kube import KubeConfig
from talon_opa.engine import telemetry
from talon_opa.notifiers.elasticsearch import Elasticsearch
from talon_opa.notifiers.loki import Loki
from talon_opa.notifiers.slack import Slack
from talon_opa.notifiers.smtp import Smtp
from talon_opa.notifiers.webhook import Webhook
from talon_opa.plugins.registry import Registry
from tests.e2e.engine_harness import running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, ScriptedLabel
from tests.harness.receivers import ElasticsearchApi, LokiPush, Receiver, SlackWebhook
from tests.harness.smtp import SmtpServer

UNUSED_KUBE = KubeConfig(server="http://127.0.0.1:9")
NOTIFIERS = ("webhook", "loki", "slack", "smtp", "elasticsearch")
REGISTRY = Registry.of(ScriptedLabel, Webhook, Slack, Smtp, Loki, Elasticsearch)
ES_PASSWORD = "es-engine-pass-5d2c"
LOKI_KEY = "loki-engine-key-8e1a"

RULES = """\
- rule: Label and tell
  match:
    rules: [Terminal shell in container]
  notifiers: [slack, smtp, elasticsearch]
  actions:
    - action: Label first
      actionner: kubernetes:label
      parameters: {labels: {behaviour: ok}}
    - action: Label again
      actionner: kubernetes:label
      parameters: {labels: {behaviour: ok, step: two}}
"""


class WebhookReceiver(Receiver):
    """The webhook's receiver (the user's own service): any POST to /hook, 200 unless told otherwise."""

    def routes(self) -> list[web.RouteDef]:
        async def hook(request: web.Request) -> web.Response:
            await self._record(request)
            return self._outage() or web.Response(text="ok")

        return [web.post("/hook", hook)]


class Receivers:
    def __init__(self, smtp: SmtpServer) -> None:
        self.smtp = smtp
        self.slack = SlackWebhook()
        self.loki = LokiPush(tenant_required=True)
        self.es = ElasticsearchApi(user="elastic", password=ES_PASSWORD)
        self.webhook = WebhookReceiver()

    def settings(self) -> dict[str, dict[str, Any]]:
        return {
            "webhook": {"url": self.webhook.url + "/hook"},
            "loki": {"url": self.loki.url, "tenant": "security", "user": "falco", "api_key": LOKI_KEY},
            "slack": {"webhook_url": self.slack.webhook_url},
            "smtp": {
                "host_port": self.smtp.host_port,
                "from": "talon@example.com",
                "to": "secops@example.com",
                "user": self.smtp.user,
                "password": self.smtp.password,
                "tls": True,
            },
            "elasticsearch": {"url": self.es.url, "user": "elastic", "password": ES_PASSWORD, "number_of_replicas": 0},
        }

    def fail_all(self) -> None:
        """Every receiver refuses, more times than the notifiers retry."""
        for server in (self.slack, self.loki, self.webhook):
            server.fail_next = [503] * 20
        self.es.password = "changed"  # the engine's credentials are refused (401)
        self.smtp.answer = "554 5.7.1 relaying denied"


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logger = logs.get()
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    logs.setup("json", "info", stream=out)
    yield out
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture
def smtp_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    server = SmtpServer(tmp_path)
    server.start()
    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))  # the default TLS context trusts its cert
    yield server
    server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def receivers(smtp_server: SmtpServer) -> AsyncIterator[Receivers]:
    r = Receivers(smtp_server)
    async with r.slack.running(), r.loki.running(), r.es.running(), r.webhook.running():
        yield r


async def _run(tmp_path: Path, receivers: Receivers, spans: InMemorySpanExporter) -> tuple[str, dict[str, float]]:
    """One alert through the engine; its trace id and the notification counters by status."""
    SCRIPT.reset()
    async with running_engine(
        tmp_path,
        RULES,
        registry=REGISTRY,
        kube_config=UNUSED_KUBE,
        span_exporter=spans,
        notifiers=receivers.settings(),
        default_notifiers=("webhook", "loki"),
    ) as engine:
        reply = await engine.post("/", json_body=shell_alert(pod="api-1"))
        assert reply.status == 200
        await engine.drained()
        counted = {
            status: await engine.metric("falcosecurity_falco_talon_notifications_total", status=status)
            for status in ("success", "failure")
        }
        counted["actions"] = await engine.metric("falcosecurity_falco_talon_actions_total", status="success")
    engine.engine.telemetry.flush()
    trace_id: str = reply.body["trace_id"]
    return trace_id, counted


async def test_default_and_rule_notifiers_each_receive_every_step_with_the_trace_id(
    tmp_path: Path, receivers: Receivers
) -> None:
    spans = InMemorySpanExporter()
    trace_id, counted = await _run(tmp_path, receivers, spans)

    assert [c[0] for c in SCRIPT.calls] == ["kubernetes:label", "kubernetes:label"]
    assert counted == {"success": 10, "failure": 0, "actions": 2}  # 2 steps x 5 notifiers
    # webhook (default)
    hooks = [r.json() for r in receivers.webhook.seen]
    assert [(h["action"], h["trace_id"], h["status"]) for h in hooks] == [
        ("Label first", trace_id, "success"),
        ("Label again", trace_id, "success"),
    ]
    # loki (default): tenant and basic auth
    pushes = receivers.loki.seen
    assert len(pushes) == 2
    assert {p.headers["X-Scope-OrgID"] for p in pushes} == {"security"}
    assert {p.headers["Authorization"] for p in pushes} == {
        "Basic " + base64.b64encode(f"falco:{LOKI_KEY}".encode()).decode()
    }
    assert {p.json()["streams"][0]["stream"]["traceid"] for p in pushes} == {trace_id}
    # slack (the rule's)
    slack = [r.json() for r in receivers.slack.seen]
    assert len(slack) == 2
    for payload in slack:
        fields = {f["title"]: f["value"] for f in payload["attachments"][0]["fields"]}
        assert fields["Trace ID"] == f"`{trace_id}`"
        assert fields["Rule"] == "`Label and tell`"
    # smtp (the rule's): both parts carry the trace id
    mails = receivers.smtp.received
    assert len(mails) == 2
    for mail in mails:
        assert mail.tls
        assert mail.login == "talon"
        parts = [p.get_content() for p in mail.message.walk() if not p.is_multipart()]
        assert len(parts) == 2
        assert all(trace_id in part for part in parts)
    # elasticsearch (the rule's): template once, two documents, with the credentials
    assert [d.doc["trace_id"] for d in receivers.es.documents] == [trace_id, trace_id]
    assert {d.template for d in receivers.es.documents} == {"falco-talon"}
    # one `send notification` span per notifier and step, in the alert's trace, under its step
    sends = [s for s in spans.get_finished_spans() if s.name == telemetry.SEND_NOTIFICATION]
    assert sorted(str((s.attributes or {})[telemetry.NOTIFIER]) for s in sends) == sorted(NOTIFIERS * 2)
    assert {format(s.context.trace_id, "032x") for s in sends} == {trace_id}
    assert all(s.status.status_code == StatusCode.OK for s in sends)


async def test_failing_receivers_are_counted_and_traced_and_the_steps_still_run(
    tmp_path: Path, receivers: Receivers, captured_logs: io.StringIO
) -> None:
    receivers.fail_all()
    spans = InMemorySpanExporter()
    trace_id, counted = await _run(tmp_path, receivers, spans)

    assert [c[0] for c in SCRIPT.calls] == ["kubernetes:label", "kubernetes:label"]  # both steps ran
    assert counted == {"success": 0, "failure": 10, "actions": 2}
    sends = [s for s in spans.get_finished_spans() if s.name == telemetry.SEND_NOTIFICATION]
    assert len(sends) == 10
    assert all(s.status.status_code == StatusCode.ERROR for s in sends)
    errors = {str((s.attributes or {})[telemetry.NOTIFIER]): s.status.description or "" for s in sends}
    assert "HTTP 503" in errors["slack"]
    assert "HTTP 503" in errors["loki"]
    assert "HTTP 503" in errors["webhook"]
    assert "HTTP 401" in errors["elasticsearch"]
    assert "554" in errors["smtp"]
    assert all(ES_PASSWORD not in e and LOKI_KEY not in e for e in errors.values())
    assert receivers.slack.path not in errors["slack"]  # the webhook's secret path
    assert receivers.es.documents == []
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    failed = sorted(line["notifier"] for line in lines if line.get("message") == "notification")
    assert failed == sorted(NOTIFIERS * 2)
    assert {line["status"] for line in lines if line.get("message") == "notification"} == {"failure"}
    text = captured_logs.getvalue()
    for secret in (ES_PASSWORD, LOKI_KEY, receivers.slack.path, receivers.smtp.password):
        assert secret not in text
    steps = [s for s in spans.get_finished_spans() if s.name == telemetry.RUN_ACTION]
    assert len(steps) == 2
    assert all(s.status.status_code == StatusCode.OK for s in steps)  # a notifier never fails the step
    assert {format(s.context.trace_id, "032x") for s in steps} == {trace_id}


async def test_a_rule_naming_an_unconfigured_notifier_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(TalonError) as caught:
        async with running_engine(tmp_path, RULES, registry=REGISTRY, kube_config=UNUSED_KUBE):
            pass
    text = str(caught.value)
    assert "notifier 'slack' is named by rule 'Label and tell' but `notifiers.slack.webhook_url` is not set" in text
    assert "set notifiers.slack.webhook_url in the config file" in text


async def test_a_default_notifier_without_its_settings_stops_the_start_naming_the_keys(tmp_path: Path) -> None:
    with pytest.raises(TalonError) as caught:
        async with running_engine(
            tmp_path, RULES, registry=REGISTRY, kube_config=UNUSED_KUBE, default_notifiers=("smtp",)
        ):
            pass
    assert (
        "notifier 'smtp' is named by default_notifiers but `notifiers.smtp.host_port`, `notifiers.smtp.from`, "
        "`notifiers.smtp.to` are not set" in str(caught.value)
    )


async def test_a_reload_naming_an_unconfigured_notifier_is_refused_naming_the_key(
    tmp_path: Path, captured_logs: io.StringIO, receivers: Receivers
) -> None:
    plain = RULES.replace("  notifiers: [slack, smtp, elasticsearch]\n", "")
    SCRIPT.reset()
    async with running_engine(
        tmp_path,
        plain,
        registry=REGISTRY,
        kube_config=UNUSED_KUBE,
        notifiers={"webhook": receivers.settings()["webhook"]},
    ) as engine:
        engine.rules.write_text(RULES.replace("[slack, smtp, elasticsearch]", "[webhook, loki]"))
        assert await engine.engine.reload() is False
        assert await engine.metric("talon_opa_rules_reloads_total", status="failure") == 1
        reply = await engine.post("/", json_body=shell_alert(pod="api-2"))
        await engine.drained()
        assert reply.status == 200
    rejected = [json.loads(line) for line in captured_logs.getvalue().splitlines() if "rules rejected" in line]
    assert len(rejected) == 1
    assert (
        "notifier 'loki' is named by rule 'Label and tell' but `notifiers.loki.url` is not set" in rejected[0]["error"]
    )
    assert receivers.webhook.seen == []  # the old rules (no notifiers) stayed active
    assert len(SCRIPT.calls) == 2


async def test_a_receiver_that_does_not_answer_does_not_hold_back_the_next_step(tmp_path: Path) -> None:
    gate, both_held = asyncio.Event(), asyncio.Event()
    held: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        held.append(await request.read())
        if len(held) == 2:
            both_held.set()
        await gate.wait()  # answers only when the test says so
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    SCRIPT.reset()
    try:
        async with running_engine(
            tmp_path,
            RULES.replace("[slack, smtp, elasticsearch]", "[webhook]"),
            registry=REGISTRY,
            kube_config=UNUSED_KUBE,
            notifiers={"webhook": {"url": url}},
            step_timeout_seconds=120,
        ) as engine:
            reply = await engine.post("/", json_body=shell_alert(pod="api-3"))
            assert reply.status == 200
            async with asyncio.timeout(30):  # far below the 120 s the first notification may take
                await both_held.wait()  # step 2's notification came while step 1's is still held
            assert [c[0] for c in SCRIPT.calls] == ["kubernetes:label", "kubernetes:label"]
            gate.set()
            await engine.drained()
            assert await engine.metric("falcosecurity_falco_talon_notifications_total", status="success") == 2
    finally:
        gate.set()
        await runner.cleanup()
