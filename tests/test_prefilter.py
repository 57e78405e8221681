"""The candidate-index prefilter and the lean input against a real OPA: whenever the prefilter says an alert
matches no rule, OPA's plan for that alert is the empty plan, and the lean input gets the same plan as the
whole input; checked for every sample alert on the sample and example rules, and for
thousands of generated alerts over generated rule sets (rule names, tags, priorities, sources, output
fields, Unicode and invalid strings). It must also decide most non-matching alerts, and none with native Rego.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talon_opa.catalog import default_registry
from talon_opa.core import config
from talon_opa.core.events import LEAN_FIELDS, Alert, decode_alert
from talon_opa.opa.client import Endpoint, OpaClient
from talon_opa.opa.prefilter import Prefilter
from talon_opa.opa.process import OpaProcess
from talon_opa.translator.bundle import CAPS_DATA_FILE, build_bundle
from talon_opa.translator.model import FieldCondition, Match, RuleSet
from talon_opa.translator.rego import generate
from talon_opa.translator.rules import load_ruleset
from tests.harness.paths import ALERTS, REPO, SEED_RULES
from tests.rego_support import POLICIES, action, priority, rule

RULE_NAMES = (
    "Terminal shell in container",
    "Netcat Remote Code Execution in Container",
    "Detect crypto miners using the Stratum protocol",
    "A",
    "a",
    "é",  # precomposed
    "e\u0301",  # the same text decomposed: another string for OPA
    "Détection réseau",
    "x  y",
    " A",
    "\ufffd",  # what OPA reads a lone surrogate as
    "中文规则",
    "😀",
)
TAGS = ("T1059", "container", "shell", "network", "mitre_execution", "k8s", "Container", "é", "\ufffd", "標籤")
ODD_RULES = ("", "\ud800", "\udcff", "unknown rule", "a\ud800", "Terminal shell in container ")
ODD_TAGS: tuple[Any, ...] = ("\ud800", "", 1, None, True, 1.5, ["T1059"], {"T1059": True}, "t1059")
PRIORITIES = ("Emergency", "Critical", "Warning", "notice", "Informational", "Debug", "Info", "", "bogus")
SOURCES = ("syscall", "k8s_audit", "aws_cloudtrail", "")
EMPTY: dict[str, list[Any]] = {"matched_rules": [], "steps": []}
_BUNDLES = itertools.count()


@dataclass
class Tally:
    alerts: int = 0
    empty: int = 0  # OPA's plan is empty
    decided: int = 0  # the prefilter gave the empty plan (each one checked against OPA)


@asynccontextmanager
async def served(tmp_path: Path, ruleset: RuleSet, *, native: Sequence[Path] = ()) -> AsyncIterator[Prefilter]:
    """A real OPA on the ruleset's bundle, and a prefilter that has fetched its index from it."""
    out = tmp_path / f"bundle-{next(_BUNDLES)}"
    revision = build_bundle(generate(ruleset), out, library=POLICIES, native=native, check=False)
    opa = OpaProcess(bundle=out, unix_socket=True, token="t0ken")
    await opa.start()
    ep = Endpoint.open(opa.base_url, opa.connector(), opa.headers())
    prefilter = Prefilter(OpaClient(lambda: ep), revision=lambda: revision, endpoint=lambda: ep)
    task = asyncio.get_running_loop().create_task(prefilter.run())
    try:
        for _ in range(500):  # bounded: until the index of this revision is fetched
            prefilter.empty_plan_revision("", [])
            if prefilter.revision == revision:
                break
            await asyncio.sleep(0.01)
        assert prefilter.revision == revision, "the prefilter never fetched the index"
        yield prefilter
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ep.close()
        await opa.stop()


