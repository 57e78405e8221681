"""The aiohttp application of an engine: its routes, and the engine started and drained with the app.

Routes: `/healthz`, `/readyz`, `/metrics`, `/v1/bundles/talon.tar.gz` (the bundle a sidecar OPA polls),
`/v1/undo` (the operator API of `talon-opa undo`), `/v1/...` (reserved, the engine's API); every other
path is the intake (as in Talon, where `/` is a catch-all). One ClientSession per app (created in the
cleanup context, explicit timeouts, typed `web.AppKey`s).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from talon_opa.engine import approvals_api, metrics, undo_api
from talon_opa.engine.intake import INTAKE, Intake, refuse
from talon_opa.engine.lifecycle import Engine

BUNDLE_PATH = "/v1/bundles/talon.tar.gz"
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=5, sock_read=30)


ENGINE = web.AppKey("engine", Engine)
HTTP = web.AppKey("http", aiohttp.ClientSession)


def create_app(engine: Engine) -> web.Application:
    """The aiohttp application of an engine; the engine starts and drains with the app."""
    app = web.Application(client_max_size=engine.cfg.intake.max_body_bytes)
    app[ENGINE] = engine
    app.cleanup_ctx.append(_lifecycle)
    intake = Intake(engine.cfg, engine.acceptor.accept, engine.metrics, engine.acceptor.accept_now)
    app[INTAKE] = intake

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ready, doc = await engine.readiness()
        return web.json_response(doc, status=200 if ready else 503)

    async def metrics_(request: web.Request) -> web.Response:
        resp = web.Response(body=engine.metrics.exposition())
        resp.headers["Content-Type"] = metrics.CONTENT_TYPE
        return resp

    async def bundle(request: web.Request) -> web.Response:
        # the bundle service a sidecar OPA polls (services.engine + bundles.talon in its config)
        if engine.bundle_archive is None:
            return refuse(404, "no bundle is served: OPA runs as the engine's child", "path")
        if not intake.authorized(request):
            return refuse(401, "missing or invalid token", engine.cfg.auth.header)
        revision, data = engine.bundle_archive
        etag = f'"{revision}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=data, content_type="application/gzip", headers={"ETag": etag})

    async def api(request: web.Request) -> web.Response:
        return refuse(404, f"no such API: {request.path}", "path", hint="/v1/ is reserved for the engine's API")

    app.router.add_route("*", "/healthz", healthz)
    app.router.add_route("GET", "/readyz", readyz)
    app.router.add_route("GET", "/metrics", metrics_)
    app.router.add_route("GET", BUNDLE_PATH, bundle)
    approvals_api.add_routes(app, engine.approvals, engine.cfg.auth.operator_token)
    undo_api.add_routes(app, engine.cfg, engine.undo)  # /v1/undo (docs/undo.md)
    app.router.add_route("*", "/v1/{tail:.*}", api)
    app.router.add_route("*", "/{tail:.*}", intake.handle)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    session = aiohttp.ClientSession(timeout=HTTP_TIMEOUT)
    app[HTTP] = session
    engine = app[ENGINE]
    try:
        await engine.start(session)
    except BaseException:
        await session.close()
        await engine.stop()
        raise
    yield
    try:
        await engine.stop()
    finally:
        await session.close()
