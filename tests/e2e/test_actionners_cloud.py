"""aws:lambda and gcp:function through the running engine.

aws:lambda runs against a real moto server in its Docker-less Lambda mode: GetFunction and the function
registry are moto's own (a missing function is moto's ResourceNotFoundException); Invoke reaches moto
with the payload, qualifier and invocation type (read back from moto's recorder), but moto does not run
the function's code: it echoes the payload, or answers what the test queued. An oversized queued answer
makes moto itself answer with `X-Amz-Function-Error: Unhandled` (Function.ResponseSizeTooLarge), which is
how a function error is produced here.

gcp:function runs against tests/harness/gcp_functions.py, a test server speaking the Cloud Functions v2
and OAuth 2.0 token wire formats (no real server can run here): it verifies the service-account JWT,
issues the access and ID tokens and refuses a call without an ID token for the function's exact URI.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from talon_opa.actionners.aws.lambda_ import Lambda
from talon_opa.actionners.gcp.function import Function
from talon_opa.core import config, secrets
from talon_opa.core.kube import KubeConfig
from talon_opa.plugins.registry import Registry
from tests.e2e.engine_harness import running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, Recorder
from tests.harness import moto as moto_harness
from tests.harness.gcp_functions import Function as FunctionBehaviour
from tests.harness.gcp_functions import FunctionsServer
from tests.harness.moto import Moto

UNUSED_KUBE = KubeConfig(server="http://127.0.0.1:9")  # cloud actionners never call Kubernetes
TALON_KEYS = [
    "trace_id",
    "output",
    "priority",
    "rule",
    "hostname",
    "time",
    "source",
    "output_fields",
    "context",
    "tags",
]
REGISTRY = Registry.of(Lambda, Function, Recorder)


def keys_in_order(body: str) -> list[str]:
    return [k for k, _ in json.loads(body, object_pairs_hook=lambda pairs: pairs)]


def run_spans(spans: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {str((s.attributes or {})["talon.action"]): s for s in spans.get_finished_spans() if s.name == "run action"}


def action_notes() -> dict[str, Any]:
    return {n.action: n for n in SCRIPT.notes if n.stage == "action"}


@pytest.fixture
def aws_cfg(moto: Moto, monkeypatch: pytest.MonkeyPatch) -> config.Aws:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    keys = {"access_key": moto_harness.ACCESS_KEY, "secret_key": moto_harness.SECRET_KEY}
    return config.Aws(region=moto_harness.REGION, **keys)


LAMBDA_RULES = """\
- rule: Tell the responder
  match:
    rules: [Terminal shell in container]
  notifiers: [recorder]
  actions:
    - action: Invoke
      actionner: aws:lambda
      parameters:
        aws_lambda_name: {name}
    - action: Invoke async
      actionner: aws:lambda
      parameters:
        aws_lambda_name: {name}
        aws_lambda_invocation_type: Event
    - action: Invoke missing
      actionner: aws:lambda
      ignore_errors: true
      parameters:
        aws_lambda_name: no-such-function
    - action: After the missing one
      actionner: aws:lambda
      parameters:
        aws_lambda_name: {name}
        aws_lambda_alias_or_version: no-such-alias
"""

FAILING_RULES = """- rule: Tell the failing responder
  match:
    rules: [Terminal shell in container]
  notifiers: [recorder]
  actions:
    - action: Invoke failing
      actionner: aws:lambda
      parameters:
        aws_lambda_name: failing-responder
