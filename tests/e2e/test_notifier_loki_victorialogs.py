"""The loki notifier against a real server that speaks Loki's push API: VictoriaLogs (built by tools/build;
Grafana Loki itself is not buildable here within reason, see tools/README.md). What was pushed is read back
with a query, so the test shows a real server accepted and stored it, labels and line included."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from talon_opa.core.kube import KubeConfig
from talon_opa.notifiers import _http
from talon_opa.notifiers.loki import Loki
from talon_opa.plugins.clients import Clients
from talon_opa.plugins.notes import Note
from talon_opa.plugins.registry import Registry
from tests.e2e.engine_harness import running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, ScriptedLabel, labelled_note
from tests.harness.victorialogs import VictoriaLogs

TRACE_ID = "5a0c3f7e9b2d4e61a8c7d9e0f1a2b3c4"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def vlogs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[VictoriaLogs]:
    server = VictoriaLogs(tmp_path_factory.mktemp("vlogs"))
    try:
        await server.start()
        yield server
    finally:
        server.stop()


def _note(**changes: Any) -> Note:
    return labelled_note(TRACE_ID, **changes)


async def _push(vlogs: VictoriaLogs, note: Note, api_key: str) -> None:
    settings = Loki.spec.decode({"url": vlogs.loki_url, "user": vlogs.user, "api_key": api_key})
    async with aiohttp.ClientSession() as http:
        await Loki(Clients("loki", {"http": http}), settings).notify(note)


async def test_a_real_server_stores_the_line_with_talons_labels(vlogs: VictoriaLogs) -> None:
    await _push(vlogs, _note(), vlogs.password)

    [entry] = await vlogs.query(f"traceid:{TRACE_ID}")
    assert entry["_msg"] == "the pod 'api-1' in the namespace 'payments' has been labeled"
    labels = {k: entry[k] for k in ("status", "rule", "action", "actionner", "message", "traceid", "pod", "namespace")}
    assert labels == {
        "status": "success",
        "rule": "label_shells",
        "action": "label_the_pod",
        "actionner": "kubernetes:label",
        "message": "action",
        "traceid": TRACE_ID,
        "pod": "api-1",
        "namespace": "payments",
    }
    assert 'traceid="' + TRACE_ID + '"' in entry["_stream"]  # the labels are the stream, as in Loki


async def test_refused_credentials_fail_without_retrying(vlogs: VictoriaLogs) -> None:
    with pytest.raises(_http.SendFailed) as caught:
        await _push(vlogs, _note(trace_id="0" * 32), "wrong-key-2b")
    assert "HTTP 401" in str(caught.value)
    assert "attempt" not in str(caught.value)
    assert await vlogs.query(f"traceid:{'0' * 32}") == []


async def test_the_engine_pushes_each_step_as_a_default_notifier(tmp_path: Path, vlogs: VictoriaLogs) -> None:
    rules = """\
- rule: Label twice
  match:
    rules: [Terminal shell in container]
  actions:
    - action: Label first
      actionner: kubernetes:label
      parameters: {labels: {behaviour: ok}}
    - action: Label again
      actionner: kubernetes:label
      parameters: {labels: {behaviour: fail}}
      ignore_errors: true
"""
    SCRIPT.reset()
    settings = {"loki": {"url": vlogs.loki_url, "user": vlogs.user, "api_key": vlogs.password}}
    async with running_engine(
        tmp_path,
        rules,
        registry=Registry.of(ScriptedLabel, Loki),
        kube_config=KubeConfig(server="http://127.0.0.1:9"),
        notifiers=settings,
        default_notifiers=("loki",),
    ) as engine:
        reply = await engine.post("/", json_body=shell_alert(pod="api-7"))
        assert reply.status == 200
        await engine.drained()
        assert await engine.metric("falcosecurity_falco_talon_notifications_total", status="success") == 2
    trace_id = reply.body["trace_id"]

    entries = sorted(await vlogs.query(f"traceid:{trace_id}"), key=lambda e: e["action"])
    assert [(e["action"], e["status"]) for e in entries] == [("label_again", "failure"), ("label_first", "success")]
    assert entries[0]["_msg"] == "scripted failure of kubernetes:label (this is a test)"  # a failure's line: its error
    assert entries[1]["_msg"] == "kubernetes:label did ok"
    assert entries[1]["pod"] == "api-7"  # the step's objects (a failed step has none, as in Talon)
