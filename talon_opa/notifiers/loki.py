"""loki — push each result to Grafana Loki."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from talon_opa.plugins.params import Decoding, http_url, param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Spec


@dataclass(frozen=True, kw_only=True, slots=True)
class LokiSettings:
    decoding: ClassVar[Decoding] = "settings"

    url: str = param(doc="Loki base URL (the push API path is added)", required=True, check=http_url)
    user: str = param("", doc="basic-auth user (with api_key)")
    api_key: str = param("", doc="basic-auth password (with user)", secret=True)
    tenant: str = param("", doc="tenant, sent as X-Scope-OrgID")
    custom_headers: Mapping[str, str] = param({}, doc="extra headers", secret=True)


class Loki(Planned):
    spec: ClassVar[Spec[LokiSettings]] = Spec(
        name="loki",
        kind="notifier",
        clients=("http",),
        description="Push each action and output result as a log line to Grafana Loki",
        params=LokiSettings,
        example="""\
notifiers:
  loki:
    url: http://loki.monitoring:3100
    tenant: security
""",
    )
