"""Reversible actions through the running engine (docs/undo.md): real rules → bundle → child OPA (the TTL comes
from the config's `undo:` section as data.talon.undo), the shipped actionners acting on the real API server as
a ServiceAccount bound to the ClusterRole `talon-opa rbac -r` prints (so undo needs no right the rules do not
declare), undone through the operator API, the `talon-opa undo` CLI and TTLs; each undo a span of a new trace
linked to the alert's."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from talon_opa.core import config, logs
from talon_opa.core.kube import KubeApiError, KubeConfig
from talon_opa.engine import audit_chain
from talon_opa.engine.undo_store import Record, UndoStore
from talon_opa.plugins.reversal import Reversal
from tests.e2e.engine_harness import RunningEngine, running_engine, sample, shell_alert
from tests.e2e.kube_nodes import node as node  # the fixture
from tests.e2e.server_process import REPO, cli
from tests.harness.kube import KubeCluster

EXAMPLE = REPO / "examples" / "undo"
TOKEN = "operator-secret-1"
AUTH = config.Auth(operator_token=TOKEN)
BEARER = {"Authorization": f"Bearer {TOKEN}"}
UNDOS = "talon_opa_undos_total"

LABEL_RULES = """\
- rule: Mark the shell
  match:
    rules: [Terminal shell in container]
  actions:
    - action: Label the pod
      actionner: kubernetes:label
      parameters:
        labels:
          security.falco.org/suspicious: "true"
          team: quarantine
          stale: ""
"""


async def engine_account(kube: KubeCluster, namespace: str, rules: Path) -> KubeConfig:
    """The engine's identity: exactly the ClusterRole `talon-opa rbac -r rules` prints."""
    code, out = await cli("rbac", "-r", str(rules))
    assert code == 0, out
    return await kube.service_account_with_role(namespace, "talon-opa", yaml.safe_load(out)["rules"])


async def labels(kube: KubeCluster, ns: str, pod: str) -> dict[str, str]:
    return dict((await kube.api.get(f"/api/v1/namespaces/{ns}/pods/{pod}"))["metadata"].get("labels") or {})


async def alert_id(e: RunningEngine, body: dict[str, Any]) -> tuple[str, str]:
    reply = await e.post(json_body=body)
    assert reply.status == 200, reply.body
    return reply.body["id"], reply.body["trace_id"]


def undo_spans(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == "undo action"]


def span_of(spans: InMemorySpanExporter, name: str, trace_id: str) -> ReadableSpan:
    [span] = [s for s in spans.get_finished_spans() if s.name == name and f"{s.context.trace_id:032x}" == trace_id]
    return span


