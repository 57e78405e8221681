"""What a plugin gets to run with, and what it returns.

An actionner class is built once per engine as `cls(deps)` and runs `await plugin.run(alert, params)`
with its decoded params; it returns an Outcome or raises (StepFailed, or a client error such as
KubeApiError, which the executor reports with its reason). It never returns "failed" without an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import aiohttp

    from talon_opa.core.kube import KubeClient


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

    @classmethod
    def done(cls, message: str, artifact: Artifact | None = None, **objects: str) -> Outcome:
        return cls("success", message, objects, artifact)

    @classmethod
    def ignored(cls, message: str, **objects: str) -> Outcome:
        """Nothing to do by design (e.g. a DaemonSet pod with ignore_daemonsets): not a failure."""
        return cls("ignored", message, objects)


@dataclass(frozen=True, slots=True)
class Deps:
    """Clients injected into plugins; None where not configured (the plugin then fails with a hint)."""

    http: aiohttp.ClientSession
    kube: KubeClient | None = None
