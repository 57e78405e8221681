"""The approvals contract (docs/approvals.md): `approval` in the plan, the `approvals:` config section, a
parked plan's one-file form."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from talon_opa.core import config, events
from talon_opa.core.errors import OpaError, TalonError
from talon_opa.engine.parked import Decision, Parked
from talon_opa.engine.work import WorkItem
from talon_opa.notifiers import elasticsearch, k8sevents, loki, slack, smtp, webhook
from talon_opa.opa.plan import Plan, parse_plan, step_doc
from talon_opa.plugins.notes import Note
from tests.harness.paths import ALERTS

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "approvals"


def _plan(**step: Any) -> dict[str, Any]:
    return {
        "matched_rules": ["r"],
        "steps": [{"rule": "r", "action": "a", "actionner": "kubernetes:terminate", **step}],
    }


def test_parse_plan_reads_approval() -> None:
    _, (step,) = parse_plan(_plan(approval={"window_seconds": 300}))
    assert step.approval_seconds == 300
    assert step_doc(step)["approval"] == {"window_seconds": 300}
    assert parse_plan({"matched_rules": ["r"], "steps": [step_doc(step)]})[1] == (step,)
    _, (plain,) = parse_plan(_plan(approval=None))
    assert plain.approval_seconds == 0
    assert "approval" not in step_doc(plain)


@pytest.mark.parametrize("approval", [{"window_seconds": 0}, {"window_seconds": "60"}, {}, 300, True])
def test_parse_plan_refuses_a_bad_approval(approval: Any) -> None:
    with pytest.raises(OpaError, match=r"steps\[0\]\.approval is not \{window_seconds"):
        parse_plan(_plan(approval=approval))


def test_approvals_config_is_checked_and_becomes_bundle_data() -> None:
    parsed = config.parse_approvals(
        {
            "window_seconds": 60,
            "require": [{"actionners": ["kubernetes:terminate"]}, {"rules": ["R"], "window_seconds": 5}],
        }
    )
    assert parsed["max_pending"] == config.APPROVAL_MAX_PENDING
    assert config.approvals_data(parsed) == {
        "require": [
            {
                "actionners": ["kubernetes:terminate"],
                "actions": [],
                "rules": [],
                "namespaces": [],
                "window_seconds": 60,
            },
            {"actionners": [], "actions": [], "rules": ["R"], "namespaces": [], "window_seconds": 5},
        ]
    }
    assert config.approvals_data(config.parse_approvals(None)) == {"require": []}


@pytest.mark.parametrize(
    ("approvals", "what"),
    [
        ([], "'approvals' must be a mapping"),
        ({"requires": []}, "'approvals.requires' is unknown"),
        ({"require": {"rules": ["R"]}}, "'approvals.require' must be a list"),
        ({"require": [{}]}, r"'approvals.require\[0\]' names no actionner"),
        ({"require": [{"rules": "R"}]}, r"'approvals.require\[0\].rules' must be a list of names"),
        ({"require": [{"pods": ["x"]}]}, r"'approvals.require\[0\]' must be a mapping of actionners"),
        (
            {"require": [{"rules": ["R"], "window_seconds": 0}]},
            r"'approvals.require\[0\].window_seconds' must be a whole number",
        ),
        ({"window_seconds": 1.5}, "'approvals.window_seconds' must be a whole number"),
        ({"max_pending": 0}, "'approvals.max_pending' must be an integer >= 1"),
    ],
)
def test_bad_approvals_config_is_refused(approvals: Any, what: str) -> None:
    with pytest.raises(config.ConfigError, match=what):
        config.parse_approvals(approvals)


def test_the_example_config_loads() -> None:
    cfg = config.load(EXAMPLE / "config.yaml", env={})
    assert config.approvals_data(cfg.approvals)["require"][0]["namespaces"] == ["payments", "checkout"]
    assert (cfg.approvals["max_pending"], cfg.state_dir) == (50, "/var/lib/talon-opa")


def _parked() -> Parked:
    body = (ALERTS / "falco-terminal-shell-in-container.json").read_bytes()
    item = WorkItem("a-1", events.decode_alert(body, "application/json"), body, "application/json")
    _, steps = parse_plan(_plan(approval={"window_seconds": 30}))
    plan = Plan(("r",), steps, decision_id="d-1", revision="rev")
    return Parked("p1", item, plan, 0, frozenset({"x"}), "ab" * 16, "cd" * 8, 100.0, 130.0)


def test_a_parked_plan_reads_back_from_its_file_form() -> None:
    parked = _parked()
    again = Parked.decode(parked.encode())
    assert (again.id, again.index, again.ended, again.expires, again.decision) == (
        "p1",
        0,
        frozenset({"x"}),
        130.0,
        None,
    )
    assert (again.plan, again.item.body, again.item.alert_id) == (parked.plan, parked.item.body, "a-1")
    decided = Parked.decode(Parked(**{**_fields(parked), "decision": Decision("denied", "bob", 120.0)}).encode())
    assert decided.decision == Decision("denied", "bob", 120.0)


def _fields(p: Parked) -> dict[str, Any]:
    return {f: getattr(p, f) for f in Parked.__dataclass_fields__}


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"format": 9}, "format 9 is not 1"),
        ({"index": 3}, "step 3 of its plan does not wait for approval"),
        ({"decision": {"result": "maybe"}}, "decision 'maybe' is not approved"),
        ({"trace_id": None, "span_id": None, "id": None, "created": "x"}, "not a parked plan"),
    ],
)
def test_a_damaged_parked_file_is_refused(change: dict[str, Any], what: str) -> None:
    doc = {**json.loads(_parked().encode()), **change}
    with pytest.raises(TalonError, match=what):
        Parked.decode(json.dumps(doc).encode())


def test_the_operator_token_cannot_be_the_intake_token(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("auth:\n  token: same-secret-1\n  operator_token: same-secret-1\n")
    with pytest.raises(config.ConfigError, match=r"'auth\.operator_token' is the intake's auth\.token") as caught:
        config.load(path, env={})
    assert "same-secret-1" not in str(caught.value)


def test_every_notifier_formats_a_pending_announcement() -> None:
    note = Note(
        stage="action",
        status="pending",
        rule="Quarantine",
        action="Terminate",
        actionner="kubernetes:terminate",
        output="waiting for approval abc for up to 300s: approve with `talon-opa approve abc`",
        trace_id="ab" * 16,
        pod="api-1",
        namespace="payments",
    )
    settings = slack.SlackSettings(webhook_url="https://hooks.slack.example/x")
    assert slack.payload(note, settings)["attachments"][0]["color"] == slack.COLORS["pending"]
    assert "talon-opa approve abc" in smtp.text_body(note)
    assert "[pending]" in smtp.subject(note)
    assert loki.labels(note)["status"] == "pending"
    assert elasticsearch.document(note, datetime.now(UTC))["status"] == "pending"
    assert k8sevents.event(note, "payments", None, datetime.now(UTC))["reason"].endswith(":pending")
    assert webhook.body(note)["status"] == "pending"
