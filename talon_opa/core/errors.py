"""The one error channel: every error says what happened and what to do."""

from __future__ import annotations

from dataclasses import dataclass

from talon_opa.core.slots import slot_init


class TalonError(Exception):
    """Base of every error talon-opa raises on purpose."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint  # what the operator should change

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} ({self.hint})" if self.hint else base


@slot_init  # one per YAML node of a rules file: 330,000 at 10,000 rules
@dataclass(frozen=True, slots=True)
class Where:
    """A place in a rules file (1-based line and column)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class RuleProblem:
    """One problem in the rules files, with its place and what to do about it."""

    where: Where
    message: str
    hint: str = ""
    rule: str = ""
    action: str = ""
    field: str = ""

    def __str__(self) -> str:
        return self.format()

    def format(self, *, warning: bool = False) -> str:
        """`file:line:col: [warning: ]rule 'R', action 'A', field 'F': message (hint)`."""
        names = [f"{k} {v!r}" for k, v in (("rule", self.rule), ("action", self.action), ("field", self.field)) if v]
        text = f"{self.where}: {'warning: ' if warning else ''}"
        text += f"{', '.join(names)}: {self.message}" if names else self.message
        return f"{text} ({self.hint})" if self.hint else text


class RulesError(TalonError):
    """The rules files are invalid; carries every problem found, not only the first."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        self.problems = problems
        lines = "\n".join(str(p) for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the rules:\n{lines}", hint="")


class AlertError(TalonError):
    """An alert could not be decoded; `field` names the offending key ("" for the whole body)."""

    def __init__(self, message: str, *, field: str = "", status: int = 400, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.field = field
        self.status = status


class StepFailed(TalonError):
    """An action failed; reported, traced and counted."""


class OpaError(TalonError):
    """OPA could not give a decision (unreachable, error answer, or no result)."""
