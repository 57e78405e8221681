"""The engine and its aiohttp application.

`Engine` ties the parts together: intake → dedup → queue → decide (OPA) → execute, plus the OPA
supervisor, the rules watcher, metrics and traces. `create_app(engine)` is the aiohttp factory: the
engine starts in the app's cleanup context (one ClientSession per app, explicit timeouts, typed
`web.AppKey`s) and drains when the app is cleaned up.

Routes: `/healthz`, `/readyz`, `/metrics`, `/v1/...` (reserved, the engine's API); every other path is
the intake (as in Talon, where `/` is a catch-all).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Span, SpanKind

from talon_opa.catalog import default_registry
from talon_opa.core import config, logs
from talon_opa.core.errors import OpaError, RulesError, TalonError
from talon_opa.core.events import Alert
from talon_opa.core.kube import KubeClient, KubeConfig
from talon_opa.engine import metrics, reload, telemetry
from talon_opa.engine.batcher import Batcher
from talon_opa.engine.execute import Executor, alert_target, build_notifiers
from talon_opa.engine.intake import Intake, refuse
from talon_opa.engine.opa_supervisor import OpaSupervisor
from talon_opa.engine.queue import AlertQueue, Deduplicator, QueueClosed, dedup_key_of
from talon_opa.opa.client import OpaClient
from talon_opa.opa.plan import Plan
from talon_opa.plugins.registry import Registry
from talon_opa.plugins.runtime import Deps

log = logs.get("engine")

BUNDLE_PATH = "/v1/bundles/talon.tar.gz"
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=5, sock_read=30)
_AUTO: Any = object()


@dataclass(eq=False)
class Job:
    """An accepted alert waiting for, or under, processing."""

    alert_id: str
    alert: Alert
    span: Span  # the root `receive alert` span, ended when processing ends
    received: float


@dataclass(frozen=True, slots=True)
class Accepted:
    """The intake's answer about one decoded alert."""

    status: int
    alert_id: str = ""
    trace_id: str = ""
    duplicate_of: str = ""
    error: str = ""
    hint: str = ""
    retry_after: int = 1


def kube_config_of(cfg: config.Config) -> KubeConfig | None:
    """The kubeconfig file if set, else in-cluster credentials, else None (dry-run everything)."""
    if cfg.kubeconfig:
        return KubeConfig.from_file(cfg.kubeconfig)
    try:
        return KubeConfig.in_cluster()
    except (TalonError, OSError):
        return None


