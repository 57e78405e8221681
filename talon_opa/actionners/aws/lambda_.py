"""aws:lambda — invoke an AWS Lambda function with the alert as payload (Talon: `actionners/aws/lambda/lambda.go`).

As Talon: `lambda:GetFunction` first (its check; here with the qualifier too, so a missing alias or
version is named before anything runs), then `lambda:Invoke` with the alert as JSON (Talon's payload
shape, see `actionners._payload`), the qualifier and the invocation type; the result is the function's
answer, objects `{name, version}`. Fixes (docs/compatibility.md): a function error (`FunctionError`) or
an unexpected status fails the step with the function's own error type and message, where Talon
reports success.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from talon_opa.actionners import _payload
from talon_opa.core.errors import StepFailed
from talon_opa.core.events import Alert
from talon_opa.plugins.params import one_of, param
from talon_opa.plugins.runtime import Actionner, Outcome
from talon_opa.plugins.spec import Spec

EXPECTED_STATUS = {"RequestResponse": 200, "Event": 202, "DryRun": 204}
MESSAGE_LIMIT = 4096  # characters of the function's answer kept in the result (logs, notifications)


@dataclass(frozen=True, kw_only=True, slots=True)
class LambdaParams:
    aws_lambda_name: str = param(doc="name (or ARN) of the function", required=True)
    aws_lambda_alias_or_version: str = param("$LATEST", doc="alias or version to invoke", zero_is_default=True)
    aws_lambda_invocation_type: str = param(
        "RequestResponse",
        doc="RequestResponse (wait for the answer), Event (asynchronous) or DryRun",
        check=one_of("RequestResponse", "Event", "DryRun"),
        zero_is_default=True,
    )


def function_error_text(kind: str, payload: bytes) -> str:
    """`<errorType>: <errorMessage>` from Lambda's error payload, else its start."""
    try:
        doc = json.loads(payload)
        if isinstance(doc, dict) and ("errorMessage" in doc or "errorType" in doc):
            return f"{doc.get('errorType', kind)}: {doc.get('errorMessage', '')}"
    except ValueError:
        pass
    return payload[:MESSAGE_LIMIT].decode(errors="replace") or kind


class Lambda(Actionner[LambdaParams]):
    spec: ClassVar[Spec[LambdaParams]] = Spec(
        name="aws:lambda",
        kind="actionner",
        clients=("aws",),
        description=(
            "Invoke an AWS Lambda function with the alert as JSON payload "
            "(IAM: lambda:GetFunction and lambda:InvokeFunction on the function, sts:GetCallerIdentity; "
            "no Kubernetes rights)"
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

    async def run(self, alert: Alert, params: LambdaParams) -> Outcome:
        aws = self.clients.aws
        name, qualifier = params.aws_lambda_name, params.aws_lambda_alias_or_version
        await aws.call("lambda", "get_function", FunctionName=name, Qualifier=qualifier)
        answer = await aws.invoke(
            name,
            qualifier=qualifier,
            invocation_type=params.aws_lambda_invocation_type,
            payload=_payload.event_json(alert),
        )
        version = answer.version or qualifier
        if answer.function_error:
            reason = function_error_text(answer.function_error, answer.payload)
            raise StepFailed(
                f"the function '{name}' ({version}) failed: {reason}",
                hint="see the function's logs in CloudWatch",
            )
        expected = EXPECTED_STATUS[params.aws_lambda_invocation_type]
        if answer.status != expected:
            raise StepFailed(
                f"the function '{name}' answered status {answer.status}, not {expected}",
                hint="see the function's logs in CloudWatch",
            )
        text = answer.payload.decode(errors="replace")
        if len(text) > MESSAGE_LIMIT:
            text = text[:MESSAGE_LIMIT] + f"... ({len(answer.payload)} bytes in all)"
        return Outcome.done(text, name=name, version=version)
