"""The elasticsearch notifier against a real search server: OpenSearch, one node started by the harness
(Elasticsearch is not runnable from the registries here; OpenSearch serves the same index-template and
document API). The template it creates is accepted and applied, and the documents are stored and found."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from talon_opa.core.kube import KubeConfig
from talon_opa.notifiers.elasticsearch import Elasticsearch
from talon_opa.plugins.clients import Clients
from talon_opa.plugins.notes import Note
from talon_opa.plugins.registry import Registry
from tests.e2e.engine_harness import running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, ScriptedLabel, labelled_note
from tests.harness.opensearch import OpenSearch

TRACE_ID = "7d3e9a1f0b2c4d5e6f708192a3b4c5d6"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def opensearch(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OpenSearch]:
    server = OpenSearch(tmp_path_factory.mktemp("opensearch"))
    try:
        await server.start()
        yield server
    finally:
        server.stop()


def _note(**changes: Any) -> Note:
    return labelled_note(TRACE_ID, **{"event": "A shell was spawned in a container", **changes})


async def test_the_template_is_accepted_and_applies_to_the_dated_index(opensearch: OpenSearch) -> None:
    raw = {"url": opensearch.url, "index": "talon-a", "number_of_shards": 2, "number_of_replicas": 0}
    async with aiohttp.ClientSession() as http:
        notifier = Elasticsearch(Clients("elasticsearch", {"http": http}), Elasticsearch.spec.decode(raw))
        await notifier.notify(_note())
        await notifier.notify(_note(status="failure", output="", error="forbidden"))

    docs = await opensearch.search("talon-a-*", {"term": {"trace_id": TRACE_ID}})
    assert sorted(d["status"] for d in docs) == ["failure", "success"]
    [index] = {d["_index"] for d in docs}
    assert index.startswith("talon-a-")
    settings = (await opensearch.get(f"/{index}/_settings"))[index]["settings"]["index"]
    assert (settings["number_of_shards"], settings["number_of_replicas"]) == ("2", "0")  # from the template
    mapping = (await opensearch.get(f"/{index}/_mapping"))[index]["mappings"]["properties"]
    assert mapping["time"] == {"type": "date"}  # the RFC 3339 time was parsed as a date
    assert mapping["trace_id"] == {"type": "keyword"}
    assert mapping["rule"]["fields"]["keyword"]["ignore_above"] == 128
    assert (await opensearch.get("/_index_template/talon-a"))["index_templates"][0]["name"] == "talon-a"


async def test_an_existing_template_is_kept(opensearch: OpenSearch) -> None:
    mine = {"index_patterns": ["talon-b"], "template": {"settings": {"number_of_replicas": 0}}, "priority": 7}
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{opensearch.url}/_index_template/talon-b", json=mine) as r:
            assert r.status == 200, await r.text()
        raw = {"url": opensearch.url, "index": "talon-b", "suffix": "none"}
        await Elasticsearch(Clients("es", {"http": http}), Elasticsearch.spec.decode(raw)).notify(_note())

    template = (await opensearch.get("/_index_template/talon-b"))["index_templates"][0]["index_template"]
    assert template["priority"] == 7
    assert "mappings" not in template["template"]
    assert [d["_index"] for d in await opensearch.search("talon-b", {"match_all": {}})] == ["talon-b"]


async def test_the_engine_indexes_each_step_of_a_rule_naming_it(tmp_path: Path, opensearch: OpenSearch) -> None:
    rules = """\
- rule: Label and index
  match:
    rules: [Terminal shell in container]
  notifiers: [elasticsearch]
  actions:
    - action: Label
      actionner: kubernetes:label
      parameters: {labels: {behaviour: ok}}
"""
    SCRIPT.reset()
    settings = {
        "elasticsearch": {"url": opensearch.url, "index": "talon-c", "suffix": "monthly", "number_of_replicas": 0}
    }
    async with running_engine(
        tmp_path,
        rules,
        registry=Registry.of(ScriptedLabel, Elasticsearch),
        kube_config=KubeConfig(server="http://127.0.0.1:9"),
        notifiers=settings,
    ) as engine:
        reply = await engine.post("/", json_body=shell_alert(pod="api-9"))
        assert reply.status == 200
        await engine.drained()
        assert await engine.metric("falcosecurity_falco_talon_notifications_total", status="success") == 1
    trace_id = reply.body["trace_id"]

    [doc] = await opensearch.search("talon-c-*", {"term": {"trace_id": trace_id}})
    assert doc["rule"] == "Label and index"
    assert doc["objects"] == {"Pod": "api-9", "Namespace": "payments"}
    assert doc["_index"].count(".") == 1  # monthly: talon-c-YYYY.MM