async def check(prefilter: Prefilter, alerts: Sequence[Alert], tally: Tally) -> None:
    """OPA's plan of every alert, the same from the lean input; the empty plan wherever the prefilter says so."""
    client = prefilter.client
    for start in range(0, len(alerts), 200):
        chunk = alerts[start : start + 200]
        plans = await client.decide_batch_once([a.opa_input() for a in chunk])
        lean = await client.decide_batch_once([a.opa_input(lean=True) for a in chunk])
        for alert, plan, lean_plan in zip(chunk, plans, lean, strict=True):
            assert not isinstance(plan, Exception), plan
            assert not isinstance(lean_plan, Exception), lean_plan
            assert (lean_plan.matched_rules, lean_plan.steps) == (plan.matched_rules, plan.steps), alert.opa_input()
            opa_plan = {"matched_rules": list(plan.matched_rules), "steps": list(plan.steps)}
            tally.alerts += 1
            tally.empty += opa_plan == EMPTY
            if prefilter.empty_plan_revision(alert.rule, alert.tags):
                tally.decided += 1
                assert opa_plan == EMPTY, f"the prefilter gave the empty plan, OPA {opa_plan} for {alert.opa_input()}"


def body_alert(doc: dict[str, Any]) -> Alert:
    return decode_alert(json.dumps(doc).encode())  # ASCII escapes: lone surrogates survive to the alert


def sample_alerts() -> list[Alert]:
    docs = [json.loads(p.read_text()) for p in sorted(ALERTS.glob("*.json"))]
    assert len(docs) >= 10
    # each sample also with every Falco rule name the sample rules use, so some of them match
    names = sorted({d.get("rule", "") for d in docs} | set(RULE_NAMES))
    return [body_alert(d) for d in docs] + [body_alert({**d, "rule": n}) for d in docs for n in names]


async def test_every_sample_alert_on_the_sample_and_example_rules(tmp_path: Path) -> None:
    registry = default_registry()
    alerts = sample_alerts()
    for rules in (SEED_RULES, REPO / "examples" / "rules.yaml", REPO / "examples" / "caps" / "rules.yaml"):
        if not rules.exists():
            continue
        tally = Tally()
        async with served(tmp_path, load_ruleset([rules], registry)) as prefilter:
            await check(prefilter, alerts, tally)
        print(f"{rules.name}: {tally}")
        assert tally.decided > 0
        assert tally.empty > tally.decided * 0.5  # the samples' rules have no always-candidate


def generated_ruleset(rnd: random.Random) -> RuleSet:
    rules = []
    for i in range(rnd.randint(1, 8)):
        names = tuple(rnd.sample(RULE_NAMES, rnd.choice((0, 1, 1, 2, 3)))) if rnd.random() < 0.75 else ()
        groups = tuple(frozenset(rnd.sample(TAGS, rnd.randint(1, 3))) for _ in range(rnd.choice((0, 0, 1, 2))))
        if not names and not groups and rnd.random() < 0.8:  # an always-candidate, in some sets only
            names = (rnd.choice(RULE_NAMES),)
        prio = priority(rnd.choice((">=Warning", "<Notice", "Critical", ">=", "")))
        conds = (
            ((FieldCondition("k8s.ns.name", rnd.choice(("=", "!=")), rnd.choice(("payments", "vault"))),),)
            if rnd.random() < 0.3
            else ()
        )
        source = rnd.choice(("", "", "syscall", "k8s_audit"))
        name = f"R{i} {rnd.choice(RULE_NAMES)}"
        rules.append(rule(name, Match(names, prio, groups, conds, source)))
    return RuleSet(tuple(rules))


def generated_alert(rnd: random.Random) -> Alert:
    doc: dict[str, Any] = {
        "rule": rnd.choice(RULE_NAMES + ODD_RULES) if rnd.random() < 0.6 else f"unmatched {rnd.random()}",
        "priority": rnd.choice(PRIORITIES),
        "output": "08:21:07.114583261: Notice generated",
        "source": rnd.choice(SOURCES),
        "tags": rnd.sample(TAGS + ODD_TAGS, rnd.randint(0, 4)),
        "output_fields": {"k8s.ns.name": rnd.choice(("payments", "vault", "default", 3, None))},
    }
    if rnd.random() < 0.1:
        del doc["tags"]
    return body_alert(doc)


