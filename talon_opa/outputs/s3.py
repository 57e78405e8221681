"""aws:s3 — store artifacts in an AWS S3 bucket."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.plugins.params import param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Spec


@dataclass(frozen=True, kw_only=True, slots=True)
class S3Params:
    bucket: str = param(doc="name of the bucket", required=True)
    prefix: str = param("", doc="key prefix, e.g. artifacts/ (one leading and trailing / are dropped)")
    region: str | None = param(None, doc="region of the bucket; none: the region of the AWS configuration")


class S3(Planned):
    spec: ClassVar[Spec[S3Params]] = Spec(
        name="aws:s3",
        kind="output",
        clients=("aws",),
        description="Upload the artifact to an AWS S3 bucket (IAM: s3:PutObject on the bucket)",
        params=S3Params,
        example="""\
- action: Get the logs of the pod
  actionner: kubernetes:log
  output:
    target: aws:s3
    parameters:
      bucket: falco-artifacts
      prefix: logs/
      region: eu-west-1
""",
    )
