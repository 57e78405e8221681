"""Talon's merge of rules files (reference §2.6) and resolution of rule actions against blocks (§2.7).

Items of all files are taken in order (file order, then item order); an action block or a rule whose
name was seen before is folded into its first occurrence, which keeps its position. Then every action
of every rule is completed from the action block of the same name. The algebra is Talon's, kind- and
order-sensitive, with two fixes (docs/compatibility.md): a rule override that omits `priority`/`source`
keeps the base filter, and a list parameter new in a block override is not wrapped in another list.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from talon_opa.core.errors import RuleProblem
from talon_opa.translator.load import RawAction, RawItem, RawMatch, RawOutput, RawRule
from talon_opa.translator.yaml_positions import Text, Value

_Raw = TypeVar("_Raw", RawAction, RawRule, RawMatch)


@dataclass(slots=True)
class Merged:
    """The merged action blocks (by name, in first-occurrence order) and rules (in first-occurrence order)."""

    blocks: dict[str, RawAction] = field(default_factory=dict)
    rules: list[RawRule] = field(default_factory=list)
    warnings: list[RuleProblem] = field(default_factory=list)


@dataclass(slots=True)
class Resolved:
    """A rule action after resolution, and the block it was completed from (None: no block of that name)."""

    action: RawAction
    block: RawAction | None


def merge_items(items: Sequence[RawItem]) -> Merged:
    """Fold duplicate action blocks and rules into their first occurrence (§2.6). Inputs are not modified."""
    out = Merged()
    for item in items:
        if item.block is not None:
            name = item.block.name.value
            if name in out.blocks:
                _merge_block(out.blocks[name], item.block)
            else:
                out.blocks[name] = _copy_action(item.block)
    by_name: dict[str, RawRule] = {}
    for item in items:
        if item.rule is not None:
            name = item.rule.name.value
            if name in by_name:
                _merge_rule(by_name[name], item.rule)
            else:
                by_name[name] = _copy_rule(item.rule)
                out.rules.append(by_name[name])
    return out


# Every field of the raw classes, in order: they are all set by __init__, so a copy is one call.
_FIELDS = {
    cls: operator.attrgetter(*(f.name for f in dataclasses.fields(cls))) for cls in (RawAction, RawRule, RawMatch)
}


def _shallow(obj: _Raw) -> _Raw:
    """`copy.copy` of a raw item (which goes through pickling's protocol, field by field)."""
    return type(obj)(*_FIELDS[type(obj)](obj))


def _copy_action(a: RawAction) -> RawAction:
    """A copy whose containers can be changed without touching `a` (Texts and Values are never changed)."""
    out = _shallow(a)
    out.additional_contexts = list(a.additional_contexts)
    out.parameters = dict(a.parameters) if a.parameters is not None else None
    out.broken = a.broken  # frozen: shared
    if a.output is not None:
        out.output = RawOutput(
            a.output.where, a.output.target, dict(a.output.parameters) if a.output.parameters is not None else None
        )
    return out


def _copy_rule(r: RawRule) -> RawRule:
    out = _shallow(r)
    out.match = _shallow(r.match)
    out.match.rules, out.match.tags = list(r.match.rules), list(r.match.tags)
    out.match.output_fields = list(r.match.output_fields)
    out.notifiers = list(r.notifiers)
    out.actions = [_copy_action(a) for a in r.actions]
    out.broken = r.broken
    return out


def _union(a: frozenset[str], b: frozenset[str]) -> frozenset[str]:
    """`a | b`, without a new set when one is empty (nearly always: a set is 216 bytes, times every action)."""
    return (a | b) if a and b else (a or b)


def _set(t: Text | None) -> bool:
    return t is not None and t.value != ""


def _later(base: Text | None, new: Text | None) -> Text | None:
    """Talon: a later non-empty string replaces the earlier one."""
    return new if _set(new) else base


def _merge_block(base: RawAction, new: RawAction) -> None:
    base.actionner = _later(base.actionner, new.actionner)
    base.continue_ = _later(base.continue_, new.continue_)
    base.description = _later(base.description, new.description)
    base.ignore_errors = _later(base.ignore_errors, new.ignore_errors)
    base.additional_contexts = base.additional_contexts + list(new.additional_contexts)
    base.parameters = merge_block_params(base.parameters, new.parameters)
    base.broken = _union(base.broken, new.broken)
    if new.output is not None:
        if base.output is None:
            base.output = RawOutput(new.output.where)
        if not _set(base.output.target):  # first wins, unlike every other string
            base.output.target = new.output.target
        base.output.parameters = merge_block_params(base.output.parameters, new.output.parameters)


def merge_block_params(base: dict[str, Value] | None, new: dict[str, Value] | None) -> dict[str, Value] | None:
    """Parameters of a later block `new` into the earlier `base`, per key (§2.6)."""
    if not new:
        return base
    out = dict(base) if base is not None else {}
    for k, v in new.items():
        if v.kind == "null":
            continue
        old = out.get(k)
        if old is not None and old.kind != "null" and old.kind != v.kind:
            continue  # kinds differ (string vs list, int vs float...): Talon skips silently
        if v.kind == "seq":
            # Talon wraps a list the base lacks in another list ([[...]]): our fix keeps it as written
            out[k] = v if old is None or old.kind == "null" else _with(old, tuple(old.data) + tuple(v.data))
        elif v.kind == "map":
            items = dict(old.data) if old is not None and old.kind == "map" else {}
            items.update(v.data)  # later wins per key
            out[k] = _with(old if old is not None and old.kind == "map" else v, items)
        else:
            out[k] = v
    return out


def _with(v: Value, data: object) -> Value:
    return Value(v.kind, data, v.where, v.text, v.quoted, v.key_where)


def _merge_rule(base: RawRule, new: RawRule) -> None:
    base.continue_ = _later(base.continue_, new.continue_)
    base.dry_run = _later(base.dry_run, new.dry_run)
    base.description = _later(base.description, new.description)
    base.notifiers = base.notifiers + list(new.notifiers)
    m: RawMatch = base.match
    m.output_fields = m.output_fields + list(new.match.output_fields)
    m.rules = m.rules + list(new.match.rules)
    m.tags = m.tags + list(new.match.tags)
    # Talon always replaces these, so an override that omits them clears the base filter: our fix keeps it
    if new.match.priority is not None:
        m.priority = new.match.priority
    if new.match.source is not None:
        m.source = new.match.source
    base.actions = base.actions + [_copy_action(a) for a in new.actions]
    base.broken = _union(base.broken, new.broken)


Mismatch = Callable[[str], None]  # called with the parameter key when rule and block kinds differ


def _ignore(_key: str) -> None:
    return None


def resolve_rule(rule: RawRule, blocks: dict[str, RawAction], warnings: list[RuleProblem]) -> list[Resolved]:
    """Complete each action of `rule` from the block of the same name (§2.7); the rule is not modified."""
    out: list[Resolved] = []
    for ra in rule.actions:
        block = blocks.get(ra.name.value) if ra.name.value else None
        if block is None:
            out.append(Resolved(ra, None))
            continue

        def mismatch(key: str, prefix: str, params: dict[str, Value] | None, ra: RawAction = ra) -> None:
            v = params.get(key) if params else None
            warnings.append(
                RuleProblem(
                    v.where if v is not None else ra.where,
                    "mismatch of type for a parameter: the rule's value is kept, the action block's is ignored",
                    hint="give the parameter the same type in the rule and in the action block",
                    rule=rule.name.value,
                    action=ra.name.value,
                    field=f"{prefix}{key}",
                )
            )

        out.append(Resolved(resolve_action(ra, block, mismatch), block))
    return out


def resolve_action(
    ra: RawAction, block: RawAction, on_mismatch: Callable[[str, str, dict[str, Value] | None], None] | None = None
) -> RawAction:
    """The rule action `ra` completed from `block`: strings rule-first, lists block-first, maps block-wins."""

    def warn_params(key: str) -> None:
        if on_mismatch is not None:
            on_mismatch(key, "parameters.", ra.parameters)

    def warn_output(key: str) -> None:
        if on_mismatch is not None:
            on_mismatch(key, "output.parameters.", ra.output.parameters if ra.output else None)

    res = RawAction(
        name=ra.name,
        where=ra.where,
        description=ra.description if _set(ra.description) else block.description,
        actionner=ra.actionner if _set(ra.actionner) else block.actionner,
        continue_=ra.continue_ if _set(ra.continue_) else block.continue_,
        ignore_errors=ra.ignore_errors if _set(ra.ignore_errors) else block.ignore_errors,
        additional_contexts=list(ra.additional_contexts or block.additional_contexts),
        parameters=resolve_params(ra.parameters, block.parameters, warn_params),
        output=ra.output,
        broken=_union(ra.broken, block.broken),
    )
    if ra.output is not None or block.output is not None:
        ro = ra.output or RawOutput(block.output.where if block.output else ra.where)
        bo = block.output or RawOutput(ro.where)
        res.output = RawOutput(
            ro.where,
            ro.target if _set(ro.target) else bo.target,
            resolve_params(ro.parameters, bo.parameters, warn_output),
        )
    return res


def resolve_params(
    rule: dict[str, Value] | None, block: dict[str, Value] | None, on_mismatch: Mismatch = _ignore
) -> dict[str, Value] | None:
    """Block parameters into a rule action's, per key (§2.7)."""
    if not block:
        return rule
    out = dict(rule) if rule is not None else {}
    for k, b in block.items():
        if b.kind == "null":
            continue
        r = out.get(k)
        r_set = r is not None and r.kind != "null"
        if r is not None and r_set and r.kind != b.kind:
            on_mismatch(k)  # Talon logs it at error level but the file stays valid
            continue
        if b.kind == "seq":
            out[k] = _with(b, tuple(b.data) + tuple(r.data)) if r is not None and r_set else b
        elif b.kind == "map":
            items = dict(r.data) if r is not None and r_set else {}
            items.update(b.data)  # the block wins on conflicting keys (Talon, kept)
            out[k] = _with(r if r is not None and r_set else b, items)
        elif not r_set:
            out[k] = b
    return out
