"""minio:s3 — store artifacts in a MinIO bucket."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.plugins.params import param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Spec


@dataclass(frozen=True, kw_only=True, slots=True)
class MinioParams:
    bucket: str = param(doc="name of the bucket (it must exist)", required=True)
    prefix: str = param("", doc="key prefix (a trailing / is dropped)")


class Minio(Planned):
    spec: ClassVar[Spec[MinioParams]] = Spec(
        name="minio:s3",
        kind="output",
        clients=("minio",),
        description="Upload the artifact to a MinIO bucket (endpoint and keys from the configuration)",
        params=MinioParams,
        example="""\
- action: Capture the traffic
  actionner: kubernetes:tcpdump
  output:
    target: minio:s3
    parameters:
      bucket: falco-artifacts
      prefix: captures
""",
    )
