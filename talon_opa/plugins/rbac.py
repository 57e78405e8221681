"""The least-privilege ClusterRole of the plugins in use, from the grants their specs declare."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from talon_opa.core.errors import TalonError
from talon_opa.plugins.registry import Registry
from talon_opa.plugins.spec import Grant

# A plugin in use: its name, or its name and the raw parameters it is used with (narrows some grants).
Use = str | tuple[str, Mapping[str, Any] | None]


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
        cls = registry.find(plugin)
        if cls is None:
            raise TalonError(
                f"unknown actionner, output or notifier {plugin!r}", hint="see `talon-opa actionners list`"
            )
        grants.extend(cls.spec.grants_used(raw))
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": merge_grants(grants),
    }
