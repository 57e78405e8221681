"""Every check Talon makes on rules files (reference §2.1, §2.4, §2.5), each naming file:line, rule, action and
field, all reported at once; our fixes accepted; the final model built from valid rules."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from talon_opa.core.errors import RuleProblem, RulesError
from talon_opa.plugins.params import param
from talon_opa.plugins.registry import Registry
from talon_opa.plugins.runtime import Actionner, Outcome, Planned
from talon_opa.plugins.spec import Spec
from talon_opa.translator.model import FieldCondition, Priority
from talon_opa.translator.rules import check_rules, load_ruleset, load_ruleset_with_warnings

# --- a tiny registry ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class LabelParams:
    labels: Mapping[str, str] = param(doc="labels", required=True)
    level: str = param("pod", doc="pod or node")


@dataclass(frozen=True, kw_only=True, slots=True)
class StopParams:
    grace_period_seconds: int = param(0, doc="seconds")
    allow: tuple[str, ...] = param((), doc="a list")


@dataclass(frozen=True, kw_only=True, slots=True)
class NoParams:
    pass


@dataclass(frozen=True, kw_only=True, slots=True)
class FileParams:
    destination: str = param(doc="folder", required=True)


class Label(Actionner[LabelParams]):
    spec: ClassVar[Spec[LabelParams]] = Spec(name="test:label", kind="actionner", description="", params=LabelParams)

    async def run(self, alert: object, params: LabelParams) -> Outcome:  # runnable: loading never calls it
        raise AssertionError("not called when rules load")


class Stop(Planned):
    spec: ClassVar[Spec[StopParams]] = Spec(
        name="test:stop", kind="actionner", description="", params=StopParams, continues=False
    )


class Dump(Planned):
    spec: ClassVar[Spec[NoParams]] = Spec(
        name="test:dump", kind="actionner", description="", params=NoParams, output="required"
    )


class Log(Planned):
    spec: ClassVar[Spec[NoParams]] = Spec(
        name="test:log", kind="actionner", description="", params=NoParams, output="optional"
    )


class File(Planned):
    spec: ClassVar[Spec[FileParams]] = Spec(name="local:file", kind="output", description="", params=FileParams)


class Slack(Planned):
    spec: ClassVar[Spec[NoParams]] = Spec(name="slack", kind="notifier", description="", params=NoParams)


REGISTRY = Registry.of(Label, Stop, Dump, Log, File, Slack)


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def problems(tmp_path: Path, text: str) -> list[RuleProblem]:
    report = check_rules([write(tmp_path, text)], REGISTRY)
    assert report.ruleset is None
    return list(report.problems)


def one_problem(tmp_path: Path, text: str) -> RuleProblem:
    found = problems(tmp_path, text)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


OK_ACTION = "  actions:\n    - action: a\n      actionner: test:label\n      parameters: {labels: {k: v}}\n"

# (rules file, line, column, rule, action, field, message fragment, hint fragment)
CASES = [
    # §2.1 decoding
    pytest.param("- rule: [\n", 2, 1, "", "", "", "wrong YAML syntax", "fix the YAML", id="yaml syntax error"),
    pytest.param("rule: R\n", 1, 1, "", "", "", "top level of a rules file must be a list", "- rule:", id="top map"),
    pytest.param("- rule: R\n" + OK_ACTION + "-\n", 6, 2, "", "", "", "bare '-'", "remove", id="bare dash item"),
    pytest.param("- just a string\n", 1, 3, "", "", "", "must be a mapping", "- rule:", id="scalar item"),
    pytest.param(
        "- rule: R\n  match:\n    rules: Foo\n" + OK_ACTION,
        3,
        12,
        "R",
        "",
        "match.rules",
        "must be a list",
        'rules: ["Foo"]',
        id="rules given a scalar",
    ),
    pytest.param(
        "- rule: R\n  match:\n    tags: 'a, b'\n" + OK_ACTION,
        3,
        11,
        "R",
        "",
        "match.tags",
        "must be a list",
        'tags: ["a, b"]',
        id="tags given a scalar",
    ),
    pytest.param(
        "- rule: R\n  notifiers: slack\n" + OK_ACTION,
        2,
        14,
        "R",
        "",
        "notifiers",
        "must be a list",
        "notifiers:",
        id="notifiers given a scalar",
    ),
    pytest.param(
        "- rule: R\n  rule: S\n" + OK_ACTION, 2, 3, "", "", "", "already defined at line 1", "only once", id="dup key"
    ),
    pytest.param(
        "- rule: R\n  actions:\n    -\n", 3, 6, "R", "", "actions[0]", "bare '-' in 'actions'", "", id="bare action"
    ),
    pytest.param(
        "- rule: R\n  actions:\n    - action: a\n      actionner: test:label\n      parameters: [1]\n",
        5,
        19,
        "R",
        "a",
        "parameters",
        "'parameters' must be a mapping, not a list",
        "name: value",
        id="parameters given a list (no cascade)",
    ),
    # §2.4 syntax
    pytest.param(
        "- rule: R\n  continue: yes\n" + OK_ACTION,
        2,
        13,
        "R",
        "",
        "continue",
        "'continue' setting can be 'true' or 'false' only",
        "'yes' is not a boolean",
        id="rule continue yes",
    ),
    pytest.param(
        "- rule: R\n  continue: 1\n" + OK_ACTION,
        2,
        13,
        "R",
        "",
        "continue",
        "'continue' setting",
        "true or false",
        id="rule continue 1",
    ),
    pytest.param(
        "- rule: R\n  dry_run: 'True'\n" + OK_ACTION,
        2,
        12,
        "R",
        "",
        "dry_run",
        "'dry_run' setting can be 'true' or 'false' only",
        'exactly "true"',
        id="rule dry_run quoted True",
    ),
    pytest.param("- rule: R\n", 1, 3, "R", "", "actions", "no action specified", "actions:", id="no actions"),
    pytest.param(
        "- rule: R\n  actions:\n    - actionner: test:label\n      parameters: {labels: {k: v}}\n",
        3,
        7,
        "R",
        "",
        "actions[0].action",
        "action without a name",
        "action: <name>",
        id="action without a name",
    ),
    pytest.param(
        "- rule: R\n  actions:\n    - action: nowhere\n",
        3,
        7,
        "R",
        "nowhere",
        "actionner",
        "missing actionner",
        "no action block is named 'nowhere'",
        id="missing actionner",
    ),
    pytest.param(
        "- rule: R\n  actions:\n    - action: a\n      actionner: Test-Label\n",
        4,
        18,
        "R",
        "a",
        "actionner",
        "incorrect actionner 'Test-Label'",
        "<category>:<name>",
        id="incorrect actionner",
    ),
    pytest.param(
        "- rule: R\n  actions:\n    - action: a\n      actionner: test:stop\n      continue: 'yes'\n",
        5,
        17,
        "R",
        "a",
        "continue",
        "'continue' setting",
        "",
        id="action continue",
    ),
    pytest.param(
        "- rule: R\n  actions:\n    - action: a\n      actionner: test:stop\n      ignore_errors: on\n",
        5,
        22,
        "R",
        "a",
        "ignore_errors",
        "'ignore_errors' setting can be 'true' or 'false' only",
        "",
        id="action ignore_errors",
    ),
    pytest.param(
        "- rule: R\n  actions:\n    - action: a\n      actionner: test:dump\n"
        "      output:\n        target: local:file\n",
        6,
        17,
        "R",
        "a",
        "output.parameters",
        "missing 'parameters' for the output",
        "parameters:",
        id="output without parameters",
    ),
    pytest.param(
        "- rule: R\n  match:\n    priority: '>=Info'\n" + OK_ACTION,
        3,
        15,
        "R",
        "",
        "match.priority",
        "incorrect priority '>=Info'",
        "Informational",
        id="priority Info",
    ),
    pytest.param(
        "- rule: R\n  match:\n    priority: Urgent\n" + OK_ACTION,
        3,
        15,
        "R",
        "",
        "match.priority",
        "incorrect priority 'Urgent'",
        "Emergency",
        id="priority unknown",
    ),
    pytest.param(
        "- rule: R\n  match:\n    tags: [ok, 'a, container-drift']\n" + OK_ACTION,
        3,
        16,
        "R",
        "",
        "match.tags[1]",
        "incorrect tag 'container-drift'",
        "letters, digits",
        id="tag with a dash",
    ),
    pytest.param(
        '- rule: R\n  match:\n    priority: "Warning\\n"\n' + OK_ACTION,
        3,
        15,
        "R",
        "",
        "match.priority",
        "incorrect priority",
        "",
        id="priority with a trailing newline",
    ),
    pytest.param(
        "- rule: R\n  match:\n    tags: [mitre_]\n" + OK_ACTION,
        3,
        12,
        "R",
        "",
        "match.tags[0]",
        "incorrect tag 'mitre_'",
        "",
        id="tag ending with _",
    ),
    pytest.param(
        "- rule: R\n  match:\n    output_fields:\n      - k8s.ns.name = x\n" + OK_ACTION,
        4,
        9,
        "R",
        "",
        "match.output_fields[0]",
        "incorrect output field key 'k8s.ns.name = x'",
        "no spaces",
        id="output field with spaces",
    ),
    pytest.param(
        "- rule: R\n  match:\n    output_fields:\n      - a=1, k8s-ns=2\n" + OK_ACTION,
        4,
        9,
        "R",
        "",
        "match.output_fields[0]",
        "incorrect output field key 'k8s-ns=2'",
        "",
        id="output field with a dash",
    ),
    # §2.5 semantics
    pytest.param(
        "- rule: R\n  actions:\n    - action: a\n      actionner: test:labl\n",
        4,
        18,
        "R",
        "a",
        "actionner",
        "unknown actionner 'test:labl'",
        "did you mean test:label?",
        id="unknown actionner",
    ),
    pytest.param(
        "- rule: R\n  actions:\n    - action: a\n      actionner: test:label\n      parameters:\n"
        "        labels:\n          suspicious: true\n",
        7,
        23,
        "R",
        "a",
        "parameters.labels[suspicious]",
        "expected a string",
        '"true"',
        id="label value not a string",
    ),
    pytest.param(
        "- rule: R\n  actions:\n    - action: a\n      actionner: test:stop\n      parameters:\n"
        "        grace_period_seconds: '5'\n",
        6,
        31,
        "R",
        "a",
        "parameters.grace_period_seconds",
        "expected an integer",
        "without quotes",
        id="int given as a string",
    ),
    pytest.param(
        "- rule: R\n  actions:\n    - action: a\n      actionner: test:label\n",
        3,
        7,
        "R",
        "a",
        "parameters.labels",
        "is required",
        "labels",
        id="required parameter missing",
    ),
    pytest.param(
        "- rule: R\n  actions:\n    - action: a\n      actionner: test:dump\n",
        3,
        7,
        "R",
        "a",
        "output",
        "an output is required",
        "local:file",
        id="output required",
    ),
    pytest.param(
        "- rule: R\n  actions:\n    - action: a\n      actionner: test:dump\n"
        "      output:\n        target: tests:missing\n"
        "        parameters: {destination: /tmp}\n",
        6,
        17,
        "R",
        "a",
        "output.target",
        "unknown target 'tests:missing'",
        "local:file",
        id="unknown target",
    ),
    pytest.param(
        "- rule: R\n  actions:\n    - action: a\n      actionner: test:log\n      output:\n        target: local:file\n"
        "        parameters: {destination: 3}\n",
        7,
        35,
        "R",
        "a",
        "output.parameters.destination",
        "expected a string",
        '"3"',
        id="output parameter",
    ),
]


@pytest.mark.parametrize(("text", "line", "col", "rule", "action", "field", "message", "hint"), CASES)
def test_each_problem_names_its_place(
    tmp_path: Path, text: str, line: int, col: int, rule: str, action: str, field: str, message: str, hint: str
) -> None:
    p = one_problem(tmp_path, text)
    assert (p.where.file, p.where.line, p.where.column) == (str(tmp_path / "rules.yaml"), line, col), str(p)
    assert (p.rule, p.action, p.field) == (rule, action, field), str(p)
    assert message in p.message, str(p)
    assert hint in p.hint, str(p)


def test_a_problem_in_a_block_points_at_the_block(tmp_path: Path) -> None:
    block = write(tmp_path, "- action: a\n  actionner: test:label\n  parameters:\n    labels: {k: 1}\n", "blocks.yaml")
    rules = write(tmp_path, "- rule: R\n  actions:\n    - action: a\n")
    [p] = check_rules([rules, block], REGISTRY).problems
    assert (p.where.file, p.where.line, p.rule, p.action, p.field) == (block, 4, "R", "a", "parameters.labels[k]")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    [p] = check_rules([str(tmp_path / "nope.yaml")], REGISTRY).problems
    assert p.where.file == str(tmp_path / "nope.yaml")
    assert "cannot read" in p.message


def test_no_file_is_a_problem() -> None:
    [p] = check_rules([], REGISTRY).problems
    assert p.message == "no rule file is provided"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = """\
