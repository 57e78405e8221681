"""`talon-opa actionners|outputs|notifiers list`, `talon-opa rbac` and docs/actionners.md, from the registry only.

`python -m talon_opa.cli.lists docs/actionners.md` rewrites the generated docs (a test checks they are current).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from talon_opa.catalog import default_registry
from talon_opa.core.errors import TalonError
from talon_opa.plugins import params as _params
from talon_opa.plugins.registry import Registry
from talon_opa.plugins.spec import Grant, Spec

# A plugin in use: its name, or its name and the raw parameters it is used with (narrows some grants).
Use = str | tuple[str, Mapping[str, Any] | None]

_KINDS = {"actionners": "actionner", "outputs": "output", "notifiers": "notifier"}


def main(args: argparse.Namespace) -> int:
    registry = default_registry()
    if args.command == "rbac":
        return _rbac(args, registry)
    sys.stdout.write(render_list(registry, _KINDS[args.command]))
    return 0


# --- `<kind> list`: Talon's shape (cmd/actionners.go, outputs.go, notifiers.go) ----------------------


def render_list(registry: Registry, kind: str) -> str:
    """What `talon-opa <kind>s list` prints: `--- <name> ---`, then each plugin's description as YAML."""
    parts = []
    for spec in _of_kind(registry, kind):
        parts.append(f"--- {spec.name} ---\n\n{_dump(describe(spec))}\n")
    return "".join(parts)


def describe(spec: Spec[Any]) -> dict[str, Any]:
    """One plugin as `<kind> list` shows it (keys in Talon's order; permissions are RBAC rules)."""
    short = spec.name.split(":", 1)[-1]
    parameters = {
        _params.key_of(f) + (" (required)" if _params.info(f).required else ""): value
        for f, value in zip(_params.fields(spec.params), spec.defaults().values(), strict=True)
    }
    permissions = merge_grants(spec.grants)
    out: dict[str, Any] = {}
    if spec.kind == "actionner":
        out = {"parameters": parameters, "name": short, "category": spec.category, "description": spec.description}
    elif spec.kind == "output":
        out = {"name": short, "category": spec.category, "description": spec.description, "parameters": parameters}
    else:
        out = {"name": spec.name, "description": spec.description}
        if parameters:
            out["parameters"] = parameters
    if permissions:
        out["permissions"] = permissions
    if spec.example:
        out["example"] = spec.example
    if spec.kind == "actionner":
        out |= {
            "required_output_fields": list(spec.needs_fields),
            "continue": spec.continues,
            "allow_output": spec.output != "none",
            "require_output": spec.output == "required",
        }
    return out


# --- RBAC ---------------------------------------------------------------------------------------------


def merge_grants(grants: Iterable[Grant]) -> list[dict[str, list[str]]]:
    """RBAC rules granting exactly the union of `grants`, merged and sorted (deterministic).

    Verbs are united per (apiGroup, resource); resources of one group with the same verbs share a rule.
    """
    verbs: dict[tuple[str, str], set[str]] = {}
    for g in grants:
        for group in g.api_groups:
            for resource in g.resources:
                verbs.setdefault((group, resource), set()).update(g.verbs)
    rules: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (group, resource), vs in verbs.items():
        rules.setdefault((group, tuple(sorted(vs))), []).append(resource)
    out = [
        {"apiGroups": [group], "resources": sorted(resources), "verbs": list(vs)}
        for (group, vs), resources in rules.items()
    ]
    return sorted(out, key=lambda r: (r["apiGroups"], r["resources"], r["verbs"]))


def cluster_role(registry: Registry, names: Iterable[Use], name: str) -> dict[str, Any]:
    """The least-privilege ClusterRole for these plugins (actionners, outputs or notifiers, by name).

    A use given as `(name, raw_parameters)` gets only what those parameters need (e.g. kubernetes:label
    at pod level needs no rights on nodes); a bare name gets everything the plugin may need.
    """
    grants: list[Grant] = []
    for use in names:
        plugin, raw = (use, None) if isinstance(use, str) else use
        spec = find(registry, plugin)
        if spec is None:
            raise TalonError(
                f"unknown actionner, output or notifier {plugin!r}", hint="see `talon-opa actionners list`"
            )
        grants.extend(spec.grants_used(raw))
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": merge_grants(grants),
    }


def find(registry: Registry, name: str) -> Spec[Any] | None:
    """A plugin of any kind by name; notifiers also by their lower-cased name, as Talon initialises them."""
    return (
        registry.actionner(name) or registry.output(name) or registry.notifier(name) or registry.notifier(name.lower())
    )


def uses_of(ruleset: Any, registry: Registry) -> list[Use]:
    """Every plugin a translator.model.RuleSet uses, with its parameters; unknown notifiers are skipped
    (Talon skips them at run time)."""
    out: list[Use] = []
    for rule in ruleset.rules:
        for action in rule.actions:
            out.append((action.actionner, action.parameters))
            if action.output is not None:
                out.append((action.output.target, action.output.parameters))
        out.extend(n for n in rule.notifiers if registry.notifier(n) is not None)
    return out


