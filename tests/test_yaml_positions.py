"""The positioned YAML layer: yaml.v3's scalar resolution (what Talon sees) and every value's place."""

from __future__ import annotations

import math
from typing import Any

import pytest

from talon_opa.core.errors import RulesError, Where
from talon_opa.translator import yaml_positions
from talon_opa.translator.yaml_positions import Value


def decode(text: str) -> tuple[Value | None, list[tuple[Where, str, str]]]:
    problems: list[tuple[Where, str, str]] = []
    docs = yaml_positions.compose(text, "f.yaml")
    value = yaml_positions.Decoder("f.yaml", lambda *p: problems.append(p)).value(docs[0])
    return value, problems


@pytest.mark.parametrize(
    ("text", "kind", "data"),
    [
        ("yes", "str", "yes"),  # YAML 1.2 core schema: not a boolean
        ("TRUE", "bool", True),
        ("~", "null", None),
        ("0755", "int", 0o755),  # Go's base-0 parsing
        ("0x1F", "int", 31),
        ("1_000", "int", 1000),
        ("1e3", "float", 1000.0),
        ("-.inf", "float", -math.inf),
        ("'3'", "str", "3"),
        ("!!str 3", "str", "3"),
        ("!!float 1", "float", 1.0),
        ("1.2.3", "str", "1.2.3"),
    ],
)
def test_scalars_resolve_like_yaml_v3(text: str, kind: str, data: Any) -> None:
    value, problems = decode(text)
    assert value is not None
    assert not problems
    assert (value.kind, value.data) == (kind, data)


def test_values_remember_where_they_and_their_keys_were_written() -> None:
    value, _ = decode("base: &b {x: 1}\nm:\n  <<: *b\n  y: [a, 2]\n")
    assert value is not None
    m = value.data["m"]
    assert m.where == Where("f.yaml", 3, 3)
    assert m.key_where == Where("f.yaml", 2, 1)
    assert m.plain() == {"y": ["a", 2], "x": 1}
    assert m.data["y"].data[1].where == Where("f.yaml", 4, 10)
    assert m.data["x"].text == "1"


def test_problems_are_reported_with_their_place() -> None:
    value, problems = decode("a: 1\na: 2\n")
    assert value is None
    assert problems == [(Where("f.yaml", 2, 1), "mapping key 'a' already defined at line 1", "write 'a' only once")]


def test_text_that_is_not_yaml_is_one_problem_with_its_place() -> None:
    with pytest.raises(RulesError) as e:
        yaml_positions.compose("- rule: [\n", "f.yaml")
    [problem] = e.value.problems
    assert problem.where == Where("f.yaml", 2, 1)
    assert problem.message.startswith("wrong YAML syntax")


@pytest.mark.parametrize(
    "text",
    [
        "- a: 1\n  b: [x, y]\n- c: {d: 2}\n",
        "- &base {a: 1}\n- <<: *base\n  b: 2\n- *base\n",  # aliases share nodes between items
    ],
)
def test_consuming_the_root_decodes_as_value_does(text: str) -> None:
    (first,) = yaml_positions.compose(text, "f.yaml")
    (again,) = yaml_positions.compose(text, "f.yaml")
    found: list[tuple[Where, str, str]] = []
    consumed = yaml_positions.Decoder("f.yaml", lambda w, m, h: found.append((w, m, h))).consume(first, text)
    expected = yaml_positions.Decoder("f.yaml", lambda w, m, h: None).value(again)
    assert consumed is not None
    assert expected is not None
    assert consumed.plain() == expected.plain()
    assert [v.where for v in consumed.data] == [v.where for v in expected.data]
    assert not found


@pytest.mark.parametrize("text", ["- &a [*a]\n", "&root\n- a\n- *root\n"])  # the second: the root itself
def test_consuming_a_recursive_alias_reports_it(text: str) -> None:
    (node,) = yaml_positions.compose(text, "f.yaml")
    found: list[str] = []
    assert yaml_positions.Decoder("f.yaml", lambda w, m, h: found.append(m)).consume(node, text) is None
    assert any("too deep" in m for m in found)
