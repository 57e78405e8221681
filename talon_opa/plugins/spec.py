"""What every plugin (actionner, output, notifier) declares about itself, as data.

A plugin is a class with a class attribute `spec`; the registry maps names to those classes.
Validation, docs (`talon-opa actionners list`) and the generated RBAC all read the spec.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from talon_opa.plugins import params as _params
from talon_opa.plugins.params import ParamsInvalid

P = TypeVar("P")

Kind = Literal["actionner", "output", "notifier"]


@dataclass(frozen=True, slots=True)
class Grant:
    """One RBAC rule, as data: merged into the generated ClusterRole."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Spec(Generic[P]):
    """A plugin's declaration. `params` is a frozen dataclass decoded and validated once, at load."""

    name: str  # "category:name" for actionners and outputs, the bare name for notifiers
    kind: Kind
    description: str
    params: type[P]
    needs_fields: tuple[str, ...] = ()  # event fields the plugin needs; any one of a "|"-joined group
    continues: bool = True  # default `continue` of an action using this actionner
    grants: tuple[Grant, ...] = ()
    output: Literal["none", "optional", "required"] = "none"
    clients: tuple[str, ...] = ()  # the clients it is handed (talon_opa.plugins.clients.KINDS)
    example: str = ""  # a YAML snippet for the docs
    # the grants a use with these decoded parameters needs (e.g. label at pod level: no node rights);
    # None: always `grants`, which must cover every use
    grants_for: Callable[[P], tuple[Grant, ...]] | None = None
    # its changes can be undone (`talon-opa undo`, a TTL): the class subclasses plugins.reversal.Reversible
    reversible: bool = False

    @property
    def category(self) -> str:
        return self.name.split(":", 1)[0] if ":" in self.name else self.name

    def decode(self, raw: Mapping[str, Any]) -> P:
        """Decode and validate raw parameters (from YAML or a plan); raises ParamsInvalid."""
        return _params.decode(self.params, raw)

    def unknown_keys(self, raw: Mapping[str, Any]) -> list[str]:
        """Keys of `raw` that match no parameter: ignored, as Talon does; the loader warns about them."""
        return _params.unknown_keys(self.params, raw)

    def grants_used(self, raw: Mapping[str, Any] | None = None) -> tuple[Grant, ...]:
        """The grants needed by a use with these raw parameters (all of `grants` when unknown)."""
        if raw is None or self.grants_for is None:
            return self.grants
        try:
            return self.grants_for(self.decode(raw))
        except ParamsInvalid:
            return self.grants

    def defaults(self) -> dict[str, Any]:
        """The effective defaults, as JSON values (what a plan step carries when rules say nothing)."""
        return _params.defaults(self.params)


class Plugin(Protocol):
    """Anything the registry lists: a class carrying its spec."""

    spec: ClassVar[Spec[Any]]
