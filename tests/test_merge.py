"""Talon's merge of rules files (reference §2.6) and rule-action resolution (§2.7), row by row, with our fixes."""

from __future__ import annotations

from typing import Any

import pytest

from talon_opa.catalog import default_registry
from talon_opa.cli.rules_check import talon_shape
from talon_opa.core.errors import RuleProblem
from talon_opa.translator import load, merge
from talon_opa.translator.rules import MergedRule

REGISTRY = default_registry()


def _load(*texts: str) -> load.Loaded:
    out = load.Loaded()
    for i, text in enumerate(texts):
        load.load_text(text, f"f{i}.yaml", out)
    assert out.problems == [], out.problems
    return out


def blocks(*texts: str) -> dict[str, dict[str, Any]]:
    """The merged action blocks, in Talon's print shape."""
    merged = merge.merge_items(_load(*texts).items)
    out = {}
    for name, b in merged.blocks.items():
        rule = load.RawRule(b.name, b.where, load.RawMatch(b.where), actions=[b])
        out[name] = talon_shape(MergedRule(rule, (merge.Resolved(b, None),)), REGISTRY)["actions"][0]
    return out


def rules(*texts: str, warnings: list[RuleProblem] | None = None) -> list[dict[str, Any]]:
    """The merged and resolved rules, in Talon's print shape."""
    merged = merge.merge_items(_load(*texts).items)
    sink = warnings if warnings is not None else []
    return [
        talon_shape(MergedRule(r, tuple(merge.resolve_rule(r, merged.blocks, sink))), REGISTRY) for r in merged.rules
    ]


BASE_BLOCK = """
- action: A
  actionner: kubernetes:label
  description: base
  continue: "true"
  ignore_errors: "false"
  additional_contexts: [aws]
  parameters:
    s: base
    n: 1
    f: 1.5
    lst: [a, b]
    m: {x: "1", y: "1"}
    kind: text
"""

# §2.6, action blocks with the same name: later item into the earlier one.
BLOCK_CASES = [
    pytest.param(
        "- action: A\n  actionner: kubernetes:annotation\n  description: later\n  continue: 'false'\n"
        "  ignore_errors: 'true'",
        {"actionner": "kubernetes:annotation", "description": "later", "continue": "false", "ignore_errors": "true"},
        id="strings replaced when the later value is set",
    ),
    pytest.param(
        "- action: A\n  description: ''\n  continue:\n",
        {"actionner": "kubernetes:label", "description": "base", "continue": "true", "ignore_errors": "false"},
        id="strings kept when the later value is empty",
    ),
    pytest.param(
        "- action: A\n  additional_contexts: [k8snode]",
        {"additional_contexts": ["aws", "k8snode"]},
        id="additional_contexts appended",
    ),
    pytest.param(
        "- action: A\n  parameters: {s: null, n: null}",
        {"parameters.s": "base", "parameters.n": 1},
        id="null parameter skipped",
    ),
    pytest.param(
        "- action: A\n  parameters: {s: [x], n: 2.5, f: 3, kind: [z]}",
        {"parameters.s": "base", "parameters.n": 1, "parameters.f": 1.5, "parameters.kind": "text"},
        id="kinds differ: skipped silently (string vs list, int vs float)",
    ),
    pytest.param(
        "- action: A\n  parameters: {lst: [c]}",
        {"parameters.lst": ["a", "b", "c"]},
        id="list appended, earlier first",
    ),
    pytest.param(
        "- action: A\n  parameters: {newlist: [c, d]}",
        {"parameters.newlist": ["c", "d"]},
        id="FIX list new in the override is not nested",
    ),
    pytest.param(
        "- action: A\n  parameters: {m: {y: '2', z: '2'}}",
        {"parameters.m": {"x": "1", "y": "2", "z": "2"}},
        id="map merged, later wins per key",
    ),
    pytest.param(
        "- action: A\n  parameters: {newmap: {k: v}}",
        {"parameters.newmap": {"k": "v"}},
        id="map new in the override is added",
    ),
    pytest.param(
        "- action: A\n  parameters: {s: later, n: 7, f: 2.5}",
        {"parameters.s": "later", "parameters.n": 7, "parameters.f": 2.5},
        id="scalars replaced",
    ),
]


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d


@pytest.mark.parametrize(("override", "expected"), BLOCK_CASES)
def test_block_override_across_files(override: str, expected: dict[str, Any]) -> None:
    merged = blocks(BASE_BLOCK, override)
    assert list(merged) == ["A"]
    for key, value in expected.items():
        assert _get(merged["A"], key) == value, key


@pytest.mark.parametrize(("override", "expected"), BLOCK_CASES)
def test_block_override_inside_one_file(override: str, expected: dict[str, Any]) -> None:
    merged = blocks(BASE_BLOCK + override)
    for key, value in expected.items():
        assert _get(merged["A"], key) == value, key


