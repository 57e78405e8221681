"""What a notifier receives: one `Note` after every step (stage "action") and every output (stage "output").

`Note` carries Talon's LogLine fields plus the trace id, so a message leads to the alert's trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Stage = Literal["action", "output"]
Status = Literal["success", "failure", "ignored", "pending"]  # pending: a step waits for approval


@dataclass(frozen=True, kw_only=True, slots=True)
class Note:
    """One result to tell people about (Talon's LogLine as handed to notifiers)."""

    stage: Stage  # Talon's `Message`: "action" or "output"
    status: Status
    rule: str  # the talon rule
    action: str
    actionner: str  # "kubernetes:label"
    event: str = ""  # the alert's output text (Talon's `Event`)
    objects: Mapping[str, str] = field(default_factory=dict)  # e.g. {"pod": "api-1", "namespace": "payments"}
    output: str = ""  # the result message
    error: str = ""  # why it failed ("" on success)
    output_target: str = ""  # "local:file", for the output stage
    trace_id: str = ""  # 32 hex characters: the alert's trace
    alert_rule: str = ""  # the Falco rule of the alert
    priority: str = ""
    hostname: str = ""
    pod: str = ""  # the alert's pod and namespace (from its fields), "" when absent
    namespace: str = ""
    cluster: str = ""  # with `clusters` configured, the cluster the alert names ("" = the default cluster)

    @property
    def message(self) -> str:
        """Talon's name for the stage."""
        return self.stage

    @property
    def category(self) -> str:
        """Talon's `Category`: the actionner's category ("kubernetes")."""
        return self.actionner.split(":", 1)[0]

    def titled_objects(self) -> dict[str, str]:
        """Object keys as Talon hands them to notifiers (`pod` → `Pod`, `namespace` → `Namespace`)."""
        return {k.lower().title(): v for k, v in self.objects.items()}

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view with Talon's LogLine keys (what the webhook and loki notifiers send)."""
        doc: dict[str, Any] = {
            "message": self.stage,
            "status": self.status,
            "rule": self.rule,
            "action": self.action,
            "actionner": self.actionner,
            "category": self.category,
            "event": self.event,
            "objects": self.titled_objects(),
            "output": self.output,
            "error": self.error,
            "outputtarget": self.output_target,
            "traceid": self.trace_id,
        }
        return {k: v for k, v in doc.items() if v not in ("", {}, None)}
