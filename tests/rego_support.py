"""Helpers for tests of the generated Rego: hand-built rules, a bundle directory, a real OPA."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from talon_opa.core import binaries, priorities
from talon_opa.core.errors import Where
from talon_opa.core.events import decode_alert
from talon_opa.opa.process import OpaProcess
from talon_opa.translator.bundle import build_bundle
from talon_opa.translator.model import Action, FieldCondition, Match, OutputRef, Priority, PriorityOp, Rule, RuleSet
from talon_opa.translator.rego import generate
from tests.harness.paths import REPO

POLICIES = REPO / "talon_opa" / "policies"
WHERE = Where("rules.yaml", 1, 3)


def action(
    name: str = "label it",
    actionner: str = "kubernetes:label",
    parameters: Mapping[str, Any] | None = None,
    *,
    continue_: bool = True,
    ignore_errors: bool = False,
    output: OutputRef | None = None,
) -> Action:
    return Action(
        name=name,
        actionner=actionner,
        parameters=dict(parameters or {"labels": {"suspicious": "true"}}),
        continue_=continue_,
        ignore_errors=ignore_errors,
        output=output,
        where=WHERE,
    )


def rule(
    name: str,
    match: Match | None = None,
    actions: Sequence[Action] | None = None,
    *,
    continue_: bool = True,
    dry_run: bool = False,
    notifiers: Sequence[str] = (),
    description: str = "",
) -> Rule:
    return Rule(
        name=name,
        match=match or Match(),
        actions=tuple(actions or (action(),)),
        where=WHERE,
        description=description,
        continue_=continue_,
        dry_run=dry_run,
        notifiers=tuple(notifiers),
    )


def priority(text: str) -> Priority:
    """A priority filter parsed like the loader does (">=Warning" -> op ">=", rank 4)."""
    op = next(o for o in ("<=", ">=", "<", ">", "=", "") if text.startswith(o))
    return Priority(op_literal(op), priorities.rank(text[len(op) :]), text)


def op_literal(op: str) -> PriorityOp:
    ops: dict[str, PriorityOp] = {"": "", "=": "=", "<": "<", ">": ">", "<=": "<=", ">=": ">="}
    return ops[op]


def fields(*groups: str) -> tuple[tuple[FieldCondition, ...], ...]:
    """output_fields groups from Talon's text: "k=v, k2!=v2"."""
    result = []
    for group in groups:
        conds = []
        for piece in group.split(","):
            piece = piece.strip()
            if "!=" in piece:
                k, v = piece.split("!=", 1)
                conds.append(FieldCondition(k, "!=", v))
            else:
                k, v = piece.split("=", 1)
                conds.append(FieldCondition(k, "=", v))
        result.append(tuple(conds))
    return tuple(result)


def tags(*groups: str) -> tuple[frozenset[str], ...]:
    return tuple(frozenset(t.strip() for t in g.split(",") if t.strip()) for g in groups)


def alert_input(**body: Any) -> dict[str, Any]:
    """The normalised OPA input of an alert given as its JSON body keys."""
    body.setdefault("rule", "Terminal shell in container")
    body.setdefault("priority", "Notice")
    return decode_alert(json.dumps(body).encode()).opa_input()


def write_bundle(root: Path, files: Mapping[str, str], *, native: Sequence[Path] = ()) -> Path:
    """The bundle directory `root/bundle` as translate writes it (library, native Rego and its index)."""
    out = root / "bundle"
    build_bundle(files, out, native=native, check=False)
    return out


async def plans(
    root: Path, ruleset: RuleSet, inputs: Sequence[Mapping[str, Any]], *, extra: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """The plans a real OPA computes for each input, from the generated Rego of ruleset."""
    files = {**generate(ruleset), **(extra or {})}
    root = write_bundle(root, files)
    opa = OpaProcess(bundle=root)
    await opa.start()
    try:
        async with aiohttp.ClientSession(connector=opa.connector()) as http:
            results = []
            for doc in inputs:
                async with http.post(f"{opa.base_url}/v1/data/talon/plan", json={"input": doc}) as resp:
                    assert resp.status == 200, await resp.text()
                    results.append((await resp.json())["result"])
            return results
    finally:
        await opa.stop()


async def matched(root: Path, rules: Sequence[Rule], inputs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [p["matched_rules"] for p in await plans(root, RuleSet(tuple(rules)), inputs)]


def opa_gates(root: Path) -> list[str]:
    """What `opa fmt --fail -l` and `opa check --strict` report on a bundle directory ([] = clean)."""
    opa = binaries.find("opa")
    problems = []
    for args in (["fmt", "--fail", "-l", str(root)], ["check", "--strict", "-b", str(root)]):
        done = subprocess.run([opa, *args], capture_output=True, text=True, check=False, timeout=300)
        if done.returncode != 0:
            problems.append(f"opa {args[0]}: {done.stdout}{done.stderr}")
    return problems
