"""The one registry: every actionner, output and notifier talon-opa knows.

Adding a plugin is one module (a class with a `spec`) and one line in `default_registry`. The registry is
a value: the engine, the translator and the tests are handed one (tests build their own with `Registry.of`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from talon_opa.plugins.spec import Plugin, Spec


@dataclass(frozen=True)
class Registry:
    """Plugins by name, per kind, in listing order (Talon's order for `actionners list`)."""

    actionners: Mapping[str, type[Plugin]] = field(default_factory=dict)
    outputs: Mapping[str, type[Plugin]] = field(default_factory=dict)
    notifiers: Mapping[str, type[Plugin]] = field(default_factory=dict)

    @classmethod
    def of(cls, *plugins: type[Plugin]) -> Registry:
        """A registry of these plugins, each filed under its spec's kind and name."""
        by_kind: dict[str, dict[str, type[Plugin]]] = {"actionner": {}, "output": {}, "notifier": {}}
        for plugin in plugins:
            spec = plugin.spec
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

    def specs(self) -> Iterator[Spec[Any]]:
        """Every spec: actionners, then outputs, then notifiers, each in listing order."""
        for table in (self.actionners, self.outputs, self.notifiers):
            for plugin in table.values():
                yield plugin.spec
