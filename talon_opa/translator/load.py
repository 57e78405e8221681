"""Talon's rules-file schema: the items of rules files (action blocks, rules) as raw items, every key
and value with the place it was written (the positioned YAML comes from translator.yaml_positions).

Decoding follows Talon's (yaml.v3, non-strict): the top level is a sequence; every item is read both as
an action block (named by `action:`) and as a rule (named by `rule:`); unknown keys are ignored (with a
warning); string fields take a scalar's literal text. Our fixes (docs/compatibility.md): YAML booleans in
any case are booleans for the flags, a bare `-` item is an error instead of a crash, and every problem
names file:line:column.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from talon_opa.core.errors import RuleProblem, RulesError, Where
from talon_opa.translator import yaml_positions
from talon_opa.translator.yaml_positions import Text, Value, kind_name


@dataclass(slots=True)
class RawOutput:
    where: Where
    target: Text | None = None
    parameters: dict[str, Value] | None = None


@dataclass(slots=True)
class RawAction:
    """An action block (top-level `action:` item) or an action of a rule, as written (or merged)."""

    name: Text
    where: Where
    description: Text | None = None
    actionner: Text | None = None
    continue_: Text | None = None
    ignore_errors: Text | None = None
    additional_contexts: list[Text] = field(default_factory=list)
    parameters: dict[str, Value] | None = None  # each Value knows where its key was written
    output: RawOutput | None = None
    broken: frozenset[str] = frozenset()  # keys already reported while decoding (no cascades); shared when empty


@dataclass(slots=True)
class RawMatch:
    where: Where
    rules: list[Text] = field(default_factory=list)
    priority: Text | None = None  # None: not written (our fix: an override that omits it keeps the base)
    tags: list[Text] = field(default_factory=list)
    output_fields: list[Text] = field(default_factory=list)
    source: Text | None = None


@dataclass(slots=True)
class RawRule:
    name: Text
    where: Where
    match: RawMatch
    description: Text | None = None
    continue_: Text | None = None
    dry_run: Text | None = None
    notifiers: list[Text] = field(default_factory=list)
    actions: list[RawAction] = field(default_factory=list)
    broken: frozenset[str] = frozenset()  # keys already reported while decoding (no cascades); shared when empty


@dataclass(slots=True)
class RawItem:
    """One top-level list item: an action block, a rule, both (Talon reads it twice), or neither."""

    where: Where
    block: RawAction | None
    rule: RawRule | None


@dataclass(slots=True)
class Loaded:
    items: list[RawItem] = field(default_factory=list)
    problems: list[RuleProblem] = field(default_factory=list)
    warnings: list[RuleProblem] = field(default_factory=list)
    fatal: bool = False  # a file could not be read or parsed at all: merging would be misleading


_ACTION_KEYS = (
    "action",
    "description",
    "actionner",
    "continue",
    "ignore_errors",
    "additional_contexts",
    "parameters",
    "output",
)
_RULE_KEYS = ("rule", "description", "continue", "dry_run", "notifiers", "match", "actions")
_RULE_ONLY = ("match", "actions", "notifiers", "dry_run")
_ACTION_ONLY = ("actionner", "parameters", "output", "ignore_errors", "additional_contexts")
_MATCH_KEYS = ("rules", "priority", "tags", "output_fields", "source")
_OUTPUT_KEYS = ("target", "parameters")
_ITEM_KNOWN = frozenset(_ACTION_KEYS) | frozenset(_RULE_KEYS)
_ACTION_KNOWN = frozenset(_ACTION_KEYS)
_MATCH_KNOWN = frozenset(_MATCH_KEYS)

# Names of Talon's first docs generation, read as today's with a warning naming the new spelling.
ACTIONNER_ALIASES = {"kubernetes:labelize": "kubernetes:label"}
PARAMETER_ALIASES = {"kubernetes:networkpolicy": {"allow": "allow_cidr"}}
_FIRST_GENERATION_PARAMETERS = ("parameters", "arguments", "options")
_OUTPUT_KNOWN = frozenset(_OUTPUT_KEYS)


def load_files(paths: Sequence[str | Path]) -> Loaded:
    """Read every file in order; problems of all files are collected, none raised."""
    out = Loaded()
    if not paths:
        out.problems.append(
            RuleProblem(Where("<rules>", 0, 0), "no rule file is provided", hint="pass one or more -r FILE")
        )
        out.fatal = True
        return out
    for path in paths:
        _load_file(str(path), out)
    return out


def load_text(text: str, file: str, out: Loaded | None = None) -> Loaded:
    """Decode one file's content (used by tests and by `load_files`)."""
    out = out if out is not None else Loaded()
    if yaml_positions.Items.streamable(text):
        try:
            items = yaml_positions.Items.open(text, file)
        except RulesError as e:
            out.problems.extend(e.problems)
            out.fatal = True
            return out
        if items is not None:
            _load_items(items, file, out)
            return out
    try:
        docs = yaml_positions.compose(text, file)
    except RulesError as e:
        out.problems.extend(e.problems)
        out.fatal = True
        return out
    if not docs:
        return out
    dec = _Decoder(out)
    if len(docs) > 1:
        out.warnings.append(_other_documents(yaml_positions.node_where(file, docs[1])))
    first = docs[0]
    del docs  # the nodes (most of the loader's memory at 10,000 rules) go as soon as they are decoded
    root = yaml_positions.Decoder(file, dec.report).consume(first, text)
    del first
    if root is None:
        out.fatal = True
        return out
    if root.kind == "null":
        return out
    if root.kind != "seq":
        out.problems.append(
            RuleProblem(
                root.where,
                f"the top level of a rules file must be a list, not a {kind_name(root.kind)}",
                hint="start each rule with '- rule: <name>' and each action block with '- action: <name>'",
            )
        )
        out.fatal = True
        return out
    for item in root.data:
        dec.item(item)
    return out


