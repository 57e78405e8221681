"""Alerts the candidate index decides skip the in-process queue, through the running engine: such an alert
is finished when its answer comes back, with the same spans, metrics, event log line and audit line as the
same alert decided by a queue worker; an alert about a pod the queue still holds waits its turn behind it,
and matching alerts go through the queue."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from talon_opa.core import config, logs
from talon_opa.core.events import decode_alert
from talon_opa.engine.intake import new_alert_id
from talon_opa.engine.work import WorkItem
from tests.e2e.engine_harness import RunningEngine, running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, scripted_registry
from tests.e2e.test_engine_decide_ahead import UNUSED_KUBE, WAITING_RULES
from tests.e2e.test_engine_prefilter import UNNAMED, index_loaded

IDS = ("talon.alert.id", "k8s.pod.name")  # what differs between two alerts about two pods


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def event_lines() -> Iterator[Lines]:
    logger, handler = logs.get(), Lines()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def unmatched(pod: str, n: int = 0) -> dict[str, Any]:
    return shell_alert(pod, output=f"alert {n} no rule matches, about {pod}") | {"rule": UNNAMED}


def finished(e: RunningEngine, exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    """The finished spans of each alert's trace, by alert id."""
    e.engine.telemetry.flush()
    spans = exporter.get_finished_spans()
    by_trace: dict[int, list[ReadableSpan]] = {}
    for s in spans:
        assert s.context is not None
        by_trace.setdefault(s.context.trace_id, []).append(s)
    return {
        str((s.attributes or {})["talon.alert.id"]): by_trace[s.context.trace_id]
        for s in spans
        if s.name == "receive alert" and s.context is not None
    }


def shape(spans: list[ReadableSpan]) -> list[tuple[Any, ...]]:
    """What a trace shows of an alert, without its ids: names, kinds, parents, attributes, status, events."""
    ids = {s.context.span_id: s.name for s in spans if s.context is not None}
    return sorted(
        (
            s.name,
            s.kind.name,
            ids.get(s.parent.span_id) if s.parent else None,
            sorted((k, str(v)) for k, v in (s.attributes or {}).items() if k not in IDS),
            s.status.status_code.name,
            [ev.name for ev in s.events],
        )
        for s in spans
    )


async def test_an_alert_the_index_decides_is_finished_at_once_and_looks_as_if_a_worker_ran_it(
    tmp_path: Path, event_lines: Lines
) -> None:
    SCRIPT.reset()  # the gate is closed: the matching alert's step waits on it
    exporter = InMemorySpanExporter()
    trail = tmp_path / "audit.jsonl"
    async with running_engine(
        tmp_path,
        WAITING_RULES,
        registry=scripted_registry(),
        kube_config=UNUSED_KUBE,
        span_exporter=exporter,
        audit=config.Audit(path=str(trail), fsync=False),
        print_all_events=True,
        queue=config.Queue(capacity=100, workers=1, drain_timeout_seconds=20),  # busy with the matching alert
        opa=dataclasses.replace(config.Opa(), decide_ahead=False),
    ) as e:
        revision = await index_loaded(e.engine)
        posted: dict[str, str] = {}
        for name, body in (
            ("matching", shell_alert("busy", output="a shell in busy")),  # queued; its step waits
            ("held", unmatched("busy")),  # the queue holds its pod: it waits behind the matching one
            ("free", unmatched("free")),  # decided in the accept path
            ("podless", {k: v for k, v in unmatched("x").items() if k != "output_fields"}),  # no pod: at once too
        ):
            reply = await e.post(json_body=body)
            assert reply.status == 200
            posted[name] = reply.body["id"]
        done = finished(e, exporter)
        # answered and finished though the only worker is held by the matching alert's step
        assert sorted(done) == sorted([posted["free"], posted["podless"]])
        assert await e.metric("talon_opa_queue_depth") == 1  # the matching alert runs, "held" waits behind it
        assert e.engine.queue.unfinished == 2
        assert e.engine.audit is not None
        assert await e.engine.audit.caught_up(10)
        early = [json.loads(line)["alert_id"] for line in trail.read_text().splitlines()]
        assert early == [posted["free"], posted["podless"]]
        SCRIPT.gate.set()
        await e.drained()
        done = finished(e, exporter)
        assert sorted(done) == sorted(posted.values())
        # a fast-pathed alert's trace is the one a worker gives the same alert
        assert shape(done[posted["free"]]) == shape(done[posted["held"]])
        assert [s.name for s in sorted(done[posted["free"]], key=lambda s: s.start_time or 0)] == [
            "receive alert",
            "decide plan",
        ]
        decide = next(s for s in done[posted["free"]] if s.name == "decide plan")
        assert dict(decide.attributes or {})["talon.decision.by"] == "index"
        assert dict(decide.attributes or {})["talon.bundle.revision"] == revision
        assert await e.metric("falcosecurity_falco_talon_events_total") == 4
        assert await e.metric("falcosecurity_falco_talon_matches_total") == 1
        assert await e.metric("talon_opa_decision_duration_seconds_count", by="index") == 3
        assert await e.metric("talon_opa_decision_duration_seconds_count", by="opa") == 1
        assert await e.metric("talon_opa_alerts_in_flight") == 0
        # a duplicate of a fast-pathed alert is one, like any other
        again = await e.post(json_body=unmatched("free"))
        assert (again.status, again.body.get("duplicate_of")) == (200, posted["free"])
        # once its alerts are finished, the queue no longer holds a pod
        SCRIPT.gate = asyncio.Event()  # the worker is held again, by an alert about another pod
        assert (await e.post(json_body=shell_alert("other", output="a shell in other"))).status == 200
        posted["later"] = (await e.post(json_body=unmatched("busy", 1))).body["id"]
        assert posted["later"] in finished(e, exporter)
        SCRIPT.gate.set()
    lines = [json.loads(line) for line in trail.read_text().splitlines()]
    # per pod, in arrival order: the held alert's line follows the matching alert's
    order = [posted[n] for n in ("free", "podless", "matching", "held", "later")]
    assert [x["alert_id"] for x in lines][:5] == order
    free, held = (next(x for x in lines if x["alert_id"] == posted[n]) for n in ("free", "held"))
    varying = ("alert_id", "time", "digest", "body", "trace_id", "seq", "prev", "hash")
    assert {k: v for k, v in free.items() if k not in varying} == {k: v for k, v in held.items() if k not in varying}
    assert free["plan"] == {"matched_rules": [], "steps": []}
    assert (free["revision"], free["decision_id"]) == (revision, "")
    assert free["trace_id"] == format(done[posted["free"]][0].context.trace_id, "032x")
    events = [r for r in event_lines.records if r.getMessage() == "event"]
    fields = {r.__dict__["id"]: r.__dict__ for r in events}
    assert len(events) == 7
    assert set(posted.values()) < set(fields)  # and the duplicate's
    for name in ("free", "held"):
        assert fields[posted[name]]["trace_id"] == lines[[x["alert_id"] for x in lines].index(posted[name])]["trace_id"]
    assert {k: fields[posted["free"]][k] for k in ("event", "priority", "source")} == {
        k: fields[posted["held"]][k] for k in ("event", "priority", "source")
    }


