"""A rules file read item by item (each item decoded as soon as it is composed, `yaml_positions.Items`) gives
exactly what reading it whole gives: the same items, problems (places, messages, order), warnings and outcome,
on the sample and example rules and on thousands of damaged copies of them (truncated, lines dropped, doubled or
re-indented, other documents, stray items and tabs)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from talon_opa.core.errors import RulesError
from talon_opa.translator import load, yaml_positions
from tests.harness.paths import REPO, SEED_RULES

_DAMAGE = ("- 3\n", "-\n", "---\n- rule: other\n", "  bad: [\n", "\tx: 1\n", "- rule: a\n  rule: b\n", "...\n")


# shapes the sample files lack: flow lists, tags, empty and other documents, roots that are not lists
_SHAPES = (
    "",
    "# only a comment\n",
    "---\n",
    "---\n---\n- rule: a\n",
    "[{rule: a, match: {rules: [x]}, actions: [{action: b, actionner: kubernetes:terminate}]}, {action: c}]\n",
    "--- !!seq\n- !!map {rule: a}\n- !!str 3\n- rule: !!str 4\n  actions: []\n",
    "%YAML 1.2\n---\n- rule: a\n...\n---\n- rule: b\n",
    "rule: a\n",
    "just text\n",
    "- rule: a\n  notifiers: [slack, slack]\n- rule: a\n- \n- 3\n- [x]\n",
    # merge keys without anchors, keys that are not strings, explicit tags, nesting past the limit
    "- rule: a\n  <<: {match: {rules: [x]}, rule: b}\n  actions: [{action: b}]\n"
    "- <<: [{rule: c}, 3]\n  description: d\n",
    "- {[a]: b, rule: c}\n- rule: d\n  ? {x: 1}\n  : y\n- rule: e\n  !!merge x: {description: y}\n",
    "- rule: !!int 3\n  description: !!float x\n  dry_run: !!bool true\n  continue: !!null ~\n  notifiers: !!str [a]\n",
    "- rule: a\n  description: " + "[" * 102 + "]" * 102 + "\n"
    "- rule: b\n  match: " + "{a: " * 101 + "1" + "}" * 101 + "\n",
    "- rule: 'a'\n  description: \"b\"\n  notifiers: |\n    x\n  continue: >\n    false\n"
    "- rule: a\n  rule: b\n  x: [[\n",
)


def corpus() -> list[str]:
    files = [SEED_RULES, *sorted((REPO / "examples").glob("**/*.yaml"))]
    texts = [f.read_text() for f in files if "config" not in f.name]
    assert len(texts) >= 5
    return texts + list(_SHAPES)


def damaged(text: str, rnd: random.Random) -> str:
    lines = text.splitlines(keepends=True) or [""]
    i = rnd.randrange(len(lines))
    how = rnd.randrange(5)
    if how == 0:
        return text[: rnd.randrange(len(text) + 1)]
    if how == 1:
        return "".join(lines[:i] + lines[i + 1 :])
    if how == 2:
        return "".join(lines[: i + 1] + lines[i:])
    if how == 3:
        return "".join([*lines[:i], "  " + lines[i], *lines[i + 1 :]])
    return "".join([*lines[:i], rnd.choice(_DAMAGE), *lines[i:]])


def both_ways(texts: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """repr of the Loaded of `texts` (as files a.yaml, b.yaml...; a text twice: a file given twice), item by
    item and whole (a Value compares by identity; its repr has every field)."""
    results = []
    for streamed in (True, False):
        with monkeypatch.context() as m:
            if not streamed:
                m.setattr(yaml_positions.Items, "streamable", staticmethod(lambda text: False))
            out = load.Loaded()
            for i, text in enumerate(texts):
                load.load_text(text, f"{'ab'[i % 2]}.yaml", out)
            results.append(repr(out))
    return results[0], results[1]


def goes_by_item(text: str) -> bool:
    try:
        return yaml_positions.Items.streamable(text) and yaml_positions.Items.open(text, "c.yaml") is not None
    except RulesError:
        return False


def test_item_by_item_reads_what_a_whole_read_does(monkeypatch: pytest.MonkeyPatch) -> None:
    rnd = random.Random(20261203)
    streamed = failed = 0
    for text in corpus():
        for k in range(300):
            copy = damaged(text, rnd) if k else text
            if rnd.random() < 0.2:
                copy = damaged(copy, rnd)
            files = [copy, damaged(text, rnd), copy] if rnd.random() < 0.1 else [copy]
            by_item, whole = both_ways(files, monkeypatch)
            assert by_item == whole, copy
            streamed += goes_by_item(copy)
            failed += "fatal=True" in whole
    assert streamed > 1000  # most copies went item by item
    assert failed > 300  # and many were not YAML or not decodable


def test_the_items_of_a_damaged_file_report_nothing_before_it_is_decoded_whole(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    valid = SEED_RULES.read_text()
    rules.write_text(valid + "- rule: late\n  rule: again\n")
    out = load.load_files([rules])
    assert out.fatal
    assert not out.items
    last = valid.count("\n") + 1
    assert [(p.where.line, p.message) for p in out.problems] == [
        (last + 1, f"mapping key 'rule' already defined at line {last}")
    ]