def _load_items(items: yaml_positions.Items, file: str, out: Loaded) -> None:
    """`load_text` for a file whose first document is a list, decoding each item as its events are read:
    at 10,000 rules the engine's peak was the whole file's nodes (263 MB). The outcome is the one of decoding
    the file at once: the problems of decoding every item first, then those of the items (none when an item
    could not be decoded), and a file that is not YAML is its syntax error alone."""
    problems = len(out.problems)
    decoded = Loaded()  # what the items give, added once every item is decoded
    dec = _Decoder(decoded, known=out.problems)
    values = yaml_positions.Decoder(file, _Decoder(out).report)
    failed = False
    try:
        for v in items.values(values):
            if v is None:
                failed = True
            elif not failed:
                dec.item(v)
        second = items.next_document()
    except RulesError as e:
        del out.problems[problems:]
        out.problems.extend(e.problems)
        out.fatal = True
        return
    if second is not None:
        out.warnings.append(_other_documents(second))
    if failed:
        out.fatal = True
        return
    out.problems += decoded.problems
    out.warnings += decoded.warnings
    out.items += decoded.items


def _other_documents(second: Where) -> RuleProblem:
    return RuleProblem(
        second,
        "only the first YAML document of a rules file is read (as Talon does)",
        hint="put every rule and action in one list, or split them into several -r files",
    )


def _load_file(file: str, out: Loaded) -> None:
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        out.problems.append(
            RuleProblem(Where(file, 0, 0), f"cannot read the rules file: {reason}", hint="check the path given with -r")
        )
        out.fatal = True
        return
    load_text(text, file, out)


