"""slack — post each result to a Slack incoming webhook."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.plugins.params import Decoding, http_url, param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Spec


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


class Slack(Planned):
    spec: ClassVar[Spec[SlackSettings]] = Spec(
        name="slack",
        kind="notifier",
        clients=("http",),
        description="Post each action and output result to a Slack channel (incoming webhook)",
        params=SlackSettings,
        example="""\
notifiers:
  slack:
    webhook_url: https://hooks.slack.com/services/T0000/B0000/XXXX
    format: long
""",
    )
