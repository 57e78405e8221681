"""How a plugin runs: the three runtime kinds, what each is built with, and what it returns.

Every plugin is a class carrying a `spec` (what it declares about itself, as data) and subclassing
exactly one of these, which is its declared capability:

* `Actionner`: `await run(alert, params) -> Outcome` for one step of a plan;
* `Output`: `await store(artifact, params) -> Outcome` for the artifact of a step;
* `Notifier`: `await notify(note)` after every step and every output;
* `Planned`: a spec without an implementation yet. It is listed, validated and documented (marked
  "cannot run yet"), and a step using it fails with "cannot run in this version".

One constructor for every kind: `cls(clients, settings)`. `clients` holds exactly the clients the spec
declares in `spec.clients` (see `talon_opa.plugins.clients`); `settings` is the decoded
`notifiers.<name>` block for a notifier and `NoParams()` for the others. A plugin returns an Outcome or
raises (StepFailed, or a client error such as KubeApiError, which the executor reports with its reason);
it never returns "failed" without an error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeGuard, TypeVar

from talon_opa.plugins.spec import Spec

if TYPE_CHECKING:
    from talon_opa.core.events import Alert
    from talon_opa.plugins.clients import Clients
    from talon_opa.plugins.notes import Note
    from talon_opa.plugins.reversal import Reversal

P = TypeVar("P")
S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Artifact:
    """Bytes an actionner produced (logs, a file, a capture), for an output to store."""

    name: str
    data: bytes
    objects: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Literal["success", "ignored"]
    message: str
    objects: Mapping[str, str] = field(default_factory=dict)
    artifact: Artifact | None = None
    reversal: Reversal | None = None  # how to undo what the step changed (a `Reversible` actionner, docs/undo.md)

    def undone_by(self, reversal: Reversal | None) -> Outcome:
        """This outcome, carrying how to undo it (None: nothing of ours to undo)."""
        return Outcome(self.status, self.message, self.objects, self.artifact, reversal)

    @classmethod
    def done(cls, message: str, artifact: Artifact | None = None, **objects: str) -> Outcome:
        return cls("success", message, objects, artifact)

    @classmethod
    def ignored(cls, message: str, **objects: str) -> Outcome:
        """Nothing to do by design (e.g. a DaemonSet pod with ignore_daemonsets): not a failure."""
        return cls("ignored", message, objects)


class PluginBase(Generic[S]):
    """What every runtime kind shares: its spec, and the one constructor."""

    spec: ClassVar[Spec[Any]]

    def __init__(self, clients: Clients, settings: S) -> None:
        self.clients = clients
        self.settings = settings


class Actionner(PluginBase[Any], ABC, Generic[P]):
    """Runs one step of a plan against the alert."""

    @abstractmethod
    async def run(self, alert: Alert, params: P) -> Outcome: ...


class Output(PluginBase[Any], ABC, Generic[P]):
    """Stores the artifact of a step (`local:file`, `aws:s3`...)."""

    @abstractmethod
    async def store(self, artifact: Artifact, params: P) -> Outcome: ...


class Notifier(PluginBase[S], ABC, Generic[S]):
    """Tells people or systems about each result; raises on failure (never swallows an error)."""

    @abstractmethod
    async def notify(self, note: Note) -> None: ...


class Planned:
    """A plugin declared (spec, parameters, docs, RBAC) but not implemented in this version."""

    spec: ClassVar[Spec[Any]]


RUNTIME_BASES: Mapping[str, type[PluginBase[Any]]] = {"actionner": Actionner, "output": Output, "notifier": Notifier}


def runs(plugin: type[Any]) -> TypeGuard[type[PluginBase[Any]]]:
    """Whether a registered plugin class can run (subclasses its kind's runtime base, not `Planned`)."""
    return isinstance(plugin, type) and issubclass(plugin, PluginBase)