def _rbac(args: argparse.Namespace, registry: Registry) -> int:
    from talon_opa.translator import rules as rules_loader

    try:
        ruleset = rules_loader.load_ruleset([Path(p) for p in args.rules], registry)
    except TalonError as e:
        print(f"talon-opa rbac: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(_dump(cluster_role(registry, uses_of(ruleset, registry), args.name)))
    return 0


# --- docs/actionners.md ----------------------------------------------------------------------------------

_TITLES = {"actionner": "Actionners", "output": "Outputs", "notifier": "Notifiers"}
_INTROS = {
    "actionner": "An action's `actionner`. Parameters go under the action's `parameters`.",
    "output": "An action's `output.target`, where the artifact of `kubernetes:log` (optional), "
    "`kubernetes:download`, `kubernetes:tcpdump` and `kubernetes:sysdig` (required) is stored. "
    "Parameters go under `output.parameters`.",
    "notifier": "Named in a rule's `notifiers` or the configuration's `default_notifiers`. "
    "Settings go under `notifiers.<name>` in the configuration; values may be written as strings.",
}


def markdown(registry: Registry) -> str:
    """docs/actionners.md: every plugin, its parameters, defaults, required fields, permissions, example."""
    lines = [
        "<!-- Generated from the plugin registry by `python -m talon_opa.cli.lists docs/actionners.md`; "
        "do not edit. -->",
        "",
        "# Actionners, outputs and notifiers",
        "",
        "Every plugin talon-opa knows, generated from `actionners/registry.py` (the same data as "
        "`talon-opa actionners|outputs|notifiers list`). Parameters decode as Talon's do: keys are matched "
        "case-insensitively, unknown keys are ignored with a warning, and a value of the wrong YAML type is an "
        'error (quote strings such as `"true"` or `"50%"`; do not quote numbers). `talon-opa rbac -r rules.yaml` '
        "prints the ClusterRole that the rules in use need: the union of the permissions below (the node "
        "permissions of `kubernetes:label` and `kubernetes:annotation` only for `level: node`).",
    ]
    for kind in ("actionner", "output", "notifier"):
        specs = list(_of_kind(registry, kind))
        lines += ["", f"## {_TITLES[kind]}", "", _INTROS[kind], ""]
        lines += [f"| {kind} | description |", "| --- | --- |"]
        lines += [f"| [`{s.name}`](#{_anchor(s.name)}) | {_cell(s.description)} |" for s in specs]
        for spec in specs:
            lines += _section(spec)
    return "\n".join(lines) + "\n"


def _section(spec: Spec[Any]) -> list[str]:
    lines = ["", f"### `{spec.name}`", "", spec.description + "."]
    facts = []
    if spec.kind == "actionner":
        fields = ", ".join(" or ".join(f"`{f}`" for f in group.split("|")) for group in spec.needs_fields)
        facts += [
            f"* Required alert fields: {fields or 'none'}",
            f"* Default `continue`: `{str(spec.continues).lower()}`",
            f"* Output: {spec.output}",
        ]
    lines += ["", *facts] if facts else []
    fields_ = _params.fields(spec.params)
    if fields_:
        lines += ["", "| parameter | type | default | description |", "| --- | --- | --- | --- |"]
        for f, value in zip(fields_, spec.defaults().values(), strict=True):
            meta = _params.info(f)
            key = f"`{_params.key_of(f)}`" + (" (required)" if meta.required else "")
            kind = _params.type_name(spec.params, f)
            lines.append(f"| {key} | {kind} | {_default_text(value, meta.required)} | {_cell(meta.doc)} |")
    else:
        lines += ["", "No parameters."]
    permissions = merge_grants(spec.grants)
    if permissions:
        lines += ["", "Kubernetes permissions:", "", "```yaml", _dump(permissions).rstrip(), "```"]
    if spec.example:
        lines += ["", "Example:", "", "```yaml", spec.example.rstrip(), "```"]
    return lines


def _of_kind(registry: Registry, kind: str) -> Iterable[Spec[Any]]:
    table = {"actionner": registry.actionners, "output": registry.outputs, "notifier": registry.notifiers}[kind]
    return (plugin.spec for plugin in table.values())


def _anchor(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum() or c in "-_")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default_text(value: Any, required: bool) -> str:
    if value is None:
        return "" if required else "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, Mapping):
        return "`{}`" if not value else f"`{dict(value)}`"
    return f"`{value}`"


# --- YAML ------------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style; multi-line strings (examples) as literal blocks; no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else '"' if value == "" else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)


def write_docs(path: str | Path, registry: Registry | None = None) -> None:
    Path(path).write_text(markdown(registry or default_registry()), encoding="utf-8")


if __name__ == "__main__":
    targets: Sequence[str] = sys.argv[1:] or ["docs/actionners.md"]
    for target in targets:
        write_docs(target)
