"""slack, loki and elasticsearch against test servers speaking their wire format (tests/harness/receivers.py
says why not the real ones); smtp against a real SMTP server (aiosmtpd) with STARTTLS and AUTH."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from talon_opa.notifiers import _http
from talon_opa.notifiers.elasticsearch import Elasticsearch, index_name
from talon_opa.notifiers.loki import Loki
from talon_opa.notifiers.slack import Slack
from talon_opa.notifiers.smtp import Smtp
from talon_opa.plugins.clients import Clients
from talon_opa.plugins.notes import Note
from talon_opa.plugins.params import ParamsInvalid
from tests.e2e.engine_plugins import labelled_note
from tests.harness.receivers import ElasticsearchApi, LokiPush, SlackWebhook
from tests.harness.smtp import SmtpServer

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
EVENT = "08:21:07.114583261: Notice A shell was spawned (user=root pod=api-1 ns=payments)"


def note(**changes: Any) -> Note:
    return labelled_note(TRACE_ID, **{"event": EVENT, **changes})


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# ---- slack -------------------------------------------------------------------------------------


async def _slack(http: aiohttp.ClientSession, n: Note, url: str, **settings: Any) -> None:
    decoded = Slack.spec.decode({"webhook_url": url, **settings})
    await Slack(Clients("slack", {"http": http}), decoded).notify(n)


async def test_slack_long_format_is_talons_attachment_with_every_field(http: aiohttp.ClientSession) -> None:
    async with SlackWebhook().running() as slack:
        await _slack(http, note(), slack.webhook_url)

    [got] = slack.seen
    assert got.headers["Content-Type"] == "application/json"
    assert got.json() == {
        "text": "[*SUCCESS*][*ACTION*] Rule: `Label shells` Action: `Label the pod`",
        "username": "Falco Talon",
        "icon_url": "https://upload.wikimedia.org/wikipedia/commons/2/26/Circaetus_gallicus_claw.jpg",
        "attachments": [
            {
                "fallback": "",
                "color": "#23ba47",
                "footer": "http://github.com/falcosecurity/falco-talon",
                "fields": [
                    {"title": "Rule", "value": "`Label shells`", "short": False},
                    {"title": "Action", "value": "`Label the pod`", "short": False},
                    {"title": "Actionner", "value": "`kubernetes:label`", "short": True},
                    {"title": "Status", "value": "`success`", "short": True},
                    {"title": "Namespace", "value": "`payments`", "short": True},
                    {"title": "Pod", "value": "`api-1`", "short": True},
                    {"title": "Event", "value": f"```{EVENT}```", "short": False},
                    {"title": "Message", "value": "`action`", "short": False},
                    {"title": "Trace ID", "value": f"`{TRACE_ID}`", "short": False},
                    {
                        "title": "Output",
                        "value": "```\nthe pod 'api-1' in the namespace 'payments' has been labeled```",
                        "short": False,
                    },
                ],
            }
        ],
    }


async def test_slack_short_format_is_one_red_line_with_the_trace_id(http: aiohttp.ClientSession) -> None:
    failed = note(stage="output", status="failure", output="", error="bucket missing", output_target="aws:s3")
    async with SlackWebhook().running() as slack:
        await _slack(http, failed, slack.webhook_url, format="short", username="", footer="", icon="")

    [got] = slack.seen
    assert got.json() == {
        "attachments": [
            {
                "fallback": "",
                "color": "#e20b0b",
                "text": "[*FAILURE*][*OUTPUT*] Rule: `Label shells` Action: `Label the pod` OutputTarget: `aws:s3`"
                f" Trace ID: `{TRACE_ID}`",
            }
        ]
    }


@pytest.mark.parametrize(("status", "color"), [("success", "#23ba47"), ("failure", "#e20b0b"), ("ignored", "#a4a8b1")])
async def test_slack_colour_follows_the_status(http: aiohttp.ClientSession, status: str, color: str) -> None:
    async with SlackWebhook().running() as slack:
        await _slack(http, note(status=status), slack.webhook_url)
    assert slack.seen[0].json()["attachments"][0]["color"] == color


async def test_slack_retries_an_outage_then_delivers(http: aiohttp.ClientSession) -> None:
    async with SlackWebhook(fail_next=[503, 502]).running() as slack:
        await _slack(http, note(), slack.webhook_url)
    assert len(slack.seen) == 3
    assert slack.seen[0].body == slack.seen[2].body


async def test_slack_refusal_is_not_retried_and_hides_the_webhook_path(http: aiohttp.ClientSession) -> None:
    async with SlackWebhook().running() as slack:
        with pytest.raises(_http.SendFailed) as caught:
            await _slack(http, note(), slack.url + "/services/T0/B0/wrong-token-5e1f")

    assert len(slack.seen) == 1  # a 404 would be refused again
    text = str(caught.value)
    assert f"slack POST {slack.url}: HTTP 404: no_service" in text
    assert "wrong-token" not in text
    assert "/services" not in text


# ---- loki --------------------------------------------------------------------------------------


async def _loki(http: aiohttp.ClientSession, n: Note, url: str, **settings: Any) -> None:
    await Loki(Clients("loki", {"http": http}), Loki.spec.decode({"url": url, **settings})).notify(n)


async def test_loki_pushes_talons_labels_with_tenant_auth_and_headers(http: aiohttp.ClientSession) -> None:
    async with LokiPush(tenant_required=True).running() as loki:
        await _loki(
            http,
            note(objects={"pod": "api-1", "namespace": "payments", "kube.node-name": "n1"}),
            loki.url + "/",
            user="falco",
            api_key="loki-key-31c9",
            tenant="security",
            custom_headers={"X-Team": "secops"},
        )

    [got] = loki.seen
    assert got.path == "/loki/api/v1/push"
    assert got.headers["X-Scope-OrgID"] == "security"
    assert got.headers["Authorization"] == "Basic " + base64.b64encode(b"falco:loki-key-31c9").decode()
    assert got.headers["X-Team"] == "secops"
    assert got.headers["User-Agent"] == "falco-talon"
    [stream] = got.json()["streams"]
    assert stream["stream"] == {
        "status": "success",
        "rule": "label_shells",
        "action": "label_the_pod",
        "actionner": "kubernetes:label",
        "message": "action",
        "traceid": TRACE_ID,
        "pod": "api-1",
        "namespace": "payments",
        "kube_node_name": "n1",
    }
    [[stamp, line]] = stream["values"]
    assert stamp.isdigit()
    assert line == "the pod 'api-1' in the namespace 'payments' has been labeled"


async def test_loki_line_is_the_error_of_a_failure(http: aiohttp.ClientSession) -> None:
    failed = note(stage="output", status="failure", error="disk full", output_target="local:file", objects={})
    async with LokiPush().running() as loki:
        await _loki(http, failed, loki.url)

    [stream] = loki.seen[0].json()["streams"]
    assert stream["stream"]["outputtarget"] == "local:file"
    assert stream["stream"]["status"] == "failure"
    assert stream["values"][0][1] == "disk full"
    assert "Authorization" not in loki.seen[0].headers  # user without api_key: no basic auth, as Talon


async def test_loki_gives_up_after_three_attempts(http: aiohttp.ClientSession) -> None:
    async with LokiPush(fail_next=[500, 500, 500, 500]).running() as loki:
        with pytest.raises(_http.SendFailed) as caught:
            await _loki(http, note(), loki.url)
    assert len(loki.seen) == 3
    assert "HTTP 500: test server outage (attempt 3 of 3)" in str(caught.value)


async def test_loki_unreachable_names_the_url_and_what_to_check(http: aiohttp.ClientSession) -> None:
    with pytest.raises(_http.SendFailed) as caught:
        await _loki(http, note(), "http://user:pw-9a8b@127.0.0.1:9/base?x=1")
    text = str(caught.value)
    assert "loki POST http://127.0.0.1:9/base/loki/api/v1/push: ClientConnectorError" in text
    assert "(attempt 3 of 3)" in text
    assert "reachable" in caught.value.hint
    assert "pw-9a8b" not in text


# ---- elasticsearch -----------------------------------------------------------------------------


def _es(http: aiohttp.ClientSession, url: str, **settings: Any) -> Elasticsearch:
    return Elasticsearch(Clients("elasticsearch", {"http": http}), Elasticsearch.spec.decode({"url": url, **settings}))


async def test_elasticsearch_creates_the_template_then_indexes_with_auth_everywhere(
    http: aiohttp.ClientSession,
) -> None:
    async with ElasticsearchApi(user="elastic", password="es-pass-0b7e").running() as es:
        notifier = _es(
            http,
            es.url,
            user="elastic",
            password="es-pass-0b7e",
            number_of_shards=1,
            number_of_replicas=0,
            custom_headers={"X-Opaque-Id": "talon"},
        )
        await notifier.notify(note())
        await notifier.notify(note(status="failure", output="", error="forbidden"))

    assert [(r.method, r.path) for r in es.seen[:3]] == [
        ("GET", "/_index_template/falco-talon"),
        ("PUT", "/_index_template/falco-talon"),
        ("POST", f"/{es.documents[0].index}/_doc"),
    ]
    assert len(es.seen) == 4  # the template is checked once
    assert all(r.headers["X-Opaque-Id"] == "talon" for r in es.seen)  # Talon drops them on document writes
    template = es.templates["falco-talon"]
    assert template["index_patterns"] == ["falco-talon-*"]
    assert template["template"]["settings"] == {"number_of_shards": 1, "number_of_replicas": 0}
    assert template["template"]["mappings"]["properties"]["time"] == {"type": "date"}
    first, second = es.documents
    assert first.template == "falco-talon"  # the index it wrote to is described by the template
    assert first.index.startswith("falco-talon-")
    assert first.doc["trace_id"] == TRACE_ID
    assert first.doc["objects"] == {"Namespace": "payments", "Pod": "api-1"}
    assert list(first.doc)[:3] == ["time", "objects", "trace_id"]
    assert dt.datetime.fromisoformat(first.doc["time"]).tzinfo is not None
    assert second.doc["error"] == "forbidden"


async def test_elasticsearch_keeps_an_existing_template_and_sends_the_api_key(http: aiohttp.ClientSession) -> None:
    es_api = ElasticsearchApi(api_key="es-api-key-77aa")
    es_api.templates["audit"] = {"index_patterns": ["audit"], "template": {}}
    async with es_api.running() as es:
        await _es(http, es.url, api_key="es-api-key-77aa", index="audit", suffix="none").notify(note())

    assert [(r.method, r.path) for r in es.seen] == [("GET", "/_index_template/audit"), ("POST", "/audit/_doc")]
    assert es.templates["audit"] == {"index_patterns": ["audit"], "template": {}}
    assert es.documents[0].index == "audit"


async def test_elasticsearch_without_template_creation_only_writes_documents(http: aiohttp.ClientSession) -> None:
    async with ElasticsearchApi().running() as es:
        await _es(http, es.url, create_index_template=False, suffix="monthly").notify(note())
    [got] = es.seen
    assert got.method == "POST"
    assert es.documents[0].template == ""


async def test_elasticsearch_refused_credentials_fail_and_the_template_is_tried_again(
    http: aiohttp.ClientSession,
) -> None:
    async with ElasticsearchApi(user="elastic", password="right").running() as es:
        notifier = _es(http, es.url, user="elastic", password="wrong-pass-44")
        with pytest.raises(_http.SendFailed) as caught:
            await notifier.notify(note())
        assert "elasticsearch GET" in str(caught.value)
        assert "HTTP 401" in str(caught.value)
        assert len(es.seen) == 1  # a 401 is not retried
        with pytest.raises(_http.SendFailed):
            await notifier.notify(note())
        assert [r.path for r in es.seen] == ["/_index_template/falco-talon"] * 2
    assert es.documents == []


@pytest.mark.parametrize(
    ("suffix", "name"),
    [
        ("daily", "falco-talon-2026.01.09"),
        ("monthly", "falco-talon-2026.01"),
        ("annually", "falco-talon-2026"),
        ("none", "falco-talon"),
    ],
)
def test_elasticsearch_index_suffix(suffix: str, name: str) -> None:
    settings = Elasticsearch.spec.decode({"url": "http://es:9200", "suffix": suffix})
    # 23:30 at UTC-2 is the next day in UTC: the index follows UTC
    now = dt.datetime(2026, 1, 8, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
    assert index_name(settings, now) == name


# ---- smtp --------------------------------------------------------------------------------------


@pytest.fixture
def smtp_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    """The real SMTP server; its self-signed certificate is what the default TLS context trusts."""
    server = SmtpServer(tmp_path)
    server.start()
    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
    yield server
    server.stop()


def _smtp(server: SmtpServer, **settings: Any) -> Smtp:
    raw = {
        "host_port": server.host_port,
        "from": "talon@example.com",
        "to": "secops@example.com, oncall@example.com",
        "user": server.user,
        "password": server.password,
        "tls": True,
        **settings,
    }
    return Smtp(Clients("smtp", {}), Smtp.spec.decode(raw))


class _Html(HTMLParser):
    """Collects the text of an HTML document, checking that every opened element is closed in order."""

    VOID = frozenset({"meta", "br", "img"})

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open[-1:] == [tag], f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.text.append(data.strip())


def _parts(message: EmailMessage) -> dict[str, str]:
    return {part.get_content_type(): part.get_content() for part in message.walk() if not part.is_multipart()}


async def test_smtp_html_mail_over_starttls_with_auth_has_both_parts_and_the_trace_id(
    smtp_server: SmtpServer,
) -> None:
    event = "shell <script>alert(1)</script> & more"
    await _smtp(smtp_server).notify(note(event=event))

    [got] = smtp_server.received
    assert got.tls
    assert got.login == "talon"
    assert got.mail_from == "talon@example.com"
    assert got.rcpt_tos == ["secops@example.com", "oncall@example.com"]
    msg = got.message
    # a Subject longer than 78 characters is folded after `Subject:`; readers drop the space that leaves
    assert msg["Subject"].strip() == "[falco-talon][success][action] Action 'Label the pod' Rule 'Label shells'"
    assert msg["From"] == "talon@example.com"
    assert msg["To"] == "secops@example.com, oncall@example.com"
    assert msg["Date"]
    assert msg["Message-ID"]
    assert msg["X-Falco-Talon-Trace-Id"] == TRACE_ID
    assert msg.get_content_type() == "multipart/alternative"
    parts = _parts(msg)
    assert list(parts) == ["text/plain", "text/html"]
    assert parts["text/plain"] == (
        "Status: success\n"
        "Action: Label the pod\n"
        "Actionner: kubernetes:label\n"
        "Rule: Label shells\n"
        f"Event: {event}\n"
        "Message: action\n"
        "Namespace: payments\n"
        "Pod: api-1\n"
        f"Trace ID: {TRACE_ID}\n"
        "Output:\n"
        "the pod 'api-1' in the namespace 'payments' has been labeled\n"
    )
    page = _Html()
    page.feed(parts["text/html"])
    page.close()
    assert page.open == []  # every element closed: it renders as a table
    assert TRACE_ID in page.text
    assert event in page.text  # shown as text...
    assert "<script>" not in parts["text/html"]  # ...never as markup


async def test_smtp_text_format_sends_one_plain_part(smtp_server: SmtpServer) -> None:
    await _smtp(smtp_server, format="text", tls=False).notify(note(status="failure", error="boom", output=""))

    [got] = smtp_server.received
    assert not got.tls
    assert got.message.get_content_type() == "text/plain"
    body = got.message.get_content()
    assert "Status: failure\n" in body
    assert "Error: boom\n" in body
    assert f"Trace ID: {TRACE_ID}\n" in body


async def test_smtp_without_user_does_not_authenticate(smtp_server: SmtpServer) -> None:
    await _smtp(smtp_server, user="", password="").notify(note())
    assert smtp_server.received[0].login == ""


async def test_smtp_wrong_password_fails_once_without_showing_it(smtp_server: SmtpServer) -> None:
    with pytest.raises(_http.SendFailed) as caught:
        await _smtp(smtp_server, password="not-the-password-19").notify(note())
    assert "SMTPAuthenticationError" in str(caught.value)
    assert "attempt" not in str(caught.value)  # refused credentials are not retried
    assert "user and password" in caught.value.hint
    assert "not-the-password-19" not in str(caught.value)
    assert smtp_server.received == []


async def test_smtp_untrusted_certificate_fails_the_handshake(
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(b"")
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    with pytest.raises(_http.SendFailed) as caught:
        await _smtp(smtp_server).notify(note())
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value) or "certificate" in str(caught.value).lower()
    assert smtp_server.received == []


@pytest.mark.parametrize(("answer", "attempts"), [("451 4.3.0 try again later", 3), ("554 5.7.1 rejected", 1)])
async def test_smtp_retries_only_transient_refusals(smtp_server: SmtpServer, answer: str, attempts: int) -> None:
    smtp_server.answer = answer
    notifier = _smtp(smtp_server)
    with pytest.raises(_http.SendFailed) as caught:
        await notifier.notify(note())
    assert answer.split()[0] in str(caught.value)
    assert ("attempt 3 of 3" in str(caught.value)) == (attempts == 3)


# ---- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "raw", "problem"),
    [
        (Elasticsearch.spec, {"url": "http://es:9200", "index": "Falco"}, "index: 'Falco' is not a valid index name"),
        (Elasticsearch.spec, {"url": "http://es:9200", "user": "u", "api_key": "k-123456"}, "api_key: is set with"),
        (Elasticsearch.spec, {"url": "http://es:9200", "suffix": "weekly"}, "suffix: 'weekly' is not one of"),
        (Smtp.spec, {"host_port": "smtp.example.com", "from": "a@b", "to": "c@d"}, "host_port: 'smtp.example.com' is"),
        (Smtp.spec, {"host_port": "h:25", "from": "a@b", "to": "c@d", "format": "rtf"}, "format: 'rtf' is not one of"),
        (Slack.spec, {"webhook_url": "hooks.slack.com/services/T0/B0/secret-path"}, "webhook_url: '<redacted>' is"),
        (Loki.spec, {}, "url: is required"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(spec: Any, raw: dict[str, Any], problem: str) -> None:
    with pytest.raises(ParamsInvalid) as caught:
        spec.decode(raw)
    assert problem in str(caught.value)
    assert "secret-path" not in str(caught.value)