async def test_undo_by_alert_id_restores_the_labels_in_a_new_linked_trace(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    await kube.create_pod(namespace, "api-1", labels={"team": "payments", "stale": "yes"})
    await kube.create_pod(namespace, "api-2", labels={"team": "payments"})
    before_1, before_2 = await labels(kube, namespace, "api-1"), await labels(kube, namespace, "api-2")
    (tmp_path / "rules.yaml").write_text(LABEL_RULES)
    account = await engine_account(kube, namespace, tmp_path / "rules.yaml")
    spans = InMemorySpanExporter()
    trail = tmp_path / "audit.jsonl"
    audit = config.Audit(path=str(trail))

    async with running_engine(
        tmp_path, LABEL_RULES, kube_config=account, auth=AUTH, span_exporter=spans, audit=audit
    ) as e:
        first, first_trace = await alert_id(e, shell_alert("api-1", namespace))
        second, _ = await alert_id(e, shell_alert("api-2", namespace))
        await e.drained()
        assert await labels(kube, namespace, "api-1") == {
            "app": "api-1",
            "team": "quarantine",
            "security.falco.org/suspicious": "true",
        }
        listed = await e.post("/v1/undo", method="GET", headers=BEARER)
        assert listed.status == 200
        assert sorted(p["alert_id"] for p in listed.body["pending"]) == sorted([first, second])
        assert all(p["expires_at"] is None for p in listed.body["pending"])  # no TTL configured: on demand

        reply = await e.post(f"/v1/undo/{first}", headers=BEARER)
        assert reply.status == 200, reply.body
        [result] = reply.body["results"]
        assert (result["action_id"], result["result"]) == (f"{first}-0", "undone"), result
        assert await labels(kube, namespace, "api-1") == before_1

        shown = await e.post(f"/v1/undo/{first}", method="GET", headers=BEARER)
        assert [(a["action_id"], a["state"]) for a in shown.body["actions"]] == [(f"{first}-0", "undone")]
        again = await e.post(f"/v1/undo/{first}-0", headers=BEARER)  # by action id: idempotent
        assert [r["result"] for r in again.body["results"]] == ["already_undone"]
        assert await labels(kube, namespace, "api-1") == before_1

        # someone changes a label we set: undo restores the others and leaves that one, reporting a conflict
        await kube.api.patch(f"/api/v1/namespaces/{namespace}/pods/api-2", {"metadata": {"labels": {"team": "sre"}}})
        conflict = await e.post(f"/v1/undo/{second}", headers=BEARER)
        [c] = conflict.body["results"]
        assert c["result"] == "conflict", c
        assert "team" in c["message"]
        assert await labels(kube, namespace, "api-2") == {**before_2, "team": "sre"}

        assert await e.metric(UNDOS, trigger="manual", result="undone", actionner="kubernetes:label") == 1
        assert await e.metric(UNDOS, trigger="manual", result="already_undone") == 1
        assert await e.metric(UNDOS, trigger="manual", result="conflict") == 1
        assert (await e.post("/v1/undo", method="GET", headers=BEARER)).body["pending"] == []
        assert await e.metric("talon_opa_undo_pending") == 0

    step = span_of(spans, "run action", first_trace)
    assert (step.attributes or {})["talon.action.id"] == f"{first}-0"
    undo = next(s for s in undo_spans(spans) if (s.attributes or {}).get("talon.undo.result") == "undone")
    assert f"{undo.context.trace_id:032x}" == result["trace_id"] != first_trace  # a new trace
    assert undo.parent is None
    [link] = undo.links
    assert (link.context.trace_id, link.context.span_id) == (step.context.trace_id, step.context.span_id)
    assert (undo.attributes or {})["talon.undo.trigger"] == "manual"
    assert (undo.attributes or {})["talon.action.id"] == f"{first}-0"

    lines = list(audit_chain.read_lines(trail))
    assert audit_chain.verify(lines).intact
    undos = [d for d in map(json.loads, lines) if d["kind"] == "undo"]
    assert [(d["action_id"], d["result"]) for d in undos] == [
        (f"{first}-0", "undone"),
        (f"{first}-0", "already_undone"),
        (f"{second}-0", "conflict"),
    ]
    assert undos[0]["linked_trace_id"] == first_trace
    assert undos[0]["trace_id"] == result["trace_id"]


POLICY_RULES = """\
- rule: Isolate and quarantine the node
  match:
    rules: [Terminal shell in container]
  actions:
    - action: Isolate the pod
      actionner: kubernetes:networkpolicy
      parameters:
        allow_namespaces: [kube-system]
    - action: Cordon the node
      actionner: kubernetes:cordon
"""


async def test_the_cli_undoes_a_network_policy_and_a_cordon(
    kube: KubeCluster, namespace: str, node: str, tmp_path: Path
) -> None:
    await kube.create_pod(namespace, "web-1", node=node)
    (tmp_path / "rules.yaml").write_text(POLICY_RULES)
    account = await engine_account(kube, namespace, tmp_path / "rules.yaml")
    policy = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/web-1"

    async with running_engine(tmp_path, POLICY_RULES, kube_config=account, auth=AUTH) as e:
        alert, _ = await alert_id(e, shell_alert("web-1", namespace))
        await e.drained()
        assert (await kube.api.get(policy))["metadata"]["labels"]["app.k8s.io/managed-by"] == "falco-talon"
        assert (await kube.api.get(f"/api/v1/nodes/{node}"))["spec"]["unschedulable"] is True

        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "AUTH_OPERATOR_TOKEN": TOKEN}
        code, out = await cli("undo", "--list", "--url", e.url, env=env)
        assert code == 0, out
        assert f"{alert}-0 kubernetes:networkpolicy" in out
        assert f"{alert}-1 kubernetes:cordon" in out

        code, out = await cli("undo", alert, "--url", e.url, env=env)
        assert code == 0, out
        assert f"{alert}-1 kubernetes:cordon: undone" in out  # the last step first
        assert f"{alert}-0 kubernetes:networkpolicy: undone" in out
        assert out.index(f"{alert}-1") < out.index(f"{alert}-0")

        code, out = await cli("undo", f"{alert}-0", "--url", e.url, env=env)
        assert code == 0, out
        assert "already_undone" in out

        code, out = await cli("undo", "no-such-alert", "--url", e.url, env=env)
        assert code == 1, out
        assert "nothing to undo" in out

        code, out = await cli("undo", "--list", "--url", e.url, env={**env, "AUTH_OPERATOR_TOKEN": "wrong"})
        assert code == 1, out
        assert "answered 401: missing or invalid operator token" in out

    with pytest.raises(KubeApiError) as gone:
        await kube.api.get(policy)
    assert gone.value.status == 404
    assert not (await kube.api.get(f"/api/v1/nodes/{node}"))["spec"].get("unschedulable")


