"""Talon rules files → the validated, final model (translator.model), or every problem at once.

    load_ruleset(paths, registry) -> RuleSet            raises RulesError(problems)
    check_rules(paths, registry) -> Report              problems, warnings and (if valid) the RuleSet
    check_rules(paths, registry, notifier_settings=cfg.notifiers)   also warns about notifiers a rule
                                                        names that the configuration leaves unset

Warnings (unknown keys or parameters, `contexts:`, unknown notifiers, unused action blocks, type
mismatches Talon only logs) never make rules invalid; read them from `Report.warnings` (or
`load_ruleset_with_warnings`). Loading is pure: a bad file raises and changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talon_opa.core.errors import RuleProblem, RulesError
from talon_opa.plugins import runtime
from talon_opa.plugins.params import ParamsInvalid
from talon_opa.plugins.registry import Registry
from talon_opa.plugins.spec import Spec
from talon_opa.translator import load, merge, validate, yaml_positions
from talon_opa.translator.collector import collector_paused
from talon_opa.translator.model import Action, FieldCondition, Match, OutputRef, Priority, Rule, RuleSet


@dataclass(frozen=True, slots=True)
class MergedRule:
    """A rule after Talon's merge and resolution, before validation (what `rules print` shows)."""

    rule: load.RawRule
    actions: tuple[merge.Resolved, ...]


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome of loading: `ruleset` is None exactly when `problems` is not empty."""

    ruleset: RuleSet | None
    problems: tuple[RuleProblem, ...]
    warnings: tuple[RuleProblem, ...]
    merged: tuple[MergedRule, ...] = ()


def merge_files(
    paths: Sequence[str | Path], *, syntax: bool = True
) -> tuple[list[MergedRule], list[RuleProblem], list[RuleProblem]]:
    """Load, merge and resolve, with the syntactic checks (Talon's `ParseRules`, used by `rules print`)."""
    with collector_paused():
        return _merge_files(paths, syntax)


def _merge_files(
    paths: Sequence[str | Path], syntax: bool
) -> tuple[list[MergedRule], list[RuleProblem], list[RuleProblem]]:
    loaded = load.load_files(paths)
    problems, warnings = list(loaded.problems), list(loaded.warnings)
    if loaded.fatal:
        return [], problems, warnings
    merged = merge.merge_items(loaded.items)
    used: set[str] = set()
    rules: list[MergedRule] = []
    for r in merged.rules:
        actions = tuple(merge.resolve_rule(r, merged.blocks, warnings))
        used.update(a.name.value for a in r.actions)
        rules.append(MergedRule(r, actions))
        if syntax:
            problems += validate.check_syntax(r, actions)
    for name, block in merged.blocks.items():
        if name not in used:
            warnings.append(
                RuleProblem(
                    block.name.where,
                    f"action block {name!r} is not used by any rule",
                    hint="reference it from a rule with '- action: <name>' under 'actions:', or remove it",
                    action=name,
                )
            )
    return rules, problems, warnings


def check_rules(
    paths: Sequence[str | Path],
    registry: Registry,
    notifier_settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> Report:
    """Load, merge, resolve and validate (§2.4 and §2.5); build the model when there is no problem.

    With `notifier_settings` (the config's `notifiers`), also warn about each notifier a rule names whose
    settings are missing or invalid there (the server would refuse to start); without, that is not checked.
    """
    with collector_paused():
        return _check_rules(paths, registry, notifier_settings)


def _check_rules(
    paths: Sequence[str | Path], registry: Registry, notifier_settings: Mapping[str, Mapping[str, Any]] | None
) -> Report:
    rules, problems, warnings = merge_files(paths, syntax=False)
    cache: validate.DecodeCache = {}
    for mr in rules:  # rule by rule (Talon: §2.4 for all, then §2.5), so a rule's problems stay together
        problems += validate.check_rule(mr.rule, mr.actions, registry, warnings, cache)
    if notifier_settings is not None:
        warnings += _unconfigured_notifiers(rules, registry, notifier_settings)
    warnings = _once(warnings)
    if problems:
        return Report(None, tuple(problems), tuple(warnings), tuple(rules))
    model = RuleSet(tuple(_rule(mr, registry) for mr in rules), tuple(str(p) for p in paths))
    return Report(model, (), tuple(warnings + _not_runnable(model, registry)), tuple(rules))


def _not_runnable(model: RuleSet, registry: Registry) -> list[RuleProblem]:
    """Valid actions this version cannot run yet: they plan, and their steps fail (reported) at run time."""
    out: list[RuleProblem] = []
    for rule in model.rules:
        for action in rule.actions:
            plugins = [("actionner", action.actionner, registry.actionners.get(action.actionner))]
            if action.output is not None:
                plugins.append(("output", action.output.target, registry.outputs.get(action.output.target)))
            for kind, name, cls in plugins:
                if cls is not None and not runtime.runs(cls) and not rule.dry_run:
                    out.append(
                        RuleProblem(
                            action.where,
                            f"the {kind} {name} cannot run in this version of talon-opa: its steps will fail",
                            hint="set dry_run: true on the rule meanwhile, or use another " + kind,
                            rule=rule.name,
                            action=action.name,
                            field="output" if kind == "output" else "actionner",
                        )
                    )
    return _once(out)


def _unconfigured_notifiers(
    rules: Sequence[MergedRule], registry: Registry, settings: Mapping[str, Mapping[str, Any]]
) -> list[RuleProblem]:
    """Notifiers the rules name whose settings the configuration lacks (or has wrong): the server refuses
    to start with them. One warning per notifier, at the first rule naming it."""
    out: list[RuleProblem] = []
    seen: set[str] = set()
    for mr in rules:
        for n in mr.rule.notifiers:
            name = n.value
            spec = registry.notifier(name)
            if spec is None or name in seen:
                continue  # unknown names were warned about already
            seen.add(name)
            raw = settings.get(name) or settings.get(name.lower())
            try:
                spec.decode(raw or {})
            except ParamsInvalid as e:
                missing = [p.field for p in e.problems if p.message == "is required"]
                if raw is None or (missing and len(missing) == len(e.problems)):
                    keys = ", ".join(f"notifiers.{name}.{k}" for k in missing)
                    message = f"notifier {name!r} is not configured ({keys} not set): the server will refuse to start"
                    hint = f"set {keys} in the config file"
                else:
                    message = f"settings of notifier {name!r} are invalid: {e}: the server will refuse to start"
                    hint = f"fix notifiers.{name} in the config file"
                out.append(RuleProblem(n.where, message, hint=hint, rule=mr.rule.name.value, field="notifiers"))
    return out


def _once(warnings: list[RuleProblem]) -> list[RuleProblem]:
    """A warning about one place (e.g. an action block shared by many rules) is given once, for its first rule."""
    seen: set[tuple[object, ...]] = set()
    out = []
    for w in warnings:
        key = (w.where, w.message, w.field)
        if key not in seen:
            seen.add(key)
            out.append(w)
    return out


def load_ruleset(paths: Sequence[str | Path], registry: Registry) -> RuleSet:
    """The validated model of the rules files; raises RulesError with every problem."""
    return load_ruleset_with_warnings(paths, registry)[0]


def load_ruleset_with_warnings(paths: Sequence[str | Path], registry: Registry) -> tuple[RuleSet, list[RuleProblem]]:
    """Like `load_ruleset`, also returning the warnings."""
    with collector_paused():  # back on once the report (raw rules, Values) is gone: less for it to walk
        report = check_rules(paths, registry)
        if report.ruleset is None:
            raise RulesError(list(report.problems))
        ruleset, warnings = report.ruleset, list(report.warnings)
        del report
    return ruleset, warnings


# --- the final model ----------------------------------------------------------------------------------


def _rule(mr: MergedRule, registry: Registry) -> Rule:
    r = mr.rule
    return Rule(
        name=r.name.value,
        match=_match(r.match),
        actions=tuple(_action(res.action, registry) for res in mr.actions),
        where=r.where,
        description=r.description.value if r.description else "",
        continue_=validate.flag(r.continue_) != "false",  # only an explicit false stops later rules
        dry_run=validate.flag(r.dry_run) == "true",
        notifiers=tuple(n.value for n in r.notifiers),
    )


def _match(m: load.RawMatch) -> Match:
    groups: list[tuple[FieldCondition, ...]] = []
    for t in m.output_fields:
        conds = (validate.parse_condition(p) for p in validate.condition_pieces(t.value))
        groups.append(tuple(c for c in conds if c is not None))
    return Match(
        rules=tuple(t.value for t in m.rules),
        priority=validate.parse_priority(m.priority.value) if m.priority else Priority("", 0, ""),
        tags=tuple(frozenset(validate.tag_group(t.value)) for t in m.tags),
        output_fields=tuple(groups),
        source=m.source.value if m.source else "",
    )


def _action(a: load.RawAction, registry: Registry) -> Action:
    assert a.actionner is not None  # validated
    spec = registry.actionner(a.actionner.value)
    assert spec is not None  # validated
    output = None
    if a.output is not None and a.output.target is not None and a.output.target.value and spec.output != "none":
        ospec = registry.output(a.output.target.value)
        assert ospec is not None  # validated
        output = OutputRef(a.output.target.value, with_defaults(ospec, a.output.parameters))
    explicit = validate.flag(a.continue_)
    return Action(
        name=a.name.value,
        actionner=spec.name,
        parameters=with_defaults(spec, a.parameters),
        continue_=spec.continues if explicit == "" else explicit == "true",
        ignore_errors=validate.flag(a.ignore_errors) == "true",
        output=output,
        where=a.where,
        description=a.description.value if a.description else "",
        additional_contexts=tuple(t.value for t in a.additional_contexts),
    )


def with_defaults(spec: Spec[Any], params: Mapping[str, yaml_positions.Value] | None) -> dict[str, Any]:
    """The plugin's defaults overlaid with the merged parameters (JSON values); keys matched like Talon's
    decoding (exact first, else case-insensitively) are written under the canonical name; null is absent."""
    out = spec.defaults()
    given = {k: v.plain() for k, v in (params or {}).items() if v.kind != "null"}
    canonical = {k.casefold(): k for k in out}
    exact = {k for k in given if k in out}
    for k, v in given.items():
        name = k
        if k not in out:
            c = canonical.get(k.casefold())
            if c is not None and c not in exact:
                name = c
        out[name] = v
    return out