- rule: R1
  continue: yes
  match:
    priority: ">=Info"
    tags: ["a-b"]
    output_fields: ["x = 1"]
  actions:
    - action: a
      actionner: test:nope
    - action: b
      actionner: test:label
      ignore_errors: maybe
      parameters: {labels: {k: true}}
- rule: R2
- rule: R3
  dry_run: nope
  actions:
    - action: c
"""
    found = problems(tmp_path, text)
    assert [(p.where.line, p.rule, p.action, p.field) for p in found] == [
        (2, "R1", "", "continue"),
        (12, "R1", "b", "ignore_errors"),
        (4, "R1", "", "match.priority"),
        (5, "R1", "", "match.tags[0]"),
        (6, "R1", "", "match.output_fields[0]"),
        (9, "R1", "a", "actionner"),
        (13, "R1", "b", "parameters.labels[k]"),
        (14, "R2", "", "actions"),
        (16, "R3", "", "dry_run"),
        (18, "R3", "c", "actionner"),
    ]
    with pytest.raises(RulesError) as e:
        load_ruleset([str(tmp_path / "rules.yaml")], REGISTRY)
    assert e.value.problems == found


def test_a_bad_file_changes_nothing(tmp_path: Path) -> None:
    good = write(tmp_path, "- rule: R\n" + OK_ACTION, "good.yaml")
    before = load_ruleset([good], REGISTRY)
    bad = write(tmp_path, "- rule: R\n  continue: maybe\n", "bad.yaml")
    with pytest.raises(RulesError):
        load_ruleset([good, bad], REGISTRY)
    assert load_ruleset([good], REGISTRY) == before
    assert before.rules[0].actions[0].parameters == {"labels": {"k": "v"}, "level": "pod"}


# --- accepted: Talon's quirks kept and our fixes ------------------------------------------------------

ACCEPTED = [
    pytest.param("  continue: TRUE\n  dry_run: False\n", id="FIX YAML booleans in any case"),
    pytest.param("  continue: 'false'\n  dry_run: \"true\"\n", id="quoted true and false"),
    pytest.param("  match:\n    priority: '>='\n", id="an operator alone"),
    pytest.param("  match:\n    priority: ''\n", id="an empty priority"),
    pytest.param("  match:\n    priority: '<=informational'\n", id="priority in any case"),
    pytest.param("  match:\n    output_fields: ['proc.aname[2]=sh, proc.env[MY_VAR]=x']\n", id="FIX _ and [...]"),
    pytest.param("  match:\n    output_fields: ['proc.cmdline=a=b']\n", id="FIX a value with ="),
    pytest.param("  match:\n    output_fields: ['k8s.ns.name=']\n", id="an empty value"),
    pytest.param("  match:\n    tags: ['a, b_c.d', 'T1']\n", id="tags"),
    pytest.param("  match:\n    source: k8s_audit\n", id="source"),
]


@pytest.mark.parametrize("extra", ACCEPTED)
def test_accepted(tmp_path: Path, extra: str) -> None:
    report = check_rules([write(tmp_path, "- rule: R\n" + extra + OK_ACTION)], REGISTRY)
    assert report.problems == (), "\n".join(map(str, report.problems))


# --- warnings never make rules invalid ----------------------------------------------------------------


def test_warnings(tmp_path: Path) -> None:
    text = """\
