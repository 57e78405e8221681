"""The plan contract (DESIGN §3.2): the value of `data.talon.plan`, checked and typed.

`parse_plan` checks OPA's answer has the plan's shape (an OpaError naming what is wrong otherwise);
`Plan` is what the executor runs, with where and how it was decided.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from talon_opa.core.errors import OpaError
from talon_opa.core.slots import slot_init


@dataclass(frozen=True, slots=True)
class OutputStep:
    target: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the plan, as `data.talon.plan` gives it (DESIGN §3.2)."""

    rule: str
    action: str
    actionner: str
    parameters: Mapping[str, Any]
    continue_: bool = True
    ignore_errors: bool = False
    dry_run: bool = False
    output: OutputStep | None = None
    notifiers: tuple[str, ...] = ()
    held: str = ""  # why the caps policy stops this step ("" = it may run): not run, reported (docs/caps.md)
    approval_seconds: int = 0  # > 0: the step waits that long for an operator's approval (docs/approvals.md)
    undo_after: float | None = None  # seconds after which a reversible step's change is undone (docs/undo.md)


@slot_init
@dataclass(frozen=True, slots=True)
class Plan:
    matched_rules: tuple[str, ...]
    steps: tuple[Step, ...]
    decision_id: str = ""
    revision: str = ""  # the bundle revision OPA decided with
    attempts: int = 1
    seconds: float = 0.0
    batch_size: int = 1  # alerts decided by the same request (they share its decision id)
    by_index: bool = False  # decided without a request: the revision's candidate index has no rule for it

    @classmethod
    def empty(cls, revision: str, seconds: float) -> Plan:
        """The plan of an alert the candidate index of `revision` proves no rule matches (`opa.prefilter`)."""
        return cls((), (), "", revision, 0, seconds, 0, by_index=True)

    def acted_rules(self) -> tuple[str, ...]:
        """The matched rules Talon iterates: up to the last one with steps (a rule `continue: false` ends it)."""
        with_steps = {s.rule for s in self.steps}
        last = max(
            (i for i, r in enumerate(self.matched_rules) if r in with_steps), default=len(self.matched_rules) - 1
        )
        return self.matched_rules[: last + 1]


def step_doc(step: Step) -> dict[str, Any]:
    """A step in the plan's JSON shape (DESIGN §3.2): what `parse_plan` reads back into the same step."""
    output = None if step.output is None else {"target": step.output.target, "parameters": dict(step.output.parameters)}
    doc: dict[str, Any] = {
        "rule": step.rule,
        "action": step.action,
        "actionner": step.actionner,
        "parameters": dict(step.parameters),
        "continue": step.continue_,
        "ignore_errors": step.ignore_errors,
        "dry_run": step.dry_run,
        "output": output,
        "notifiers": list(step.notifiers),
    }
    if step.held:
        doc["held"] = step.held  # optional: absent when the step may run
    if step.approval_seconds:
        doc["approval"] = {"window_seconds": step.approval_seconds}  # optional: absent when none is needed
    if step.undo_after is not None:
        doc["undo_after_seconds"] = step.undo_after  # optional: absent without a TTL
    return doc


def plan_doc(matched_rules: Sequence[str], steps: Sequence[Step]) -> dict[str, Any]:
    """A plan in `data.talon.plan`'s JSON shape, every default explicit (the same plan, the same document)."""
    return {"matched_rules": list(matched_rules), "steps": [step_doc(s) for s in steps]}


def parse_plan(result: Any) -> tuple[tuple[str, ...], tuple[Step, ...]]:
    """Check the shape of `data.talon.plan`; OpaError naming what is wrong."""

    def bad(what: str) -> OpaError:
        return OpaError(
            f"the decision at data.talon.plan is not a plan: {what}",
            hint="check policies/ and your native Rego: the plan is "
            '{"matched_rules": [...], "steps": [{"rule", "action", "actionner", "parameters", ...}]}',
        )

    if not isinstance(result, dict):
        raise bad(f"got {json.dumps(result)[:200]}")
    matched = result.get("matched_rules")
    steps = result.get("steps")
    if not isinstance(matched, list) or not all(isinstance(m, str) for m in matched):
        raise bad("matched_rules is not a list of strings")
    if not isinstance(steps, list):
        raise bad("steps is not a list")
    out: list[Step] = []
    for i, s in enumerate(steps):
        if not isinstance(s, dict):
            raise bad(f"steps[{i}] is not an object")
        for key in ("rule", "action", "actionner"):
            if not isinstance(s.get(key), str):
                raise bad(f"steps[{i}].{key} is not a string")
        params = s.get("parameters") or {}
        if not isinstance(params, dict):
            raise bad(f"steps[{i}].parameters is not an object")
        output = s.get("output")
        out_step = None
        if output is not None:
            if not isinstance(output, dict) or not isinstance(output.get("target"), str):
                raise bad(f"steps[{i}].output is not {{target, parameters}} or null")
            out_params = output.get("parameters") or {}
            if not isinstance(out_params, dict):
                raise bad(f"steps[{i}].output.parameters is not an object")
            out_step = OutputStep(output["target"], out_params)
        notifiers = s.get("notifiers") or []
        if not isinstance(notifiers, list) or not all(isinstance(n, str) for n in notifiers):
            raise bad(f"steps[{i}].notifiers is not a list of strings")
        flags = {}
        for key in ("continue", "ignore_errors", "dry_run"):
            v = s.get(key, key == "continue")
            if not isinstance(v, bool):
                raise bad(f"steps[{i}].{key} is not a boolean")
            flags[key] = v
        held = s.get("held")
        if held is not None and not isinstance(held, str):
            raise bad(f"steps[{i}].held is not a string or null")
        approval = s.get("approval")
        window = approval.get("window_seconds") if isinstance(approval, dict) else None
        if approval is not None and (type(window) is not int or window < 1):
            raise bad(f"steps[{i}].approval is not {{window_seconds: <integer >= 1>}} or null")
        undo_after = s.get("undo_after_seconds")
        if undo_after is not None and (
            isinstance(undo_after, bool) or not isinstance(undo_after, (int, float)) or undo_after <= 0
        ):
            raise bad(f"steps[{i}].undo_after_seconds is not a number of seconds > 0 or null")
        out.append(
            Step(
                rule=s["rule"],
                action=s["action"],
                actionner=s["actionner"],
                parameters=params,
                continue_=flags["continue"],
                ignore_errors=flags["ignore_errors"],
                dry_run=flags["dry_run"],
                output=out_step,
                notifiers=tuple(notifiers),
                held=held or "",
                approval_seconds=window or 0,
                undo_after=float(undo_after) if undo_after is not None else None,
            )
        )
    return tuple(matched), tuple(out)
