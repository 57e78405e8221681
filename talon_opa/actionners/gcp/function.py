"""gcp:function — call a Google Cloud Function (v2) with the alert as payload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.plugins.params import param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Spec


@dataclass(frozen=True, kw_only=True, slots=True)
class FunctionParams:
    gcp_function_name: str = param(doc="name of the function", required=True)
    gcp_function_location: str = param(doc="region of the function, e.g. europe-west1", required=True)
    gcp_function_timeout: int = param(0, doc="seconds to wait for the answer; 0: the action's timeout")


class Function(Planned):
    spec: ClassVar[Spec[FunctionParams]] = Spec(
        name="gcp:function",
        kind="actionner",
        clients=("gcp",),
        description=(
            "Call a Google Cloud Function with the alert as JSON payload "
            "(GCP: cloudfunctions.functions.get and run.routes.invoke; no Kubernetes rights)"
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