- action: unused
  actionner: test:label
- rule: R
  notifiers: [slak, slack]
  paramaters: {}
  actions:
    - action: a
      actionner: test:stop
      contexts: [aws]
      additional_contexts: [k8snode, gcp]
      parameters: {gracePeriods: 3}
    - action: b
      actionner: test:label
      parameters: {labels: {k: v}}
      output: {target: local:file, parameters: {destination: /tmp}}
- neither: rule nor action
"""
    ruleset, warnings = load_ruleset_with_warnings([write(tmp_path, text)], REGISTRY)
    got = {(w.where.line, w.field or w.action): w for w in warnings}
    assert got[(9, "contexts")].hint == "did you mean additional_contexts?"
    assert "unknown parameter 'gracePeriods'" in got[(11, "parameters.gracePeriods")].message
    assert "unknown context 'gcp'" in got[(10, "additional_contexts")].message
    assert "unknown notifier 'slak'" in got[(4, "notifiers")].message
    assert "unknown key 'paramaters'" in got[(5, "paramaters")].message
    assert "not used by any rule" in got[(1, "unused")].message
    assert "output is ignored" in got[(15, "output")].message
    assert "neither" in got[(16, "")].message
    assert ruleset.rules[0].actions[1].output is None  # ignored at run time: not in the plan


# --- the model ----------------------------------------------------------------------------------------


def test_model(tmp_path: Path) -> None:
    text = """\
