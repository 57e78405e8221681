"""A plan parked at a step that waits for an operator's approval (docs/approvals.md), as data.

`Parked` is everything needed to resume the alert's plan later, in this process or after a restart: the
alert as received (its `WorkItem`), the plan, the index of the waiting step, the rules already ended, the
alert's trace (resumed steps join it) and the approval's window in wall-clock time. `decision` is set
once an operator (or the clock) has decided; a parked plan with a decision is resumed with it.
`encode`/`decode` give its one-file JSON form (the `state_dir` copy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from talon_opa.core.errors import TalonError
from talon_opa.engine.work import WorkItem
from talon_opa.opa.plan import Plan, Step, parse_plan, plan_doc

FORMAT = 1  # version of the encoded form
Result = Literal["approved", "denied", "expired"]


class ApprovalRefused(TalonError):
    """A step cannot wait for approval: it fails, reported like any failure, with `kind` as its error type."""

    def __init__(self, message: str, *, hint: str = "", kind: str = "approvals_full") -> None:
        super().__init__(message, hint=hint)
        self.kind = kind  # approvals_full, approvals_unsaved, approvals_unavailable


@dataclass(frozen=True, slots=True)
class Decision:
    """What became of an approval request: who decided (empty when it expired) and when (epoch seconds)."""

    result: Result
    by: str = ""
    at: float = 0.0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Parked:
    """An alert's plan, stopped before step `index` until that step is approved, denied or expires."""

    id: str
    item: WorkItem
    plan: Plan
    index: int
    ended: frozenset[str]  # rules an earlier step ended (Talon's flow resumes with them)
    trace_id: str  # the alert's trace (32 hex digits) and its root span (16): resumed steps join them
    span_id: str
    created: float  # epoch seconds: the window is wall-clock time, so it holds across a restart
    expires: float
    decision: Decision | None = None

    @property
    def step(self) -> Step:
        return self.plan.steps[self.index]

    @property
    def window_seconds(self) -> int:
        return self.step.approval_seconds

    def summary(self) -> dict[str, Any]:
        """What an operator sees of a pending approval (the API's list)."""
        alert = self.item.alert
        return {
            "id": self.id,
            "rule": self.step.rule,
            "action": self.step.action,
            "actionner": self.step.actionner,
            "parameters": dict(self.step.parameters),
            "alert_id": self.item.alert_id,
            "alert_rule": alert.rule,
            "namespace": alert.namespace() or "",
            "pod": alert.pod_name() or "",
            "trace_id": self.trace_id,
            "window_seconds": self.window_seconds,
            "created": self.created,
            "expires": self.expires,
        }

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "id": self.id,
            "item": json.loads(self.item.encode()),
            "plan": plan_doc(self.plan.matched_rules, self.plan.steps),
            "decision_id": self.plan.decision_id,
            "revision": self.plan.revision,
            "index": self.index,
            "ended": sorted(self.ended),
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "created": self.created,
            "expires": self.expires,
            "decision": None
            if self.decision is None
            else {
                "result": self.decision.result,
                "by": self.decision.by,
                "at": self.decision.at,
                "reason": self.decision.reason,
            },
        }
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> Parked:
        """A parked plan from `encode`'s bytes; TalonError naming what is wrong otherwise."""
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise TalonError(f"format {doc.get('format')!r} is not {FORMAT}", hint="upgrade the engine")
            matched, steps = parse_plan(doc["plan"])
            plan = Plan(
                matched, steps, decision_id=str(doc.get("decision_id", "")), revision=str(doc.get("revision", ""))
            )
            index = int(doc["index"])
            if not 0 <= index < len(steps) or not steps[index].approval_seconds:
                raise TalonError(f"step {index} of its plan does not wait for approval")
            d = doc.get("decision")
            decision = None
            if d is not None:
                if d.get("result") not in ("approved", "denied", "expired"):
                    raise TalonError(f"decision {d.get('result')!r} is not approved, denied or expired")
                decision = Decision(d["result"], str(d.get("by", "")), float(d.get("at", 0)), str(d.get("reason", "")))
            return cls(
                id=str(doc["id"]),
                item=WorkItem.decode(json.dumps(doc["item"]).encode()),
                plan=plan,
                index=index,
                ended=frozenset(str(r) for r in doc.get("ended", [])),
                trace_id=str(doc["trace_id"]),
                span_id=str(doc["span_id"]),
                created=float(doc["created"]),
                expires=float(doc["expires"]),
                decision=decision,
            )
        except TalonError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise TalonError(f"not a parked plan: {e}", hint="the file was not written by the engine") from e
