"""Rules translated to data (beyond `rego.MODULES_UP_TO` rules) decide exactly as rules translated to modules.

The same rules set is built both ways and served by two real OPAs; every alert gets the same plan from both:
every sample alert on the sample and example rules, and thousands of generated alerts over generated rules
sets (every match criterion: rule names, priorities with each comparison, tag groups, output field
conditions with = and !=, sources; Unicode and invalid strings), native Rego rules beside them included.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from talon_opa.catalog import default_registry
from talon_opa.cli import main as cli
from talon_opa.core.events import Alert
from talon_opa.opa.client import Endpoint, OpaClient
from talon_opa.opa.process import OpaProcess
from talon_opa.translator import rego
from talon_opa.translator.bundle import build_bundle
from talon_opa.translator.model import OutputRef, RuleSet
from talon_opa.translator.rules import load_ruleset
from tests.harness.paths import REPO, SEED_RULES
from tests.rego_support import POLICIES, action, rule
from tests.test_prefilter import generated_alert, generated_ruleset, sample_alerts

_BUNDLES = itertools.count()
NATIVE = """\
package talon.rules.native_watch

position := 2

match if input.output_fields_str["k8s.ns.name"] == "vault"

actions := [{"action": "Watch", "actionner": "kubernetes:label", "parameters": {"labels": {"watched": "yes"}}}]
"""


@asynccontextmanager
async def opa_for(tmp_path: Path, ruleset: RuleSet, as_data: bool, native: Sequence[Path]) -> AsyncIterator[OpaClient]:
    out = tmp_path / f"bundle-{next(_BUNDLES)}"
    files = rego.generate(ruleset, as_data=as_data)
    assert any(p.startswith(rego.RULES_DIR) for p in files) != as_data or not ruleset.rules
    build_bundle(files, out, library=POLICIES, native=native, check=False)
    opa = OpaProcess(bundle=out, unix_socket=True, token="t0ken")
    await opa.start()
    ep = Endpoint.open(opa.base_url, opa.connector(), opa.headers())
    try:
        yield OpaClient(lambda: ep)
    finally:
        await ep.close()
        await opa.stop()


async def same_plans(
    tmp_path: Path, ruleset: RuleSet, alerts: Sequence[Alert], native: Sequence[Path] = ()
) -> tuple[int, int]:
    """Both forms' plans for every alert are equal; (alerts, alerts some rule matched)."""
    matched = 0
    async with (
        opa_for(tmp_path, ruleset, False, native) as modules,
        opa_for(tmp_path, ruleset, True, native) as data,
    ):
        for start in range(0, len(alerts), 200):
            inputs = [a.opa_input() for a in alerts[start : start + 200]]
            by_modules = await modules.decide_batch_once(inputs)
            by_data = await data.decide_batch_once(inputs)
            for doc, a, b in zip(inputs, by_modules, by_data, strict=True):
                assert not isinstance(a, Exception), a
                assert not isinstance(b, Exception), b
                assert (b.matched_rules, b.steps) == (a.matched_rules, a.steps), doc
                matched += bool(a.matched_rules)
    return len(alerts), matched


async def test_sample_alerts_on_the_sample_and_example_rules(tmp_path: Path) -> None:
    registry = default_registry()
    alerts = sample_alerts()
    native = tmp_path / "native.rego"
    native.write_text(NATIVE)
    examples = sorted((REPO / "examples").glob("**/*rules.yaml"))
    assert len(examples) >= 4
    for rules in (SEED_RULES, *examples):
        total, matched = await same_plans(tmp_path, load_ruleset([rules], registry), alerts, [native])
        assert 0 < matched < total, rules


async def test_generated_alerts_on_generated_rule_sets(tmp_path: Path) -> None:
    rnd = random.Random(20261204)
    total = matched = 0
    for _ in range(16):
        ruleset = generated_ruleset(rnd)
        n, m = await same_plans(tmp_path, ruleset, [generated_alert(rnd) for _ in range(400)])
        total, matched = total + n, matched + m
    print(f"{total} alerts, {matched} matched some rule")
    assert total == 6400
    assert matched > 500  # enough alerts match for the comparison to mean something


