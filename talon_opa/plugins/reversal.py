"""Reversible actions: what a state-changing actionner returns so that its change can be undone.

An actionner whose change can be undone declares `reversible=True` in its spec, subclasses `Reversible`
beside `Actionner`, and returns an `Outcome` carrying a `Reversal` when it changed something (none when
the object was already so: there is nothing of ours to undo). The engine keeps the reversal (docs/undo.md)
and, on `talon-opa undo` or when the step's TTL expires, hands it back to `undo` of an instance of the same
actionner, built with the same cluster's clients.

`undo` never clobbers what someone else changed since: it reports a `conflict` instead. A reversal whose
object is gone, or already back as it was, is `already_undone`. Errors of the API are raised, as in `run`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

UndoResult = Literal["undone", "already_undone", "conflict"]
UNDO_RESULTS: tuple[UndoResult, ...] = ("undone", "already_undone", "conflict")


@dataclass(frozen=True, slots=True)
class Reversal:
    """How to undo one action: the actionner that undoes it, what it will do, and its state as JSON values.

    `state` is written to disk as JSON and read back by the actionner's `undo` (after a restart too): it
    holds only JSON values (str, int, float, bool, None, lists and objects of those).
    """

    actionner: str
    description: str  # what undoing does, for people: "remove the label a from the pod ns/x"
    state: Mapping[str, Any] = field(default_factory=dict)

    def doc(self) -> dict[str, Any]:
        return {"actionner": self.actionner, "description": self.description, "state": dict(self.state)}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Reversal:
        """The reversal `doc()` wrote; ValueError naming what is missing."""
        actionner, description, state = doc.get("actionner"), doc.get("description", ""), doc.get("state")
        if not isinstance(actionner, str) or not isinstance(description, str) or not isinstance(state, dict):
            raise ValueError("a reversal needs actionner (string), description (string) and state (object)")
        return cls(actionner, description, state)


@dataclass(frozen=True, slots=True)
class Undone:
    """What undoing did: `undone`, `already_undone` (nothing left to undo) or `conflict` (left alone)."""

    result: UndoResult
    message: str


class Reversible(ABC):
    """The capability of an actionner whose changes can be undone (its spec says `reversible=True`)."""

    @abstractmethod
    async def undo(self, reversal: Reversal) -> Undone: ...
