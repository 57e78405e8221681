"""Alerts the served bundle's candidate index has no rule for are decided without an OPA request, through
the running engine: their `decide plan` span says so with the revision, Talon's metrics count them, the
audit trail records them; a reload never lets the old index decide for the new rules, and native Rego
turns the shortcut off."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from talon_opa.core import config
from talon_opa.engine.lifecycle import Engine
from talon_opa.opa.process import free_port
from tests.conftest import OpaFactory
from tests.e2e.engine_harness import DRY_RUN_RULES, RunningEngine, running_engine, sample, shell_alert
from tests.harness.paths import REPO

UNNAMED = "A Falco rule no Talon rule names"


async def index_loaded(engine: Engine) -> str:
    """The revision whose index the engine has fetched, once it is the built one (bounded wait)."""
    assert engine.built is not None
    for _ in range(500):
        engine.prefilter.empty_plan_revision(UNNAMED, [])  # a lookup asks for a stale index to be fetched
        if engine.prefilter.revision == engine.built.revision:
            return engine.built.revision
        await asyncio.sleep(0.01)
    raise AssertionError("the candidate index was never fetched")


def decisions(e: RunningEngine, exporter: InMemorySpanExporter) -> list[dict[str, Any]]:
    e.engine.telemetry.flush()
    return [dict(s.attributes or {}) for s in exporter.get_finished_spans() if s.name == "decide plan"]


_SEQ = itertools.count()


def alert(name: str, **changes: Any) -> dict[str, Any]:
    """A sample alert with a unique output (never a duplicate of another)."""
    return sample(name, output=f"08:21:07.114583261: Notice alert {next(_SEQ)}", **changes)


async def post_all(e: RunningEngine, *alerts: dict[str, Any]) -> None:
    for body in alerts:  # one at a time: their spans end in this order
        assert (await e.post(json_body=body)).status == 200
        await e.drained()


async def test_unmatched_alerts_skip_opa_and_keep_their_trace_metrics_and_audit_line(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    trail = tmp_path / "audit.jsonl"
    async with running_engine(
        tmp_path, DRY_RUN_RULES, span_exporter=exporter, audit=config.Audit(path=str(trail), fsync=False)
    ) as e:
        revision = await index_loaded(e.engine)
        await post_all(
            e,
            alert("falco-internal-syscall-event-drop"),  # matches no rule
            shell_alert("p-1"),  # matches
            alert("falco-terminal-shell-in-container", rule=UNNAMED, tags=["T1059", 3]),
        )
        spans = decisions(e, exporter)
        assert [(s["talon.decision.by"], s["talon.bundle.revision"]) for s in spans] == [
            ("index", revision),
            ("opa", revision),
            ("index", revision),
        ]
        assert [list(s["talon.matched_rules"]) for s in spans] == [[], ["Shell in a container"], []]
        assert "talon.decision.id" not in spans[0]
        assert spans[1]["talon.decision.id"]
        assert await e.metric("falcosecurity_falco_talon_events_total") == 3
        assert await e.metric("falcosecurity_falco_talon_matches_total") == 1
        assert await e.metric("talon_opa_decision_duration_seconds_count", by="index") == 2
        assert await e.metric("talon_opa_decision_duration_seconds_count", by="opa") == 1
    lines = [json.loads(line) for line in trail.read_text().splitlines()]  # written at the latest on stop
    assert [(x["plan"], x["revision"], x["decision_id"] == "") for x in lines] == [
        ({"matched_rules": [], "steps": []}, revision, True),
        (lines[1]["plan"], revision, False),
        ({"matched_rules": [], "steps": []}, revision, True),
    ]
    assert lines[1]["plan"]["matched_rules"] == ["Shell in a container"]


async def test_a_reload_never_lets_the_old_index_decide(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    async with running_engine(tmp_path, DRY_RUN_RULES, span_exporter=exporter) as e:
        old = await index_loaded(e.engine)
        await post_all(e, alert("falco-terminal-shell-in-container", rule=UNNAMED))
        e.rules.write_text(DRY_RUN_RULES.replace("- Terminal shell in container", f"- {UNNAMED}"))
        assert await e.engine.reload()
        # at once, before the new index is fetched: the alert now matches, and OPA says so
        await post_all(e, alert("falco-terminal-shell-in-container", rule=UNNAMED))
        new = await index_loaded(e.engine)
        assert new != old
        await post_all(e, shell_alert("p-2"), alert("falco-terminal-shell-in-container", rule=UNNAMED))
        got = [
            (s["talon.decision.by"], s["talon.bundle.revision"], list(s["talon.matched_rules"]))
            for s in decisions(e, exporter)
        ]
        assert got == [
            ("index", old, []),
            ("opa", new, ["Shell in a container"]),
            ("index", new, []),  # the shell alert's rule is no longer named
            ("opa", new, ["Shell in a container"]),
        ]


async def test_native_rego_or_the_switch_turns_the_shortcut_off(tmp_path: Path) -> None:
    native = dataclasses.replace(config.Opa(), rego=(str(REPO / "examples" / "native" / "known_bad_networks.rego"),))
    for name, opa in (("native", native), ("off", dataclasses.replace(config.Opa(), prefilter=False))):
        exporter = InMemorySpanExporter()
        (tmp_path / name).mkdir()
        async with running_engine(tmp_path / name, DRY_RUN_RULES, span_exporter=exporter, opa=opa) as e:
            assert not e.engine.prefilter.enabled
            await post_all(e, *(alert("falco-internal-syscall-event-drop") for _ in range(3)))
            assert [s["talon.decision.by"] for s in decisions(e, exporter)] == ["opa"] * 3


async def test_with_a_sidecar_the_index_follows_the_revision_the_sidecar_serves(
    opa: OpaFactory, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    port = free_port()
    opa_cfg = dataclasses.replace(config.Opa(), url=f"http://127.0.0.1:{port}", retry_initial_seconds=0.05)
    async with running_engine(
        tmp_path, DRY_RUN_RULES, span_exporter=exporter, opa=opa_cfg, listen_address="127.0.0.1"
    ) as e:
        empty = tmp_path / "empty"
        empty.mkdir()
        (empty / ".manifest").write_text(json.dumps({"revision": "none", "roots": ["placeholder"]}))
        await opa(
            empty,
            extra_args=(
                f"--addr=127.0.0.1:{port}",
                f"--set=services.engine.url={e.url}",
                "--set=bundles.talon.service=engine",
                "--set=bundles.talon.resource=/v1/bundles/talon.tar.gz",
                "--set=bundles.talon.polling.min_delay_seconds=1",
                "--set=bundles.talon.polling.max_delay_seconds=1",
            ),
        )
        old = await index_loaded(e.engine)
        await post_all(e, alert("falco-terminal-shell-in-container", rule=UNNAMED))
        e.rules.write_text(DRY_RUN_RULES.replace("- Terminal shell in container", f"- {UNNAMED}"))
        assert await e.engine.reload()
        new = e.engine.built.revision if e.engine.built else ""
        for _ in range(150):  # bounded: until the sidecar has polled the new bundle
            if new in await e.engine.opa.revisions():
                break
            await asyncio.sleep(0.1)
        # the sidecar serves the new rules: the old index must not answer for them
        await post_all(e, alert("falco-terminal-shell-in-container", rule=UNNAMED))
        assert await index_loaded(e.engine) == new
        await post_all(e, alert("falco-terminal-shell-in-container", rule="Nothing"))
        got = [
            (s["talon.decision.by"], s["talon.bundle.revision"], list(s["talon.matched_rules"]))
            for s in decisions(e, exporter)
        ]
        assert got == [  # the placeholder bundle stays beside ours: OPA names both revisions
            ("index", f"none,{old}", []),
            ("opa", f"none,{new}", ["Shell in a container"]),
            ("index", f"none,{new}", []),
        ]
