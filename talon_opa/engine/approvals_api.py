"""The operator API of approvals (docs/approvals.md), behind `auth.operator_token`.

`GET /v1/approvals` lists the pending approvals; `POST /v1/approvals/{id}/approve` and `/deny` decide
one (JSON body, optional: `{"by": "alice", "reason": "..."}`, recorded). Every request carries
`Authorization: Bearer <auth.operator_token>` (401 otherwise); with no operator token configured the
routes answer 404, as any unknown /v1/ path. Unknown id: 404; already decided or expired: 410.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from talon_opa.engine.approvals import ApprovalGone, Approvals, UnknownApproval
from talon_opa.engine.intake import refuse
from talon_opa.engine.operator_auth import operator_refusal
from talon_opa.engine.parked import Result

PATH = "/v1/approvals"
MAX_NAME = 200  # characters of `by` and `reason` kept


def add_routes(app: web.Application, approvals: Approvals, token: str) -> None:
    """The approvals routes (register them before the /v1/ catch-all)."""

    def guard(request: web.Request) -> web.Response | None:
        return operator_refusal(token, request)

    async def listing(request: web.Request) -> web.Response:
        refused = guard(request)
        if refused is not None:
            return refused
        return web.json_response({"approvals": [p.summary() for p in approvals.pending()]})

    async def decide(request: web.Request, result: Result) -> web.Response:
        refused = guard(request)
        if refused is not None:
            return refused
        body: Any = {}
        if request.can_read_body:
            try:
                body = json.loads(await request.read() or b"{}")
            except ValueError:
                return refuse(400, "the body is not JSON", "body", hint='send {"by": "<your name>"} or nothing')
        if not isinstance(body, dict):
            return refuse(400, "the body is not a JSON object", "body", hint='send {"by": "<your name>"} or nothing')
        by, reason = body.get("by", ""), body.get("reason", "")
        if not isinstance(by, str) or not isinstance(reason, str):
            return refuse(400, "`by` and `reason` must be strings", "by")
        approval_id = request.match_info["id"]
        try:
            parked = await approvals.decide(
                approval_id, result, by=by[:MAX_NAME] or "operator API", reason=reason[:MAX_NAME]
            )
        except UnknownApproval as e:
            return refuse(404, str(e), "id")
        except ApprovalGone as e:
            return refuse(410, str(e), "id")
        assert parked.decision is not None
        return web.json_response(
            {"id": parked.id, "result": result, "by": parked.decision.by, "trace_id": parked.trace_id}
        )

    async def approve(request: web.Request) -> web.Response:
        return await decide(request, "approved")

    async def deny(request: web.Request) -> web.Response:
        return await decide(request, "denied")

    app.router.add_route("GET", PATH, listing)
    app.router.add_route("POST", PATH + "/{id}/approve", approve)
    app.router.add_route("POST", PATH + "/{id}/deny", deny)
