"""webhook — send each result as JSON to an HTTP endpoint."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from actionners.base import Spec
from actionners.params import Decoding, http_url, param


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookSettings:
    decoding: ClassVar[Decoding] = "settings"

    url: str = param(doc="endpoint URL", required=True, check=http_url)
    http_method: str = param("POST", doc="HTTP method")
    content_type: str = param("application/json; charset=utf-8", doc="Content-Type header")
    user_agent: str = param("falco-talon", doc="User-Agent header")
    custom_headers: Mapping[str, str] = param({}, doc="extra headers", secret=True)


class Webhook:
    spec: ClassVar[Spec[WebhookSettings]] = Spec(
        name="webhook",
        kind="notifier",
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
