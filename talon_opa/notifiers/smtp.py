"""smtp — e-mail each result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.plugins.params import Decoding, one_of, param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Spec


@dataclass(frozen=True, kw_only=True, slots=True)
class SmtpSettings:
    decoding: ClassVar[Decoding] = "settings"

    host_port: str = param(doc="server as host:port", required=True)
    from_: str = param(doc="sender address", required=True, key="from")
    to: str = param(doc="recipients, comma-separated", required=True)
    user: str = param("", doc="SASL PLAIN user")
    password: str = param("", doc="SASL PLAIN password", secret=True)
    format: str = param("html", doc="html or text", check=one_of("html", "text"))
    tls: bool = param(False, doc="use STARTTLS (TLS 1.2 or later)")


class Smtp(Planned):
    spec: ClassVar[Spec[SmtpSettings]] = Spec(
        name="smtp",
        kind="notifier",
        description="E-mail each action and output result",
        params=SmtpSettings,
        example="""\
notifiers:
  smtp:
    host_port: smtp.example.com:587
    from: talon@example.com
    to: secops@example.com, oncall@example.com
    user: talon
    password: s3cret
    format: html
    tls: true
""",
    )