class _Decoder:
    """Turns the Values of one file into RawActions/RawRules, collecting problems."""

    def __init__(self, out: Loaded, known: list[RuleProblem] | None = None) -> None:
        self.out = out
        self._known = known if known is not None else []  # problems already reported elsewhere (not twice)

    # --- Values → raw items ---------------------------------------------------------------------------
    def item(self, v: Value) -> None:
        if v.kind == "null":
            self.report(
                v.where,
                "empty list item: a bare '-' is neither a rule nor an action",
                "remove the '-' line or complete the item",
            )
            return
        if v.kind != "map":
            self.report(
                v.where,
                f"a list item must be a mapping (a rule or an action), not a {kind_name(v.kind)}",
                "write '- rule: <name>' or '- action: <name>' followed by its keys",
            )
            return
        m: dict[str, Value] = v.data
        if "rule" not in m and "name" in m and m.get("action") is not None and m["action"].kind == "map":
            m = self._first_generation(m)
        action_name = self._string(m, "action", "", "")
        rule_name = self._string(m, "rule", rule_name_of(m), "")
        self._unknown(m, _ITEM_KNOWN, rule_name_of(m), action_name.value if action_name else "")
        block = None
        if action_name is not None and action_name.value:
            block = self._action(m, v.where, action_name, rule="")
        else:
            # decoded anyway, as Talon does, so type errors in action keys are reported
            self._action(m, v.where, Text("", v.where), rule=rule_name.value if rule_name else "", check_only=True)
        rule = None
        if rule_name is not None and rule_name.value:
            rule = self._rule(m, v.where, rule_name)
        else:
            self._rule(m, v.where, Text("", v.where), check_only=True)
            if block is None:
                self.out.warnings.append(
                    RuleProblem(
                        v.where,
                        "this item has neither a 'rule:' nor an 'action:' name and is ignored",
                        hint="name it with 'rule: <name>' or 'action: <name>'",
                    )
                )
        if block is not None and rule is None:
            self._misplaced(m, _RULE_ONLY, block.name.value, "", f"did you mean 'rule: {block.name.value}'?")
        if rule is not None and block is None:
            self._misplaced(m, _ACTION_ONLY, rule.name.value, "", "put it on an action under 'actions:'")
        self.out.items.append(RawItem(v.where, block, rule))

    def _first_generation(self, m: dict[str, Value]) -> dict[str, Value]:
        """A rule of Talon's first README (`name:` and one `action:` mapping with `name:` and `parameters:`,
        earlier `arguments:` or `options:`), rewritten as `rule:` with one action, with a warning."""
        name, act = m["name"], m["action"]
        am: dict[str, Value] = act.data
        rule = name.text if name.kind not in ("seq", "map", "null") else ""
        action: dict[str, Value] = {"action": Value("str", rule, act.where, rule)}
        if "name" in am:
            action["actionner"] = am["name"]
        for key in _FIRST_GENERATION_PARAMETERS:
            if key in am:
                action.setdefault("parameters", am[key])
        for key, value in am.items():
            if key not in ("name", *_FIRST_GENERATION_PARAMETERS):
                action.setdefault(key, value)
        self.out.warnings.append(
            RuleProblem(
                name.key_where or name.where,
                "first-generation rule syntax ('name:' with one 'action:' mapping) is read as 'rule:' with one action",
                hint=f"write '- rule: {rule}' and 'actions:' with '- action: <name>', 'actionner: "
                f"{am['name'].text if 'name' in am else '...'}' and 'parameters:'",
                rule=rule,
                field="name",
            )
        )
        rewritten = {k: v for k, v in m.items() if k not in ("name", "action")}
        rewritten["rule"] = name
        rewritten["actions"] = Value("seq", (Value("map", action, act.where, key_where=act.key_where),), act.where)
        return rewritten

    def _aliases(self, act: RawAction, rule: str) -> None:
        """Old names of an actionner or of its parameters: read as the new ones, with a warning."""
        if act.actionner is not None and act.actionner.value in ACTIONNER_ALIASES:
            old, new = act.actionner.value, ACTIONNER_ALIASES[act.actionner.value]
            self.out.warnings.append(
                RuleProblem(
                    act.actionner.where,
                    f"{old!r} is the old name of {new!r}",
                    hint=f"write 'actionner: {new}'",
                    rule=rule,
                    action=act.name.value,
                    field="actionner",
                )
            )
            act.actionner = Text(new, act.actionner.where)
        actionner = act.actionner.value if act.actionner is not None else ""
        for target, renames in PARAMETER_ALIASES.items():
            if act.parameters is None or actionner != target:
                continue
            for old, new in renames.items():
                if old not in act.parameters or new in act.parameters:
                    continue
                value = act.parameters.pop(old)
                act.parameters[new] = value
                self.out.warnings.append(
                    RuleProblem(
                        value.key_where or value.where,
                        f"parameter {old!r} of {target} is the old name of {new!r}",
                        hint=f"write '{new}:'",
                        rule=rule,
                        action=act.name.value,
                        field="parameters." + old,
                    )
                )

    def _misplaced(self, m: dict[str, Value], keys: tuple[str, ...], rule: str, action: str, hint: str) -> None:
        for k in keys:
            if k in m:
                v = m[k]
                kind = "an action block" if keys is _RULE_ONLY else "a rule"
                self.out.warnings.append(
                    RuleProblem(
                        v.key_where or v.where,
                        f"{k!r} has no meaning on {kind} and is ignored",
                        hint=hint,
                        rule=rule if keys is _ACTION_ONLY else "",
                        action=rule if keys is _RULE_ONLY else action,
                        field=k,
                    )
                )

    def _rule(self, m: dict[str, Value], where: Where, name: Text, check_only: bool = False) -> RawRule:
        r = name.value
        ctx = ("", "") if check_only else (r, "")
        match_v = m.get("match")
        match = RawMatch(match_v.where if match_v else where)
        if match_v is not None and match_v.kind == "map":
            mm: dict[str, Value] = match_v.data
            self._unknown(mm, _MATCH_KNOWN, *ctx, prefix="match.")
            match.rules = self._strings(mm, "rules", *ctx, prefix="match.")
            match.priority = self._string(mm, "priority", *ctx, prefix="match.", keep_null=False)
            match.tags = self._strings(mm, "tags", *ctx, prefix="match.")
            match.output_fields = self._strings(mm, "output_fields", *ctx, prefix="match.")
            match.source = self._string(mm, "source", *ctx, prefix="match.", keep_null=False)
        elif match_v is not None and match_v.kind != "null":
            self._type(match_v, "a mapping", "match", *ctx, "write 'match:' followed by indented keys")
        rule = RawRule(
            name=name,
            where=where,
            match=match,
            description=self._string(m, "description", *ctx),
            continue_=self._flag(m, "continue", *ctx),
            dry_run=self._flag(m, "dry_run", *ctx),
            notifiers=self._strings(m, "notifiers", *ctx),
        )
        acts = m.get("actions")
        if acts is not None and acts.kind == "seq":
            for i, a in enumerate(acts.data):
                if a.kind in ("null", "str", "int", "float", "bool", "seq"):
                    rule.broken |= {"actions"}
                if a.kind == "null":
                    self.report(
                        a.where,
                        "empty action: a bare '-' in 'actions'",
                        "remove the '-' line or write '- action: <name>'",
                        *ctx,
                        f"actions[{i}]",
                    )
                    continue
                if a.kind != "map":
                    self._type(a, "a mapping", f"actions[{i}]", *ctx, "write '- action: <name>' and its keys")
                    continue
                am: dict[str, Value] = a.data
                an = self._string(am, "action", r, "", prefix=f"actions[{i}].")
                self._unknown(am, _ACTION_KNOWN, r, an.value if an else "", "")
                rule.actions.append(self._action(am, a.where, an or Text("", a.where), rule=r))
        elif acts is not None and acts.kind != "null":
            rule.broken |= {"actions"}
            self._type(acts, "a list", "actions", *ctx, "write 'actions:' followed by '- action: <name>' items")
        return rule

    def _action(self, m: dict[str, Value], where: Where, name: Text, rule: str, check_only: bool = False) -> RawAction:
        ctx = ("", "") if check_only else (rule, name.value)
        act = RawAction(
            name=name,
            where=where,
            description=self._string(m, "description", *ctx),
            actionner=self._string(m, "actionner", *ctx),
            continue_=self._flag(m, "continue", *ctx),
            ignore_errors=self._flag(m, "ignore_errors", *ctx),
            additional_contexts=self._strings(m, "additional_contexts", *ctx),
        )
        act.parameters = self._params(m, "parameters", *ctx)
        if act.parameters is None and m.get("parameters") is not None and m["parameters"].kind not in ("null", "map"):
            act.broken |= {"parameters"}
        out_v = m.get("output")
        if out_v is not None and out_v.kind == "map":
            om: dict[str, Value] = out_v.data
            self._unknown(om, _OUTPUT_KNOWN, *ctx, prefix="output.")
            act.output = RawOutput(out_v.where, self._string(om, "target", *ctx, prefix="output."))
            act.output.parameters = self._params(om, "parameters", *ctx, prefix="output.")
            target_v, params_v = om.get("target"), om.get("parameters")
            if (target_v is not None and target_v.kind in ("seq", "map")) or (
                params_v is not None and params_v.kind not in ("null", "map")
            ):
                act.broken |= {"output"}
        elif out_v is not None and out_v.kind != "null":
            act.broken |= {"output"}
            self._type(out_v, "a mapping", "output", *ctx, "write 'output:' with 'target:' and 'parameters:'")
        if not check_only:
            self._aliases(act, rule)
        return act

    # --- typed field readers --------------------------------------------------------------------------
    def _string(
        self, m: dict[str, Value], key: str, rule: str, action: str, prefix: str = "", keep_null: bool = True
    ) -> Text | None:
        v = m.get(key)
        if v is None:
            return None
        if v.kind == "null":
            return Text("", v.where) if keep_null else None
        if v.kind in ("seq", "map"):
            self._type(v, "a string", prefix + key, rule, action, f"write a single value for {key!r}")
            return None
        return Text(v.text, v.where)

    def _flag(self, m: dict[str, Value], key: str, rule: str, action: str) -> Text | None:
        t = self._string(m, key, rule, action)
        v = m.get(key)
        if t is not None and v is not None and not v.quoted and v.text.lower() in ("true", "false"):
            t.value = v.text.lower()  # our fix: TRUE/True/False are YAML booleans, not other strings
        return t

    def _strings(self, m: dict[str, Value], key: str, rule: str, action: str, prefix: str = "") -> list[Text]:
        v = m.get(key)
        if v is None or v.kind == "null":
            return []
        if v.kind != "seq":
            example = json.dumps(v.text) if v.kind != "map" else "..."
            self._type(v, "a list", prefix + key, rule, action, f"write a list: {key}: [{example}]")
            return []
        out: list[Text] = []
        for i, item in enumerate(v.data):
            if item.kind in ("seq", "map"):
                self._type(item, "a string", f"{prefix}{key}[{i}]", rule, action, "write a single value per item")
                continue
            out.append(Text(item.text if item.kind != "null" else "", item.where))
        return out

    def _params(
        self, m: dict[str, Value], key: str, rule: str, action: str, prefix: str = ""
    ) -> dict[str, Value] | None:
        v = m.get(key)
        if v is None or v.kind == "null":
            return None
        if v.kind != "map":
            self._type(v, "a mapping", prefix + key, rule, action, f"write '{key}:' followed by indented 'name: value'")
            return None
        return dict(v.data)

    # --- problems -------------------------------------------------------------------------------------
    def _unknown(self, m: dict[str, Value], known: frozenset[str], rule: str, action: str, prefix: str = "") -> None:
        for k, v in m.items():
            if k in known:
                continue
            hint = f"known keys here: {', '.join(sorted(known))}"
            if k == "contexts":
                hint = "did you mean additional_contexts?"
            self.out.warnings.append(
                RuleProblem(
                    v.key_where or v.where,
                    f"unknown key {prefix + k!r} is ignored",
                    hint=hint,
                    rule=rule,
                    action=action,
                    field=prefix + k,
                )
            )

    def _type(self, v: Value, expected: str, fld: str, rule: str, action: str, hint: str) -> None:
        self.report(v.where, f"{fld!r} must be {expected}, not a {kind_name(v.kind)}", hint, rule, action, fld)

    def report(self, where: Where, message: str, hint: str, rule: str = "", action: str = "", fld: str = "") -> None:
        """A problem, unless the same one (place and message) is already known."""
        if any(p.where == where and p.message == message for p in itertools.chain(self._known, self.out.problems)):
            return  # an item is decoded twice (as an action and as a rule): report each problem once
        self.out.problems.append(RuleProblem(where, message, hint=hint, rule=rule, action=action, field=fld))


def rule_name_of(m: dict[str, Value]) -> str:
    v = m.get("rule")
    return v.text if v is not None and v.kind not in ("seq", "map", "null") else ""
