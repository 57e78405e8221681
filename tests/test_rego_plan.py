"""The generated Rego + the library in a real OPA: the plan for every matching feature (DESIGN §3.2, §4)."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from talon_opa.opa.process import OpaProcess
from talon_opa.translator.model import FieldCondition, Match, OutputRef, RuleSet
from talon_opa.translator.rego import generate
from tests.harness.paths import REPO
from tests.rego_support import (
    action,
    alert_input,
    fields,
    matched,
    opa_gates,
    plans,
    priority,
    rule,
    tags,
    write_bundle,
)

SHELL = "Terminal shell in container"


async def test_rules_are_or_ed_and_exact(tmp_path: Path) -> None:
    r = rule("Shells", Match(rules=(SHELL, "Netcat Remote Code Execution in Container")))
    got = await matched(
        tmp_path,
        [r],
        [
            alert_input(rule=SHELL),
            alert_input(rule="Netcat Remote Code Execution in Container"),
            alert_input(rule="terminal shell in container"),
            alert_input(rule="Other"),
        ],
    )
    assert got == [["Shells"], ["Shells"], [], []]


async def test_priority_operators(tmp_path: Path) -> None:
    rules = [
        rule(f"p{text}", Match(rules=(SHELL,), priority=priority(text)))
        for text in (">=Warning", ">Warning", "<Warning", "<=Warning", "=Warning", "Warning", ">=")
    ]
    got = await matched(
        tmp_path,
        rules,
        [alert_input(priority=p) for p in ("Critical", "Warning", "notice", "Info", "")],
    )
    assert got == [
        ["p>=Warning", "p>Warning", "p>="],  # Critical
        ["p>=Warning", "p<=Warning", "p=Warning", "pWarning", "p>="],  # Warning
        ["p<Warning", "p<=Warning", "p>="],  # notice (case-insensitive)
        ["p<Warning", "p<=Warning", "p>="],  # unknown priority ranks 0: only < and <= hold
        ["p<Warning", "p<=Warning", "p>="],  # missing priority too
    ]


async def test_tag_groups_or_of_and_and_tag_only_rules(tmp_path: Path) -> None:
    r = rule("Tagged", Match(tags=tags("T1059, container", "network, k8s")))
    got = await matched(
        tmp_path,
        [r],
        [
            alert_input(tags=["T1059", "container", "shell"]),
            alert_input(tags=["network", "k8s"]),
            alert_input(tags=["T1059", "network"]),
            alert_input(tags=[]),
            alert_input(),
        ],
    )
    assert got == [["Tagged"], ["Tagged"], [], [], []]


async def test_output_fields_equal_not_equal_missing_and_numbers(tmp_path: Path) -> None:
    rules = [
        rule(
            "ns payments or vault",
            Match(rules=(SHELL,), output_fields=fields("k8s.ns.name=payments", "k8s.ns.name=vault")),
        ),
        rule("not system", Match(rules=(SHELL,), output_fields=fields("k8s.ns.name!=kube-system, k8s.ns.name!=falco"))),
        rule("pid", Match(rules=(SHELL,), output_fields=fields("proc.pid=1234567"))),
        rule("float", Match(rules=(SHELL,), output_fields=fields("x.ratio=1.5"))),
        rule("bool and null", Match(rules=(SHELL,), output_fields=fields("x.flag=true, k8s.pod.name=<nil>"))),
        rule("value with =", Match(rules=(SHELL,), output_fields=fields("proc.cmdline=a=b"))),
        rule("indexed field", Match(rules=(SHELL,), output_fields=fields("proc.aname[2]=java, user_name=x"))),
    ]
    got = await matched(
        tmp_path,
        rules,
        [
            alert_input(output_fields={"k8s.ns.name": "payments"}),
            alert_input(output_fields={"k8s.ns.name": "kube-system"}),
            alert_input(output_fields={}),  # != holds on a missing field, = fails
            alert_input(output_fields={"proc.pid": 1234567, "x.ratio": 1.50}),
            alert_input(output_fields={"x.flag": True, "k8s.pod.name": None, "k8s.ns.name": "vault"}),
            alert_input(output_fields={"proc.cmdline": "a=b", "proc.aname[2]": "java", "user_name": "x"}),
        ],
    )
    assert got == [
        ["ns payments or vault", "not system"],
        [],
        ["not system"],
        ["not system", "pid", "float"],
        ["ns payments or vault", "not system", "bool and null"],
        ["not system", "value with =", "indexed field"],
    ]


async def test_source_defaults_to_syscall(tmp_path: Path) -> None:
    rules = [
        rule("syscall", Match(rules=(SHELL,), source="syscall")),
        rule("audit", Match(rules=(SHELL,), source="k8s_audit")),
    ]
    got = await matched(tmp_path, rules, [alert_input(), alert_input(source="k8s_audit")])
    assert got == [["syscall"], ["audit"]]


async def test_empty_match_matches_everything_and_criteria_without_rules(tmp_path: Path) -> None:
    rules = [
        rule("everything"),
        rule("critical only", Match(priority=priority(">=Critical"))),
        rule("payments only", Match(output_fields=fields("k8s.ns.name=payments"))),
        rule("falco source", Match(source="syscall")),
    ]
    got = await matched(
        tmp_path,
        rules,
        [
            alert_input(rule="anything", priority="Critical"),
            alert_input(rule="x", output_fields={"k8s.ns.name": "payments"}, source="internal"),
        ],
    )
    assert got == [["everything", "critical only", "falco source"], ["everything", "payments only"]]


async def test_all_criteria_together(tmp_path: Path) -> None:
    r = rule(
        "All",
        Match(
            rules=(SHELL,),
            priority=priority(">=Notice"),
            tags=tags("container, shell"),
            output_fields=fields("k8s.ns.name=payments, container.name!=debug"),
            source="syscall",
        ),
    )
    good = {
        "priority": "Warning",
        "tags": ["container", "shell"],
        "output_fields": {"k8s.ns.name": "payments", "container.name": "api"},
    }
    variants = [
        good,
        {**good, "rule": "Other"},
        {**good, "priority": "Debug"},
        {**good, "tags": ["container"]},
        {**good, "output_fields": {"k8s.ns.name": "payments", "container.name": "debug"}},
        {**good, "source": "k8s_audit"},
    ]
    got = await matched(tmp_path, [r], [alert_input(**v) for v in variants])
    assert got == [["All"], [], [], [], [], []]


async def test_rule_continue_false_stops_later_rules_steps_but_not_matching(tmp_path: Path) -> None:
    rules = [
        rule("first", Match(rules=(SHELL,)), [action("a1"), action("a2")]),
        rule(
            "stop",
            Match(rules=(SHELL,)),
            [action("kill", "kubernetes:terminate", {}, continue_=False)],
            continue_=False,
        ),
        rule("later", Match(rules=(SHELL,)), [action("a3")]),
        rule("unmatched stop", Match(rules=("Other",)), continue_=False),
    ]
    (plan,) = await plans(tmp_path, RuleSet(tuple(rules)), [alert_input()])
    assert plan["matched_rules"] == ["first", "stop", "later"]
    assert [(s["rule"], s["action"]) for s in plan["steps"]] == [("first", "a1"), ("first", "a2"), ("stop", "kill")]


async def test_steps_carry_every_field(tmp_path: Path) -> None:
    rules = [
        rule(
            "Capture",
            Match(rules=(SHELL,)),
            [
                action(
                    "tcpdump",
                    "kubernetes:tcpdump",
                    {"duration": 20, "snaplen": 4096, "big": 123456789012345678901234567890},
                    continue_=False,
                    ignore_errors=True,
                    output=OutputRef("aws:s3", {"bucket": "evidence", "prefix": "/captures"}),
                )
            ],
            dry_run=True,
            notifiers=("slack", "k8sevents"),
        )
    ]
    (plan,) = await plans(tmp_path, RuleSet(tuple(rules)), [alert_input()])
    assert plan == {
        "matched_rules": ["Capture"],
        "steps": [
            {
                "rule": "Capture",
                "action": "tcpdump",
                "actionner": "kubernetes:tcpdump",
                "parameters": {"duration": 20, "snaplen": 4096, "big": 123456789012345678901234567890},
                "continue": False,
                "ignore_errors": True,
                "dry_run": True,
                "output": {"target": "aws:s3", "parameters": {"bucket": "evidence", "prefix": "/captures"}},
                "notifiers": ["slack", "k8sevents"],
            }
        ],
    }


async def test_no_rules_and_no_match_give_empty_lists(tmp_path: Path) -> None:
    assert await plans(tmp_path / "a", RuleSet(()), [alert_input()]) == [{"matched_rules": [], "steps": []}]
    got = await plans(tmp_path / "b", RuleSet((rule("x", Match(rules=("Other",))),)), [alert_input()])
    assert got == [{"matched_rules": [], "steps": []}]


async def test_rule_names_that_slug_alike_stay_distinct(tmp_path: Path) -> None:
    rules = [
        rule("Shell!", Match(rules=(SHELL,))),
        rule("shell?", Match(rules=(SHELL,))),
        rule("if", Match(rules=(SHELL,))),
    ]
    assert await matched(tmp_path, rules, [alert_input()]) == [["Shell!", "shell?", "if"]]


async def test_native_rules_are_placed_by_position(tmp_path: Path) -> None:
    """The example native rules (examples/native/) beside translated ones, registered in data.talon.native."""
    rules = [
        rule("first", Match(rules=("Outbound Connection to C2 Servers",)), [action("a1")]),
        rule("second", Match(rules=("Outbound Connection to C2 Servers",)), [action("a2")]),
    ]
    native = sorted((REPO / "examples" / "native").glob("*.rego"))
    native = [p for p in native if not p.name.endswith("_test.rego")]
    files = generate(RuleSet(tuple(rules)))  # the bundle registers the native rules itself
    opa = OpaProcess(bundle=write_bundle(tmp_path, files, native=native))
    await opa.start()
    try:
        async with aiohttp.ClientSession(connector=opa.connector()) as http:
            doc = alert_input(
                rule="Outbound Connection to C2 Servers",
                priority="Warning",
                output_fields={"fd.rip": "198.51.100.66", "k8s.ns.name": "payments", "k8s.pod.name": "api"},
            )
            async with http.post(f"{opa.base_url}/v1/data/talon/plan", json={"input": doc}) as resp:
                plan = (await resp.json())["result"]
            internal = {**doc, "output_fields_str": {"fd.rip": "10.1.2.3", "k8s.ns.name": "payments"}}
            async with http.post(f"{opa.base_url}/v1/data/talon/plan", json={"input": internal}) as resp:
                plan_internal = (await resp.json())["result"]
    finally:
        await opa.stop()
    assert plan["matched_rules"] == ["first", "Isolate pods talking to known-bad networks", "second"]
    assert [s["action"] for s in plan["steps"]] == ["a1", "Isolate the pod", "a2"]
    assert plan["steps"][1]["actionner"] == "kubernetes:networkpolicy"
    assert plan_internal["matched_rules"] == ["first", "second"]


async def test_awkward_names_and_values_stay_fmt_clean_strict_and_exact(tmp_path: Path) -> None:
    weird = 'a "quoted" \\ back\nslash é ✓'
    rules = [
        rule(
            'Rule "with" quotes: and # hash',
            Match(
                rules=(weird,),
                tags=tags("if, in", "contains"),
                output_fields=(
                    (FieldCondition("proc.aname[2]", "=", weird), FieldCondition("a_b", "!=", "x=y")),
                    (FieldCondition("package", "=", ""),),
                ),
            ),
            description='multi\nline "description": with: colons',
        ),
        rule("1 starts with a digit", Match(tags=tags("T1059"))),
    ]
    files = generate(RuleSet(tuple(rules)))
    root = write_bundle(tmp_path / "bundle", files)
    assert opa_gates(root) == []
    got = await matched(
        tmp_path / "run",
        rules,
        [
            alert_input(rule=weird, tags=["if", "in"], output_fields={"proc.aname[2]": weird, "a_b": "x"}),
            alert_input(rule=weird, tags=["contains", "T1059"], output_fields={"package": ""}),
            alert_input(rule=weird, tags=["contains"], output_fields={"proc.aname[2]": weird, "a_b": "x=y"}),
        ],
    )
    assert got == [['Rule "with" quotes: and # hash'], ['Rule "with" quotes: and # hash', "1 starts with a digit"], []]
