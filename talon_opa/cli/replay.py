"""`rules plan --replay audit.jsonl -r new-rules.yaml`: what new rules would decide differently, alert by alert.

Each alert the audit trail recorded is decided again by a real OPA on the new rules: its recorded body
is decoded as the engine decodes it, and the new plan is compared with the recorded one. Each alert
whose plan differs is printed as one JSON line (stdout): the trail's line, the alert, the matched rules
added and removed, the steps added, removed or changed (with each changed field before and after), and
whether the steps common to both run in another order. A summary goes to stderr.
A trail that does not verify is replayed all the same, after a warning (`audit verify` is the check).

Exit codes: 0 every plan the same; 3 some plans differ; 2 invalid rules, an unreadable trail or a
record that cannot be decoded; 1 OPA failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from talon_opa.cli import rules_bundle
from talon_opa.core import events
from talon_opa.core.errors import AlertError
from talon_opa.engine import audit_chain
from talon_opa.opa.plan import parse_plan, plan_doc
from talon_opa.translator.model import RuleSet

EXIT_CHANGED = 3
_STEP_FIELDS = ("actionner", "parameters", "continue", "ignore_errors", "dry_run", "output", "notifiers")


def main(args: argparse.Namespace) -> int:
    return rules_bundle.guarded(replay, args)


def replay(args: argparse.Namespace) -> int:
    ruleset = rules_bundle.load(args.rules)
    path = Path(args.replay)
    try:
        report = audit_chain.verify(audit_chain.read_lines(path))
    except OSError as e:
        raise rules_bundle.Invalid(
            f"cannot read --replay {path}: {e.strerror}", hint="give an audit trail (audit.path)"
        ) from e
    for problem in report.problems:
        print(f"warning: {path}: {problem} (replaying anyway; see `talon-opa audit verify`)", file=sys.stderr)
    replayed, changed, revision = asyncio.run(_replay(ruleset, [Path(p) for p in args.rego], path))
    print(
        f"replayed {replayed} alert(s) of {path} on revision {revision}: "
        f"{changed} decided differently, {replayed - changed} the same",
        file=sys.stderr,
    )
    return EXIT_CHANGED if changed else rules_bundle.EXIT_OK


async def _replay(ruleset: RuleSet, native: Sequence[Path], path: Path) -> tuple[int, int, str]:
    replayed = changed = 0
    async with rules_bundle.deciding(ruleset, native) as decider:
        for line, record, alert in recorded_alerts(path):
            result = await decider.decide(alert.opa_input())
            after = plan_doc(*parse_plan(result))
            difference = compare(record.get("plan"), after)
            replayed += 1
            if difference is not None:
                changed += 1
                head = {
                    "line": line,
                    "alert_id": record.get("alert_id", ""),
                    "event": alert.rule,
                    "trace_id": record.get("trace_id", ""),
                }
                print(json.dumps({**head, **difference}, separators=(",", ":"), ensure_ascii=False), flush=True)
    return replayed, changed, decider.revision


def recorded_alerts(path: Path) -> Iterator[tuple[int, dict[str, Any], events.Alert]]:
    """(line, record, alert) of each alert line of the trail, its body decoded as the engine decodes it."""
    for number, raw in enumerate(audit_chain.read_lines(path), start=1):
        try:
            record = json.loads(raw)
        except ValueError:
            continue  # reported by the verification above
        if not isinstance(record, dict) or record.get("kind") != "alert":
            continue
        body = record.get("body")
        if not isinstance(body, str):
            raise rules_bundle.Invalid(f"{path}:{number}: the alert record has no body", hint="not an audit trail?")
        content_type = str(record.get("content_type") or "") or None
        try:
            alert = events.decode_alert(body.encode("utf-8", "surrogateescape"), content_type)
        except AlertError as e:
            raise rules_bundle.Invalid(f"{path}:{number}: the recorded alert cannot be decoded: {e}") from e
        yield number, record, alert


def compare(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> dict[str, Any] | None:
    """How `after` differs from the recorded plan `before` (None: no plan was decided); None when equal."""
    old_rules = list(before["matched_rules"]) if before else []
    new_rules = list(after["matched_rules"])
    old_steps = _keyed(before["steps"] if before else [])
    new_steps = _keyed(after["steps"])
    changed = []
    for key, new in new_steps.items():
        old = old_steps.get(key)
        if old is None:
            continue
        fields = {f: {"before": old.get(f), "after": new.get(f)} for f in _STEP_FIELDS if old.get(f) != new.get(f)}
        if fields:
            changed.append({"rule": key[0], "action": key[1], "fields": fields})
    common_old = [k for k in old_steps if k in new_steps]
    common_new = [k for k in new_steps if k in old_steps]
    steps: dict[str, Any] = {
        "added": [_brief(s) for k, s in new_steps.items() if k not in old_steps],
        "removed": [_brief(s) for k, s in old_steps.items() if k not in new_steps],
        "changed": changed,
        "reordered": common_old != common_new,
    }
    rules = {
        "before": old_rules if before is not None else None,
        "after": new_rules,
        "added": [r for r in new_rules if r not in old_rules],
        "removed": [r for r in old_rules if r not in new_rules],
    }
    same = before is not None and old_rules == new_rules and not any(steps.values())
    difference = {"matched_rules": rules, "steps": steps}
    return None if same else difference


def _keyed(steps: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, int], Mapping[str, Any]]:
    """Steps by (rule, action, n): the n-th step of that rule with that action name (names may repeat)."""
    out: dict[tuple[str, str, int], Mapping[str, Any]] = {}
    for s in steps:
        n = 0
        while (s["rule"], s["action"], n) in out:
            n += 1
        out[(s["rule"], s["action"], n)] = s
    return out


def _brief(step: Mapping[str, Any]) -> dict[str, Any]:
    return {"rule": step["rule"], "action": step["action"], "actionner": step["actionner"]}
