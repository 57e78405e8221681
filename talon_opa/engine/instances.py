"""The engine's plugin instances: each plugin built once, with the clients its spec declares.

Every kind is built the same way, `cls(clients, settings)` (see `talon_opa.plugins.runtime`). Whether a
plugin can run is what it declares (its runtime base, or `Planned`), never guessed from its methods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from talon_opa.core import secrets
from talon_opa.core.errors import TalonError
from talon_opa.plugins import params, runtime
from talon_opa.plugins.clients import ClientProvider
from talon_opa.plugins.params import NoParams, ParamsInvalid
from talon_opa.plugins.registry import Registry
from talon_opa.plugins.spec import Spec


class UnknownCluster(TalonError):
    """A notification about an alert whose cluster is not configured."""


class Instances:
    """Actionner and output instances (built on first use) and the configured notifiers."""

    def __init__(self, registry: Registry, provider: ClientProvider) -> None:
        self.registry = registry
        self.provider = provider
        self._built: dict[tuple[type[Any], str | None], runtime.PluginBase[Any]] = {}
        self.notifiers: dict[str, runtime.Notifier[Any]] = {}
        # per (name, cluster): (the notifier it was copied from, the copy with that cluster's clients)
        self._per_cluster: dict[tuple[str, str], tuple[runtime.Notifier[Any], runtime.Notifier[Any]]] = {}

    def check_clients(self, names: Iterable[str]) -> None:
        """Every client that the runnable plugins of these names declare is configured (ConfigError if not)."""
        specs: list[Spec[Any]] = []
        for name in dict.fromkeys(names):
            plugin = self.registry.find(name)
            if plugin is not None and runtime.runs(plugin):
                specs.append(plugin.spec)
        self.provider.check(specs)

    def actionner(self, cls: type[Any], cluster: str | None = None) -> runtime.Actionner[Any]:
        built = self._build(cls, cluster)
        assert isinstance(built, runtime.Actionner)
        return built

    def output(self, cls: type[Any], cluster: str | None = None) -> runtime.Output[Any]:
        built = self._build(cls, cluster)
        assert isinstance(built, runtime.Output)
        return built

    def _build(self, cls: type[Any], cluster: str | None) -> runtime.PluginBase[Any]:
        """The plugin built once per cluster (one of the provider's `clusters`, None: the default) if it uses
        Kubernetes, else once."""
        key = (cls, cluster if "kube" in cls.spec.clients else None)
        built = self._built.get(key)
        if built is None:
            built = self._built[key] = cls(self.provider.clients_for(cls.spec, key[1]), NoParams())
        return built

    def notifier(self, name: str, cluster: str = "") -> runtime.Notifier[Any] | None:
        """The notifier `name` (None when not built); one that uses Kubernetes, with the clients of the alert's
        cluster (`cluster`: one of the provider's `clusters`; "": the default); UnknownCluster otherwise."""
        base = self.notifiers.get(name)
        if base is None or not cluster or "kube" not in base.spec.clients:
            return base
        if cluster not in self.provider.clusters:
            known = ", ".join(sorted(self.provider.clusters))
            raise UnknownCluster(
                f"the alert names cluster {cluster!r}, which is not in `clusters`: {known}",
                hint="add it to `clusters` in the configuration, or fix Falcosidekick's customfields",
            )
        built = self._per_cluster.get((name, cluster))
        if built is None or built[0] is not base:  # settings reloaded: copy the new one
            copy = type(base)(self.provider.clients_for(base.spec, cluster), base.settings)
            built = self._per_cluster[(name, cluster)] = (base, copy)
        return built[1]

    def add_notifiers(
        self,
        names: Sequence[str],
        settings: Mapping[str, Mapping[str, Any]],
        *,
        strict: bool = True,
        named_by: Mapping[str, str] | None = None,
    ) -> dict[str, runtime.Notifier[Any]]:
        """Build the named notifiers not built yet, with their decoded settings; TalonError naming the bad one.

        `strict=False` skips names the registry does not know (rules' notifiers: the loader warned, as Talon
        ignores them); bad settings and notifiers that cannot run are errors either way. `named_by` gives, per
        notifier, the rule that names it (for the error; default_notifiers otherwise). A missing required
        setting is named by its config key (`notifiers.slack.webhook_url`). Returns the new ones, which
        `adopt` makes current (so a refused reload changes nothing).
        """
        out: dict[str, runtime.Notifier[Any]] = {}
        for name in dict.fromkeys(names):
            if name in self.notifiers:
                continue
            cls = self.registry.notifiers.get(name)
            if cls is None:
                if not strict:
                    continue
                known = ", ".join(self.registry.notifiers) or "none"
                raise TalonError(
                    f"unknown notifier {name!r} in default_notifiers",
                    hint=f"use one of: {known} (names are case-sensitive)",
                )
            spec = cls.spec
            raw = settings.get(name) or settings.get(name.lower()) or {}
            try:
                decoded = spec.decode(raw)
                secrets.KNOWN.add(params.secret_values(decoded))
            except ParamsInvalid as e:
                where = f"rule {named_by[name]!r}" if named_by and name in named_by else "default_notifiers"
                raise _settings_error(name, where, e) from e
            if not runtime.runs(cls):
                raise TalonError(
                    f"notifier {name!r} cannot send notifications in this version", hint="remove it from the config"
                )
            self.provider.check([spec])
            notifier = cls(self.provider.clients_for(spec), decoded)
            assert isinstance(notifier, runtime.Notifier)
            out[name] = notifier
        return out

    def adopt(self, notifiers: Mapping[str, runtime.Notifier[Any]]) -> None:
        self.notifiers.update(notifiers)


def _settings_error(name: str, where: str, e: ParamsInvalid) -> TalonError:
    """The error about a notifier's settings; missing required ones are named by their config key."""
    missing = [p.field for p in e.problems if p.message == "is required"]
    if missing and len(missing) == len(e.problems):
        keys = [f"notifiers.{name}.{key}" for key in missing]
        shown = ", ".join(f"`{k}`" for k in keys)
        verb = "is" if len(keys) == 1 else "are"
        env = ", ".join(k.upper().replace(".", "_") for k in keys)
        return TalonError(
            f"notifier {name!r} is named by {where} but {shown} {verb} not set",
            hint=f"set {' and '.join(keys)} in the config file (an env var such as {env} then overrides it)",
        )
    return TalonError(
        f"settings of notifier {name!r} are invalid: {e}", hint=f"fix notifiers.{name} in the config file"
    )
