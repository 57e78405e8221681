"""The approval gate (docs/approvals.md) through the running engine: real rules → bundle → child OPA (whose
lib/approvals marks the step from the config's `approvals:` data), real HTTP, the shipped kubernetes:label
against a real API server, the shipped webhook notifier to a test receiver. A step that needs approval
parks its plan (the worker moves on), is announced with the trace id and how to approve, and runs once an
operator approves it (API or CLI); denied or expired it is skipped, reported, and the flow goes on."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from talon_opa.cli import main as cli
from talon_opa.core import config
from talon_opa.core.kube import KubeConfig
from tests.e2e.engine_harness import RunningEngine, running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, TERMINATE_SHELLS, scripted_registry
from tests.e2e.test_engine_kube import pod_labels as all_labels
from tests.harness.kube import KubeCluster
from tests.harness.receivers import Receiver

TOKEN = "op-token-approvals-4f1e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

RULES = """\
- rule: Quarantine
  match:
    rules: [Terminal shell in container]
  actions:
    - action: Quarantine label
      actionner: kubernetes:label
      parameters:
        labels: {quarantine: "true"}
    - action: After quarantine
      actionner: kubernetes:label
      parameters:
        labels: {after: "yes"}

- rule: Mark
  match:
    rules: [Terminal shell in container]
  actions:
    - action: Mark label
      actionner: kubernetes:label
      parameters:
        labels: {marked: "true"}
"""


class Hook(Receiver):
    """The webhook notifier's receiver: every POST to /hook."""

    def routes(self) -> list[web.RouteDef]:
        async def hook(request: web.Request) -> web.Response:
            await self._record(request)
            return web.Response(text="ok")

        return [web.post("/hook", hook)]

    def notes(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.seen]


@pytest_asyncio.fixture
async def hook() -> AsyncIterator[Hook]:
    async with Hook().running() as h:
        yield h


async def until(check: Callable[[], Awaitable[bool]], what: str, limit: float = 30.0) -> None:
    """Wait until `check()` holds (bounded: a test never hangs)."""
    deadline = asyncio.get_running_loop().time() + limit
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)


def approvals(*require: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"approvals": config.parse_approvals({"require": list(require), **more})}


def engine_options(kube: KubeCluster, hook: Hook, **changes: Any) -> dict[str, Any]:
    return {
        "kube_config": KubeConfig.from_file(kube.kubeconfig),
        "notifiers": {"webhook": {"url": hook.url + "/hook"}},
        "default_notifiers": ("webhook",),
        "auth": config.Auth(operator_token=TOKEN),
        **changes,
    }


async def pod_labels(kube: KubeCluster, ns: str, pod: str) -> dict[str, str]:
    """The labels the steps added (the test pod's own `app` label aside)."""
    return {k: v for k, v in (await all_labels(kube, ns, pod)).items() if k != "app"}


async def pending(e: RunningEngine) -> list[dict[str, Any]]:
    reply = await e.post("/v1/approvals", method="GET", headers=AUTH)
    assert reply.status == 200, reply.body
    items: list[dict[str, Any]] = reply.body["approvals"]
    return items