def work_item(doc: dict[str, Any]) -> WorkItem:
    body = json.dumps(doc).encode()
    return WorkItem(new_alert_id(), decode_alert(body, "application/json"), body, "application/json")


async def test_accept_now_answers_in_process_without_awaiting(tmp_path: Path) -> None:
    SCRIPT.reset()  # the gate is closed: the matching alert's step waits on it
    async with running_engine(
        tmp_path,
        WAITING_RULES,
        registry=scripted_registry(),
        kube_config=UNUSED_KUBE,
        queue=config.Queue(capacity=1, workers=1, drain_timeout_seconds=20),
        opa=dataclasses.replace(config.Opa(), decide_ahead=False),
    ) as e:
        await index_loaded(e.engine)
        acceptor, queue = e.engine.acceptor, e.engine.queue
        free = acceptor.accept_now(work_item(unmatched("free")))
        assert free is not None
        assert (free.verdict, len(free.trace_id)) == ("queued", 32)
        assert queue.unfinished == 0  # decided by the index, finished
        assert await e.metric("talon_opa_decision_duration_seconds_count", by="index") == 1
        again = acceptor.accept_now(work_item(unmatched("free")))
        assert again is not None
        assert (again.verdict, again.duplicate_of) == ("duplicate", free.alert_id)
        running = acceptor.accept_now(work_item(shell_alert("busy", output="a shell in busy")))
        assert running is not None
        assert running.verdict == "queued"
        async with asyncio.timeout(10):  # the worker takes it: its step waits on the gate
            while queue.depth:  # noqa: ASYNC110 - the queue signals no start
                await asyncio.sleep(0.01)
        waiting = acceptor.accept_now(work_item(shell_alert("other", output="a shell in other")))
        assert waiting is not None
        assert waiting.verdict == "queued"
        full = await acceptor.accept(work_item(shell_alert("third", output="a shell in third")))  # the same answers
        assert (full.verdict, full.capacity) == ("full", 1)
        assert queue.unfinished == 2
        assert await e.metric("falcosecurity_falco_talon_events_total") == 5
        assert await e.metric("talon_opa_dedup_hits_total") == 1
        SCRIPT.gate.set()
        await e.drained()
        assert await e.metric("talon_opa_decision_duration_seconds_count", by="opa") == 2


async def test_without_trace_export_an_alert_the_index_decides_has_the_same_audit_line(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    async with running_engine(
        tmp_path, WAITING_RULES, kube_config=UNUSED_KUBE, audit=config.Audit(path=str(trail), fsync=False)
    ) as e:
        assert not e.engine.telemetry.recording  # spans carry ids only: no `decide plan` span is started
        revision = await index_loaded(e.engine)
        reply = await e.post(json_body=unmatched("free"))
        assert reply.status == 200
        assert e.engine.queue.unfinished == 0
        assert e.engine.audit is not None
        assert await e.engine.audit.caught_up(10)
    (line,) = [json.loads(x) for x in trail.read_text().splitlines()]
    assert (line["alert_id"], line["trace_id"]) == (reply.body["id"], reply.body["trace_id"])
    assert (line["plan"], line["revision"], line["decision_id"]) == ({"matched_rules": [], "steps": []}, revision, "")
    assert (line["results"], line["error"]) == ([], "")
