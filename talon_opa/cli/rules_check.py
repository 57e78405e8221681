"""`talon-opa rules check` and `talon-opa rules print`.

check: every problem, one per line, `file:line:col: rule 'R', action 'A', field 'F': message (hint)`,
then exit 1; or the warnings and a one-line `N rules valid`, exit 0. With `-c FILE`, a notifier a rule
names whose settings the config lacks (`notifiers.slack.webhook_url`...) is warned about, as the server
would refuse to start; without `-c` the config is not read and notifier settings are not checked (as
Talon's `rules check`, which needs no config).
print: the merged rules as YAML in Talon's shape (only Talon's syntactic checks, as its `rules print`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import yaml

from talon_opa.catalog import default_registry
from talon_opa.core import config, secrets
from talon_opa.core.errors import RuleProblem
from talon_opa.plugins import params
from talon_opa.plugins.registry import Registry
from talon_opa.translator import rules as rules_mod


def format_problem(p: RuleProblem, *, warning: bool = False) -> str:
    """`file:line:col: [warning: ]rule 'R', action 'A', field 'F': message (hint)`."""
    return p.format(warning=warning)


def main(args: argparse.Namespace, registry: Registry | None = None, out: TextIO | None = None) -> int:
    """Run `rules check` or `rules print` (args.rules_command) over args.rules; returns the exit code."""
    out = out if out is not None else sys.stdout
    paths: list[str] = list(args.rules or [])
    if registry is None:
        registry = default_registry()
    if args.rules_command == "print":
        return _print(paths, out, registry)
    report = rules_mod.check_rules(paths, registry, _notifier_settings(args))
    for w in report.warnings:
        print(format_problem(w, warning=True), file=out)
    if report.ruleset is None:
        for p in report.problems:
            print(format_problem(p), file=out)
        n = len(report.problems)
        print(f"{n} problem{'s' if n != 1 else ''} found: invalid rules", file=out)
        return 1
    n = len(report.ruleset.rules)
    print(f"{n} rule{'s' if n != 1 else ''} valid", file=out)
    return 0


def _notifier_settings(args: argparse.Namespace) -> Mapping[str, Mapping[str, Any]] | None:
    """The config's notifier settings when `-c` was given (cli.main validated the file already)."""
    path = getattr(args, "config", None)
    if path is None:
        return None
    return config.load(path, rules=list(args.rules or [])).notifiers


def _print(paths: list[str], out: TextIO, registry: Registry) -> int:
    merged, problems, _warnings = rules_mod.merge_files(paths)
    if problems:
        for p in problems:
            print(format_problem(p), file=sys.stderr)
        return 1
    out.write("---\n")
    docs = [talon_shape(mr, registry) for mr in merged]
    if docs:
        out.write(yaml.safe_dump(docs, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000))
    return 0


def talon_shape(mr: rules_mod.MergedRule, registry: Registry) -> dict[str, Any]:
    """A merged rule the way Talon's `rules print` writes it (its struct order, empty fields left out).

    Parameters the plugin declares secret are printed as `<redacted>`.
    """
    r = mr.rule
    doc: dict[str, Any] = {"rule": r.name.value}
    _put(doc, "description", r.description.value if r.description else "")
    _put(doc, "continue", r.continue_.value if r.continue_ else "")
    _put(doc, "dry_run", r.dry_run.value if r.dry_run else "")
    _put(doc, "notifiers", [n.value for n in r.notifiers])
    actions = []
    for res in mr.actions:
        a = res.action
        ad: dict[str, Any] = {}
        actionner = a.actionner.value if a.actionner else ""
        _put(ad, "parameters", _masked(registry.actionners.get(actionner), a.parameters))
        if a.output is not None and (a.output.target or a.output.parameters):
            target = a.output.target.value if a.output.target else ""
            ad["output"] = {
                "parameters": _masked(registry.outputs.get(target), a.output.parameters),
                "target": a.output.target.value if a.output.target else "",
            }
        ad["action"] = a.name.value
        _put(ad, "description", a.description.value if a.description else "")
        ad["actionner"] = a.actionner.value if a.actionner else ""
        _put(ad, "continue", a.continue_.value if a.continue_ else "")
        _put(ad, "ignore_errors", a.ignore_errors.value if a.ignore_errors else "")
        _put(ad, "additional_contexts", [t.value for t in a.additional_contexts])
        actions.append(ad)
    doc["actions"] = actions
    m = r.match
    md: dict[str, Any] = {}
    _put(md, "output_fields", [t.value for t in m.output_fields])
    _put(md, "priority", m.priority.value if m.priority else "")
    _put(md, "source", m.source.value if m.source else "")
    _put(md, "rules", [t.value for t in m.rules])
    _put(md, "tags", [t.value for t in m.tags])
    doc["match"] = md
    return doc


def _masked(plugin: Any, raw: Mapping[str, Any] | None) -> dict[str, Any]:
    plain = {k: v.plain() for k, v in (raw or {}).items()}
    if plugin is None:
        return plain
    hidden = params.secret_keys(plugin.spec.params, plain)
    return {k: secrets.REDACTED if k in hidden else v for k, v in plain.items()}


def _put(d: dict[str, Any], key: str, value: Any) -> None:
    if value:
        d[key] = value
