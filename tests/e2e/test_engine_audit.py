"""The audit trail through the running engine (real HTTP, translator and child OPA; plugins scripted), then
`talon-opa audit verify` and `talon-opa rules plan --replay` as a user runs them (a subprocess, a real OPA)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from talon_opa.core import binaries, config, logs
from talon_opa.core.kube import KubeConfig
from talon_opa.engine.audit_chain import GENESIS, AuditError
from tests.e2e.engine_harness import RunningEngine, running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, scripted_registry
from tests.e2e.test_engine_jetstream import _until, nats_queue
from tests.e2e.test_engine_reload import wait_metric
from tests.harness.nats import Nats

UNUSED_KUBE = KubeConfig(server="http://127.0.0.1:9")  # scripted plugins never call it; not dry-run

RULES = """\
- rule: Mark shells
  match:
    rules: [Terminal shell in container]
    output_fields: [k8s.ns.name=payments]
  actions:
    - action: Mark
      actionner: kubernetes:label
      parameters: {labels: {behaviour: ok}}

- rule: Stop shells in prod
  match:
    rules: [Terminal shell in container]
    output_fields: [k8s.ns.name=prod]
  actions:
    - action: A label that fails
      actionner: kubernetes:label
      parameters: {labels: {behaviour: fail}}
"""

# (pod, namespace) of the alerts posted, in order: line i of the trail is alert i
ALERTS = [("api-1", "payments"), ("db-1", "prod"), ("web-1", "shop"), ("api-2", "payments")]


def audit_config(path: Path, **changes: Any) -> config.Audit:
    return dataclasses.replace(config.Audit(path=str(path)), **changes)


def talon_opa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "talon_opa.cli.main", *args],
        cwd=binaries.REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def post_in_order(e: RunningEngine, alerts: list[tuple[str, str]]) -> list[tuple[bytes, dict[str, Any]]]:
    """Post each alert and let it finish before the next (so the trail's order is the posting order)."""
    sent = []
    for pod, ns in alerts:
        body = json.dumps(shell_alert(pod, ns)).encode()
        reply = await e.post(data=body, headers={"Content-Type": "application/json"})
        assert reply.status == 200, reply.body
        await e.drained()
        sent.append((body, reply.body))
    return sent


@dataclass
class Recorded:
    trail: Path
    sent: list[tuple[bytes, dict[str, Any]]]  # (body, intake reply) per alert
    revision: str
    spans: list[ReadableSpan]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def recorded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Recorded]:
    """A trail written by the engine for ALERTS, the engine stopped (so the trail is complete)."""
    SCRIPT.reset()
    tmp = tmp_path_factory.mktemp("audit")
    trail = tmp / "trail" / "audit.jsonl"  # the folder is created by the engine
    spans = InMemorySpanExporter()
    async with running_engine(
        tmp,
        RULES,
        registry=scripted_registry(),
        kube_config=UNUSED_KUBE,
        span_exporter=spans,
        audit=audit_config(trail),
    ) as e:
        sent = await post_in_order(e, ALERTS)
        assert e.engine.built is not None
        revision = e.engine.built.revision
    yield Recorded(trail, sent, revision, list(spans.get_finished_spans()))