"""


async def test_aws_lambda_invokes_with_talons_payload_and_fails_on_missing_or_failing_functions(
    tmp_path: Path, moto: Moto, aws_cfg: config.Aws
) -> None:
    SCRIPT.reset()
    await asyncio.to_thread(moto.create_function, "responder")
    spans = InMemorySpanExporter()
    rules = LAMBDA_RULES.format(name="responder")
    alert = shell_alert("lambda-pod-1")
    alert["output_fields"]["proc.pid"] = 1234567
    async with running_engine(
        tmp_path, rules, registry=REGISTRY, kube_config=UNUSED_KUBE, span_exporter=spans, aws=aws_cfg
    ) as e:
        reply = await e.post(json_body=alert)
        trace_id = reply.body["trace_id"]
        await e.drained()
        success = await e.metric("falcosecurity_falco_talon_actions_total", actionner="aws:lambda", status="success")
        failure = await e.metric("falcosecurity_falco_talon_actions_total", actionner="aws:lambda", status="failure")
    assert (success, failure) == (2, 2)  # the missing function, then the missing alias
    [sync_call, async_call] = await moto.invocations("responder")
    assert "Qualifier=%24LATEST" in sync_call["url"] or "Qualifier=$LATEST" in sync_call["url"]
    assert sync_call["headers"].get("X-Amz-Invocation-Type") == "RequestResponse"
    assert async_call["headers"].get("X-Amz-Invocation-Type") == "Event"
    assert keys_in_order(sync_call["body"]) == TALON_KEYS
    sent = json.loads(sync_call["body"])
    assert sent["trace_id"] == trace_id
    assert sent["output_fields"]["proc.pid"] == 1234567  # exact (Talon: 1.234567e+06)
    assert sent["output_fields"]["k8s.pod.name"] == "lambda-pod-1"
    assert sent["context"]["falco-talon.actionner"] == "aws:lambda"
    assert sent["context"]["falco-talon.action"] == "Invoke"
    assert sent["rule"] == "Terminal shell in container"
    notes = action_notes()
    assert json.loads(notes["Invoke"].output) == sent  # moto echoes the payload: the function's answer
    assert notes["Invoke"].objects == {"name": "responder", "version": "$LATEST"}
    assert notes["Invoke async"].status == "success"
    missing = notes["Invoke missing"]
    assert missing.status == "failure"
    assert "ResourceNotFoundException" in missing.error
    assert "create the function" in missing.error
    assert await moto.invocations("no-such-function") == []  # GetFunction stopped it before Invoke
    by_action = run_spans(spans)
    assert by_action["Invoke"].status.status_code.name == "OK"
    assert (by_action["Invoke"].attributes or {})["talon.object.name"] == "responder"
    assert by_action["Invoke missing"].status.status_code.name == "ERROR"
    assert "Function not found" in (by_action["Invoke missing"].status.description or "")
    alias = notes["After the missing one"]  # ignore_errors let the rule go on
    assert alias.status == "failure"
    assert "ResourceNotFoundException" in alias.error


async def test_aws_lambda_function_error_fails_the_step_with_the_functions_error(
    tmp_path: Path, moto: Moto, aws_cfg: config.Aws
) -> None:
    """moto answers an oversized result with `X-Amz-Function-Error: Unhandled` (Talon would report success)."""
    SCRIPT.reset()
    await asyncio.to_thread(moto.create_function, "failing-responder")
    await moto.queue_lambda_answer("x" * 6_000_001)
    async with running_engine(tmp_path, FAILING_RULES, registry=REGISTRY, kube_config=UNUSED_KUBE, aws=aws_cfg) as e:
        await e.post(json_body=shell_alert("lambda-pod-2"))
        await e.drained()
        failure = await e.metric("falcosecurity_falco_talon_actions_total", actionner="aws:lambda", status="failure")
    assert failure == 1
    note = action_notes()["Invoke failing"]
    assert note.status == "failure"
    assert "the function 'failing-responder' ($LATEST) failed: Function.ResponseSizeTooLarge" in note.error
    assert "CloudWatch" in note.error


FUNCTION_RULES = """\
- rule: Call the responder
  match:
    rules: [Terminal shell in container]
  notifiers: [recorder]
  actions:
    - action: Call
      actionner: gcp:function
      parameters:
        gcp_function_name: responder
        gcp_function_location: europe-west1
        gcp_function_timeout: 10
    - action: Call missing
      actionner: gcp:function
      ignore_errors: true
      parameters:
        gcp_function_name: no-such-function
        gcp_function_location: europe-west1
    - action: Call broken
      actionner: gcp:function
      parameters:
        gcp_function_name: broken
        gcp_function_location: europe-west1
"""


@pytest.mark.parametrize("credentials", ["path", "json content", "adc"])
async def test_gcp_function_gets_then_calls_with_an_id_token_and_reports_google_errors(
    tmp_path: Path,
    gcp_functions: FunctionsServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    credentials: str,
) -> None:
    """gcp.credentials_path as a key file, as the key's JSON itself (how Talon reads it), or empty: then
    Application Default Credentials (here GOOGLE_APPLICATION_CREDENTIALS naming the key file)."""
    SCRIPT.reset()
    monkeypatch.setenv("CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDFUNCTIONS", gcp_functions.url)
    gcp_functions.functions[("europe-west1", "responder")] = FunctionBehaviour(200, '{"isolated": true}')
    gcp_functions.functions[("europe-west1", "broken")] = FunctionBehaviour(500, "upstream exploded")
    key = gcp_functions.write_key(tmp_path / "key.json")
    value = {"path": str(key), "json content": key.read_text(), "adc": ""}[credentials]
    if credentials == "adc":
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    spans = InMemorySpanExporter()
    caplog.set_level(logging.DEBUG)
    async with running_engine(
        tmp_path,
        FUNCTION_RULES,
        registry=REGISTRY,
        kube_config=UNUSED_KUBE,
        span_exporter=spans,
        gcp=config.Gcp(credentials_path=value),
    ) as e:
        reply = await e.post(json_body=shell_alert("fn-pod-1"))
        await e.drained()
        success = await e.metric("falcosecurity_falco_talon_actions_total", actionner="gcp:function", status="success")
        failure = await e.metric("falcosecurity_falco_talon_actions_total", actionner="gcp:function", status="failure")
    assert (success, failure) == (1, 2)
    assert gcp_functions.problems == []  # every token and header was right
    base = "projects/talon-opa-test/locations/europe-west1/functions"
    assert gcp_functions.gets == [f"{base}/responder", f"{base}/no-such-function", f"{base}/broken"]
    [call, broken_call] = gcp_functions.calls
    assert (call["function"], broken_call["function"]) == ("responder", "broken")
    assert list(call["body"]) == TALON_KEYS
    assert call["body"]["trace_id"] == reply.body["trace_id"]
    assert call["body"]["context"]["falco-talon.actionner"] == "gcp:function"
    notes = action_notes()
    assert notes["Call"].objects == {
        "name": "responder",
        "location": "europe-west1",
        "function_response": '{"isolated": true}',
        "function_response_status": "200",
    }
    missing = notes["Call missing"]
    assert missing.status == "failure"
    assert f"Resource '{base}/no-such-function' was not found (HTTP 404)" in missing.error
    assert "create the function" in missing.error
    broken = notes["Call broken"]
    assert broken.status == "failure"
    assert "answered HTTP 500: upstream exploded" in broken.error
    by_action = run_spans(spans)
    assert by_action["Call"].status.status_code.name == "OK"
    assert by_action["Call missing"].status.status_code.name == "ERROR"
    # the tokens are secrets: known to the scrubber, and in no log line or span
    tokens = list(gcp_functions.issued)
    assert tokens
    assert all(secrets.KNOWN.scrub(t) == secrets.REDACTED for t in tokens)
    text = caplog.text + json.dumps([dict(s.attributes or {}) for s in spans.get_finished_spans()])
    assert not any(t in text for t in tokens)
