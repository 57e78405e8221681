"""Pure functions of the Rego generator: slugs, index keys, match text, native registration."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from talon_opa.core import binaries
from talon_opa.core.errors import TalonError
from talon_opa.translator.bundle import build_bundle
from talon_opa.translator.model import Match, RuleSet
from talon_opa.translator.rego import (
    HEADER,
    INDEX_PATH,
    NATIVE_PATH,
    assign_slugs,
    generate,
    index_keys,
    match_rules,
    native_index,
    slugify,
)
from tests.rego_support import action, fields, priority, rule, tags


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Shell in a container", "shell_in_a_container"),
        ("  Crypto -- mining!! ", "crypto_mining"),
        ("Écriture sensible", "ecriture_sensible"),
        ("1st rule", "rule_1st_rule"),
        ("", "rule"),
        ("!!!", "rule"),
        ("if", "if_rule"),
        ("x" * 100, "x" * 64),
    ],
)
def test_slugify(name: str, slug: str) -> None:
    assert slugify(name) == slug


def test_slugs_are_unique_in_order() -> None:
    assert assign_slugs(["A b", "a-b", "A_B", "c"]) == ["a_b", "a_b_2", "a_b_3", "c"]


def test_index_keys_prefer_rules_then_the_rarest_tag_then_always() -> None:
    assert index_keys(Match(rules=("A", "B", "A"), tags=tags("x"))) == ("rule", ["A", "B"])
    assert index_keys(Match(tags=tags("container, T1059", "k8s")), {"container": 50, "T1059": 2}) == (
        "tag",
        ["T1059", "k8s"],
    )
    assert index_keys(Match(tags=tags("a", ""))) is None  # an empty group matches everything
    assert index_keys(Match(priority=priority(">=Warning"), source="syscall")) is None


def test_match_text_for_each_criterion() -> None:
    text = match_rules(Match(rules=("A",), priority=priority("<=Notice"), output_fields=fields("k=v, k2!=w")))
    assert text == (
        'match if {\n\tinput.rule == "A"\n\tinput.priority_rank <= 3 # <=Notice\n'
        '\tinput.output_fields_str.k == "v"\n\tnot input.output_fields_str.k2 == "w"\n}\n'
    )
    assert match_rules(Match()) == "# an empty match accepts every alert\nmatch := true\n"
    assert match_rules(Match(priority=priority(">="))) == "# an empty match accepts every alert\nmatch := true\n"


def test_generate_writes_one_module_per_rule_and_the_index() -> None:
    files = generate(RuleSet((rule("A", Match(rules=("X",))), rule("B"), rule("C", Match(tags=tags("t"))))))
    assert sorted(files) == [INDEX_PATH, "talon/rules/a.rego", "talon/rules/b.rego", "talon/rules/c.rego"]
    assert all(files[p].startswith(HEADER + "\n\n# METADATA\n") for p in files if p.endswith(".rego"))
    assert "#   position: 2\n" in files["talon/rules/b.rego"]
    index = json.loads(files[INDEX_PATH])
    assert (index["by_rule"], index["by_tag"], index["always"]) == ({"X": ["a"]}, {"t": ["c"]}, ["b"])
    assert [index["rules"][s]["key"] for s in "abc"] == [[1, 0, "a"], [2, 0, "b"], [3, 0, "c"]]


def test_non_finite_parameters_are_rejected() -> None:
    with pytest.raises(TalonError):
        generate(RuleSet((rule("A", actions=[action(parameters={"x": float("inf")})]),)))


def test_native_index_registers_packages_and_rejects_clashes() -> None:
    sources = [
        "# METADATA\npackage talon.rules.blocker\n\nmatch if true\n",
        "package talon.rules.blocker_test\n",
        "package talon.lib.mine\n",
        "package   talon.rules.other # comment\n",
    ]
    assert json.loads(native_index(sources)[NATIVE_PATH]) == {"blocker": True, "other": True}
    assert native_index(["package talon.lib.x\n"]) == {}
    generated = generate(RuleSet((rule("Blocker"),)))
    with pytest.raises(TalonError, match=r"talon\.rules\.blocker"):
        native_index(sources, generated)


def test_a_rule_named_beyond_the_bmp_passes_opa_and_keeps_its_name(tmp_path: Path) -> None:
    """An emoji in a rule's name is written as YAML's \\U escape in the METADATA title (OPA's YAML parser
    refuses JSON's surrogate pairs), and OPA reads the title back as the name."""
    out = tmp_path / "bundle"
    build_bundle(generate(RuleSet((rule("Shell 😀 \\ud83d"),))), out, check=True)
    found = subprocess.run(
        [binaries.find("opa"), "inspect", "--annotations", "--format", "json", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    titles = [a["annotations"].get("title") for a in json.loads(found.stdout)["annotations"]]
    assert 'Talon rule "Shell 😀 \\ud83d"' in titles
