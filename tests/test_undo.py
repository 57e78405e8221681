"""The undo contract (docs/undo.md): the `undo:` config section, `undo_after_seconds` in the plan, the
`reversible` declaration, the records kept in state_dir, and the docs' table of what each undo does."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from talon_opa.catalog import default_registry
from talon_opa.core import config
from talon_opa.core.errors import OpaError
from talon_opa.engine.undo_store import RETAIN_SECONDS, Record, UndoStore, action_id, valid_id
from talon_opa.opa.plan import parse_plan, step_doc
from talon_opa.plugins.params import NoParams
from talon_opa.plugins.registry import PluginDeclarationError, Registry
from talon_opa.plugins.reversal import Reversal, Reversible, Undone
from talon_opa.plugins.runtime import Actionner, Outcome
from talon_opa.plugins.spec import Spec
from tests.harness.paths import ALERTS

REPO = Path(__file__).resolve().parents[1]


def _plan(**step: Any) -> dict[str, Any]:
    return {"matched_rules": ["r"], "steps": [{"rule": "r", "action": "a", "actionner": "kubernetes:label", **step}]}


def test_parse_plan_reads_undo_after_seconds() -> None:
    _, (step,) = parse_plan(_plan(undo_after_seconds=1800))
    assert step.undo_after == 1800.0
    assert step_doc(step)["undo_after_seconds"] == 1800.0
    assert parse_plan({"matched_rules": ["r"], "steps": [step_doc(step)]})[1] == (step,)


def test_undo_after_seconds_is_optional() -> None:
    _, (step,) = parse_plan(_plan())
    assert step.undo_after is None
    assert "undo_after_seconds" not in step_doc(step)


@pytest.mark.parametrize("bad", [0, -5, "60", True])
def test_parse_plan_refuses_a_ttl_that_is_not_seconds(bad: Any) -> None:
    with pytest.raises(OpaError, match=r"steps\[0\]\.undo_after_seconds is not a number of seconds > 0"):
        parse_plan(_plan(undo_after_seconds=bad))


def test_undo_config_becomes_bundle_data(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "undo:\n  ttl_seconds:\n    actionners: {kubernetes:networkpolicy: 1800}\n    rules: {Quarantine: 1.5}\n"
    )
    undo = config.load(path, env={}).undo
    assert config.undo_data(undo) == {
        "ttl_seconds": {"actionners": {"kubernetes:networkpolicy": 1800}, "rules": {"Quarantine": 1.5}}
    }
    assert config.undo_data(config.parse_undo(None)) == {"ttl_seconds": {"actionners": {}, "rules": {}}}


@pytest.mark.parametrize(
    ("undo", "what"),
    [
        ([], "'undo' must be a mapping"),
        ({"ttl": {}}, "'undo.ttl' is unknown"),
        ({"ttl_seconds": {"actions": {}}}, "'undo.ttl_seconds.actions' is unknown"),
        ({"ttl_seconds": {"rules": {"r": 0}}}, r"'undo.ttl_seconds.rules.r' must be a number of seconds > 0"),
        ({"ttl_seconds": {"actionners": {"kubernetes:label": "30m"}}}, "kubernetes:label' must be a number"),
        ({"ttl_seconds": {"actionners": {"kubernetes:label": True}}}, "kubernetes:label' must be a number"),
    ],
)
def test_bad_undo_config_is_refused(undo: Any, what: str) -> None:
    with pytest.raises(config.ConfigError, match=what):
        config.parse_undo(undo)


class _Undoes(Actionner[NoParams], Reversible):
    spec: ClassVar[Spec[NoParams]] = Spec(name="test:undoes", kind="actionner", description="d", params=NoParams)

    async def run(self, alert: Any, params: NoParams) -> Outcome:
        return Outcome.done("ok")

    async def undo(self, reversal: Reversal) -> Undone:
        return Undone("undone", "ok")


class _Claims(Actionner[NoParams]):
    spec: ClassVar[Spec[NoParams]] = Spec(
        name="test:claims", kind="actionner", description="d", params=NoParams, reversible=True
    )

    async def run(self, alert: Any, params: NoParams) -> Outcome:
        return Outcome.done("ok")


def test_a_plugin_that_can_undo_declares_it() -> None:
    with pytest.raises(PluginDeclarationError, match="subclasses Reversible: declare `reversible=True`"):
        Registry.of(_Undoes)
    Registry.of(_Claims)  # allowed by the registry (a test double may borrow a shipped spec)...


def test_every_shipped_actionner_declares_reversible_exactly_when_it_can_undo() -> None:
    registry = default_registry()
    for name, cls in registry.actionners.items():
        assert cls.spec.reversible == issubclass(cls, Reversible), name  # ...but never in the catalog


def test_the_docs_say_how_each_reversible_actionner_is_undone() -> None:
    reversible = {s.name for s in default_registry().specs() if s.kind == "actionner" and s.reversible}
    assert reversible == {
        "kubernetes:label",
        "kubernetes:annotation",
        "kubernetes:networkpolicy",
        "kubernetes:cordon",
        "kubernetes:drain",
        "calico:networkpolicy",
        "cilium:networkpolicy",
    }
    text = (REPO / "docs" / "undo.md").read_text()
    table = dict(re.findall(r"^\| `([a-z]+:[a-z]+)` \| (\w[^|]*?) \|", text, re.M))
    actionners = {s.name for s in default_registry().specs() if s.kind == "actionner"}
    assert set(table) == actionners  # every actionner, reversible or not
    assert {n for n, how in table.items() if not how.startswith("not reversible")} == reversible


def _record(action: str, **changes: Any) -> Record:
    base: dict[str, Any] = {
        "action_id": action,
        "alert_id": action.rsplit("-", 1)[0],
        "step_index": int(action.rsplit("-", 1)[1]),
        "rule": "r",
        "action": "a",
        "actionner": "kubernetes:label",
        "cluster": "",
        "reversal": Reversal("kubernetes:label", "labels of pod ns/p: remove x", {"path": "/p", "changes": {}}),
        "ran_at": time.time(),
        "expires_at": time.time() + 60,
        "trace_id": "ab" * 16,
        "span_id": "cd" * 8,
    }
    return Record(**{**base, **changes})


def test_records_outlive_the_store_and_bad_files_are_set_aside(tmp_path: Path) -> None:
    store = UndoStore(str(tmp_path))
    pending = _record(action_id("a1", 0))
    done = _record(action_id("a1", 1)).finished("undone", "ok", "manual", "ef" * 16)
    old = _record(action_id("a2", 0), finished_at=time.time() - RETAIN_SECONDS - 1, state="undone")
    for r in (pending, done, old):
        store.put(r)
    (tmp_path / "undo" / "broken.json").write_text("{not json")
    assert not list((tmp_path / "undo").glob(".*.tmp"))  # written atomically: no temporary file left

    again = UndoStore(str(tmp_path))
    assert again.load() == 2
    assert again.get(pending.action_id) == pending
    assert [r.action_id for r in again.of_alert("a1")] == ["a1-0", "a1-1"]
    assert [r.action_id for r in again.pending()] == ["a1-0"]
    assert again.get("a2-0") is None
    assert not (tmp_path / "undo" / "a2-0.json").exists()  # done long ago: forgotten
    assert (tmp_path / "undo" / "broken.unreadable").exists()  # never deleted
    assert json.loads((tmp_path / "undo" / "a1-1.json").read_text())["state"] == "undone"


def test_without_state_dir_records_stay_in_memory(tmp_path: Path) -> None:
    store = UndoStore("")
    store.put(_record("a-0"))
    assert store.load() == 0
    assert not store.durable
    assert store.get("a-0") is not None


@pytest.mark.parametrize(("text", "ok"), [("0123abcdef-1", True), ("../etc", False), ("a/b", False), ("", False)])
def test_ids_are_safe_file_names(text: str, ok: bool) -> None:
    assert valid_id(text) is ok


def test_rules_plan_prints_the_example_configs_ttls() -> None:
    """examples/undo through a real OPA: the rule's TTL wins over the actionner's, the cordon has none."""
    event = ALERTS / "falco-terminal-shell-in-container.json"
    example = REPO / "examples" / "undo"
    argv = [
        "rules",
        "plan",
        "-r",
        str(example / "rules.yaml"),
        "--event",
        str(event),
        "--caps",
        str(example / "config.yaml"),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "talon_opa.cli.main", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    steps = json.loads(done.stdout)["steps"]
    assert [(s["actionner"], s.get("undo_after_seconds")) for s in steps] == [
        ("kubernetes:networkpolicy", 1800),
        ("kubernetes:label", 1800),
    ]
