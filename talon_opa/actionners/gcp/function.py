"""gcp:function — call a Google Cloud Function (v2) with the alert (Talon: `actionners/gcp/function/function.go`).

As Talon: `GET projects/<project>/locations/<location>/functions/<name>` (Cloud Functions v2; its check),
then a POST of the alert as JSON (Talon's payload shape, see `actionners._payload`) to the function's
`serviceConfig.uri` with an ID token for that URI (`Authorization: Bearer`, `Content-Type:
application/json`); a status other than 200 fails the step. Objects `{name, location, function_response,
function_response_status}`. Fix (docs/compatibility.md): `gcp_function_timeout` is in seconds, for this
call only (Talon reads it as nanoseconds and keeps its client for later calls).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.actionners import _payload
from talon_opa.core.errors import StepFailed
from talon_opa.core.events import Alert
from talon_opa.plugins.params import between, param
from talon_opa.plugins.runtime import Actionner, Outcome
from talon_opa.plugins.spec import Spec

DEFAULT_TIMEOUT = 60.0  # seconds, when the rules say 0; the step's own timeout still applies
RESPONSE_LIMIT = 4096  # characters of the function's answer kept in the result


@dataclass(frozen=True, kw_only=True, slots=True)
class FunctionParams:
    gcp_function_name: str = param(doc="name of the function", required=True)
    gcp_function_location: str = param(doc="region of the function, e.g. europe-west1", required=True)
    gcp_function_timeout: int = param(
        0, doc="seconds to wait for the answer; 0: the action's timeout", check=between(0, None)
    )


class Function(Actionner[FunctionParams]):
    spec: ClassVar[Spec[FunctionParams]] = Spec(
        name="gcp:function",
        kind="actionner",
        clients=("gcp",),
        description=(
            "Call a Google Cloud Function (v2) with the alert as JSON payload "
            "(GCP: cloudfunctions.functions.get on the function and run.routes.invoke on its service; "
            "no Kubernetes rights)"
        ),
        params=FunctionParams,
        example="""\
- action: Call the responder function
  actionner: gcp:function
  parameters:
    gcp_function_name: incident-responder
    gcp_function_location: europe-west1
    gcp_function_timeout: 10
""",
    )

    async def run(self, alert: Alert, params: FunctionParams) -> Outcome:
        gcp = self.clients.gcp
        name, location = params.gcp_function_name, params.gcp_function_location
        function = await gcp.function(location, name)
        service = function.get("serviceConfig")
        uri = service.get("uri") if isinstance(service, dict) else None
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise StepFailed(
                f"the function '{name}' in {location} has no HTTP URI (state {function.get('state', 'unknown')})",
                hint="deploy it with an HTTP trigger (Cloud Functions v2), or wait until it is ACTIVE",
            )
        timeout = float(params.gcp_function_timeout) or DEFAULT_TIMEOUT
        status, body = await gcp.call_function(uri, _payload.event_json(alert), timeout=timeout)
        if len(body) > RESPONSE_LIMIT:
            body = body[:RESPONSE_LIMIT] + f"... ({len(body)} characters in all)"
        return Outcome.done(
            f"the function '{name}' in {location} answered {status}",
            name=name,
            location=location,
            function_response=body,
            function_response_status=str(status),
        )
