"""The one registry: every actionner, output and notifier, by kind and name.

A registry is a value: the engine, the translator and the CLI are handed one (`talon_opa.catalog`
builds the shipped one with `Registry.shipped`; tests build their own with `Registry.of`). A registry
refuses a plugin that does not declare what it is: a `spec` of a known kind, and exactly one capability
(the runtime base of its kind, or `Planned`), with known clients.

The shipped registry names each plugin by the module and class that hold it, and imports a plugin's
module the first time the plugin is asked for: a start imports the plugins its rules and config use, not
the thirty it ships (docs/performance.md). Listing names imports nothing; a plugin's spec, or every
plugin (`values()`, `specs()`, the docs), imports what it needs.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
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


class Plugins(Mapping[str, type[Plugin]]):
    """The plugins of one kind, by name, in listing order; each class imported when first looked up.

    `where` names a plugin's class as "module:Class"; what that class declares must be that kind and name
    (PluginDeclarationError otherwise, when it is first looked up).
    """

    def __init__(self, kind: str, where: Mapping[str, str], loaded: Mapping[str, type[Plugin]] | None = None) -> None:
        self.kind = kind
        self._where = dict(where)
        self._loaded: dict[str, type[Plugin]] = dict(loaded or {})
        self._lock = threading.Lock()  # a reload's build (a worker thread) may look one up as the loop does

    @classmethod
    def of(cls, kind: str, plugins: Mapping[str, type[Plugin]]) -> Plugins:
        """Plugins already imported."""
        return cls(kind, {n: origin(p) for n, p in plugins.items()}, plugins)

    def origin(self, name: str) -> str:
        """The plugin's class as "module:Class", without importing it; KeyError when unknown."""
        return self._where[name]

    def __getitem__(self, name: str) -> type[Plugin]:
        plugin = self._loaded.get(name)
        if plugin is not None:
            return plugin
        where = self._where[name]
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = _load(self.kind, name, where)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where


def origin(plugin: type[Any]) -> str:
    return f"{plugin.__module__}:{plugin.__qualname__}"


def _load(kind: str, name: str, where: str) -> type[Plugin]:
    module, _, qualname = where.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    spec = _check(found)
    if (spec.kind, spec.name) != (kind, name):
        raise PluginDeclarationError(
            f"{where} declares the {spec.kind} {spec.name!r}: the registry files it as the {kind} {name!r}"
        )
    return found  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Registry:
    """Plugins by name, per kind, in listing order (Talon's order for `actionners list`)."""

    actionners: Plugins = field(default_factory=lambda: Plugins("actionner", {}))
    outputs: Plugins = field(default_factory=lambda: Plugins("output", {}))
    notifiers: Plugins = field(default_factory=lambda: Plugins("notifier", {}))

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
        return cls._tables({kind: Plugins.of(kind, table) for kind, table in by_kind.items()})

    @classmethod
    def shipped(cls, *plugins: tuple[str, str, str]) -> Registry:
        """A registry of (kind, name, "module:Class") lines, each class imported when first looked up."""
        by_kind: dict[str, dict[str, str]] = {"actionner": {}, "output": {}, "notifier": {}}
        for kind, name, where in plugins:
            table = by_kind[kind]
            if name in table:
                raise ValueError(f"two {kind}s are named {name!r}: {table[name]} and {where}")
            table[name] = where
        return cls._tables({kind: Plugins(kind, table) for kind, table in by_kind.items()})

    @classmethod
    def _tables(cls, by_kind: Mapping[str, Plugins]) -> Registry:
        return cls(actionners=by_kind["actionner"], outputs=by_kind["output"], notifiers=by_kind["notifier"])

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