- action: stop
  actionner: test:stop
  parameters: {allow: [a]}
- rule: R
  description: d
  notifiers: [slack]
  match:
    rules: [Shell]
    priority: ">=warning"
    tags: ["a, b, a", c]
    output_fields: ['k8s.ns.name!=kube-system, proc.cmdline="x=1"', 'fd.sport=80']
    source: syscall
  actions:
    - action: stop
      parameters: {Grace_Period_Seconds: 5, allow: [b]}
    - action: stop again
      actionner: test:stop
      continue: "true"
      ignore_errors: True
    - action: dump
      actionner: test:dump
      output: {target: local:file, parameters: {destination: /tmp}}
- rule: S
  continue: false
  dry_run: TRUE
  actions: [{action: stop}]
"""
    path = write(tmp_path, text)
    rs = load_ruleset([path], REGISTRY)
    assert rs.files == (path,)
    r, s = rs.rules
    assert (r.name, r.description, r.continue_, r.dry_run, r.notifiers) == ("R", "d", True, False, ("slack",))
    assert (r.where.line, r.where.column) == (4, 3)
    assert r.match.rules == ("Shell",)
    assert r.match.priority == Priority(">=", 4, ">=warning")
    assert r.match.tags == (frozenset({"a", "b"}), frozenset({"c"}))
    assert r.match.output_fields == (
        (FieldCondition("k8s.ns.name", "!=", "kube-system"), FieldCondition("proc.cmdline", "=", "x=1")),
        (FieldCondition("fd.sport", "=", "80"),),
    )
    assert r.match.source == "syscall"
    a, b, c = r.actions
    assert (a.name, a.actionner, a.continue_, a.ignore_errors, a.output) == ("stop", "test:stop", False, False, None)
    assert a.parameters == {"grace_period_seconds": 5, "allow": ["a", "b"]}
    assert (a.where.line, b.where.line) == (14, 16)
    assert (b.continue_, b.ignore_errors, b.parameters) == (True, True, {"grace_period_seconds": 0, "allow": []})
    assert c.output is not None
    assert (c.output.target, dict(c.output.parameters)) == ("local:file", {"destination": "/tmp"})
    assert (s.continue_, s.dry_run, s.match.priority) == (False, True, Priority("", 0, ""))


def test_parameters_are_json(tmp_path: Path) -> None:
    rs = load_ruleset([write(tmp_path, "- rule: R\n" + OK_ACTION)], REGISTRY)
    params: Mapping[str, Any] = rs.rules[0].actions[0].parameters
    assert params == {"labels": {"k": "v"}, "level": "pod"}


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    text = """\
- action: a
  actionner: test:label
  parameters: &common {labels: {k: v}}
