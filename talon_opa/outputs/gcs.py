"""gcp:gcs — store artifacts in a Google Cloud Storage bucket."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.plugins.params import param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Spec


@dataclass(frozen=True, kw_only=True, slots=True)
class GcsParams:
    bucket: str = param(doc="name of the bucket", required=True)
    prefix: str = param("", doc="object name prefix, joined with /")


class Gcs(Planned):
    spec: ClassVar[Spec[GcsParams]] = Spec(
        name="gcp:gcs",
        kind="output",
        clients=("gcp",),
        description="Upload the artifact to a Google Cloud Storage bucket (GCP: storage.objects.create)",
        params=GcsParams,
        example="""\
- action: Download the binary
  actionner: kubernetes:download
  parameters:
    file: /tmp/payload
  output:
    target: gcp:gcs
    parameters:
      bucket: falco-artifacts
      prefix: downloads
""",
    )