async def test_an_approved_step_runs_and_the_rest_of_the_plan_follows(
    kube: KubeCluster, hook: Hook, tmp_path: Path
) -> None:
    gated = await kube.new_namespace("gated")
    free = await kube.new_namespace("free")
    for ns in (gated, free):
        await kube.create_pod(ns, "api-1")
    spans = InMemorySpanExporter()
    options = engine_options(kube, hook, **approvals({"actions": ["Quarantine label"], "namespaces": [gated]}))
    async with running_engine(tmp_path, RULES, span_exporter=spans, **options) as e:
        reply = await e.post(json_body=shell_alert("api-1", gated))
        assert reply.status == 200
        trace_id = reply.body["trace_id"]
        await e.drained()  # the worker is free: the plan waits without it
        [waiting] = await pending(e)
        assert (waiting["rule"], waiting["action"], waiting["trace_id"]) == ("Quarantine", "Quarantine label", trace_id)
        assert (waiting["namespace"], waiting["pod"], waiting["window_seconds"]) == (gated, "api-1", 900)
        approval_id = waiting["id"]
        assert await pod_labels(kube, gated, "api-1") == {}  # nothing ran: later steps wait too

        # the announcement: through the alert's notifiers, with the trace id, the id and how to approve
        [announced] = hook.notes()
        assert (announced["status"], announced["trace_id"], announced["action"]) == (
            "pending",
            trace_id,
            "Quarantine label",
        )
        assert f"talon-opa approve {approval_id}" in announced["output"]
        assert "900s" in announced["output"]

        # another alert keeps flowing while this one waits
        other = await e.post(json_body=shell_alert("api-1", free))
        await e.drained()
        assert await pod_labels(kube, free, "api-1") == {"quarantine": "true", "after": "yes", "marked": "true"}

        # the operator API needs the token
        assert (await e.post("/v1/approvals", method="GET")).status == 401
        assert (await e.post("/v1/approvals", method="GET", headers={"Authorization": "Bearer nope"})).status == 401
        assert (await e.post(f"/v1/approvals/{approval_id}/approve", json_body={"by": "mallory"})).status == 401
        assert len(await pending(e)) == 1
        assert (await e.post("/v1/approvals/nope/approve", headers=AUTH)).status == 404

        ok = await e.post(f"/v1/approvals/{approval_id}/approve", json_body={"by": "alice"}, headers=AUTH)
        assert ok.status == 200, ok.body
        assert (ok.body["result"], ok.body["by"], ok.body["trace_id"]) == ("approved", "alice", trace_id)
        await e.engine.approvals.settled()
        assert await pod_labels(kube, gated, "api-1") == {"quarantine": "true", "after": "yes", "marked": "true"}
        assert await pending(e) == []
        again = await e.post(f"/v1/approvals/{approval_id}/approve", headers=AUTH)
        assert again.status == 410
        assert "approved by alice" in again.body["error"]

        m = e.metric
        assert await m("talon_opa_approvals_total", result="requested") == 1
        assert await m("talon_opa_approvals_total", result="approved") == 1
        assert await m("talon_opa_approvals_pending") == 0
        assert await m("falcosecurity_falco_talon_actions_total", status="success") == 6
    assert other.status == 200
    steps = [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
    ran = [s for s in steps if s.name == "run action" and (s.attributes or {}).get("talon.approval.result")]
    assert [(s.attributes or {}).get("talon.approval.by") for s in ran] == ["alice"]
    assert (ran[0].attributes or {}).get("talon.status") == "success"
    assert [s.name for s in steps].count("resume plan") == 1
    statuses = [(s.attributes or {}).get("talon.status") for s in steps if s.name == "run action"]
    assert statuses == ["pending", "success", "success", "success"]


async def test_an_expired_approval_skips_the_step_and_the_flow_goes_on(
    kube: KubeCluster, namespace: str, hook: Hook, tmp_path: Path
) -> None:
    await kube.create_pod(namespace, "api-2")
    spans = InMemorySpanExporter()
    audit = tmp_path / "audit.jsonl"
    options = engine_options(
        kube, hook, audit=config.Audit(path=str(audit)), **approvals({"rules": ["Quarantine"], "window_seconds": 1})
    )
    async with running_engine(tmp_path, RULES, span_exporter=spans, **options) as e:
        reply = await e.post(json_body=shell_alert("api-2", namespace))
        await e.drained()
        [waiting] = await pending(e)

        async def expired() -> bool:
            return await e.metric("talon_opa_approvals_total", result="expired") == 1

        await until(expired, "the approval expires")
        await e.engine.approvals.settled()
        # the expired step ends its rule (After quarantine skipped); the next rule runs
        assert await pod_labels(kube, namespace, "api-2") == {"marked": "true"}
        m = e.metric
        assert await m("falcosecurity_falco_talon_actions_total", status="expired", action="Quarantine label") == 1
        assert await m("falcosecurity_falco_talon_actions_total", status="success", action="Mark label") == 1
        assert await m("falcosecurity_falco_talon_actions_total", action="After quarantine") == 0
        gone = await e.post(f"/v1/approvals/{waiting['id']}/approve", headers=AUTH)
        assert gone.status == 410
        assert "expired" in gone.body["error"]
    trace_id = reply.body["trace_id"]
    alert_line, approval_line = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["status"] for r in alert_line["results"]] == ["pending"]
    assert approval_line["kind"] == "approval"
    assert (approval_line["approval_id"], approval_line["trace_id"]) == (waiting["id"], trace_id)
    assert approval_line["decision"]["result"] == "expired"
    assert [(r["step"], r["status"]) for r in approval_line["results"]] == [
        (0, "expired"),
        (1, "skipped"),
        (2, "success"),
    ]
    assert cli.main(["audit", "verify", str(audit)]) == 0
    notes = [(n["action"], n["status"], n.get("error", "")) for n in hook.notes()]
    assert notes[0][:2] == ("Quarantine label", "pending")
    assert notes[1] == (
        "Quarantine label",
        "failure",
        f"approval {waiting['id']} expired: nobody approved within 1s",
    )
    assert notes[2][:2] == ("Mark label", "success")
    assert all(n["trace_id"] == trace_id for n in hook.notes())
    [refused] = [
        s
        for s in spans.get_finished_spans()
        if s.name == "run action" and (s.attributes or {}).get("talon.status") == "expired"
    ]
    assert format(refused.context.trace_id, "032x") == trace_id
    assert (refused.attributes or {}).get("error.type") == "expired"


