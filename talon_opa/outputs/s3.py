"""aws:s3 — store artifacts in an AWS S3 bucket (Talon: `outputs/aws/s3/s3.go`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

from talon_opa.core.errors import StepFailed
from talon_opa.outputs import _naming
from talon_opa.plugins.params import param
from talon_opa.plugins.runtime import Artifact, Outcome, Output
from talon_opa.plugins.spec import Spec

CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True, kw_only=True, slots=True)
class S3Params:
    bucket: str = param(doc="name of the bucket", required=True)
    prefix: str = param("", doc="key prefix, e.g. artifacts/ (one leading and trailing / are dropped)")
    region: str | None = param(None, doc="region of the bucket; none: the region of the AWS configuration")


def s3_prefix(prefix: str) -> str:
    """Talon's rule: one trailing, then one leading '/' removed."""
    prefix = prefix.removesuffix("/")
    return prefix.removeprefix("/")


class S3(Output[S3Params]):
    spec: ClassVar[Spec[S3Params]] = Spec(
        name="aws:s3",
        kind="output",
        clients=("aws",),
        description=(
            "Upload the artifact to an AWS S3 bucket as <prefix>/<time>_<namespace>_<pod>_<name> "
            "(IAM: s3:PutObject on the bucket's objects, sts:GetCallerIdentity)"
        ),
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

    async def store(self, artifact: Artifact, params: S3Params) -> Outcome:
        _naming.check_bucket(params.bucket)
        aws = self.clients.aws
        region = params.region or aws.cfg.region or await asyncio.to_thread(aws.chain_region)
        if not region:
            raise StepFailed(
                f"no region for the bucket {params.bucket!r}",
                hint="set the output's region parameter, aws.region, or AWS_REGION",
            )
        prefix = s3_prefix(params.prefix)
        key = _naming.join_key(prefix, _naming.object_key(artifact))
        await aws.s3(region).put(params.bucket, key, artifact.data, content_type=CONTENT_TYPE)
        return Outcome.done(
            f"the file '{artifact.name}' has been uploaded as the key '{key}' to the bucket '{params.bucket}'",
            file=artifact.name,
            bucket=params.bucket,
            prefix=prefix,
            key=key,
            region=region,
        )
