"""aws:lambda — invoke an AWS Lambda function with the alert as payload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.plugins.params import one_of, param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Spec


@dataclass(frozen=True, kw_only=True, slots=True)
class LambdaParams:
    aws_lambda_name: str = param(doc="name of the function", required=True)
    aws_lambda_alias_or_version: str = param("$LATEST", doc="alias or version to invoke", zero_is_default=True)
    aws_lambda_invocation_type: str = param(
        "RequestResponse",
        doc="RequestResponse (wait for the answer), Event (asynchronous) or DryRun",
        check=one_of("RequestResponse", "Event", "DryRun"),
        zero_is_default=True,
    )


class Lambda(Planned):
    spec: ClassVar[Spec[LambdaParams]] = Spec(
        name="aws:lambda",
        kind="actionner",
        clients=("aws",),
        description=(
            "Invoke an AWS Lambda function with the alert as JSON payload "
            "(IAM: lambda:GetFunction and lambda:InvokeFunction; no Kubernetes rights)"
        ),
        params=LambdaParams,
        example="""\
- action: Invoke the responder function
  actionner: aws:lambda
  parameters:
    aws_lambda_name: incident-responder
    aws_lambda_alias_or_version: $LATEST
    aws_lambda_invocation_type: RequestResponse
""",
    )