def run_cli(*argv: str) -> int:
    return cli.main(list(argv))


async def test_the_cli_lists_approves_and_denies(
    kube: KubeCluster, namespace: str, hook: Hook, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for pod in ("cli-1", "cli-2"):
        await kube.create_pod(namespace, pod)
    options = engine_options(kube, hook, **approvals({"actions": ["Quarantine label"]}))
    async with running_engine(tmp_path, RULES, **options) as e:
        for pod in ("cli-1", "cli-2"):
            await e.post(json_body=shell_alert(pod, namespace))
        await e.drained()
        by_pod = {a["pod"]: a["id"] for a in await pending(e)}
        flags = ["--url", e.url, "--token", TOKEN]
        assert await asyncio.to_thread(run_cli, "approvals", *flags) == 0
        listed = capsys.readouterr().out
        assert by_pod["cli-1"] in listed
        assert by_pod["cli-2"] in listed
        assert await asyncio.to_thread(run_cli, "approve", by_pod["cli-1"], "--by", "bob", *flags) == 0
        assert f"{by_pod['cli-1']} approved by bob" in capsys.readouterr().out
        assert await asyncio.to_thread(run_cli, "deny", by_pod["cli-2"], "--reason", "known admin", *flags) == 0
        await e.engine.approvals.settled()
        assert await pod_labels(kube, namespace, "cli-1") == {"quarantine": "true", "after": "yes", "marked": "true"}
        assert await pod_labels(kube, namespace, "cli-2") == {"marked": "true"}  # denied: its rule ends
        assert await asyncio.to_thread(run_cli, "approve", by_pod["cli-2"], *flags) == 1
        assert "no longer pending: it was denied" in capsys.readouterr().err
        assert await asyncio.to_thread(run_cli, "approve", by_pod["cli-2"], "--url", e.url, "--token", "bad") == 1
        assert "HTTP 401" in capsys.readouterr().err
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="denied") == 1
    denied = [n for n in hook.notes() if n["status"] == "failure"]
    assert [n["error"] for n in denied] == [f"approval {by_pod['cli-2']} denied by {denied_by()}: known admin"]


def denied_by() -> str:
    import getpass

    return getpass.getuser()


