"""What `talon-opa actionners|outputs|notifiers list` prints and docs/actionners.md, from a registry only.

Until every plugin of the registry can run, both mark the ones that cannot yet (`Planned`); once all run,
the marks disappear by themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from talon_opa.plugins import clients, params
from talon_opa.plugins.rbac import merge_grants
from talon_opa.plugins.registry import Registry
from talon_opa.plugins.spec import Spec


def render_list(registry: Registry, kind: str) -> str:
    """What `talon-opa <kind>s list` prints: `--- <name> ---`, then each plugin's description as YAML."""
    marks = not registry.all_run()
    parts = []
    for spec in _of_kind(registry, kind):
        runs = registry.runs(spec.name) if marks else None
        parts.append(f"--- {spec.name} ---\n\n{dump_yaml(describe(spec, runs))}\n")
    return "".join(parts)


def describe(spec: Spec[Any], runs: bool | None = None) -> dict[str, Any]:
    """One plugin as `<kind> list` shows it (keys in Talon's order; permissions are RBAC rules).

    `runs`: whether it can run in this version, shown as `can_run` (None: not shown).
    """
    short = spec.name.split(":", 1)[-1]
    parameters = {
        params.key_of(f) + (" (required)" if params.info(f).required else ""): value
        for f, value in zip(params.fields(spec.params), spec.defaults().values(), strict=True)
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
    if runs is not None:
        out["can_run"] = runs
    if spec.clients:
        out["clients"] = [_client_text(name) for name in spec.clients]
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
            "reversible": spec.reversible,
        }
    return out


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
        "Every plugin talon-opa knows, generated from the registry in `talon_opa/catalog.py` (the same data as "
        "`talon-opa actionners|outputs|notifiers list`). Parameters decode as Talon's do: keys are matched "
        "case-insensitively, unknown keys are ignored with a warning, and a value of the wrong YAML type is an "
        'error (quote strings such as `"true"` or `"50%"`; do not quote numbers). `talon-opa rbac -r rules.yaml` '
        "prints the ClusterRole that the rules in use need: the union of the permissions below (the node "
        "permissions of `kubernetes:label` and `kubernetes:annotation` only for `level: node`).",
    ]
    marks = not registry.all_run()
    if marks:
        lines += ["", _NOT_YET_INTRO]
    for kind in ("actionner", "output", "notifier"):
        specs = list(_of_kind(registry, kind))
        lines += ["", f"## {_TITLES[kind]}", "", _INTROS[kind], ""]
        undo = kind == "actionner"  # the reversible column (docs/undo.md)
        head = f"| {kind} |" + (" runs in this version |" if marks else "") + (" undo |" if undo else "")
        lines += [head + " description |", "| --- " * head.count("|") + "|"]
        for s in specs:
            row = f"| [`{s.name}`](#{_anchor(s.name)}) |"
            row += f" {'yes' if registry.runs(s.name) else 'not yet'} |" if marks else ""
            row += f" {'reversible' if s.reversible else 'no'} |" if undo else ""
            lines.append(row + f" {_cell(s.description)} |")
        for spec in specs:
            lines += _section(spec, registry.runs(spec.name) if marks else None)
    return "\n".join(lines) + "\n"


def _section(spec: Spec[Any], runs: bool | None) -> list[str]:
    lines = ["", f"### `{spec.name}`", "", spec.description + "."]
    if runs is False:
        lines += ["", _NOT_YET]
    facts = []
    if spec.kind == "actionner":
        fields = ", ".join(" or ".join(f"`{f}`" for f in group.split("|")) for group in spec.needs_fields)
        facts += [
            f"* Required alert fields: {fields or 'none'}",
            f"* Default `continue`: `{str(spec.continues).lower()}`",
            f"* Output: {spec.output}",
            "* Undo: " + (_REVERSIBLE if spec.reversible else "not reversible"),
        ]
    if spec.clients:
        facts.append("* Clients: " + ", ".join(_client_text(name) for name in spec.clients))
    lines += ["", *facts] if facts else []
    fields_ = params.fields(spec.params)
    if fields_:
        lines += ["", "| parameter | type | default | description |", "| --- | --- | --- | --- |"]
        for f, value in zip(fields_, spec.defaults().values(), strict=True):
            meta = params.info(f)
            key = (
                f"`{params.key_of(f)}`"
                + (" (required)" if meta.required else "")
                + (" (secret)" if meta.secret else "")
            )
            kind = params.type_name(spec.params, f)
            lines.append(f"| {key} | {kind} | {_default_text(value, meta.required)} | {_cell(meta.doc)} |")
    else:
        lines += ["", "No parameters."]
    permissions = merge_grants(spec.grants)
    if permissions:
        lines += ["", "Kubernetes permissions:", "", "```yaml", dump_yaml(permissions).rstrip(), "```"]
    if spec.example:
        lines += ["", "Example:", "", "```yaml", spec.example.rstrip(), "```"]
    return lines


_REVERSIBLE = "reversible: `talon-opa undo` or a TTL puts back what the step changed ([undo](undo.md))"
_NOT_YET_INTRO = (
    "Plugins marked **not yet** are declared (parameters, validation, docs, RBAC) but cannot run in this "
    'version: `talon-opa rules check` warns about them, and a step using one fails with "cannot run in this '
    'version" (set `dry_run: true` on the rule meanwhile).'
)
_NOT_YET = "**Cannot run in this version yet**: a step using it fails (set `dry_run: true` on the rule meanwhile)."


def _client_text(name: str) -> str:
    key = clients.KINDS[name].config_key
    return f"`{name}` (configured by `{key}`)" if key else f"`{name}`"


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


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)
