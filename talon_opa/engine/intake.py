"""The HTTP intake (DESIGN §3.1): `POST /` and every path that is not reserved. It owns HTTP.

Order of checks: token (401) → method (405) → Content-Encoding (415 unless identity, gzip or deflate) →
size (413, before reading more than the limit; a compressed body is limited both as sent and once
decompressed, so a zip bomb stops at the limit) → a body sent slower than `intake.read_timeout_seconds`
(408) → decompressing (400 naming the header) → decoding (400 malformed, wrong type or nested too deep,
415 `text/plain`) → acceptance, whose `Admission` becomes the answer: 200 once queued (or a duplicate,
not queued), 503 + Retry-After when the queue is full (by count or by bytes) or draining.
Every refusal is JSON `{"error", "field"}` (plus `hint`), and nothing refused is queued. The answer
never waits on OPA or Kubernetes.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from talon_opa.core import config, events, logs
from talon_opa.core.errors import AlertError
from talon_opa.engine.accept import Admission
from talon_opa.engine.metrics import Metrics
from talon_opa.engine.work import WorkItem

log = logs.get("intake")

ENCODING = "Content-Encoding"
RESERVED = frozenset((b"/healthz", b"/readyz", b"/metrics"))  # besides /v1/...: every other path is the intake
_GZIP = 16 + zlib.MAX_WBITS  # zlib's wbits for a gzip header and trailer
_CODINGS = {"identity": 0, "gzip": _GZIP, "x-gzip": _GZIP, "deflate": zlib.MAX_WBITS}


def new_alert_id() -> str:
    """A random UUID (version 4) as 32 hex digits, as `uuid.uuid4().hex` and at a third of its cost."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    return b.hex()


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer of the intake, whichever HTTP layer writes it (aiohttp's, or the intake's own protocol)."""

    status: int
    body: bytes  # JSON, UTF-8
    headers: tuple[tuple[str, str], ...] = ()


def refusal(status: int, error: str, field: str = "", hint: str = "", headers: dict[str, str] | None = None) -> Reply:
    """The JSON `{"error", "field"}` (plus `hint`) answer of a refused request."""
    body: dict[str, Any] = {"error": error, "field": field}
    if hint:
        body["hint"] = hint
    return Reply(status, json.dumps(body).encode(), tuple(headers.items()) if headers else ())


def response(reply: Reply) -> web.Response:
    """A reply as aiohttp's response."""
    return web.Response(
        status=reply.status,
        body=reply.body,
        content_type="application/json",
        charset="utf-8",
        headers=dict(reply.headers) if reply.headers else None,
    )


def refuse(
    status: int, error: str, field: str = "", hint: str = "", headers: dict[str, str] | None = None
) -> web.Response:
    return response(refusal(status, error, field, hint, headers))


