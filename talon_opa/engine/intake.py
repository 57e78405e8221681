"""The HTTP intake (DESIGN §3.1): `POST /` and every path that is not reserved. It owns HTTP.

Order of checks: token (401) → method (405) → size (413, before reading more than the limit) → decoding
(400 malformed or wrong type, 415 `text/plain`) → acceptance, whose `Admission` becomes the answer:
200 once queued (or a duplicate, not queued), 503 + Retry-After when the queue is full or draining.
Every refusal is JSON `{"error", "field"}` (plus `hint`), and nothing refused is queued. The answer
never waits on OPA or Kubernetes.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from talon_opa.core import config, events, logs
from talon_opa.core.errors import AlertError
from talon_opa.engine.accept import Admission
from talon_opa.engine.metrics import Metrics
from talon_opa.engine.work import WorkItem

log = logs.get("intake")


def refuse(
    status: int, error: str, field: str = "", hint: str = "", headers: dict[str, str] | None = None
) -> web.Response:
    body: dict[str, Any] = {"error": error, "field": field}
    if hint:
        body["hint"] = hint
    return web.json_response(body, status=status, headers=headers)


class Intake:
    """The intake handler: HTTP in, work items to `accept`, HTTP out."""

    def __init__(
        self, cfg: config.Config, accept: Callable[[WorkItem], Awaitable[Admission]], metrics: Metrics
    ) -> None:
        self._accept = accept
        self._metrics = metrics
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
        metrics = self._metrics
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
        headers = request.headers
        item = WorkItem(
            uuid.uuid4().hex,
            alert,
            body,
            headers.get("Content-Type") or "",
            headers.get("traceparent") or "",
            headers.get("tracestate") or "",
        )
        return self._answer(await self._accept(item))

    def _answer(self, admission: Admission) -> web.Response:
        if admission.accepted:
            doc: dict[str, Any] = {"id": admission.alert_id, "trace_id": admission.trace_id}
            if admission.verdict == "duplicate":
                doc["duplicate"] = True
                if admission.duplicate_of:  # unknown when another replica's copy is already consumed
                    doc["duplicate_of"] = admission.duplicate_of
            return web.json_response(doc)
        self._metrics.rejected.labels(status="503").inc()
        if admission.verdict == "closing":
            error, hint, retry_after = "the engine is shutting down", "send it again (another replica)", 5
        elif admission.verdict == "unavailable":
            error, hint, retry_after = f"the queue is unavailable: {admission.reason}", "send it again later", 2
        else:
            error = f"queue full: {admission.capacity} alerts are waiting"
            hint, retry_after = "send it again later; raise queue.capacity or queue.workers", 1
        return refuse(503, error, "", hint=hint, headers={"Retry-After": str(retry_after)})
