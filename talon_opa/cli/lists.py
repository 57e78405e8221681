"""`talon-opa actionners|outputs|notifiers list` and `talon-opa rbac`, for the shipped registry.

`python -m talon_opa.cli.lists docs/actionners.md` rewrites the generated docs (a test checks they are current).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from talon_opa.catalog import default_registry
from talon_opa.core.errors import TalonError
from talon_opa.plugins import docs, rbac
from talon_opa.plugins.registry import Registry
from talon_opa.translator import rules as rules_loader
from talon_opa.translator.model import RuleSet

_KINDS = {"actionners": "actionner", "outputs": "output", "notifiers": "notifier"}


def main(args: argparse.Namespace) -> int:
    registry = default_registry()
    if args.command == "rbac":
        return _rbac(args, registry)
    sys.stdout.write(docs.render_list(registry, _KINDS[args.command]))
    return 0


def uses_of(ruleset: RuleSet, registry: Registry) -> list[rbac.Use]:
    """Every plugin the rules use, with its parameters; unknown notifiers are skipped (Talon skips them)."""
    out: list[rbac.Use] = []
    for rule in ruleset.rules:
        for action in rule.actions:
            out.append((action.actionner, action.parameters))
            if action.output is not None:
                out.append((action.output.target, action.output.parameters))
        out.extend(n for n in rule.notifiers if registry.notifier(n) is not None)
    return out


def _rbac(args: argparse.Namespace, registry: Registry) -> int:
    try:
        ruleset = rules_loader.load_ruleset([Path(p) for p in args.rules], registry)
    except TalonError as e:
        print(f"talon-opa rbac: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(docs.dump_yaml(rbac.cluster_role(registry, uses_of(ruleset, registry), args.name)))
    return 0


def write_docs(path: str | Path, registry: Registry | None = None) -> None:
    Path(path).write_text(docs.markdown(registry or default_registry()), encoding="utf-8")


if __name__ == "__main__":
    targets: Sequence[str] = sys.argv[1:] or ["docs/actionners.md"]
    for target in targets:
        write_docs(target)