class Intake:
    """The intake handler: HTTP in, work items to `accept`, HTTP out."""

    def __init__(
        self,
        cfg: config.Config,
        accept: Callable[[WorkItem], Awaitable[Admission]],
        metrics: Metrics,
        accept_now: Callable[[WorkItem], Admission | None] | None = None,
    ) -> None:
        self._accept = accept
        # the acceptance without awaiting (None from it, or no such callable: `accept` must be awaited)
        self.accept_now = accept_now or (lambda item: None)
        self._metrics = metrics
        self.max_body = cfg.intake.max_body_bytes
        self.read_timeout = cfg.intake.read_timeout_seconds
        self.token = cfg.auth.token
        self.header = cfg.auth.header
        self._refused_log = logs.Throttle(1.0)

    def authorized(self, request: web.Request) -> bool:
        """The request carries the configured token (always true without one)."""
        if not self.token:
            return True
        value = request.headers.get(self.header)
        return self.token_ok(None if value is None else value.encode("utf-8", "surrogateescape"))

    def token_ok(self, value: bytes | None) -> bool:
        """The token header's value (bytes as sent, None when absent) carries the configured token."""
        if not self.token:
            return True
        value = value or b""
        scheme, _, rest = value.partition(b" ")
        if scheme.lower() == b"bearer":
            value = rest.strip()
        elif self.header.lower() == "authorization":
            return False
        return hmac.compare_digest(value, self.token.encode())

    def count_refusal(self, status: int) -> None:
        self._metrics.rejected.labels(status=str(status)).inc()

    def unauthorized(self, missing: bool) -> Reply:
        """The 401 of a request without the token (`missing`: no token header at all)."""
        self.count_refusal(401)
        return refusal(
            401,
            f"{'missing' if missing else 'invalid'} token in header {self.header}",
            self.header,
            hint="send the configured auth.token (Falcosidekick: webhook customheaders)",
            headers={"WWW-Authenticate": 'Bearer realm="talon-opa"'},
        )

    def refused(self, e: AlertError) -> Reply:
        """The answer to an alert refused before acceptance: counted, logged (throttled)."""
        self.count_refusal(e.status)
        held = self._refused_log.allow()
        if held is not None:
            log.warning(
                "alert refused",
                extra={"status": e.status, "error": str(e), "field": e.field, "also_refused_since_last_line": held},
            )
        return refusal(e.status, Exception.__str__(e), e.field, e.hint)

    def slow_body(self) -> AlertError:
        return AlertError(
            f"the body was not received within {self.read_timeout:g} s",
            field="body",
            status=408,
            hint="send the whole body at once, or raise intake.read_timeout_seconds",
        )

    def work(self, body: bytes, content_type: str | None, traceparent: str, tracestate: str) -> WorkItem | Reply:
        """The work item of a received body, or the refusal of a body that is no alert."""
        try:
            alert = events.decode_alert(body, content_type)
        except AlertError as e:
            return self.refused(e)
        return WorkItem(new_alert_id(), alert, body, content_type or "", traceparent, tracestate)

    def _too_large(self, what: str) -> AlertError:
        return AlertError(
            f"{what} over the limit of {self.max_body} bytes",
            status=413,
            hint="send one alert per request, or raise intake.max_body_bytes",
        )

    def _coding(self, request: web.Request) -> int:
        """zlib's wbits for the body's Content-Encoding (0: identity); AlertError 415 for any other."""
        value = request.headers.get(ENCODING, "").strip().lower()
        if value in ("", "identity"):
            return 0
        wbits = _CODINGS.get(value)
        if wbits is None:
            raise AlertError(
                f"{ENCODING} {value.encode('utf-8', 'surrogateescape')[:40].decode('ascii', 'replace')!r}"
                " is not supported",
                field=ENCODING,
                status=415,
                hint="send the alert uncompressed, or with Content-Encoding gzip or deflate",
            )
        return wbits

    def _decompress(self, body: bytes, wbits: int) -> bytes:
        """The decompressed body, never more than the limit (a zip bomb stops there)."""
        coding = "gzip" if wbits == _GZIP else "deflate"
        attempts = [wbits] if wbits == _GZIP else [wbits, -zlib.MAX_WBITS]  # deflate: zlib-wrapped, or raw
        for i, bits in enumerate(attempts):
            d = zlib.decompressobj(bits)
            try:
                out = d.decompress(body, self.max_body + 1)
                break
            except zlib.error as e:
                if i == len(attempts) - 1:
                    raise AlertError(
                        f"the body cannot be decompressed as {ENCODING} {coding}: {e}",
                        field=ENCODING,
                        hint=f"send a {coding}-compressed body with this header, or drop the header",
                    ) from e
        if len(out) > self.max_body or d.unconsumed_tail:
            raise self._too_large("the decompressed body is")
        if not d.eof:
            raise AlertError(
                f"the body cannot be decompressed as {ENCODING} {coding}: it is truncated",
                field=ENCODING,
                hint=f"send a {coding}-compressed body with this header, or drop the header",
            )
        return out

    async def _body(self, request: web.Request) -> bytes:
        wbits = self._coding(request)
        if request.content_length is not None and request.content_length > self.max_body:
            raise self._too_large(f"the body is {request.content_length} bytes,")
        content = request.content
        if content.is_eof():  # the whole body came with the headers (a usual alert): no timer needed
            data = content.read_nowait(-1)
            if len(data) > self.max_body:
                raise self._too_large("the body is")
            return self._decompress(data, wbits) if wbits else data
        buf = bytearray()
        try:
            async with asyncio.timeout(self.read_timeout):
                async for chunk in request.content.iter_any():
                    buf += chunk
                    if len(buf) > self.max_body:
                        raise self._too_large("the body is")
        except TimeoutError:
            raise self.slow_body() from None
        if not wbits:
            return bytes(buf)
        return self._decompress(bytes(buf), wbits)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """aiohttp's route of the intake (the intake's own protocol answers the usual alert itself)."""
        if not self.authorized(request):
            return response(self.unauthorized(self.header not in request.headers))
        if request.method != "POST":
            self.count_refusal(405)
            return refuse(
                405,
                f"{request.method} is not accepted here",
                "method",
                hint="send alerts with POST",
                headers={"Allow": "POST"},
            )
        try:
            body = await self._body(request)
        except AlertError as e:
            return response(self.refused(e))
        headers = request.headers
        item = self.work(
            body, headers.get("Content-Type"), headers.get("traceparent") or "", headers.get("tracestate") or ""
        )
        if isinstance(item, Reply):
            return response(item)
        admission = self.accept_now(item)
        return response(self.reply(admission if admission is not None else await self._accept(item)))

    async def accept_later(self, item: WorkItem) -> Reply:
        """The answer of an item `accept_now` could not take (the JetStream queue stores it first)."""
        return self.reply(await self._accept(item))

    def answer_later(self, item: WorkItem) -> asyncio.Future[Reply]:
        """`accept_later`, running: what the intake's own protocol waits for."""
        return asyncio.ensure_future(self.accept_later(item))

    def reply(self, admission: Admission) -> Reply:
        """The answer of an accepted, or refused, work item."""
        if admission.verdict == "queued":  # the usual answer, written directly: ids are hex digits
            return Reply(
                200, b'{"id":"%s","trace_id":"%s"}' % (admission.alert_id.encode(), admission.trace_id.encode())
            )
        if admission.accepted:
            doc: dict[str, Any] = {"id": admission.alert_id, "trace_id": admission.trace_id}
            if admission.verdict == "duplicate":
                doc["duplicate"] = True
                if admission.duplicate_of:  # unknown when another replica's copy is already consumed
                    doc["duplicate_of"] = admission.duplicate_of
            return Reply(200, json.dumps(doc).encode())
        self.count_refusal(503)
        if admission.verdict == "closing":
            error, hint, retry_after = "the engine is shutting down", "send it again (another replica)", 5
        elif admission.verdict == "unavailable":
            error, hint, retry_after = f"the queue is unavailable: {admission.reason}", "send it again later", 2
        elif admission.full_by_bytes:
            error = "queue full: the alerts waiting hold queue.max_bytes of bodies"
            hint, retry_after = "send it again later; raise queue.max_bytes or queue.workers", 1
        else:
            error = f"queue full: {admission.capacity} alerts are waiting"
            hint, retry_after = "send it again later; raise queue.capacity or queue.workers", 1
        return refusal(503, error, "", hint=hint, headers={"Retry-After": str(retry_after)})


INTAKE = web.AppKey("intake", Intake)  # the app's intake, which the listener's own protocol serves too