async def test_a_pending_approval_survives_a_restart(
    kube: KubeCluster, namespace: str, hook: Hook, tmp_path: Path
) -> None:
    for pod in ("keep-1", "late-1", "done-1"):
        await kube.create_pod(namespace, pod)
    rules = RULES
    state = tmp_path / "state"
    gate = approvals(
        {"actions": ["Quarantine label"], "namespaces": [namespace], "window_seconds": 600},
    )
    options = engine_options(kube, hook, state_dir=str(state), **gate)
    async with running_engine(tmp_path, rules, **options) as e:
        await e.post(json_body=shell_alert("keep-1", namespace))
        await e.drained()
        [kept] = await pending(e)
    files = sorted(p.name for p in (state / "approvals").iterdir())
    assert files == [f"{kept['id']}.json"]
    # a second pending approval whose window ends while the engine is down: written as the engine writes it
    doc = json.loads((state / "approvals" / files[0]).read_text())
    late_id = "late0000000000000001"
    doc.update(id=late_id, expires=time.time() - 1)
    doc["item"]["body"] = json.dumps(shell_alert("late-1", namespace))
    (state / "approvals" / f"{late_id}.json").write_text(json.dumps(doc))
    # and one approved just before the stop, whose plan had not run yet: it resumes with its decision
    done_id = "done0000000000000001"
    doc.update(id=done_id, expires=time.time() + 600, decision={"result": "approved", "by": "dave", "at": time.time()})
    doc["item"]["body"] = json.dumps(shell_alert("done-1", namespace))
    (state / "approvals" / f"{done_id}.json").write_text(json.dumps(doc))

    async with running_engine(tmp_path, rules, **options) as e:
        await e.engine.approvals.settled()  # the late one expired at once, and its flow went on
        assert [a["id"] for a in await pending(e)] == [kept["id"]]
        assert await pod_labels(kube, namespace, "late-1") == {"marked": "true"}
        assert await pod_labels(kube, namespace, "done-1") == {"quarantine": "true", "after": "yes", "marked": "true"}
        assert await e.metric("talon_opa_approvals_total", result="expired") == 1
        ok = await e.post(f"/v1/approvals/{kept['id']}/approve", json_body={"by": "carol"}, headers=AUTH)
        assert ok.status == 200
        assert ok.body["trace_id"] == kept["trace_id"]
        await e.engine.approvals.settled()
        assert await pod_labels(kube, namespace, "keep-1") == {"quarantine": "true", "after": "yes", "marked": "true"}
    assert list((state / "approvals").iterdir()) == []  # done: nothing left to resume


async def test_beyond_max_pending_the_step_fails_and_the_api_is_off_without_a_token(tmp_path: Path) -> None:
    SCRIPT.reset()
    gate = approvals({"actionners": ["kubernetes:terminate"]}, max_pending=1)
    async with running_engine(
        tmp_path,
        TERMINATE_SHELLS,
        registry=scripted_registry(),
        kube_config=KubeConfig(server="http://127.0.0.1:9"),
        **gate,
    ) as e:
        for pod in ("full-1", "full-2"):
            await e.post(json_body=shell_alert(pod, "payments"))
            await e.drained()
        assert [len(e.engine.approvals.pending())] == [1]
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="failure") == 1
        assert (await e.post("/v1/approvals", method="GET", headers=AUTH)).status == 404  # no operator token
        only = e.engine.approvals.pending()[0].id
        assert (await e.post(f"/v1/approvals/{only}/approve", headers=AUTH)).status == 404
    [pending_note, full_note] = SCRIPT.notes
    assert (pending_note.pod, pending_note.status) == ("full-1", "pending")
    assert (full_note.pod, full_note.status) == ("full-2", "failure")
    assert "1 approvals are already pending (approvals.max_pending is 1)" in full_note.error
    assert SCRIPT.calls == []


async def test_an_unusable_state_dir_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(config.ConfigError) as caught:
        async with running_engine(
            tmp_path,
            TERMINATE_SHELLS,
            registry=scripted_registry(),
            kube_config=KubeConfig(server="http://127.0.0.1:9"),
            state_dir=str(blocker / "state"),
        ):
            pass
    assert f"config key 'state_dir': cannot create {blocker / 'state'}/" in str(caught.value)