class Engine:
    """One response engine. Build it, then `create_app(engine)` (or `await start(session)` / `stop()`)."""

    def __init__(
        self,
        cfg: config.Config,
        *,
        registry: Registry | None = None,
        kube_config: KubeConfig | None = _AUTO,
        span_exporter: SpanExporter | None = None,
    ) -> None:
        self.cfg = cfg
        self.registry = registry or default_registry()
        self._kube_config = kube_config
        self.metrics = metrics.Metrics()
        self.telemetry = telemetry.Telemetry(cfg.otel, exporter=span_exporter)
        self.tracer = self.telemetry.tracer
        self.dedup = Deduplicator(cfg.deduplication.time_window_seconds)
        self.queue: AlertQueue[Job] = AlertQueue(
            self.handle,
            capacity=cfg.queue.capacity,
            workers=cfg.queue.workers,
            on_depth=self.metrics.queue_depth.set,
        )
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if cfg.opa.bundle_dir:
            self.workdir = Path(cfg.opa.bundle_dir)
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="talon-opa-engine-")
            self.workdir = Path(self._tmp.name)
        self.supervisor = OpaSupervisor(cfg.opa, self.workdir, self.metrics)
        self.opa = OpaClient(
            self.supervisor.endpoint,
            timeout=cfg.opa.timeout_seconds,
            retry_initial=cfg.opa.retry_initial_seconds,
            retry_max=cfg.opa.retry_max_seconds,
            on_error=lambda kind: self.metrics.opa_errors.labels(kind=kind).inc(),
            expected_revision=lambda: self.supervisor.revision,
        )
        self.batcher = Batcher(self.opa, max_size=cfg.opa.batch_size)
        self.bundle_archive: tuple[str, bytes] | None = None  # (revision, .tar.gz) served to a sidecar
        self.intake = Intake(self)
        self.built: reload.Built | None = None
        self.executor: Executor | None = None
        self.kube: KubeClient | None = None
        self.dry_run_only = False
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_lock = asyncio.Lock()
        self._started = False
        self._full_log = logs.Throttle(1.0)

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self, http: aiohttp.ClientSession) -> None:
        """Translate the rules, start OPA on them, open clients, start workers and watchers."""
        cfg = self.cfg
        for key in cfg.unknown_keys:
            log.warning("unknown config key ignored", extra={"key": key})
        built = await self._build()
        for w in built.warnings:
            log.warning("rules warning", extra={"where": str(w)})
        try:
            if self.supervisor.external:
                self.bundle_archive = (built.revision, await asyncio.to_thread(reload.pack, built.path))
            await self.supervisor.start(built.path, built.revision)
            kube_config = kube_config_of(cfg) if self._kube_config is _AUTO else self._kube_config
            if kube_config is None:
                self.dry_run_only = True
                log.warning(
                    "NO KUBERNETES CREDENTIALS: every step runs in DRY-RUN, nothing will be changed",
                    extra={"hint": "set kubeconfig (or KUBECONFIG), or run in a cluster with a service account"},
                )
            else:
                self.kube = KubeClient(kube_config, session=http)
            deps = Deps(http=http, kube=self.kube)
            notifiers = build_notifiers(self.registry, cfg.default_notifiers, cfg.notifiers, deps)
            fresh = [n for n in built.notifiers if n not in notifiers]
            notifiers.update(build_notifiers(self.registry, fresh, cfg.notifiers, deps, strict=False))
            self.executor = Executor(
                registry=self.registry,
                deps=deps,
                metrics=self.metrics,
                tracer=self.tracer,
                notifiers=notifiers,
                default_notifiers=cfg.default_notifiers,
                step_timeout=cfg.step_timeout_seconds,
                force_dry_run=self.dry_run_only,
            )
        except BaseException:
            await self.supervisor.stop()
            raise
        self.built = built
        self.metrics.set_revision(built.revision)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.batcher.run(), name="talon-opa-batcher"))
        self.queue.start()
        self._tasks.append(loop.create_task(self.supervisor.watch(), name="talon-opa-opa-watch"))
        if cfg.watch_rules:
            watcher = reload.RulesWatcher(list(cfg.rules_files), cfg.watch_interval_seconds, self.reload)
            self._tasks.append(loop.create_task(watcher.run(), name="talon-opa-rules-watch"))
        self._started = True
        log.info(
            "engine started",
            extra={
                "rules": len(built.ruleset.rules),
                "revision": built.revision,
                "opa": self.cfg.opa.url or "child",
                "dry_run_only": self.dry_run_only,
            },
        )

    async def stop(self) -> None:
        """Drain (every accepted alert is finished, up to the drain timeout), then stop everything."""
        if self._started:
            left = await self.queue.drain(self.cfg.queue.drain_timeout_seconds)
            if left:
                self.metrics.alerts_failed.labels(stage="drain").inc(left)
                log.error(
                    "alerts not finished at shutdown",
                    extra={"count": left, "hint": "raise queue.drain_timeout_seconds"},
                )
            else:
                log.info("drained, every accepted alert finished")
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        await self.supervisor.stop()
        self.telemetry.shutdown()
        if self._tmp is not None:
            self._tmp.cleanup()
        self._started = False

    async def _build(self) -> reload.Built:
        native = [Path(p) for p in self.cfg.opa.rego]
        key = Path(self.cfg.opa.signing_key) if self.cfg.opa.signing_key else None
        return await asyncio.to_thread(
            reload.build, list(self.cfg.rules_files), self.registry, self.workdir, native, key
        )

    async def reload(self) -> bool:
        """Rebuild from the rules files and swap atomically; on any problem the old rules stay active."""
        async with self._reload_lock:
            try:
                built = await self._build()
            except RulesError as e:
                reload.log_problems(e, reload=True)
                self.metrics.reloads.labels(status="failure").inc()
                return False
            except TalonError as e:
                self.metrics.reloads.labels(status="failure").inc()
                log.error("rules rejected", extra={"error": str(e), "kept": "the previous rules stay active"})
                return False
            old = self.built
            if old is not None and built.revision == old.revision:
                if built.path != old.path:
                    reload.remove(built.path)
                self.metrics.reloads.labels(status="unchanged").inc()
                log.info("rules unchanged", extra={"revision": built.revision})
                return True
            assert self.executor is not None
            try:
                fresh = [n for n in built.notifiers if n not in self.executor.notifiers]
                new_notifiers = build_notifiers(
                    self.registry, fresh, self.cfg.notifiers, self.executor.deps, strict=False
                )
                if self.supervisor.external:
                    self.bundle_archive = (built.revision, await asyncio.to_thread(reload.pack, built.path))
                await self.supervisor.swap(built.path, built.revision)
            except TalonError as e:
                reload.remove(built.path)
                self.metrics.reloads.labels(status="failure").inc()
                log.error("rules rejected", extra={"error": str(e), "kept": "the previous rules stay active"})
                return False
            self.executor.notifiers.update(new_notifiers)
            self.built = built
            self.metrics.set_revision(built.revision)
            if old is not None and old.path != built.path:
                reload.remove(old.path)
            for w in built.warnings:
                log.warning("rules warning", extra={"where": str(w)})
            self.metrics.reloads.labels(status="success").inc()
            log.info("rules reloaded", extra={"rules": len(built.ruleset.rules), "revision": built.revision})
            return True

    # --- intake ---------------------------------------------------------------------------------------

    def dedup_key(self, alert: Alert) -> str:
        parts = self.cfg.deduplication.key
        if parts == ("output",):
            return alert.dedup_key()
        fields = {p: alert.field_str(p) or "" for p in parts}
        return dedup_key_of(parts, alert, alert.output, fields)

    def accept(self, alert: Alert, headers: Mapping[str, str]) -> Accepted:
        """Dedup and queue a decoded alert; never waits."""
        ns, pod = alert_target(alert)
        attrs: dict[str, Any] = {
            telemetry.ALERT_RULE: alert.rule,
            telemetry.ALERT_PRIORITY: alert.priority,
            telemetry.ALERT_SOURCE: alert.source,
            telemetry.ALERT_HOSTNAME: alert.hostname,
        }
        if pod:
            attrs[telemetry.K8S_POD_NAME] = pod
        if ns:
            attrs[telemetry.K8S_NAMESPACE_NAME] = ns
        alert_id = uuid.uuid4().hex
        attrs[telemetry.ALERT_ID] = alert_id
        span = self.tracer.start_span(
            telemetry.RECEIVE_ALERT, context=self.telemetry.extract(headers), kind=SpanKind.SERVER, attributes=attrs
        )
        trace_id = telemetry.trace_id_of(span)
        self.metrics.count_event(alert.rule, alert.priority, alert.source)
        with trace.use_span(span, end_on_exit=False):
            if self.cfg.print_all_events:
                log.info(
                    "event",
                    extra={
                        "id": alert_id,
                        "event": alert.rule,
                        "priority": alert.priority,
                        "source": alert.source,
                        "output": alert.output,
                    },
                )
            key = self.dedup_key(alert)
            seen = self.dedup.lookup(key)
            if seen is not None:
                self.metrics.dedup_hits.inc()
                span.set_attribute(telemetry.ALERT_DUPLICATE, True)
                span.set_attribute(telemetry.ALERT_DUPLICATE_OF, seen.alert_id)
                log.info(
                    "duplicate alert, not processed again",
                    extra={"id": alert_id, "duplicate_of": seen.alert_id, "first_trace_id": seen.trace_id},
                )
                span.end()
                return Accepted(200, alert_id, trace_id, duplicate_of=seen.alert_id)
            job = Job(alert_id, alert, span, time.monotonic())
            target = (ns, pod) if pod else None
            try:
                queued = self.queue.put(job, target)
            except QueueClosed:
                telemetry.fail(span, "the engine is shutting down", "draining")
                span.end()
                return Accepted(
                    503, error="the engine is shutting down", hint="send it again (another replica)", retry_after=5
                )
            if not queued:
                telemetry.fail(span, "queue full", "queue_full")
                span.end()
                held = self._full_log.allow()
                if held is not None:
                    log.warning(
                        "queue full, alert refused",
                        extra={"capacity": self.queue.capacity, "also_refused_since_last_line": held},
                    )
                return Accepted(
                    503,
                    error=f"queue full: {self.queue.capacity} alerts are waiting",
                    hint="send it again later; raise queue.capacity or queue.workers",
                )
            self.dedup.record(key, alert_id, trace_id)
            log.debug("alert queued", extra={"id": alert_id})
        return Accepted(200, alert_id, trace_id)

    # --- processing -----------------------------------------------------------------------------------

    async def handle(self, job: Job) -> None:
        """Decide and execute one alert, in its trace. Never raises (failures are reported)."""
        self.metrics.in_flight.inc()
        try:
            with trace.use_span(job.span, end_on_exit=False):
                try:
                    plan = await self.decide(job)
                except OpaError as e:
                    self.metrics.alerts_failed.labels(stage="decide").inc()
                    telemetry.fail(job.span, e, "opa_error")
                    log.error("decision failed", extra={"id": job.alert_id, "error": str(e)})
                    return
                alert = job.alert
                if not plan.matched_rules:
                    telemetry.ok(job.span)
                    return
                if not self.cfg.print_all_events:
                    log.info(
                        "event",
                        extra={
                            "id": job.alert_id,
                            "event": alert.rule,
                            "priority": alert.priority,
                            "source": alert.source,
                            "output": alert.output,
                        },
                    )
                for rule in plan.acted_rules():
                    self.metrics.matches.labels(rule, alert.rule, alert.priority, alert.source).inc()
                    log.info("match", extra={"id": job.alert_id, "rule": rule, "event": alert.rule})
                assert self.executor is not None
                results = await self.executor.execute(alert, plan)
                failed = [r for r in results if r.status == "failure"]
                if failed:
                    telemetry.fail(job.span, f"{len(failed)} step(s) failed: {failed[0].error}", failed[0].error_type)
                else:
                    telemetry.ok(job.span)
        except Exception as e:
            self.metrics.alerts_failed.labels(stage="execute").inc()
            telemetry.fail(job.span, e)
            log.exception("alert processing failed", extra={"id": job.alert_id})
        finally:
            job.span.end()
            self.metrics.in_flight.dec()

    async def decide(self, job: Job) -> Plan:
        span = self.tracer.start_span(telemetry.DECIDE_PLAN)  # a child of the alert's span, current here
        with trace.use_span(span, end_on_exit=True):

            def retrying(attempt: int, error: OpaError) -> None:
                span.add_event("opa unavailable, retrying", {"attempt": attempt, "error": str(error)[:500]})

            try:
                plan = await self.batcher.decide(job.alert.opa_input(), on_retry=retrying)
            except OpaError as e:
                telemetry.fail(span, e, "opa_error")
                raise
            self.metrics.decision_seconds.observe(plan.seconds)
            span.set_attributes(
                {
                    telemetry.DECISION_ID: plan.decision_id,
                    telemetry.BUNDLE_REVISION: plan.revision,
                    telemetry.MATCHED_RULES: list(plan.matched_rules),
                    telemetry.STEP_COUNT: len(plan.steps),
                    telemetry.OPA_ATTEMPTS: plan.attempts,
                    telemetry.DECISION_BATCH_SIZE: plan.batch_size,
                }
            )
            telemetry.ok(span)
            return plan

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when not draining and OPA has activated the bundle revision we built."""
        if self.queue.closed or not self._started:
            return False, {"status": "not ready", "reason": "starting" if not self._started else "draining"}
        want = self.supervisor.revision
        try:
            have = await self.opa.revisions(timeout=min(2.0, self.cfg.opa.timeout_seconds))
        except OpaError as e:
            return False, {"status": "not ready", "reason": "opa unreachable", "error": str(e)}
        if want not in have:
            return False, {"status": "not ready", "reason": "bundle not active", "want": want, "opa": sorted(have)}
        return True, {
            "status": "ready",
            "revision": want,
            "queue_depth": self.queue.depth,
            "dry_run_only": self.dry_run_only,
        }

    async def drained(self) -> None:
        """Wait until every accepted alert is finished (tests and benchmarks)."""
        await self.queue.join()


ENGINE = web.AppKey("engine", Engine)
HTTP = web.AppKey("http", aiohttp.ClientSession)


def create_app(engine: Engine) -> web.Application:
    """The aiohttp application of an engine; the engine starts and drains with the app."""
    app = web.Application(client_max_size=engine.cfg.intake.max_body_bytes)
    app[ENGINE] = engine
    app.cleanup_ctx.append(_lifecycle)

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
        if not engine.intake.authorized(request):
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
    app.router.add_route("*", "/v1/{tail:.*}", api)
    app.router.add_route("*", "/{tail:.*}", engine.intake.handle)
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