async def test_generated_alerts_on_generated_rule_sets(tmp_path: Path) -> None:
    rnd = random.Random(20261203)
    total, usable = Tally(), Tally()
    sets = skipped = 0
    for _ in range(24):
        ruleset = generated_ruleset(rnd)
        alerts = [generated_alert(rnd) for _ in range(300)]
        tally = Tally()
        async with served(tmp_path, ruleset) as prefilter:
            await check(prefilter, alerts, tally)
            sets += 1
            if prefilter.index is None:
                skipped += 1
                assert tally.decided == 0
            else:
                for field in ("alerts", "empty", "decided"):
                    setattr(usable, field, getattr(usable, field) + getattr(tally, field))
        for field in ("alerts", "empty", "decided"):
            setattr(total, field, getattr(total, field) + getattr(tally, field))
    print(f"{sets} rule sets ({skipped} with always-candidates): all {total}, with a usable index {usable}")
    assert total.alerts >= 7000
    assert 0 < skipped < sets  # both kinds of rule set were generated
    assert usable.decided >= 0.5 * usable.empty  # drawn from few names, many alerts have a candidate
    # an alert with a Falco rule and tags no rule names (most of the traffic) never waits for OPA
    others: tuple[Any, ...] = ("maturity_stable", "T1059 ", "containers", "ü", 7, None, ["shell"])
    foreign = [
        body_alert({"rule": f"Falco rule {i}", "priority": "Critical", "tags": rnd.sample(others, rnd.randint(0, 3))})
        for i in range(1000)
    ]
    async with served(tmp_path, generated_ruleset(random.Random(1))) as prefilter:
        assert prefilter.index is not None
        tally = Tally()
        await check(prefilter, foreign, tally)
        assert tally.decided == tally.alerts == 1000, tally


async def test_native_rules_are_always_asked_to_opa(tmp_path: Path) -> None:
    ruleset = load_ruleset([REPO / "examples" / "rules.yaml"], default_registry())
    async with served(tmp_path, ruleset, native=[REPO / "examples" / "native" / "known_bad_networks.rego"]) as pf:
        assert pf.index is None
        assert pf.empty_plan_revision("no rule has this name", []) == ""


def test_the_prefilter_knows_every_source_of_candidates() -> None:
    """talon.lib.matching's candidates come from by_rule, by_tag, always and native, nothing else: a new
    source of candidates must be taught to talon_opa/opa/prefilter.py first (this test then changes)."""
    text = (POLICIES / "talon" / "lib" / "matching" / "matching.rego").read_text()
    heads = re.findall(r"^candidates contains name if (.*)$", text, re.MULTILINE)
    assert heads == [
        "some name in data.talon.index.by_rule[input.rule]",
        "{",
        "some name in data.talon.index.always",
        "some name, _ in data.talon.native",
    ]
    assert "\tsome tag, _ in input.tags_set\n\tsome name in data.talon.index.by_tag[tag]\n" in text
    assert text.count("candidates contains") == 4
    assert re.findall(r"^\s*some name in candidates$", text, re.MULTILINE) == ["\tsome name in candidates"]


def test_talon_opas_rego_reads_only_the_lean_input() -> None:
    """Every `input` reference of the library and of generated rules is a lean field (or the engine's
    counters, or the batch's alerts): what makes the lean input decide like the whole one."""
    # besides the lean fields: the engine's counters and pod, the batch's alerts, and output_fields, which the
    # lean input carries whenever a value is not a string (else it equals output_fields_str)
    allowed = {*LEAN_FIELDS, "counters", "pod", "alerts", "output_fields"}
    texts = [p.read_text() for p in POLICIES.rglob("*.rego") if not p.name.endswith("_test.rego")]
    rnd = random.Random(7)
    for _ in range(50):
        texts += [t for path, t in generate(generated_ruleset(rnd)).items() if path.endswith(".rego")]
    fields, other = set(), []
    for text in texts:
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines()) + "\n"  # comments aside
        for m in re.finditer(r"\binput\b(\.\w+)?", code):
            if m.group(1):
                fields.add(m.group(1)[1:])
            else:
                other.append(code[code.rfind("\n", 0, m.start()) + 1 : code.find("\n", m.end())].strip())
    assert fields <= allowed, fields - allowed
    assert fields >= {"rule", "priority_rank", "source", "tags_set", "output_fields_str"}
    assert other == [
        'recent(actionner, window) := object.get(input, ["counters", actionner, namespace, format_int(window, 10)], 0)',
        'labels := object.union(falco_labels, object.get(input, ["pod", "labels"], {}))',
        "plans := [p | some alert in input.alerts; p := data.talon.plan with input as alert]",
    ], other