async def test_a_node_cordoned_before_is_left_cordoned(
    kube: KubeCluster, namespace: str, node: str, tmp_path: Path
) -> None:
    await kube.create_pod(namespace, "web-2", node=node)
    await kube.api.patch(f"/api/v1/nodes/{node}", {"spec": {"unschedulable": True}})  # an admin's cordon
    async with running_engine(
        tmp_path, POLICY_RULES, kube_config=KubeConfig.from_file(kube.kubeconfig), auth=AUTH
    ) as e:
        alert, _ = await alert_id(e, shell_alert("web-2", namespace))
        await e.drained()
        reply = await e.post(f"/v1/undo/{alert}", headers=BEARER)
        assert [r["actionner"] for r in reply.body["results"]] == ["kubernetes:networkpolicy"]  # no cordon of ours
    assert (await kube.api.get(f"/api/v1/nodes/{node}"))["spec"]["unschedulable"] is True


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The engine's JSON log lines; the session's logging put back afterwards."""
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in (logs.get(), logging.getLogger("aiohttp"))]
    out = io.StringIO()
    logs.setup("json", "info", stream=out)
    yield out
    for lg, handlers, level, propagate in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


async def test_a_ttl_from_the_example_config_releases_the_quarantine(
    kube: KubeCluster, namespace: str, tmp_path: Path, log_lines: io.StringIO
) -> None:
    """examples/undo: the network policy of the quarantine rule is lifted when its TTL expires."""
    cfg = config.load(EXAMPLE / "config.yaml", env={})
    rules = (EXAMPLE / "rules.yaml").read_text()
    ttl = config.parse_undo({"ttl_seconds": {"rules": {"Quarantine a shell for a while": 1}}})
    await kube.create_pod(namespace, "api-9")
    policy = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/api-9"
    # the example's 30 minutes, made 1 s here
    assert cfg.undo["ttl_seconds"]["rules"] == {"Quarantine a shell for a while": 1800}
    async with running_engine(
        tmp_path, rules, kube_config=KubeConfig.from_file(kube.kubeconfig), auth=AUTH, undo=ttl
    ) as e:
        alert, trace = await alert_id(e, shell_alert("api-9", namespace))
        await e.drained()

        async def released() -> bool:  # counted once the undo is written: then the API server shows it
            return await e.metric(UNDOS, trigger="ttl", result="undone") == 2

        await kube.wait_for(released, "the TTL to delete the network policy and remove the label", within=30)
        assert await e.metric(UNDOS, trigger="ttl", result="undone", actionner="kubernetes:networkpolicy") == 1
        assert await e.metric(UNDOS, trigger="ttl", result="undone", actionner="kubernetes:label") == 1
        assert "security.falco.org/quarantined" not in await labels(kube, namespace, "api-9")
        with pytest.raises(KubeApiError) as gone:
            await kube.api.get(policy)
        assert gone.value.status == 404
        assert (await e.post("/v1/undo", method="GET", headers=BEARER)).body["pending"] == []
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    [warning] = [line for line in lines if line["message"].startswith("undo TTL kept in memory only")]
    assert warning["level"] == "warning"
    assert "state_dir" in warning["hint"]
    undone = [line for line in lines if line["message"] == "undo"]
    assert {(u["action_id"], u["trigger"], u["result"]) for u in undone} == {
        (f"{alert}-0", "ttl", "undone"),
        (f"{alert}-1", "ttl", "undone"),
    }
    assert {u["linked_trace_id"] for u in undone} == {trace}


async def test_a_pending_ttl_survives_an_engine_restart(kube: KubeCluster, namespace: str, tmp_path: Path) -> None:
    await kube.create_pod(namespace, "api-5")
    state = tmp_path / "state"
    ttl = config.parse_undo({"ttl_seconds": {"actionners": {"kubernetes:label": 4}}})
    kube_config = KubeConfig.from_file(kube.kubeconfig)
    async with running_engine(
        tmp_path, LABEL_RULES, kube_config=kube_config, auth=AUTH, undo=ttl, state_dir=str(state)
    ) as e:
        alert, _ = await alert_id(e, shell_alert("api-5", namespace))
        await e.drained()
        [pending] = (await e.post("/v1/undo", method="GET", headers=BEARER)).body["pending"]
        assert (pending["alert_id"], pending["state"]) == (alert, "pending")
        assert pending["expires_at"] is not None
    # stopped before the TTL expired: the label is still there, the record on disk
    assert (await labels(kube, namespace, "api-5"))["team"] == "quarantine"
    [kept] = (state / "undo").glob("*.json")
    assert json.loads(kept.read_text())["state"] == "pending"

    async with running_engine(
        tmp_path, LABEL_RULES, kube_config=kube_config, auth=AUTH, undo=ttl, state_dir=str(state)
    ) as e:

        async def released() -> bool:
            return await e.metric(UNDOS, trigger="ttl", result="undone") == 1

        await kube.wait_for(released, "the TTL armed again after the restart", within=30)
        assert "team" not in await labels(kube, namespace, "api-5")
        assert await e.metric("talon_opa_undo_pending") == 0
        reply = await e.post(f"/v1/undo/{alert}", headers=BEARER)
        assert [r["result"] for r in reply.body["results"]] == ["already_undone"]
    assert json.loads(kept.read_text())["state"] == "undone"
    assert json.loads(kept.read_text())["trigger"] == "ttl"


async def test_the_operator_api_is_off_without_a_token_and_refuses_a_wrong_one(tmp_path: Path) -> None:
    async with running_engine(tmp_path, LABEL_RULES) as e:
        off = await e.post("/v1/undo", method="GET", headers=BEARER)
        assert off.status == 404
        assert "operator_token" in off.body["hint"]
        assert (await e.post("/v1/undo/abc", headers=BEARER)).status == 404
    async with running_engine(tmp_path, LABEL_RULES, auth=AUTH) as e:
        assert (await e.post("/v1/undo", method="GET")).status == 401
        wrong = await e.post("/v1/undo/abc", headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await e.post("/v1/undo/abc", headers={"Authorization": TOKEN})).status == 401  # no scheme
        unknown = await e.post("/v1/undo/abc", headers=BEARER)
        assert unknown.status == 404
        assert "nothing to undo" in unknown.body["error"]
        assert (await e.post("/v1/undo/a%2Fb", headers=BEARER)).status in (400, 404)
        assert (await e.post("/v1/undo", method="GET", headers=BEARER)).body == {"pending": []}
        assert await e.metric(UNDOS) == 0


CNI_RULES = """\
- rule: Block the miner pool
  match:
    rules: [Detect outbound connections to common miner pool ports]
  actions:
    - action: Block with Calico
      actionner: calico:networkpolicy
    - action: Block with Cilium
      actionner: cilium:networkpolicy