def test_block_output_target_first_wins_and_parameters_merge() -> None:
    merged = blocks(
        "- action: A\n  actionner: kubernetes:log\n  output: {target: local:file, parameters: {destination: /a}}",
        "- action: A\n  output: {target: aws:s3, parameters: {bucket: b, destination: /b}}",
    )
    assert merged["A"]["output"] == {"target": "local:file", "parameters": {"destination": "/b", "bucket": "b"}}


def test_block_override_adds_an_output_without_panicking() -> None:
    # Talon's TestExtractActionsRulesMergesOutputParametersIntoActionsWithoutPanicking
    merged = blocks(
        "- action: Capture logs\n  actionner: kubernetes:log\n",
        "- action: Capture logs\n  output:\n    target: aws:s3\n    parameters:\n      bucket: base-bucket\n",
    )
    assert list(merged) == ["Capture logs"]
    assert merged["Capture logs"]["output"] == {"target": "aws:s3", "parameters": {"bucket": "base-bucket"}}


def test_first_occurrence_keeps_its_position() -> None:
    merged = rules(
        "- rule: B\n  actions: [{action: x, actionner: a:b}]\n- rule: A\n  actions: [{action: y, actionner: a:b}]",
        "- rule: C\n  actions: [{action: z, actionner: a:b}]\n- rule: B\n  description: again",
    )
    assert [r["rule"] for r in merged] == ["B", "A", "C"]
    assert merged[0]["description"] == "again"


BASE_RULE = """
- rule: R
  description: base
  continue: "true"
  dry_run: "false"
  notifiers: [slack]
  match:
    rules: [r1]
    priority: ">=Warning"
    tags: [t1]
    output_fields: [a=1]
    source: syscall
  actions:
    - action: one
      actionner: kubernetes:label
"""

# §2.6, rules with the same name.
RULE_CASES = [
    pytest.param(
        "- rule: R\n  description: later\n  continue: 'false'\n  dry_run: 'true'",
        {"description": "later", "continue": "false", "dry_run": "true"},
        id="continue, dry_run, description replaced when set",
    ),
    pytest.param(
        "- rule: R\n  description: ''",
        {"description": "base", "continue": "true", "dry_run": "false"},
        id="continue, dry_run, description kept when empty",
    ),
    pytest.param(
        "- rule: R\n  notifiers: [loki]\n  match: {rules: [r2], tags: [t2], output_fields: [b=2]}\n"
        "  actions: [{action: two, actionner: kubernetes:annotation}]",
        {
            "notifiers": ["slack", "loki"],
            "match.rules": ["r1", "r2"],
            "match.tags": ["t1", "t2"],
            "match.output_fields": ["a=1", "b=2"],
            "actions": ["one", "two"],
        },
        id="lists appended",
    ),
    pytest.param(
        "- rule: R\n  match: {priority: '<Error', source: k8s_audit}",
        {"match.priority": "<Error", "match.source": "k8s_audit"},
        id="priority and source replaced",
    ),
    pytest.param(
        "- rule: R\n  notifiers: [loki]",
        {"match.priority": ">=Warning", "match.source": "syscall"},
        id="FIX an override that omits priority and source keeps them",
    ),
    pytest.param(
        "- rule: R\n  match: {priority: '', source: ''}",
        {"match.priority": {}, "match.source": {}},
        id="an explicit empty priority or source clears them",
    ),
]


@pytest.mark.parametrize(("override", "expected"), RULE_CASES)
def test_rule_override(override: str, expected: dict[str, Any]) -> None:
    for texts in ((BASE_RULE, override), (BASE_RULE + override,)):
        merged = rules(*texts)
        assert len(merged) == 1
        for key, value in expected.items():
            got = [a["action"] for a in merged[0]["actions"]] if key == "actions" else _get(merged[0], key)
            assert got == value, key


RESOLVE_BLOCK = """
- action: B
  actionner: kubernetes:label
  description: from block
  continue: "false"
  ignore_errors: "true"
  additional_contexts: [aws]
  parameters:
    lst: [b1, b2]
    m: {k: block, b: block}
    s: block
    n: 1
    only_block: [x]
    only_block_map: {k: v}
    nul: null
    mixed: [list]
  output:
    target: local:file
    parameters: {destination: /block, lst: [b]}
"""