- rule: R
  actions:
    - action: b
      actionner: test:label
      parameters:
        <<: *common
        level: node
"""
    rs = load_ruleset([write(tmp_path, text)], REGISTRY)
    assert rs.rules[0].actions[0].parameters == {"labels": {"k": "v"}, "level": "node"}


def test_conditions_split_on_the_first_operator(tmp_path: Path) -> None:
    text = "- rule: R\n  match:\n    output_fields: ['a=b!c, d!=e=f, proc.aname[2]=']\n" + OK_ACTION
    [rule] = load_ruleset([write(tmp_path, text)], REGISTRY).rules
    assert rule.match.output_fields == (
        (FieldCondition("a", "=", "b!c"), FieldCondition("d", "!=", "e=f"), FieldCondition("proc.aname[2]", "=", "")),
    )


def test_keys_on_the_wrong_kind_of_item_are_warned_about(tmp_path: Path) -> None:
    text = """\
- action: X
  actionner: test:label
  parameters: {labels: {a: b}}
  match: {rules: [a]}
- rule: Y
  ignore_errors: true
  actions: [{action: X}]
"""
    _, warnings = load_ruleset_with_warnings([write(tmp_path, text)], REGISTRY)
    assert [(w.where.line, w.rule, w.action, w.field, w.hint) for w in warnings] == [
        (4, "", "X", "match", "did you mean 'rule: X'?"),
        (6, "Y", "", "ignore_errors", "put it on an action under 'actions:'"),
    ]


def test_an_action_this_version_cannot_run_is_warned_about_unless_dry_run(tmp_path: Path) -> None:
    text = """\
- rule: R
  match: {rules: [a]}
  actions:
    - action: Stop it
      actionner: test:stop
- rule: Rehearsal
  dry_run: true
  match: {rules: [a]}
  actions:
    - action: Stop it
      actionner: test:stop
"""
    rs, warnings = load_ruleset_with_warnings([write(tmp_path, text)], REGISTRY)
    assert len(rs.rules) == 2
    [w] = warnings
    assert (w.where.line, w.rule, w.action, w.field) == (4, "R", "Stop it", "actionner")
    assert "test:stop cannot run in this version" in w.message
    assert "dry_run: true" in w.hint


@pytest.mark.parametrize("target", ["abc", "[abc, 1]", "[{a: b}, c]"])
def test_a_merge_key_on_something_else_than_mappings_is_a_problem_not_a_crash(tmp_path: Path, target: str) -> None:
    text = f"- rule: R\n  <<: {target}\n  match: {{rules: [a]}}\n" + OK_ACTION
    found = problems(tmp_path, text)
    assert [(p.where.line, p.message) for p in found][:1] == [(2, "a merge key '<<' must refer to a mapping")]
