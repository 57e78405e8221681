"""loki — push each result to Grafana Loki (the JSON push API), labelled as Talon labels it."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from talon_opa.notifiers import _http
from talon_opa.plugins.params import Decoding, http_url, param
from talon_opa.plugins.runtime import Notifier
from talon_opa.plugins.spec import Spec

if TYPE_CHECKING:
    from talon_opa.plugins.notes import Note

PUSH_PATH = "/loki/api/v1/push"
_NOT_LABEL = re.compile(r"[^a-zA-Z0-9_]")


def _label_name(key: str) -> str:
    """An object key as a Loki label name (Talon lower-cases it; Loki also refuses `.`, `/`, `-`...)."""
    name = _NOT_LABEL.sub("_", key.lower())
    return f"_{name}" if name[:1].isdigit() else name


def labels(note: Note) -> dict[str, str]:
    """Talon's stream labels: rule and action lower-cased with `_` for spaces; empty values left out (Loki
    drops a label without a value anyway)."""
    found = {
        "status": note.status,
        "rule": note.rule.lower().replace(" ", "_"),
        "action": note.action.lower().replace(" ", "_"),
        "actionner": note.actionner,
        "outputtarget": note.output_target,
        "message": note.message,
        "traceid": note.trace_id,
        **{_label_name(k): v for k, v in note.objects.items()},
    }
    return {k: v for k, v in found.items() if v}


def line(note: Note) -> str:
    """The log line: the error if any, else the result."""
    return note.error or note.output


def push_body(note: Note, now_ns: int) -> dict[str, Any]:
    """`{"streams": [{"stream": {labels}, "values": [["<unix ns>", "<line>"]]}]}`."""
    return {"streams": [{"stream": labels(note), "values": [[str(now_ns), line(note)]]}]}


@dataclass(frozen=True, kw_only=True, slots=True)
class LokiSettings:
    decoding: ClassVar[Decoding] = "settings"

    url: str = param(doc="Loki base URL (the push API path is added)", required=True, check=http_url)
    user: str = param("", doc="basic-auth user (with api_key)")
    api_key: str = param("", doc="basic-auth password (with user)", secret=True)
    tenant: str = param("", doc="tenant, sent as X-Scope-OrgID")
    custom_headers: Mapping[str, str] = param({}, doc="extra headers", secret=True)


class Loki(Notifier[LokiSettings]):
    spec: ClassVar[Spec[LokiSettings]] = Spec(
        name="loki",
        kind="notifier",
        clients=("http",),
        description=(
            "Push each action and output result as a log line to Grafana Loki: labels status, rule, action,"
            " actionner, outputtarget, message, traceid and the objects; the line is the result or the error"
        ),
        params=LokiSettings,
        example="""\
notifiers:
  loki:
    url: http://loki.monitoring:3100
    tenant: security
""",
    )

    async def notify(self, note: Note) -> None:
        s = self.settings
        headers = {"Content-Type": "application/json", "User-Agent": "falco-talon", **s.custom_headers}
        if s.tenant:
            headers["X-Scope-OrgID"] = s.tenant
        if s.user and s.api_key:
            headers.update(_http.basic_auth(s.user, s.api_key))
        await _http.send(
            self.clients.http,
            "POST",
            _http.under(s.url, PUSH_PATH),
            notifier="loki",
            data=json.dumps(push_body(note, time.time_ns())).encode(),
            headers=headers,
            hint="Loki refused the push: check notifiers.loki.url, user/api_key, tenant and custom_headers",
        )