"""


async def test_undo_deletes_the_calico_and_cilium_policies_we_created(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    await kube.create_pod(namespace, "miner-1")
    (tmp_path / "rules.yaml").write_text(CNI_RULES)
    account = await engine_account(kube, namespace, tmp_path / "rules.yaml")
    calico = f"/apis/projectcalico.org/v3/namespaces/{namespace}/networkpolicies/miner-1"
    cilium = f"/apis/cilium.io/v2/namespaces/{namespace}/ciliumnetworkpolicies/miner-1"
    miner = sample(
        "falco-outbound-connection-to-miner-pool-ports",
        output_fields={"k8s.pod.name": "miner-1", "k8s.ns.name": namespace},
    )
    async with running_engine(tmp_path, CNI_RULES, kube_config=account, auth=AUTH) as e:
        alert, _ = await alert_id(e, miner)
        await e.drained()
        created = {p: (await kube.api.get(p))["metadata"]["uid"] for p in (calico, cilium)}
        reply = await e.post(f"/v1/undo/{alert}", headers=BEARER)
        assert [(r["actionner"], r["result"]) for r in reply.body["results"]] == [
            ("cilium:networkpolicy", "undone"),
            ("calico:networkpolicy", "undone"),
        ], reply.body
    for path in created:
        with pytest.raises(KubeApiError) as gone:
            await kube.api.get(path)
        assert gone.value.status == 404


DRAIN_RULES = """\
- rule: Drain the node
  match:
    rules: [Terminal shell in container]
  actions:
    - action: Drain it
      actionner: kubernetes:drain