def test_each_processed_alert_is_one_line_with_its_decision_and_outcomes(recorded: Recorded) -> None:
    records = lines_of(recorded.trail)
    assert len(records) == len(ALERTS)
    for seq, (record, (body, reply)) in enumerate(zip(records, recorded.sent, strict=True), start=1):
        assert record["seq"] == seq
        assert record["kind"] == "alert"
        assert record["digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
        assert record["body"].encode() == body  # what replay decides again
        assert (record["alert_id"], record["trace_id"]) == (reply["id"], reply["trace_id"])
        assert record["revision"] == recorded.revision
        assert record["decision_id"]
    marked, failed, unmatched, _ = records
    assert marked["plan"] == {
        "matched_rules": ["Mark shells"],
        "steps": [
            {
                "rule": "Mark shells",
                "action": "Mark",
                "actionner": "kubernetes:label",
                "parameters": {"labels": {"behaviour": "ok"}, "level": "pod"},
                "continue": True,
                "ignore_errors": False,
                "dry_run": False,
                "output": None,
                "notifiers": [],
            }
        ],
    }
    [result] = marked["results"]
    assert {k: result[k] for k in ("step", "status", "message", "error", "objects")} == {
        "step": 0,
        "status": "success",
        "message": "kubernetes:label did ok",
        "error": "",
        "objects": {"pod": "api-1", "namespace": "payments"},
    }
    [result] = failed["results"]
    assert (result["status"], result["error_type"]) == ("failure", "StepFailed")
    assert "scripted failure of kubernetes:label" in result["error"]
    assert unmatched["plan"] == {"matched_rules": [], "steps": []}
    assert unmatched["results"] == []


def test_each_step_outcome_points_at_its_run_action_span(recorded: Recorded) -> None:
    runs = {(format(s.context.trace_id, "032x"), format(s.context.span_id, "016x")): s for s in recorded.spans}
    pointed = [(r["trace_id"], step["span_id"]) for r in lines_of(recorded.trail) for step in r["results"]]
    assert len(pointed) == 3
    for key in pointed:
        assert runs[key].name == "run action"


def test_audit_verify_passes_on_the_untouched_trail_and_prints_its_head(recorded: Recorded) -> None:
    done = talon_opa("audit", "verify", str(recorded.trail))
    assert done.returncode == 0, done.stdout + done.stderr
    head = lines_of(recorded.trail)[-1]["hash"]
    assert done.stdout == f"{recorded.trail}: intact, 4 line(s), 4 alert(s), head {head}\n"


def test_audit_verify_names_an_edited_line(recorded: Recorded, tmp_path: Path) -> None:
    copy = tmp_path / "audit.jsonl"
    lines = recorded.trail.read_text().splitlines(keepends=True)
    assert '"status":"failure"' in lines[1]
    lines[1] = lines[1].replace('"status":"failure"', '"status":"success"')  # hide a failed step
    copy.write_text("".join(lines))
    done = talon_opa("audit", "verify", str(copy))
    assert done.returncode == 1
    assert done.stdout == f"{copy}:2: edited: its content does not match its hash\n"
    assert "does not verify: 1 problem(s) in 4 line(s)" in done.stderr


def test_audit_verify_names_where_a_line_was_deleted(recorded: Recorded, tmp_path: Path) -> None:
    copy = tmp_path / "audit.jsonl"
    lines = recorded.trail.read_text().splitlines(keepends=True)
    copy.write_text("".join([lines[0], *lines[2:]]))
    done = talon_opa("audit", "verify", str(copy))
    assert done.returncode == 1
    assert done.stdout == (
        f"{copy}:2: chain broken: prev does not match the hash of line 1"
        " (a line was deleted here, or lines were moved)\n"
    )


def test_audit_verify_finds_lines_cut_from_the_end_with_the_recorded_head(recorded: Recorded, tmp_path: Path) -> None:
    head = lines_of(recorded.trail)[-1]["hash"]
    copy = tmp_path / "audit.jsonl"
    copy.write_text("".join(recorded.trail.read_text().splitlines(keepends=True)[:3]))
    assert talon_opa("audit", "verify", str(copy)).returncode == 0  # a shorter chain is still a chain
    done = talon_opa("audit", "verify", str(copy), "--head", head)
    assert done.returncode == 1
    assert (
        done.stdout == f"{copy}:3: the anchored head {head} is not in the trail:"
        " lines were removed at its end, or it was rewritten\n"
    )
    intact = talon_opa("audit", "verify", str(recorded.trail), "--head", lines_of(recorded.trail)[1]["hash"])
    assert intact.returncode == 0
    assert intact.stdout.endswith("; the anchored head is line 2, 2 line(s) since\n")


class Heads(logging.Handler):
    """The (message, seq, head) of the audit writer's log lines."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "head"):
            self.seen.append((record.getMessage(), record.__dict__["seq"], record.__dict__["head"]))


async def test_the_chain_continues_across_a_restart(tmp_path: Path) -> None:
    SCRIPT.reset()
    trail = tmp_path / "audit.jsonl"
    heads = Heads()
    logger = logs.get("audit")
    level = logger.level
    logger.addHandler(heads)
    logger.setLevel(logging.INFO)
    try:
        for alerts in (ALERTS[:2], ALERTS[2:]):
            async with running_engine(
                tmp_path, RULES, registry=scripted_registry(), kube_config=UNUSED_KUBE, audit=audit_config(trail)
            ) as e:
                await post_in_order(e, alerts)
    finally:
        logger.removeHandler(heads)
        logger.setLevel(level)
    records = lines_of(trail)
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    assert records[0]["prev"] == GENESIS
    assert records[2]["prev"] == records[1]["hash"]  # the second engine went on from the first one's head
    assert heads.seen == [  # the heads logged at open and close: anchors kept outside the file
        ("audit trail", 0, GENESIS),
        ("audit trail closed", 2, records[1]["hash"]),
        ("audit trail", 2, records[1]["hash"]),
        ("audit trail closed", 4, records[3]["hash"]),
    ]
    done = talon_opa("audit", "verify", str(trail))
    assert done.returncode == 0, done.stdout


async def test_an_engine_does_not_extend_a_trail_whose_end_was_edited(recorded: Recorded, tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    text = recorded.trail.read_text()
    trail.write_text(text.replace('"pod":"api-2"', '"pod":"api-3"'))
    assert text != trail.read_text()
    with pytest.raises(AuditError, match=r"does not verify at its end \(edited"):
        async with running_engine(
            tmp_path, RULES, registry=scripted_registry(), kube_config=UNUSED_KUBE, audit=audit_config(trail)
        ):
            pass
    assert trail.read_text() == text.replace('"pod":"api-2"', '"pod":"api-3"')  # nothing appended


async def test_a_second_engine_on_the_same_trail_is_refused(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    async with running_engine(
        tmp_path, RULES, registry=scripted_registry(), kube_config=UNUSED_KUBE, audit=audit_config(trail)
    ):
        with pytest.raises(AuditError, match="is being written by another process"):
            async with running_engine(
                tmp_path, RULES, registry=scripted_registry(), kube_config=UNUSED_KUBE, audit=audit_config(trail)
            ):
                pass


@pytest.mark.parametrize("required", [True, False])
async def test_a_failing_audit_disk_is_counted_and_makes_the_engine_unready_unless_not_required(
    tmp_path: Path, required: bool
) -> None:
    SCRIPT.reset()
    full = Path("/dev/full")  # every write fails with ENOSPC, as on a full disk
    queue = config.Queue(capacity=100, workers=4, drain_timeout_seconds=1)
    audit = audit_config(full, required=required)
    async with running_engine(
        tmp_path, RULES, registry=scripted_registry(), kube_config=UNUSED_KUBE, audit=audit, queue=queue
    ) as e:
        assert (await e.get("/readyz")).status == 200
        await post_in_order(e, ALERTS[:1])
        await wait_metric(e, "talon_opa_audit_write_failures_total", 1)
        ready = await e.get("/readyz")
        if required:
            assert ready.status == 503
            assert ready.body["reason"] == "audit trail not writable"
            assert "No space left on device" in ready.body["error"]
        else:
            assert ready.status == 200
            assert ready.body["audit"] == "not writable: No space left on device"
        assert await e.metric("talon_opa_audit_records_total") == 0
        assert SCRIPT.calls == [("kubernetes:label", "api-1", "ok")]  # the response itself went on


def replay(recorded: Recorded, tmp_path: Path, rules: str) -> subprocess.CompletedProcess[str]:
    new_rules = tmp_path / "new-rules.yaml"
    new_rules.write_text(rules)
    return talon_opa("rules", "plan", "--replay", str(recorded.trail), "-r", str(new_rules))


def test_replay_against_the_same_rules_finds_no_difference(recorded: Recorded, tmp_path: Path) -> None:
    done = replay(recorded, tmp_path, RULES)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "replayed 4 alert(s)" in done.stderr
    assert "0 decided differently, 4 the same" in done.stderr


def test_replay_shows_that_the_alerts_of_a_removed_rule_now_match_nothing(recorded: Recorded, tmp_path: Path) -> None:
    without_prod = RULES[: RULES.index("- rule: Stop shells in prod")]
    done = replay(recorded, tmp_path, without_prod)
    assert done.returncode == 3, done.stderr
    [changed] = [json.loads(line) for line in done.stdout.splitlines()]
    assert changed == {
        "line": 2,
        "alert_id": recorded.sent[1][1]["id"],
        "event": "Terminal shell in container",
        "trace_id": recorded.sent[1][1]["trace_id"],
        "matched_rules": {
            "before": ["Stop shells in prod"],
            "after": [],
            "added": [],
            "removed": ["Stop shells in prod"],
        },
        "steps": {
            "added": [],
            "removed": [
                {"rule": "Stop shells in prod", "action": "A label that fails", "actionner": "kubernetes:label"}
            ],
            "changed": [],
            "reordered": False,
        },
    }
    assert "1 decided differently, 3 the same" in done.stderr


def test_replay_shows_changed_parameters_and_newly_matched_alerts(recorded: Recorded, tmp_path: Path) -> None:
    changed_rules = RULES.replace("{labels: {behaviour: ok}}", "{labels: {behaviour: ok, quarantined: 'yes'}}")
    changed_rules += """
- rule: Watch the shop
  match:
    rules: [Terminal shell in container]
    output_fields: [k8s.ns.name=shop]
  actions:
    - action: Mark the shop
      actionner: kubernetes:label
      parameters: {labels: {behaviour: ok}}
"""
    done = replay(recorded, tmp_path, changed_rules)
    assert done.returncode == 3, done.stderr
    changes = {c["line"]: c for c in map(json.loads, done.stdout.splitlines())}
    assert sorted(changes) == [1, 3, 4]  # the two payments alerts (parameters), the shop alert (a new rule)
    assert changes[1]["steps"]["changed"] == [
        {
            "rule": "Mark shells",
            "action": "Mark",
            "fields": {
                "parameters": {
                    "before": {"labels": {"behaviour": "ok"}, "level": "pod"},
                    "after": {"labels": {"behaviour": "ok", "quarantined": "yes"}, "level": "pod"},
                }
            },
        }
    ]
    assert changes[3]["matched_rules"]["added"] == ["Watch the shop"]
    assert changes[3]["steps"]["added"] == [
        {"rule": "Watch the shop", "action": "Mark the shop", "actionner": "kubernetes:label"}
    ]
    assert "3 decided differently, 1 the same" in done.stderr


def test_replay_warns_about_a_trail_that_does_not_verify(recorded: Recorded, tmp_path: Path) -> None:
    copy = tmp_path / "audit.jsonl"
    shutil.copy(recorded.trail, copy)
    lines = copy.read_text().splitlines(keepends=True)
    copy.write_text("".join([lines[0], *lines[2:]]))
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    done = talon_opa("rules", "plan", "-r", str(rules), "--replay", str(copy))
    assert done.returncode == 0, done.stderr
    assert f"warning: {copy}: line 2: chain broken" in done.stderr
    assert "replayed 3 alert(s)" in done.stderr


async def test_lines_held_while_the_disk_fails_are_written_after_it_and_drops_leave_a_gap_line(tmp_path: Path) -> None:
    SCRIPT.reset()
    trail = tmp_path / "audit.jsonl"
    async with running_engine(
        tmp_path, RULES, registry=scripted_registry(), kube_config=UNUSED_KUBE, audit=audit_config(trail, buffer=1)
    ) as e:
        audit = e.engine.audit
        assert audit is not None
        first = await post_in_order(e, ALERTS[:1])
        await audit.flushed()
        kept = os.dup(audit._fd)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, audit._fd)  # the trail's descriptor now fails every write with ENOSPC, as a full disk
        try:
            held = await post_in_order(e, ALERTS[1:2])
            await wait_metric(e, "talon_opa_audit_write_failures_total", 1)
            await post_in_order(e, ALERTS[2:])  # the buffer (1 line) is taken: these are dropped
            assert (await e.get("/readyz")).status == 503
            dropped = await e.metric("talon_opa_audit_records_dropped_total")
            assert dropped >= 1
        finally:
            os.dup2(kept, audit._fd)  # the disk has room again
            os.close(kept)
            os.close(full)
        await audit.flushed()
        assert (await e.get("/readyz")).status == 200
    records = lines_of(trail)
    alerts = [r for r in records if r["kind"] == "alert"]
    [gap] = [r for r in records if r["kind"] == "gap"]
    assert gap["dropped"] == dropped
    assert len(alerts) + dropped == len(ALERTS)
    assert [a["alert_id"] for a in alerts[:2]] == [first[0][1]["id"], held[0][1]["id"]]  # held, then written
    done = talon_opa("audit", "verify", str(trail))
    assert done.returncode == 0, done.stdout
    assert f"{trail}:{records.index(gap) + 1}: {int(dropped)} alert(s) not recorded here" in done.stderr


def test_the_example_trail_verifies_and_replays_as_docs_audit_md_shows() -> None:
    trail, new_rules = binaries.REPO / "examples/audit/audit.jsonl", binaries.REPO / "examples/audit/new-rules.yaml"
    verified = talon_opa("audit", "verify", str(trail))
    assert verified.returncode == 0, verified.stdout
    assert verified.stdout.split()[-1] in (binaries.REPO / "docs/audit.md").read_text()
    done = talon_opa("rules", "plan", "--replay", str(trail), "-r", str(new_rules))
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == [
        line for line in (binaries.REPO / "docs/audit.md").read_text().splitlines() if line.startswith('{"line":')
    ]


async def test_unmatched_alerts_are_left_out_when_asked(tmp_path: Path) -> None:
    SCRIPT.reset()
    trail = tmp_path / "audit.jsonl"
    async with running_engine(
        tmp_path,
        RULES,
        registry=scripted_registry(),
        kube_config=UNUSED_KUBE,
        audit=audit_config(trail, unmatched=False),
    ) as e:
        sent = await post_in_order(e, ALERTS)
    recorded = [r["alert_id"] for r in lines_of(trail)]
    assert recorded == [reply["id"] for (_, reply), (_, ns) in zip(sent, ALERTS, strict=True) if ns != "shop"]


BROKEN_NATIVE_RULE = """\
package talon.rules.broken

name := "Broken native rule"

match if input.output_fields["k8s.ns.name"] == "broken"

actions := [{"action": "Bad", "actionner": 5, "parameters": {}}]
"""


async def test_an_alert_whose_decision_failed_is_recorded_with_the_error_and_replays_as_undecided(
    tmp_path: Path,
) -> None:
    SCRIPT.reset()
    native = tmp_path / "broken.rego"
    native.write_text(BROKEN_NATIVE_RULE)
    opa = dataclasses.replace(
        config.Opa(), retry_initial_seconds=0.02, retry_max_seconds=0.3, ready_timeout_seconds=30, rego=(str(native),)
    )
    trail = tmp_path / "audit.jsonl"
    async with running_engine(
        tmp_path, RULES, registry=scripted_registry(), kube_config=UNUSED_KUBE, opa=opa, audit=audit_config(trail)
    ) as e:
        [(_, reply)] = await post_in_order(e, [("x-1", "broken")])
        assert await e.metric("talon_opa_alerts_failed_total", stage="decide") == 1
    [record] = lines_of(trail)
    assert record["alert_id"] == reply["id"]
    assert (record["plan"], record["decision_id"], record["results"]) == (None, "", [])
    assert "steps[0].actionner is not a string" in record["error"]
    rules = tmp_path / "rules.yaml"
    done = talon_opa("rules", "plan", "--replay", str(trail), "-r", str(rules))  # without the broken rule
    assert done.returncode == 3, done.stderr
    [changed] = [json.loads(line) for line in done.stdout.splitlines()]
    assert changed["matched_rules"] == {"before": None, "after": [], "added": [], "removed": []}


async def test_with_jetstream_an_alert_is_acked_only_once_its_line_is_written(tmp_path: Path, nats: Nats) -> None:
    SCRIPT.reset()
    trail = tmp_path / "audit.jsonl"
    queue = nats_queue(nats.url, f"A{uuid.uuid4().hex[:8].upper()}")
    async with running_engine(
        tmp_path, RULES, registry=scripted_registry(), kube_config=UNUSED_KUBE, queue=queue, audit=audit_config(trail)
    ) as e:
        audit, jetstream = e.engine.audit, e.engine.jetstream
        assert audit is not None
        assert jetstream is not None
        kept = os.dup(audit._fd)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, audit._fd)  # the disk is full: the line cannot be written yet
        try:
            reply = await e.post(json_body=shell_alert("api-1", "payments"))
            assert reply.status == 200
            await wait_metric(e, "talon_opa_audit_write_failures_total", 1)
            assert SCRIPT.calls == [("kubernetes:label", "api-1", "ok")]  # the plan ran...
            assert jetstream.in_flight == 1  # ...but JetStream still holds the alert: not acked without its line
        finally:
            os.dup2(kept, audit._fd)
            os.close(kept)
            os.close(full)
        await _until(lambda: _true(jetstream.in_flight == 0))
        [record] = lines_of(trail)
        assert record["alert_id"] == reply.body["id"]


async def _true(value: bool) -> bool:
    return value
