"""The typed model of a rules set after loading, merging, resolving and validating.

This is the contract between the loader (load, merge, validate) and the Rego generator: everything
here is final. Parameters are fully merged (action block + rule override + the actionner's defaults),
`continue` is resolved to a boolean, match criteria are parsed. Order is rules-file order (the
position of a rule's first occurrence across the files, as Talon merges them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from talon_opa.core.errors import Where

PriorityOp = Literal["", "=", "<", ">", "<=", ">="]


@dataclass(frozen=True, slots=True)
class Priority:
    """A priority filter: `rank` 0 means no filter (Talon: an operator alone or "" matches all)."""

    op: PriorityOp
    rank: int
    text: str  # as written, for docs and errors


@dataclass(frozen=True, slots=True)
class FieldCondition:
    """One output_fields condition: `field op value`, compared against the field's string form."""

    field: str
    op: Literal["=", "!="]
    value: str


@dataclass(frozen=True, slots=True)
class Match:
    """All criteria are AND-ed; an empty criterion accepts everything."""

    rules: tuple[str, ...] = ()  # OR: the alert's rule is one of these
    priority: Priority = Priority("", 0, "")
    tags: tuple[frozenset[str], ...] = ()  # OR of AND-groups; groups are sets (DESIGN §4)
    output_fields: tuple[tuple[FieldCondition, ...], ...] = ()  # OR of AND-groups
    source: str = ""


@dataclass(frozen=True, slots=True)
class OutputRef:
    target: str  # "local:file", "aws:s3", ...
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    actionner: str
    parameters: Mapping[str, Any]  # JSON values, defaults included
    continue_: bool  # resolved: explicit value, else the actionner's default
    ignore_errors: bool
    output: OutputRef | None
    where: Where
    description: str = ""
    additional_contexts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    match: Match
    actions: tuple[Action, ...]
    where: Where
    description: str = ""
    continue_: bool = True  # only an explicit `continue: false` stops later rules
    dry_run: bool = False
    notifiers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[Rule, ...]
    files: tuple[str, ...] = field(default=())