"""


async def test_undoing_a_drain_uncordons_the_node(kube: KubeCluster, namespace: str, node: str, tmp_path: Path) -> None:
    await kube.create_pod(namespace, "batch-1", node=node)
    (tmp_path / "rules.yaml").write_text(DRAIN_RULES)
    account = await engine_account(kube, namespace, tmp_path / "rules.yaml")
    async with running_engine(tmp_path, DRAIN_RULES, kube_config=account, auth=AUTH) as e:
        alert, _ = await alert_id(e, shell_alert("batch-1", namespace))
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="success") == 1
        assert (await kube.api.get(f"/api/v1/nodes/{node}"))["spec"]["unschedulable"] is True
        reply = await e.post(f"/v1/undo/{alert}", headers=BEARER)
        [r] = reply.body["results"]
        assert (r["actionner"], r["result"]) == ("kubernetes:drain", "undone"), r
    assert not (await kube.api.get(f"/api/v1/nodes/{node}"))["spec"].get("unschedulable")


async def test_a_ttl_that_expired_while_the_engine_was_down_runs_at_start(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    pod = await kube.create_pod(namespace, "api-7", labels={"security.falco.org/suspicious": "true"})
    state = tmp_path / "state"
    path = f"/api/v1/namespaces/{namespace}/pods/api-7"
    reversal = Reversal(
        "kubernetes:label",
        f"labels of the pod {namespace}/api-7: remove security.falco.org/suspicious",
        {
            "path": path,
            "uid": pod["metadata"]["uid"],
            "what": f"the pod {namespace}/api-7",
            "field": "labels",
            "changes": {"security.falco.org/suspicious": {"before": None, "after": "true"}},
        },
    )
    ran = time.time() - 120  # a record as a stopped engine left it: its TTL (60 s) expired a minute ago
    UndoStore(str(state)).put(
        Record("0" * 32 + "-0", "0" * 32, 0, "r", "a", "kubernetes:label", "", reversal, ran, ran + 60, "", "")
    )
    async with running_engine(
        tmp_path, LABEL_RULES, kube_config=KubeConfig.from_file(kube.kubeconfig), auth=AUTH, state_dir=str(state)
    ) as e:

        async def undone() -> bool:
            return await e.metric(UNDOS, trigger="ttl", result="undone") == 1

        await kube.wait_for(undone, "the expired TTL to run at start", within=30)
    assert "security.falco.org/suspicious" not in await labels(kube, namespace, "api-7")
