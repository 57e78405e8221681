"""slack — post each result to a Slack incoming webhook, in Talon's `long` or `short` message shape."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from talon_opa.notifiers import _http
from talon_opa.plugins.params import Decoding, http_url, param
from talon_opa.plugins.runtime import Notifier
from talon_opa.plugins.spec import Spec

if TYPE_CHECKING:
    from talon_opa.plugins.notes import Note

COLORS = {"success": "#23ba47", "failure": "#e20b0b", "ignored": "#a4a8b1", "pending": "#f2c744"}  # Talon's + amber
FENCE = "```"


def headline(note: Note) -> str:
    """`[*SUCCESS*][*ACTION*] Rule: `r` Action: `a` OutputTarget: `t`` (the parts that are set)."""
    parts = [f"[*{note.status.upper()}*][*{note.message.upper()}*]"]
    for title, value in (("Rule", note.rule), ("Action", note.action), ("OutputTarget", note.output_target)):
        if value:
            parts.append(f"{title}: `{value}`")
    return " ".join(parts)


def _field(title: str, value: str, *, short: bool = False) -> dict[str, Any]:
    return {"title": title, "value": value, "short": short}


def fields(note: Note) -> list[dict[str, Any]]:
    """Talon's attachment fields of the long format, in its order; objects sorted by key (Talon's are random)."""
    out: list[dict[str, Any]] = []
    for title, value, short in (("Rule", note.rule, False), ("Action", note.action, False)):
        if value:
            out.append(_field(title, f"`{value}`", short=short))
    if note.actionner:
        out.append(_field("Actionner", f"`{note.actionner}`", short=True))
    out.append(_field("Status", f"`{note.status}`", short=True))
    objects = note.titled_objects()
    out += [_field(key, f"`{objects[key]}`", short=True) for key in sorted(objects)]
    if note.event:
        out.append(_field("Event", f"{FENCE}{note.event}{FENCE}"))
    out.append(_field("Message", f"`{note.message}`"))
    for title, value in (("Error", note.error), ("OutputTarget", note.output_target), ("Trace ID", note.trace_id)):
        if value:
            out.append(_field(title, f"`{value}`"))
    if note.output:
        out.append(_field("Output", f"{FENCE}\n{note.output}{FENCE}"))
    return out


def payload(note: Note, settings: SlackSettings) -> dict[str, Any]:
    """The incoming-webhook JSON (legacy attachments, as Talon sends it).

    long: the headline as `text`, every field in the attachment. short: the headline (and the trace id,
    which Talon's short message lacks) as the attachment's `text`, no fields.
    """
    text = headline(note)
    attachment: dict[str, Any] = {"fallback": "", "color": COLORS[note.status]}
    doc: dict[str, Any] = {}
    if settings.format == "short":
        attachment["text"] = f"{text} Trace ID: `{note.trace_id}`" if note.trace_id else text
    else:
        doc["text"] = text
        if settings.footer:
            attachment["footer"] = settings.footer
        attachment["fields"] = fields(note)
    if settings.username:
        doc["username"] = settings.username
    if settings.icon:
        doc["icon_url"] = settings.icon
    doc["attachments"] = [attachment]
    return doc


@dataclass(frozen=True, kw_only=True, slots=True)
class SlackSettings:
    decoding: ClassVar[Decoding] = "settings"

    webhook_url: str = param(doc="the incoming webhook URL", required=True, check=http_url, secret=True)
    icon: str = param(
        "https://upload.wikimedia.org/wikipedia/commons/2/26/Circaetus_gallicus_claw.jpg", doc="icon URL of the sender"
    )
    username: str = param("Falco Talon", doc="name of the sender")
    footer: str = param("http://github.com/falcosecurity/falco-talon", doc="footer of the message")
    format: str = param("long", doc="long (every field) or short (one line); anything else: long")


class Slack(Notifier[SlackSettings]):
    spec: ClassVar[Spec[SlackSettings]] = Spec(
        name="slack",
        kind="notifier",
        clients=("http",),
        description=(
            "Post each action and output result to a Slack incoming webhook: Talon's attachment, green, red or"
            " grey, with every field (long) or one line (short), and the trace id"
        ),
        params=SlackSettings,
        example="""\
notifiers:
  slack:
    webhook_url: https://hooks.slack.com/services/T0000/B0000/XXXX
    format: long
""",
    )

    async def notify(self, note: Note) -> None:
        await _http.send(
            self.clients.http,
            "POST",
            self.settings.webhook_url,
            notifier="slack",
            data=json.dumps(payload(note, self.settings)).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "falco-talon"},
            shown_as=_http.shown(self.settings.webhook_url, path=False),  # the path is the webhook's secret
            hint="Slack refused the message: check notifiers.slack.webhook_url (revoked or mistyped?)",
        )