async def test_a_bundle_without_the_index_is_always_asked_to_opa(tmp_path: Path) -> None:
    """A hand-written talon.plan that matches everything and has no data.talon.index: nothing to prove from."""
    b = tmp_path / "bundle"
    (b / "talon").mkdir(parents=True)
    (b / ".manifest").write_text(json.dumps({"revision": "hand", "roots": ["talon"]}))
    (b / "talon" / "plan.rego").write_text('package talon.plan\n\nmatched_rules := ["Everything"]\n\nsteps := []\n')
    opa = OpaProcess(bundle=b)
    await opa.start()
    ep = Endpoint.open(opa.base_url, opa.connector(), opa.headers())
    prefilter = Prefilter(OpaClient(lambda: ep), revision=lambda: "hand", endpoint=lambda: ep)
    task = asyncio.get_running_loop().create_task(prefilter.run())
    try:
        for _ in range(500):  # bounded: until the fetch is done
            if prefilter.revision == "hand":
                break
            await asyncio.sleep(0.01)
        assert prefilter.revision == "hand"
        assert prefilter.index is None
        assert prefilter.empty_plan_revision("no rule names this", []) == ""
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ep.close()
        await opa.stop()


def test_the_example_config_names_the_decision_settings_with_their_defaults() -> None:
    loaded = config.load(REPO / "examples" / "config.yaml", env={})
    assert not loaded.unknown_keys
    for key in ("prefilter", "decide_ahead", "batch_size", "requests_in_flight"):
        assert getattr(loaded.opa, key) == getattr(config.Opa(), key), key


async def test_the_lean_input_holds_like_the_whole_one_under_protected_labels(tmp_path: Path) -> None:
    """lib/caps reads k8s.pod.labels as Falco sent it (an array, or its text): the lean input decides alike."""
    ruleset = RuleSet(rules=(rule("Shell", actions=[action("kill", "kubernetes:terminate", {})]),))
    files = {
        **generate(ruleset),
        CAPS_DATA_FILE: json.dumps(config.caps_data(config.parse_caps({"protected_labels": {"tier": "db"}}))),
    }
    out = tmp_path / "bundle"
    build_bundle(files, out, library=POLICIES, check=False)
    opa = OpaProcess(bundle=out)
    await opa.start()
    ep = Endpoint.open(opa.base_url, opa.connector(), opa.headers())
    try:
        client = OpaClient(lambda: ep)
        held = []
        for labels in (["tier:db", "app:pg"], "(tier:db,app:pg)", ["tier:web"], "[app:x]"):
            fields = {"k8s.ns.name": "prod", "k8s.pod.name": "p0", "k8s.pod.labels": labels}
            alert = decode_alert(
                json.dumps({"rule": "Shell", "priority": "Critical", "output_fields": fields}).encode()
            )
            whole, lean = await client.decide_batch_once([alert.opa_input(), alert.opa_input(lean=True)])
            assert not isinstance(whole, Exception), whole
            assert not isinstance(lean, Exception), lean
            assert lean.steps == whole.steps, labels
            held.append(bool(whole.steps[0].held))
        assert held == [True, True, False, False]
    finally:
        await ep.close()
        await opa.stop()