# steps that rules share, differ in one field each (1, 1.0 and true included), or sit at the defaults
_STEPS = (
    action("label", parameters={"n": 1}),
    action("label", parameters={"n": 1.0}),
    action("label", parameters={"n": True}),
    dataclasses.replace(action("empty", "kubernetes:terminate"), parameters={}),
    action("stop", "kubernetes:terminate", {"grace_period_seconds": 0}, continue_=False),
    action("tolerant", "kubernetes:log", {"tail_lines": 5}, ignore_errors=True),
    action("stored", "kubernetes:log", {"tail_lines": 5}, output=OutputRef("local:file", {"destination": "/tmp"})),
)


def varied_plans(ruleset: RuleSet, rnd: random.Random) -> RuleSet:
    """The rules with random plan fields: continue, dry_run, notifiers and steps drawn from `_STEPS`."""
    return RuleSet(
        tuple(
            dataclasses.replace(
                r,
                continue_=rnd.random() < 0.7,
                dry_run=rnd.random() < 0.3,
                notifiers=rnd.choice(((), ("slack",), ("slack", "webhook"))),
                actions=tuple(rnd.choice(_STEPS) for _ in range(rnd.randint(1, 4))),
            )
            for r in ruleset.rules
        )
    )


async def test_generated_plans_on_generated_rule_sets(tmp_path: Path) -> None:
    """Every plan field a rule as data leaves out or shares (a step table, defaults) comes back as the module's."""
    rnd = random.Random(20261205)
    total = matched = 0
    for _ in range(8):
        ruleset = varied_plans(generated_ruleset(rnd), rnd)
        n, m = await same_plans(tmp_path, ruleset, [generated_alert(rnd) for _ in range(200)])
        total, matched = total + n, matched + m
    assert matched > 200


def test_rules_as_data_store_each_distinct_step_once() -> None:
    ruleset = RuleSet(tuple(rule(f"R{i}", actions=[_STEPS[i % 3], _STEPS[3], _STEPS[6]]) for i in range(30)))
    index = json.loads(rego.generate(ruleset, as_data=True)[rego.INDEX_PATH])
    assert index["steps"] == [
        {"action": "label", "actionner": "kubernetes:label", "parameters": {"n": 1}},
        {"action": "empty", "actionner": "kubernetes:terminate"},
        {
            "action": "stored",
            "actionner": "kubernetes:log",
            "output": {"parameters": {"destination": "/tmp"}, "target": "local:file"},
            "parameters": {"tail_lines": 5},
        },
        {"action": "label", "actionner": "kubernetes:label", "parameters": {"n": 1.0}},
        {"action": "label", "actionner": "kubernetes:label", "parameters": {"n": True}},
    ]
    assert [index["rules"][f"r{i}"]["steps"] for i in range(3)] == [[0, 1, 2], [3, 1, 2], [4, 1, 2]]


def test_the_form_follows_the_rule_count() -> None:
    ruleset = load_ruleset([SEED_RULES], default_registry())
    assert any(p.startswith(rego.RULES_DIR) for p in rego.generate(ruleset))
    many = RuleSet(ruleset.rules * (rego.MODULES_UP_TO // len(ruleset.rules) + 1))
    assert len(many.rules) > rego.MODULES_UP_TO
    assert not any(p.startswith(rego.RULES_DIR) for p in rego.generate(many))


def test_rules_translate_forces_either_form(tmp_path: Path) -> None:
    for form, modules in (("data", False), ("modules", True), ("auto", True)):
        out = tmp_path / form
        assert cli.main(["rules", "translate", "-r", str(SEED_RULES), "-o", str(out), "--form", form]) == 0
        assert (out / rego.RULES_DIR).is_dir() == modules, form
        index = json.loads((out / rego.INDEX_PATH).read_text())
        assert all(("match" in entry) != modules for entry in index["rules"].values()), form