# §2.7, a rule action completed from the block of the same name: (rule action YAML, expected).
RESOLVE_CASES = [
    pytest.param(
        "{action: B}",
        {
            "description": "from block",
            "actionner": "kubernetes:label",
            "continue": "false",
            "ignore_errors": "true",
            "additional_contexts": ["aws"],
            "output.target": "local:file",
        },
        id="strings from the block when the rule says nothing",
    ),
    pytest.param(
        "{action: B, description: mine, actionner: kubernetes:annotation, continue: 'true', ignore_errors: 'false',"
        " additional_contexts: [k8snode], output: {target: aws:s3}}",
        {
            "description": "mine",
            "actionner": "kubernetes:annotation",
            "continue": "true",
            "ignore_errors": "false",
            "additional_contexts": ["k8snode"],
            "output.target": "aws:s3",
        },
        id="the rule's strings win when set",
    ),
    pytest.param(
        "{action: B, parameters: {lst: [r1]}}",
        {"parameters.lst": ["b1", "b2", "r1"], "parameters.only_block": ["x"]},
        id="lists: block items then rule items; absent in the rule: the block's",
    ),
    pytest.param(
        "{action: B, parameters: {m: {k: rule, r: rule}}}",
        {"parameters.m": {"k": "block", "r": "rule", "b": "block"}, "parameters.only_block_map": {"k": "v"}},
        id="maps: the block wins on conflicting keys",
    ),
    pytest.param(
        "{action: B, parameters: {s: rule, n: 2}}",
        {"parameters.s": "rule", "parameters.n": 2},
        id="scalars: the rule's when set",
    ),
    pytest.param(
        "{action: B, parameters: {s: null, nul: kept}}",
        {"parameters.s": "block", "parameters.nul": "kept"},
        id="null in the rule takes the block's, null in the block is skipped",
    ),
    pytest.param(
        "{action: B, parameters: {mixed: text}}",
        {"parameters.mixed": "text"},
        id="kinds differ: the rule's kept",
    ),
    pytest.param(
        "{action: B, output: {parameters: {destination: /rule, lst: [r]}}}",
        {"output.target": "local:file", "output.parameters": {"destination": "/rule", "lst": ["b", "r"]}},
        id="output parameters merge like parameters",
    ),
]


@pytest.mark.parametrize(("action", "expected"), RESOLVE_CASES)
def test_rule_action_resolved_against_block(action: str, expected: dict[str, Any]) -> None:
    rule = f"- rule: R\n  actions:\n    - {action}\n"
    for texts in ((RESOLVE_BLOCK, rule), (rule, RESOLVE_BLOCK), (rule + RESOLVE_BLOCK,)):
        [merged] = rules(*texts)
        [a] = merged["actions"]
        for key, value in expected.items():
            assert _get(a, key) == value, (key, texts)


def test_type_mismatch_is_a_warning_naming_the_parameter() -> None:
    warnings: list[RuleProblem] = []
    rules(
        RESOLVE_BLOCK,
        "- rule: R\n  actions:\n    - action: B\n      parameters:\n        mixed: text\n",
        warnings=warnings,
    )
    [w] = warnings
    assert (w.where.file, w.where.line, w.rule, w.action, w.field) == ("f1.yaml", 5, "R", "B", "parameters.mixed")


def test_resolution_uses_the_merged_block() -> None:
    [merged] = rules(
        "- action: B\n  actionner: kubernetes:label\n  parameters: {lst: [a]}",
        "- rule: R\n  actions: [{action: B}]",
        "- action: B\n  parameters: {lst: [b]}",
    )
    assert merged["actions"][0]["parameters"] == {"lst": ["a", "b"]}


def test_a_rule_override_appends_actions_that_resolve_too() -> None:
    [merged] = rules(
        "- action: B\n  actionner: kubernetes:label\n- rule: R\n  actions: [{action: B}]",
        "- rule: R\n  actions: [{action: B, description: again}]",
    )
    assert [(a["action"], a.get("description"), a["actionner"]) for a in merged["actions"]] == [
        ("B", None, "kubernetes:label"),
        ("B", "again", "kubernetes:label"),
    ]


def test_no_block_and_no_actionner_stays_incomplete() -> None:
    [merged] = rules("- rule: R\n  notifiers: [slack]\n  actions: [{action: missing}]")
    assert merged["actions"][0]["actionner"] == ""


def test_nothing_but_the_action_fields_is_inherited() -> None:
    [merged] = rules(
        "- action: B\n  actionner: kubernetes:label\n  notifiers: [slack]\n- rule: R\n  actions: [{action: B}]"
    )
    assert "notifiers" not in merged


def test_an_item_with_both_names_is_a_block_and_a_rule() -> None:
    text = "- action: Both\n  rule: Both\n  actionner: kubernetes:label\n  actions: [{action: Both}]"
    assert list(blocks(text)) == ["Both"]
    [merged] = rules(text)
    assert merged["actions"][0]["actionner"] == "kubernetes:label"


def test_inputs_are_not_modified() -> None:
    loaded = _load(BASE_BLOCK, "- action: A\n  parameters: {lst: [c]}")
    merge.merge_items(loaded.items)
    merge.merge_items(loaded.items)
    first = loaded.items[0].block
    assert first is not None
    assert first.parameters is not None
    assert first.parameters["lst"].plain() == ["a", "b"]
