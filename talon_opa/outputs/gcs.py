"""gcp:gcs — store artifacts in a Google Cloud Storage bucket (Talon: `outputs/gcs/gcs.go`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.outputs import _naming
from talon_opa.plugins.params import param
from talon_opa.plugins.runtime import Artifact, Outcome, Output
from talon_opa.plugins.spec import Spec

CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True, kw_only=True, slots=True)
class GcsParams:
    bucket: str = param(doc="name of the bucket", required=True)
    prefix: str = param("", doc="object name prefix, joined with /")


class Gcs(Output[GcsParams]):
    spec: ClassVar[Spec[GcsParams]] = Spec(
        name="gcp:gcs",
        kind="output",
        clients=("gcp",),
        description=(
            "Upload the artifact to a Google Cloud Storage bucket as <prefix>/<time>_<namespace>_<pod>_<name> "
            "(GCP: storage.objects.create on the bucket)"
        ),
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

    async def store(self, artifact: Artifact, params: GcsParams) -> Outcome:
        _naming.check_bucket(params.bucket)
        # unlike Talon, which ignores the writer's Close error, a refused upload fails the step
        name = _naming.join_key(params.prefix, _naming.object_key(artifact))
        stored = await self.clients.gcp.upload(params.bucket, name, artifact.data, CONTENT_TYPE)
        return Outcome.done(
            f"The file '{artifact.name}' has been uploaded as the key '{name}' to the bucket '{params.bucket}'",
            file=artifact.name,
            bucket=params.bucket,
            prefix=params.prefix,
            key=name,
            generation=str(stored.get("generation", "")),
        )
