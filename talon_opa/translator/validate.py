"""Every check Talon makes on merged rules (reference §2.4 syntactic, §2.5 semantic), reporting all at once.

Each problem names where it was written, the rule, the action and the field, and says what to do.
Our fixes (docs/compatibility.md): output-field names may contain `_` and `[...]`, a condition value may
contain `=` (split on the first `=`/`!=`); the parsers here are also what the model is built from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from talon_opa.core import priorities
from talon_opa.core.errors import RuleProblem, Where
from talon_opa.plugins import params as _params
from talon_opa.plugins.registry import Registry
from talon_opa.plugins.spec import Spec
from talon_opa.translator.load import RawRule
from talon_opa.translator.merge import Resolved
from talon_opa.translator.model import FieldCondition, Priority, PriorityOp
from talon_opa.translator.yaml_positions import Text, Value

# --- Talon's syntax (rules.go:80-90), with our fixes where noted --------------------------------------

CONTEXTS = ("aws", "k8snode")  # Talon's additional_contexts sources (reference §4)
# Go's `$` is the end of the text; Python's also matches before a final newline: hence \Z
_PRIORITY = re.compile(rf"(?i)^(<|>)?(=)?({'|'.join(priorities.NAMES)}|)\Z")
_PRIORITY_OP = re.compile(r"^(<|>)?(=)?")
_ACTIONNER = re.compile(r"[a-z]+:[a-z]+")  # unanchored and case-sensitive, as Talon's
_TAG = re.compile(r"(?i)^[a-z_0-9.]*[a-z0-9]\Z")
# Talon: (?i)^[a-z0-9.\[\]]*(!)?(=). Fix: `_` too, and anything but `]`/`=` inside brackets.
_FIELD_KEY = re.compile(r"(?i)^(?:[a-z0-9._\[\]]|\[[^\]=]*\])*!?=")


def parse_priority(text: str) -> Priority:
    """§2.8.2: the leading operator, then the rank of the rest (case-insensitive; unknown → 0)."""
    m = _PRIORITY_OP.match(text)
    op = m.group(0) if m else ""
    rank = priorities.rank(text[len(op) :])
    return Priority(_as_op(op), rank, text)


def _as_op(op: str) -> PriorityOp:
    for known in ("", "=", "<", ">", "<=", ">="):
        if op == known:
            return known
    return ""


def tag_group(item: str) -> list[str]:
    """§2.8.3: all spaces removed, split on `,` (an AND-group)."""
    return item.replace(" ", "").split(",")


def condition_pieces(item: str) -> list[str]:
    """§2.8.4: `", "` becomes `","`, then split on `,` (an AND-group of conditions)."""
    return item.replace(", ", ",").split(",")


def parse_condition(piece: str) -> FieldCondition | None:
    """One condition, split on the first `=` or `!=` (our fix: the value may contain `=`); `"` removed."""
    i = piece.find("=")
    if i < 0:
        return None
    if i > 0 and piece[i - 1] == "!":
        return FieldCondition(piece[: i - 1], "!=", piece[i + 1 :].replace('"', ""))
    return FieldCondition(piece[:i], "=", piece[i + 1 :].replace('"', ""))


# (plugin name, parameters as JSON) -> (problems, unknown keys): one per load, shared by its rules
_KEY_JSON = json.JSONEncoder(sort_keys=True, default=repr)  # what json.dumps(..., sort_keys, default) builds
DecodeCache = dict[tuple[str, str], tuple[list[_params.ParamProblem], list[str]]]

# --- the checks ---------------------------------------------------------------------------------------

_FLAG_HINT = "write true or false"


def _flag_problem(t: Text | None, key: str, rule: str, action: str = "") -> RuleProblem | None:
    if t is None or t.value in ("", "true", "false"):
        return None
    hint = _FLAG_HINT
    if t.value.lower() in ("true", "false"):
        hint = f'write {t.value.lower()} (a quoted string must be exactly "{t.value.lower()}")'
    elif t.value.lower() in ("yes", "no", "on", "off", "y", "n", "1", "0"):
        hint = f"write true or false: {t.value!r} is not a boolean here"
    return RuleProblem(
        t.where, f"'{key}' setting can be 'true' or 'false' only", hint=hint, rule=rule, action=action, field=key
    )


def _one_of(names: Sequence[str], given: str) -> str:
    import difflib  # only for a problem to report

    close = difflib.get_close_matches(given, names, n=1)
    known = ", ".join(sorted(names))
    return f"did you mean {close[0]}? known: {known}" if close else f"use one of: {known}"


def _param_hint(names: Sequence[str], given: str) -> str:
    """`did you mean ...?` for an unknown parameter; an old camelCase name finds its snake_case one."""
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", given).lower()
    if snake != given and snake in names:
        return f"did you mean {snake}? known: {', '.join(sorted(names))}"
    return _one_of(names, given)


def check_rule(
    rule: RawRule,
    actions: Sequence[Resolved],
    registry: Registry,
    warnings: list[RuleProblem],
    cache: DecodeCache | None = None,
) -> list[RuleProblem]:
    """Every problem of one merged rule (§2.4 then §2.5); warnings are appended to `warnings`."""
    problems = check_syntax(rule, actions)
    problems += check_semantics(rule, actions, registry, warnings, cache)
    return problems


def check_syntax(rule: RawRule, actions: Sequence[Resolved]) -> list[RuleProblem]:
    """§2.4 (`Rule.isValid`), every problem."""
    r = rule.name.value
    out: list[RuleProblem] = []

    def add(where: Where, message: str, hint: str, action: str = "", field: str = "") -> None:
        out.append(RuleProblem(where, message, hint=hint, rule=r, action=action, field=field))

    for p in (_flag_problem(rule.continue_, "continue", r), _flag_problem(rule.dry_run, "dry_run", r)):
        if p is not None:
            out.append(p)
    if not actions and "actions" not in rule.broken:
        add(rule.where, "no action specified", "add 'actions:' with at least one '- action: <name>'", field="actions")
    for i, res in enumerate(actions):
        a = res.action
        an = a.name.value
        if not an:
            add(a.where, "action without a name", "add 'action: <name>' to this item", field=f"actions[{i}].action")
            if a.actionner is None or not a.actionner.value:
                continue
        if a.actionner is None or not a.actionner.value:
            hint = (
                f"no action block is named {an!r}: define '- action: {an}' with an actionner, "
                "or add 'actionner: <category:name>' here"
                if res.block is None
                else f"add 'actionner: <category:name>' here or to the action block {an!r}"
            )
            add(a.where, "missing actionner", hint, action=an, field="actionner")
        elif not _ACTIONNER.search(a.actionner.value):
            add(
                a.actionner.where,
                f"incorrect actionner {a.actionner.value!r}",
                "write it as <category>:<name> in lower case, e.g. kubernetes:terminate",
                action=an,
                field="actionner",
            )
        for t, key in ((a.continue_, "continue"), (a.ignore_errors, "ignore_errors")):
            p = _flag_problem(t, key, r, an)
            if p is not None:
                out.append(p)
        if a.output is not None and a.output.target is not None and a.output.target.value and not a.output.parameters:
            add(
                a.output.target.where,
                "missing 'parameters' for the output",
                "add 'parameters:' under 'output:' (e.g. destination for local:file, bucket for aws:s3)",
                action=an,
                field="output.parameters",
            )
    m = rule.match
    if m.priority is not None and not _PRIORITY.match(m.priority.value):
        hint = f"write an optional operator (<, <=, >, >=, =) and one of: {', '.join(priorities.NAMES)}"
        if m.priority.value.lower().lstrip("<>=").startswith("info"):
            hint = f"Talon spells it Informational; {hint}"
        add(m.priority.where, f"incorrect priority '{m.priority.value}'", hint, field="match.priority")
    for i, t in enumerate(m.tags):
        for tag in tag_group(t.value):
            if not _TAG.match(tag):
                add(
                    t.where,
                    f"incorrect tag '{tag}'",
                    "a tag has only letters, digits, '_' and '.', and ends with a letter or digit; "
                    "separate the tags of a group with ', '",
                    field=f"match.tags[{i}]",
                )
    for i, t in enumerate(m.output_fields):
        for piece in condition_pieces(t.value):
            if not _FIELD_KEY.match(piece):
                add(
                    t.where,
                    f"incorrect output field key '{piece}'",
                    "write field=value or field!=value (no spaces around the operator), "
                    "conditions of a group separated by ', '",
                    field=f"match.output_fields[{i}]",
                )
    return out


def check_semantics(
    rule: RawRule,
    actions: Sequence[Resolved],
    registry: Registry,
    warnings: list[RuleProblem],
    cache: DecodeCache | None = None,
) -> list[RuleProblem]:
    """§2.5 (`validateRules`): actionner and output names and parameters, required outputs."""
    cache = cache if cache is not None else {}
    r = rule.name.value
    out: list[RuleProblem] = []
    for res in actions:
        a = res.action
        an = a.name.value
        if a.actionner is None or not _ACTIONNER.search(a.actionner.value):
            continue  # already reported by check_syntax
        spec = registry.actionner(a.actionner.value)
        if spec is None:
            out.append(
                RuleProblem(
                    a.actionner.where,
                    f"unknown actionner {a.actionner.value!r}",
                    hint=_one_of(list(registry.actionners), a.actionner.value),
                    rule=r,
                    action=an,
                    field="actionner",
                )
            )
            continue
        for ctx in a.additional_contexts:
            if ctx.value not in CONTEXTS:
                warnings.append(
                    RuleProblem(
                        ctx.where,
                        f"unknown context {ctx.value!r}: fetching it will fail at run time",
                        hint=f"use one of: {', '.join(CONTEXTS)}",
                        rule=r,
                        action=an,
                        field="additional_contexts",
                    )
                )
        if "parameters" not in a.broken:
            out += _check_params(spec, a.parameters, a.where, "parameters.", r, an, warnings, cache)
        if "output" in a.broken:
            continue
        target = a.output.target if a.output is not None else None
        if target is None or not target.value:
            if spec.output == "required":
                out.append(
                    RuleProblem(
                        a.where,
                        f"an output is required by {spec.name}",
                        hint=f"add 'output:' with 'target:' ({', '.join(sorted(registry.outputs))}) and 'parameters:'",
                        rule=r,
                        action=an,
                        field="output",
                    )
                )
            if a.output is not None and a.output.parameters:
                warnings.append(
                    RuleProblem(
                        a.output.where,
                        "output parameters without a target are ignored",
                        hint="add 'target:' under 'output:'",
                        rule=r,
                        action=an,
                        field="output.target",
                    )
                )
            continue
        assert a.output is not None
        ospec = registry.output(target.value)
        if ospec is None:
            out.append(
                RuleProblem(
                    target.where,
                    f"unknown target {target.value!r}",
                    hint=_one_of(list(registry.outputs), target.value),
                    rule=r,
                    action=an,
                    field="output.target",
                )
            )
            continue
        if a.output.parameters:  # empty: reported by check_syntax
            out += _check_params(
                ospec, a.output.parameters, a.output.where, "output.parameters.", r, an, warnings, cache
            )
        if spec.output == "none":
            warnings.append(
                RuleProblem(
                    target.where,
                    f"{spec.name} produces no artifact: its output is ignored",
                    hint="remove 'output:' from this action",
                    rule=r,
                    action=an,
                    field="output",
                )
            )
    for n in rule.notifiers:
        if registry.notifier(n.value) is None:
            warnings.append(
                RuleProblem(
                    n.where,
                    f"unknown notifier {n.value!r} is ignored",
                    hint=_one_of(list(registry.notifiers), n.value),
                    rule=r,
                    field="notifiers",
                )
            )
    return out


def _check_params(
    spec: Spec[Any],
    params: dict[str, Value] | None,
    where: Where,
    prefix: str,
    rule: str,
    action: str,
    warnings: list[RuleProblem],
    cache: DecodeCache,
) -> list[RuleProblem]:
    raw = {k: v.plain() for k, v in (params or {}).items()}
    key = (spec.name, _KEY_JSON.encode(raw))
    if key not in cache:  # many rules share one action block: decode each distinct set of parameters once
        found: list[_params.ParamProblem] = []
        try:
            spec.decode(raw)
        except _params.ParamsInvalid as e:
            found = list(e.problems)
        cache[key] = (found, spec.unknown_keys(raw))
    found, unknown = cache[key]
    out: list[RuleProblem] = []
    if found:
        for p in found:
            out.append(
                RuleProblem(
                    locate(params or {}, p.field, where),
                    p.message,
                    hint=p.hint,
                    rule=rule,
                    action=action,
                    field=prefix + p.field,
                )
            )
    for name in unknown:
        v = (params or {}).get(name)
        warnings.append(
            RuleProblem(
                (v.key_where or v.where) if v is not None else where,
                f"unknown parameter {name!r} of {spec.name} is ignored",
                hint=_param_hint(list(spec.defaults()), name),
                rule=rule,
                action=action,
                field=prefix + name,
            )
        )
    return out


_PATH = re.compile(r"\[([^\]]*)\]|\.([^.\[]+)")


def locate(params: Mapping[str, Value], path: str, default: Where) -> Where:
    """Where the value at `path` ("labels[app]", "allow_cidr[1]") was written; `default` if not found."""
    m = re.match(r"[^.\[]*", path)
    head = m.group(0) if m else path
    v = params.get(head)
    if v is None:
        v = next((x for k, x in params.items() if k.lower() == head.lower()), None)
    if v is None:
        return default
    best = v.where
    for idx, key in _PATH.findall(path[len(head) :]):
        part = idx or key
        nxt: Value | None = None
        if v.kind == "seq" and part.isdigit() and int(part) < len(v.data):
            nxt = v.data[int(part)]
        elif v.kind == "map":
            nxt = v.data.get(part)
        if nxt is None:
            break
        v, best = nxt, nxt.where
    return best


def flag(t: Text | None) -> str:
    """A validated flag's value: "true", "false" or "" (unset)."""
    return t.value if t is not None else ""
