"""The caps contract (docs/caps.md): `held` in the plan, the `caps:` config section, the action counters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from talon_opa.core import config
from talon_opa.core.errors import OpaError
from talon_opa.engine.caps import ActionCounters
from talon_opa.opa.plan import parse_plan, step_doc


def _plan(**step: Any) -> dict[str, Any]:
    return {
        "matched_rules": ["r"],
        "steps": [{"rule": "r", "action": "a", "actionner": "kubernetes:terminate", **step}],
    }


def test_parse_plan_reads_held() -> None:
    _, (step,) = parse_plan(_plan(held="cap reached"))
    assert step.held == "cap reached"
    assert step_doc(step)["held"] == "cap reached"
    assert parse_plan({"matched_rules": ["r"], "steps": [step_doc(step)]})[1] == (step,)


def test_parse_plan_held_is_optional() -> None:
    _, (step,) = parse_plan(_plan())
    assert step.held == ""
    assert "held" not in step_doc(step)
    assert parse_plan(_plan(held=None))[1][0].held == ""


def test_parse_plan_refuses_a_held_that_is_not_a_string() -> None:
    with pytest.raises(OpaError, match=r"steps\[0\]\.held is not a string"):
        parse_plan(_plan(held=True))


def test_caps_config_is_checked_and_becomes_bundle_data(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "caps:\n"
        "  limits:\n"
        "    kubernetes:terminate: {per_namespace: 3, window_seconds: 600}\n"
        "  protected_namespaces: [kube-system]\n"
        "  protected_labels: {tier: '*'}\n"
        "  keep_last_replica: [kubernetes:terminate]\n"
    )
    caps = config.load(path, env={}).caps
    assert config.caps_data(caps) == {
        "limits": {"kubernetes:terminate": {"per_namespace": 3, "window_seconds": 600}},
        "protected_namespaces": ["kube-system"],
        "protected_labels": {"tier": "*"},
        "keep_last_replica": ["kubernetes:terminate"],
    }
    assert config.caps_need_pod(caps)
    empty = config.parse_caps(None)
    assert config.caps_data(empty) == {
        "limits": {},
        "protected_namespaces": [],
        "protected_labels": {},
        "keep_last_replica": [],
    }
    assert not config.caps_need_pod(empty)
    assert not config.caps_need_pod(config.parse_caps({"protected_namespaces": ["falco"]}))


@pytest.mark.parametrize(
    ("caps", "what"),
    [
        ([], "'caps' must be a mapping"),
        ({"limit": {}}, "'caps.limit' is unknown"),
        ({"limits": {"kubernetes:terminate": {"per_namespace": 3, "window_seconds": 300}}}, "window_seconds"),
        ({"limits": {"kubernetes:terminate": {"per_namespace": -1}}}, "per_namespace"),
        ({"limits": {"kubernetes:terminate": {"per_ns": 1}}}, "per_namespace and window_seconds"),
        ({"protected_namespaces": "kube-system"}, "protected_namespaces"),
        ({"protected_labels": ["tier"]}, "protected_labels"),
        ({"protected_labels": {"tier": True}}, "protected_labels"),
        ({"keep_last_replica": "kubernetes:terminate"}, "keep_last_replica"),
    ],
)
def test_bad_caps_config_is_refused(caps: Any, what: str) -> None:
    with pytest.raises(config.ConfigError, match=what):
        config.parse_caps(caps)


def test_counters_slide_over_their_windows() -> None:
    now = [1000.0]
    counters = ActionCounters(clock=lambda: now[0])
    assert counters.snapshot() == {}
    counters.record("kubernetes:terminate", "payments")
    now[0] += 100
    counters.record("kubernetes:terminate", "payments")
    counters.record("kubernetes:label", "")
    assert counters.snapshot() == {
        "kubernetes:terminate": {"payments": {"60": 1, "600": 2, "3600": 2}},
        "kubernetes:label": {"": {"60": 1, "600": 1, "3600": 1}},
    }
    now[0] += 3550  # the first termination is older than the longest window
    assert counters.snapshot() == {
        "kubernetes:terminate": {"payments": {"60": 0, "600": 0, "3600": 1}},
        "kubernetes:label": {"": {"60": 0, "600": 0, "3600": 1}},
    }
    now[0] += 100
    assert counters.snapshot() == {}


def test_counters_count_many_actions_over_their_windows() -> None:
    now = [0.0]
    counters = ActionCounters(clock=lambda: now[0])
    times = [i * 0.5 for i in range(20_000)]  # 2 actions a second for 10,000 s
    for i, t in enumerate(times):
        now[0] = t
        counters.record("kubernetes:label", "payments")
        if i % 997 == 0:  # now and then a decision reads them (and expired times are dropped)
            expected = {str(w): sum(1 for x in times[: i + 1] if x > t - w) for w in (60, 600, 3600)}
            assert counters.snapshot() == {"kubernetes:label": {"payments": expected}}
    now[0] += 3600
    assert counters.snapshot() == {}


def test_the_example_config_loads() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "caps" / "config.yaml"
    caps = config.caps_data(config.load(example, env={}).caps)
    assert caps["limits"]["kubernetes:terminate"] == {"per_namespace": 3, "window_seconds": 600}
    assert caps["protected_namespaces"] == ["kube-system", "falco"]
