"""minio:s3 — store artifacts in a MinIO bucket (Talon: `outputs/minio/minio.go`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.core.errors import StepFailed
from talon_opa.outputs import _naming
from talon_opa.plugins.params import param
from talon_opa.plugins.runtime import Artifact, Outcome, Output
from talon_opa.plugins.spec import Spec

CONTENT_TYPE = "text/plain; charset=UTF-8"  # Talon's, whatever the artifact


@dataclass(frozen=True, kw_only=True, slots=True)
class MinioParams:
    bucket: str = param(doc="name of the bucket (it must exist)", required=True)
    prefix: str = param("", doc="key prefix (one leading and one trailing / are dropped)")


def minio_prefix(prefix: str) -> str:
    """Talon drops a trailing '/'; we drop one leading '/' too (docs/compatibility.md).

    MinIO itself stores `/captures/x` as `captures/x` (seen against a real MinIO), so with Talon's key the
    result message names a key that does not exist, and an S3 server that keeps the '/' makes a folder
    with an empty name. Dropping it gives the same key on every server, and the one the message names.
    """
    return prefix.removesuffix("/").removeprefix("/")


class Minio(Output[MinioParams]):
    spec: ClassVar[Spec[MinioParams]] = Spec(
        name="minio:s3",
        kind="output",
        clients=("minio",),
        description=(
            "Upload the artifact to a MinIO bucket as <prefix>/<time>_<namespace>_<pod>_<name> "
            "(endpoint and keys from the configuration; policy: s3:ListBucket and s3:PutObject)"
        ),
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

    async def store(self, artifact: Artifact, params: MinioParams) -> Outcome:
        _naming.check_bucket(params.bucket)
        minio = self.clients.minio
        if not await minio.s3.bucket_exists(params.bucket):  # Talon's BucketExists check
            raise StepFailed(
                f"the bucket '{params.bucket}' does not exist on {minio.endpoint_url}",
                hint="create the bucket (mc mb), or fix the output's bucket parameter",
            )
        prefix = minio_prefix(params.prefix)
        key = _naming.join_key(prefix, _naming.object_key(artifact))
        await minio.s3.put(params.bucket, key, artifact.data, content_type=CONTENT_TYPE)
        return Outcome.done(
            f"the file '{artifact.name}' has been uploaded as the key '{key}' to the bucket '{params.bucket}'",
            file=artifact.name,
            bucket=params.bucket,
            prefix=prefix,
            key=key,
        )
