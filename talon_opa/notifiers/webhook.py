"""webhook — send each result as JSON to an HTTP endpoint."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from talon_opa.notifiers import _http
from talon_opa.plugins.params import Decoding, http_url, param
from talon_opa.plugins.runtime import Notifier
from talon_opa.plugins.spec import Spec

if TYPE_CHECKING:
    from talon_opa.plugins.notes import Note


def body(note: Note) -> dict[str, Any]:
    """Talon's LogLine as JSON: its keys, in its order, empty fields left out (reference §5.3)."""
    doc: dict[str, Any] = {
        "objects": note.titled_objects(),
        "trace_id": note.trace_id,
        "rule": note.rule,
        "event": note.event,
        "message": note.message,
        "output": note.output,
        "category": note.category,
        "output_target": note.output_target,
        "actionner": note.actionner,
        "action": note.action,
        "error": note.error,
        "status": note.status,
    }
    return {k: v for k, v in doc.items() if v}


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookSettings:
    decoding: ClassVar[Decoding] = "settings"

    url: str = param(doc="endpoint URL", required=True, check=http_url)
    http_method: str = param("POST", doc="HTTP method")
    content_type: str = param("application/json; charset=utf-8", doc="Content-Type header")
    user_agent: str = param("falco-talon", doc="User-Agent header")
    custom_headers: Mapping[str, str] = param({}, doc="extra headers", secret=True)


class Webhook(Notifier[WebhookSettings]):
    spec: ClassVar[Spec[WebhookSettings]] = Spec(
        name="webhook",
        kind="notifier",
        clients=("http",),
        description="Send each action and output result as a JSON document to an HTTP endpoint",
        params=WebhookSettings,
        example="""\
notifiers:
  webhook:
    url: https://soar.example.com/talon
    custom_headers:
      Authorization: Bearer xxxx
""",
    )

    async def notify(self, note: Note) -> None:
        s = self.settings
        await _http.send(
            self.clients.http,
            s.http_method.upper(),
            s.url,
            notifier="webhook",
            data=json.dumps(body(note)).encode(),
            headers={"Content-Type": s.content_type, "User-Agent": s.user_agent, **s.custom_headers},
            hint="the receiver refused the notification: check its url, method and custom_headers",
        )
