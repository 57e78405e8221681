"""The HTTP intake (DESIGN §3.1): `POST /` and every path that is not reserved.

Order of checks: token (401) → method (405) → size (413, before reading more than the limit) → decoding
(400 malformed or wrong type, 415 `text/plain`) → dedup (200, not queued) → queue (200 once queued,
503 + Retry-After when full or draining). Every refusal is JSON `{"error", "field"}` (plus `hint`), and
nothing refused is queued. The answer never waits on OPA or Kubernetes.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from aiohttp import web

from talon_opa.core import events, logs
from talon_opa.core.errors import AlertError

if TYPE_CHECKING:
    from talon_opa.engine.app import Engine

log = logs.get("intake")


def refuse(
    status: int, error: str, field: str = "", hint: str = "", headers: dict[str, str] | None = None
) -> web.Response:
    body: dict[str, Any] = {"error": error, "field": field}
    if hint:
        body["hint"] = hint
    return web.json_response(body, status=status, headers=headers)


class Intake:
    """The intake handler, bound to an engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        cfg = engine.cfg
        self.max_body = cfg.intake.max_body_bytes
        self.token = cfg.auth.token
        self.header = cfg.auth.header
        self._refused_log = logs.Throttle(1.0)

    def authorized(self, request: web.Request) -> bool:
        """The request carries the configured token (always true without one)."""
        if not self.token:
            return True
        value = request.headers.get(self.header, "")
        scheme, _, rest = value.partition(" ")
        if scheme.lower() == "bearer":
            value = rest.strip()
        elif self.header.lower() == "authorization":
            return False
        return hmac.compare_digest(value.encode(), self.token.encode())

    async def _body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body:
            raise AlertError(
                f"the body is {request.content_length} bytes, over the limit of {self.max_body}",
                status=413,
                hint="send one alert per request, or raise intake.max_body_bytes",
            )
        buf = bytearray()
        async for chunk in request.content.iter_any():
            buf += chunk
            if len(buf) > self.max_body:
                raise AlertError(
                    f"the body is over the limit of {self.max_body} bytes",
                    status=413,
                    hint="send one alert per request, or raise intake.max_body_bytes",
                )
        return bytes(buf)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        metrics = self.engine.metrics
        if not self.authorized(request):
            metrics.rejected.labels(status="401").inc()
            missing = self.header not in request.headers
            return refuse(
                401,
                f"{'missing' if missing else 'invalid'} token in header {self.header}",
                self.header,
                hint="send the configured auth.token (Falcosidekick: webhook customheaders)",
                headers={"WWW-Authenticate": 'Bearer realm="talon-opa"'},
            )
        if request.method != "POST":
            metrics.rejected.labels(status="405").inc()
            return refuse(
                405,
                f"{request.method} is not accepted here",
                "method",
                hint="send alerts with POST",
                headers={"Allow": "POST"},
            )
        try:
            body = await self._body(request)
            alert = events.decode_alert(body, request.headers.get("Content-Type"))
        except AlertError as e:
            metrics.rejected.labels(status=str(e.status)).inc()
            held = self._refused_log.allow()
            if held is not None:
                log.warning(
                    "alert refused",
                    extra={"status": e.status, "error": str(e), "field": e.field, "also_refused_since_last_line": held},
                )
            return refuse(e.status, Exception.__str__(e), e.field, e.hint)
        accepted = self.engine.accept(alert, request.headers)
        if accepted.status != 200:
            metrics.rejected.labels(status=str(accepted.status)).inc()
            return refuse(
                accepted.status,
                accepted.error,
                "",
                hint=accepted.hint,
                headers={"Retry-After": str(accepted.retry_after)},
            )
        doc: dict[str, Any] = {"id": accepted.alert_id, "trace_id": accepted.trace_id}
        if accepted.duplicate_of:
            doc["duplicate_of"] = accepted.duplicate_of
        return web.json_response(doc)
