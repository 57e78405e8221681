"""The one gate of the operator API (undo, approvals): `auth.operator_token`, compared in constant time."""

from __future__ import annotations

import hmac

from aiohttp import web

from talon_opa.engine.intake import refuse


def operator_refusal(token: str, request: web.Request) -> web.Response | None:
    """The answer refusing an operator request: 404 when the operator API is off (no token configured), 401
    without `Authorization: Bearer <token>`; None when the request may go on."""
    if not token:
        return refuse(
            404, f"no such API: {request.path}", "path", hint="set auth.operator_token to turn the operator API on"
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return refuse(
            401,
            "missing or invalid operator token",
            "Authorization",
            hint="send Authorization: Bearer <auth.operator_token>",
            headers={"WWW-Authenticate": 'Bearer realm="talon-opa operator"'},
        )
    return None
