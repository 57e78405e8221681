"""The one registry: every actionner, output and notifier, by kind and name.

A registry is a value: the engine, the translator and the CLI are handed one (`talon_opa.catalog`
builds the shipped one; tests build their own with `Registry.of`). `Registry.of` refuses a plugin that
does not declare what it is: a `spec` of a known kind, and exactly one capability (the runtime base of
its kind, or `Planned`), with known clients.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from talon_opa.plugins import clients, reversal, runtime
from talon_opa.plugins.spec import Plugin, Spec


class PluginDeclarationError(TypeError):
    """A plugin class does not declare what the registry needs; names the class and what to add."""


def _check(plugin: type[Any]) -> Spec[Any]:
    spec = getattr(plugin, "spec", None)
    if not isinstance(spec, Spec):
        raise PluginDeclarationError(f"{plugin!r} has no `spec`: give it `spec: ClassVar[Spec[...]] = Spec(...)`")
    base = runtime.RUNTIME_BASES[spec.kind]
    if issubclass(plugin, runtime.Planned) == issubclass(plugin, runtime.PluginBase):
        raise PluginDeclarationError(
            f"{spec.name}: {plugin.__name__} must subclass exactly one of {base.__name__} (it runs) or Planned"
        )
    if issubclass(plugin, runtime.PluginBase) and not issubclass(plugin, base):
        raise PluginDeclarationError(f"{spec.name} is a {spec.kind}: {plugin.__name__} must subclass {base.__name__}")
    if issubclass(plugin, reversal.Reversible) and not spec.reversible:
        # (the other way round is allowed: test doubles borrow a shipped spec; tests/test_undo.py checks the catalog)
        raise PluginDeclarationError(
            f"{spec.name}: {plugin.__name__} subclasses Reversible: declare `reversible=True` in its spec"
        )
    unknown = [c for c in spec.clients if c not in clients.KINDS]
    if unknown:
        raise PluginDeclarationError(f"{spec.name} declares unknown clients {unknown}: use {sorted(clients.KINDS)}")
    return spec


@dataclass(frozen=True)
class Registry:
    """Plugins by name, per kind, in listing order (Talon's order for `actionners list`)."""

    actionners: Mapping[str, type[Plugin]] = field(default_factory=dict)
    outputs: Mapping[str, type[Plugin]] = field(default_factory=dict)
    notifiers: Mapping[str, type[Plugin]] = field(default_factory=dict)

    @classmethod
    def of(cls, *plugins: type[Any]) -> Registry:
        """A registry of these plugins, each filed under its spec's kind and name."""
        by_kind: dict[str, dict[str, type[Plugin]]] = {"actionner": {}, "output": {}, "notifier": {}}
        for plugin in plugins:
            spec = _check(plugin)
            table = by_kind[spec.kind]
            if spec.name in table:
                raise ValueError(f"two {spec.kind}s are named {spec.name!r}: {table[spec.name]!r} and {plugin!r}")
            table[spec.name] = plugin
        return cls(
            actionners=MappingProxyType(by_kind["actionner"]),
            outputs=MappingProxyType(by_kind["output"]),
            notifiers=MappingProxyType(by_kind["notifier"]),
        )

    def actionner(self, name: str) -> Spec[Any] | None:
        """The spec of an actionner by its full name ("kubernetes:label"), None when unknown."""
        plugin = self.actionners.get(name)
        return plugin.spec if plugin is not None else None

    def output(self, name: str) -> Spec[Any] | None:
        """The spec of an output target ("aws:s3"), None when unknown."""
        plugin = self.outputs.get(name)
        return plugin.spec if plugin is not None else None

    def notifier(self, name: str) -> Spec[Any] | None:
        """The spec of a notifier ("slack"), None when unknown (names are case-sensitive, as in Talon)."""
        plugin = self.notifiers.get(name)
        return plugin.spec if plugin is not None else None

    def find(self, name: str) -> type[Plugin] | None:
        """A plugin of any kind by name; notifiers also by their lower-cased name, as Talon initialises them."""
        return (
            self.actionners.get(name)
            or self.outputs.get(name)
            or self.notifiers.get(name)
            or self.notifiers.get(name.lower())
        )

    def runs(self, name: str) -> bool:
        """Whether the plugin of that name can run in this version (False for unknown names)."""
        plugin = self.find(name)
        return plugin is not None and runtime.runs(plugin)

    def specs(self) -> Iterator[Spec[Any]]:
        """Every spec: actionners, then outputs, then notifiers, each in listing order."""
        for table in (self.actionners, self.outputs, self.notifiers):
            for plugin in table.values():
                yield plugin.spec

    def all_run(self) -> bool:
        """Every plugin can run: the "cannot run yet" marks of lists and docs then disappear."""
        return all(runtime.runs(p) for table in (self.actionners, self.outputs, self.notifiers) for p in table.values())
