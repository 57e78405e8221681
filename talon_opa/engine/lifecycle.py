"""The engine's lifecycle: it builds the parts, starts them on the rules, reloads them, drains them.

Intake (HTTP) → `Acceptor` (dedup, queue) → queue workers → `Processor` (decide with OPA, then
`Executor`), plus the OPA supervisor, the rules watcher, metrics and traces. `talon_opa.engine.app`
serves an engine over HTTP; tests and benchmarks drive one directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
from opentelemetry.trace import SpanKind

from talon_opa.catalog import default_registry
from talon_opa.core import config, logs
from talon_opa.core.errors import OpaError, RulesError, TalonError
from talon_opa.core.kube import KubeClient, KubeConfig
from talon_opa.engine import audit_ship, metrics, prestart, reload, telemetry
from talon_opa.engine.accept import Acceptor
from talon_opa.engine.approvals import Approvals
from talon_opa.engine.audit import AuditTrail
from talon_opa.engine.batcher import Batcher
from talon_opa.engine.execute import Executor
from talon_opa.engine.instances import Instances
from talon_opa.engine.jetstream import JetStreamQueue
from talon_opa.engine.notify import Notifications
from talon_opa.engine.opa_supervisor import OpaSupervisor
from talon_opa.engine.process import Processor
from talon_opa.engine.queue import AlertQueue
from talon_opa.engine.reload import Built
from talon_opa.engine.undo import Undoer
from talon_opa.engine.work import Job, WorkItem
from talon_opa.opa.client import OpaClient
from talon_opa.opa.prefilter import Prefilter
from talon_opa.plugins.clients import ClientProvider
from talon_opa.plugins.registry import Registry

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logs.get("engine")

_AUTO: Any = object()
# OPA answers its bundle status in about a millisecond on loopback: a probe that waits longer says so
# at once (a frozen OPA must not make /readyz hang)
READY_PROBE_SECONDS = 0.5
PREFILTER_RECHECK_S = 2.0  # a sidecar may restart on an older bundle: its revision is confirmed this often


def kube_config_of(cfg: config.Config) -> KubeConfig | None:
    """The kubeconfig file if set, else in-cluster credentials, else None (dry-run everything)."""
    if cfg.kubeconfig:
        return KubeConfig.from_file(cfg.kubeconfig)
    try:
        return KubeConfig.in_cluster()
    except (TalonError, OSError):
        return None


def cluster_clients(cfg: config.Config, http: aiohttp.ClientSession) -> dict[str, KubeClient]:
    """One KubeClient per entry of `clusters`; ConfigError naming `clusters.<name>` when one cannot be read."""
    out: dict[str, KubeClient] = {}
    for name, path in cfg.clusters.items():
        try:
            out[name] = KubeClient(KubeConfig.from_file(path), session=http)
        except (TalonError, OSError, AttributeError, TypeError) as e:
            raise config.ConfigError(
                f"config key 'clusters.{name}' names {path}, which is not a usable kubeconfig: {e}",
                hint="give the cluster's kubeconfig file (with a current-context)",
            ) from e
    return out


class Engine:
    """One response engine. Build it, then `create_app(engine)` (or `await start(session)` / `stop()`).

    `head_start`: its first bundle already built and its child OPA spawned (engine/prestart.py).
    """

    def __init__(
        self,
        cfg: config.Config,
        *,
        registry: Registry | None = None,
        kube_config: KubeConfig | None = _AUTO,
        span_exporter: SpanExporter | None = None,
        head_start: prestart.Prestart | None = None,
    ) -> None:
        self.cfg = cfg
        self.registry = head_start.registry if head_start else (registry or default_registry())
        self._kube_config = kube_config
        self.metrics = metrics.Metrics()
        self.telemetry = telemetry.Telemetry(cfg.otel, exporter=span_exporter)
        self.tracer = self.telemetry.tracer
        self.decide_ahead = decide_ahead(cfg)
        self.queue: AlertQueue[Job] = AlertQueue(
            self._handle,
            capacity=cfg.queue.capacity,
            max_bytes=cfg.queue.max_bytes,
            workers=cfg.queue.workers + self.decide_ahead,
            on_depth=self.metrics.queue_depth.set,
            on_wait=self._decide_early,
        )
        self._workdir = head_start.workdir if head_start else prestart.Workdir.of(cfg)
        self.workdir = self._workdir.path
        self._first: reload.Built | None = head_start.built if head_start else None
        spawned = head_start.opa if head_start else None
        self.supervisor = OpaSupervisor(cfg.opa, self.workdir, self.metrics, spawned=spawned)
        self.bundle_cache = head_start.cache if head_start else prestart.bundle_cache(cfg)
        self.opa = OpaClient(
            self.supervisor.endpoint,
            timeout=cfg.opa.timeout_seconds,
            retry_initial=cfg.opa.retry_initial_seconds,
            retry_max=cfg.opa.retry_max_seconds,
            on_error=lambda kind: self.metrics.opa_errors.labels(kind=kind).inc(),
            expected_revision=lambda: self.supervisor.revision,
        )
        self.batcher = Batcher(self.opa, max_size=cfg.opa.batch_size, in_flight=cfg.opa.requests_in_flight)
        self.prefilter = Prefilter(
            self.opa,
            revision=lambda: self.supervisor.revision,
            endpoint=self.supervisor.endpoint,
            enabled=cfg.opa.prefilter and not cfg.opa.rego,
            recheck_seconds=PREFILTER_RECHECK_S if cfg.opa.url else 0.0,
        )
        self.bundle_archive: tuple[str, bytes] | None = None  # (revision, .tar.gz) served to a sidecar
        self.jetstream = (
            JetStreamQueue(cfg, self._handle_item, self.metrics.queue_depth.set) if cfg.queue.kind == "nats" else None
        )
        self.audit = AuditTrail(cfg.audit, self.metrics.registry) if cfg.audit.path else None
        self.shipper: audit_ship.AuditShipper | None = None  # with audit.output, built at start (its output)
        self.processor = Processor(
            cfg,
            batcher=self.batcher,
            executor=self._executor,
            metrics=self.metrics,
            tracer=self.tracer,
            audit=self.audit,
            prefilter=self.prefilter,
            execute_slots=cfg.queue.workers if self.decide_ahead else None,
            # OPA reads only what it needs, unless your Rego may read more or OPA logs inputs for debugging
            lean_input=not cfg.opa.rego and not cfg.opa.decision_logs,
            decide_waiting=decide_waiting(cfg),
        )
        self.acceptor = Acceptor(
            cfg,
            queue=self.queue,
            metrics=self.metrics,
            tracing=self.telemetry,
            jetstream=self.jetstream,
            decide_now=self.processor.decide_now,  # alerts no rule can match skip the queue (in process)
        )
        self.approvals = Approvals(
            cfg, executor=self._executor, tracer=self.tracer, registry=self.metrics.registry, audit=self.audit
        )
        self.undo = Undoer(
            cfg, registry=self.registry, tracer=self.tracer, metrics=self.metrics.registry, audit=self.audit
        )
        self.built: reload.Built | None = None
        self.executor: Executor | None = None
        self.kube: KubeClient | None = None
        self.dry_run_only = False
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_lock = asyncio.Lock()
        self._started = False
        self._empty_refused = False  # the last reload found no rule and was refused

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self, http: aiohttp.ClientSession) -> None:
        """Translate the rules, start OPA on them, open clients, start workers and watchers."""
        cfg = self.cfg
        built, self._first = self._first, None
        if built is None:
            prestart.announce(cfg)
            built = await self._build()
            prestart.report(cfg, built)
        try:
            if self.audit is not None:
                await self.audit.start()
            if self.supervisor.external:
                self.bundle_archive = (built.revision, await asyncio.to_thread(reload.pack, built.path))
            await self.supervisor.start(built.path, built.revision)
            kube_config = kube_config_of(cfg) if self._kube_config is _AUTO else self._kube_config
            clusters = cluster_clients(cfg, http)
            if kube_config is None and clusters:
                log.info(
                    "no default cluster: alerts act on the cluster they name",
                    extra={"clusters": sorted(clusters), "cluster_field": cfg.cluster_field},
                )
            elif kube_config is None:
                self.dry_run_only = True
                log.warning(
                    "NO KUBERNETES CREDENTIALS: every Kubernetes step runs in DRY-RUN, no cluster will change",
                    extra={"hint": "set kubeconfig (or KUBECONFIG), or run in a cluster with a service account"},
                )
            if kube_config is not None:
                self.kube = KubeClient(kube_config, session=http)
            instances = Instances(self.registry, ClientProvider(cfg, http=http, kube=self.kube, clusters=clusters))
            instances.adopt(instances.add_notifiers(cfg.default_notifiers, cfg.notifiers))
            instances.adopt(
                instances.add_notifiers(built.notifiers, cfg.notifiers, strict=False, named_by=built.notifier_rules)
            )
            instances.check_clients(built.plugins)
            notifications = Notifications(
                instances,
                metrics=self.metrics,
                tracer=self.tracer,
                default_notifiers=cfg.default_notifiers,
                timeout=cfg.step_timeout_seconds,
            )
            self.executor = Executor(
                instances=instances,
                notifications=notifications,
                metrics=self.metrics,
                tracer=self.tracer,
                step_timeout=cfg.step_timeout_seconds,
                force_dry_run=self.dry_run_only,
                cluster_field=cfg.cluster_field,
                park=self.approvals.park,
                undo=self.undo,
            )
            await self.undo.start(instances)
            if self.audit is not None and cfg.audit.output:
                self.shipper = audit_ship.shipper(cfg.audit, self.audit, instances, self.metrics.registry)
                await self.shipper.start(*self.audit.end)
            if self.jetstream is not None:
                await self.jetstream.connect()
            await self.approvals.start()  # re-arms the approvals kept in state_dir (ConfigError: unusable)
        except BaseException:
            await self.undo.stop()
            if self.jetstream is not None:
                await self.jetstream.stop()
            if self.audit is not None:
                await self.audit.stop()
            if self.shipper is not None:
                await self.shipper.stop(0)
            await self.supervisor.stop()
            raise
        self.built = built
        self._set_revision(built)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.batcher.run(), name="talon-opa-batcher"))
        self._tasks.append(loop.create_task(self.prefilter.run(), name="talon-opa-prefilter"))
        self.queue.start()
        if self.jetstream is not None:
            self.jetstream.start()
        self._tasks.append(loop.create_task(self.supervisor.watch(), name="talon-opa-opa-watch"))
        if cfg.watch_rules:
            watcher = reload.RulesWatcher(list(cfg.rules_files), cfg.watch_interval_seconds, self.reload)
            self._tasks.append(loop.create_task(watcher.run(), name="talon-opa-rules-watch"))
        self._started = True
        log.info(
            "engine started",
            extra={
                "rules": len(built.rules),
                "revision": built.revision,
                "opa": self.cfg.opa.url or "child",
                "dry_run_only": self.dry_run_only,
            },
        )

    async def stop(self) -> None:
        """Drain (every accepted alert is finished, up to the drain timeout), then stop everything."""
        if self._started:
            timeout = self.cfg.queue.drain_timeout_seconds
            left = await self.queue.drain(timeout)
            if self.jetstream is not None:  # what it has not started stays in the stream for the other replicas
                left += await self.jetstream.drain(timeout)
            if left:
                self.metrics.alerts_failed.labels(stage="drain").inc(left)
                log.error(
                    "alerts not finished at shutdown",
                    extra={"count": left, "hint": "raise queue.drain_timeout_seconds"},
                )
            else:
                log.info("drained, every accepted alert finished")
            await self.approvals.stop(timeout)
            await self.undo.stop()
            if self.audit is not None:
                await self.audit.stop(timeout)
            if self.shipper is not None:  # after the trail: its last lines go too
                await self.shipper.stop(timeout)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        await self.supervisor.stop()
        self.telemetry.shutdown()
        self._workdir.cleanup()
        self._started = False

    async def _build(self) -> reload.Built:
        return await prestart.build_async(self.cfg, self.registry, self.workdir, self.bundle_cache)

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
            if not built.rules and old is not None and old.rules and not self.cfg.allow_empty_rules:
                reload.remove(built.path)
                self.metrics.reloads.labels(status="refused_empty").inc()
                self._empty_refused = True
                log.warning(
                    "rules reload refused: the rules files hold no rule",
                    extra={
                        "files": list(self.cfg.rules_files),
                        "kept": f"the previous {len(old.rules)} rules stay active",
                        "hint": "write the rules again; set allow_empty_rules: true to switch every response off",
                    },
                )
                return False
            self._empty_refused = False
            if old is not None and built.revision == old.revision:
                if built.path != old.path:
                    reload.remove(built.path)
                self.metrics.reloads.labels(status="unchanged").inc()
                log.info("rules unchanged", extra={"revision": built.revision})
                return True
            assert self.executor is not None
            instances = self.executor.instances
            try:
                new_notifiers = instances.add_notifiers(
                    built.notifiers, self.cfg.notifiers, strict=False, named_by=built.notifier_rules
                )
                instances.check_clients(built.plugins)
                if self.supervisor.external:
                    self.bundle_archive = (built.revision, await asyncio.to_thread(reload.pack, built.path))
                await self.supervisor.swap(built.path, built.revision)
            except TalonError as e:
                reload.remove(built.path)
                self.metrics.reloads.labels(status="failure").inc()
                log.error("rules rejected", extra={"error": str(e), "kept": "the previous rules stay active"})
                return False
            instances.adopt(new_notifiers)
            self.built = built
            self._set_revision(built)
            if old is not None and old.path != built.path:
                reload.remove(old.path)
            for w in built.warnings:
                log.warning("rules warning", extra={"where": str(w)})
            if not built.rules:
                log.warning(
                    "NO RULES: the rules files hold no rule, every response is off",
                    extra={"files": list(self.cfg.rules_files), "before": len(old.rules) if old else 0},
                )
            self.metrics.reloads.labels(status="success").inc()
            log.info("rules reloaded", extra={"rules": len(built.rules), "revision": built.revision})
            return True

    def _set_revision(self, built: Built) -> None:
        self.metrics.set_revision(built.revision)
        self.metrics.rules_active.set(len(built.rules))
        self.metrics.set_known(built.falco_rules, built.sources)

    # --- processing -----------------------------------------------------------------------------------

    def _executor(self) -> Executor:
        assert self.executor is not None, "the engine is not started"
        return self.executor

    def _decide_early(self, job: Job) -> None:
        self.processor.decide_early(job)

    async def _handle(self, job: Job, started: Callable[[], None]) -> None:
        await self.processor.handle(job, started)

    async def _handle_item(self, item: WorkItem, trace_headers: Mapping[str, str]) -> None:
        """An alert from JetStream: processed in a `process alert` span continuing its `receive alert` span."""
        span = self.tracer.start_span(
            telemetry.PROCESS_ALERT,
            context=self.telemetry.extract(trace_headers),
            kind=SpanKind.CONSUMER,
            attributes={telemetry.ALERT_ID: item.alert_id, telemetry.ALERT_RULE: item.alert.rule},
        )
        await self.processor.handle(Job(item, span, time.monotonic()))
        if self.audit is not None:  # its line is written before JetStream is told the alert is done
            await self.audit.caught_up(self.cfg.step_timeout_seconds)

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when not draining and OPA has activated the bundle revision we built."""
        if self.queue.closed or not self._started:
            return False, {"status": "not ready", "reason": "starting" if not self._started else "draining"}
        audit_problem = self.audit.problem if self.audit is not None else ""
        if audit_problem and self.cfg.audit.required:
            return False, {"status": "not ready", "reason": "audit trail not writable", "error": audit_problem}
        if self.jetstream is not None and not self.jetstream.connected:
            return False, {"status": "not ready", "reason": "nats unreachable", "url": "queue.nats_url"}
        want = self.supervisor.revision
        try:
            have = await self.opa.revisions(timeout=min(READY_PROBE_SECONDS, self.cfg.opa.timeout_seconds))
        except OpaError as e:
            return False, {"status": "not ready", "reason": "opa unreachable", "error": str(e)}
        if want not in have:
            return False, {"status": "not ready", "reason": "bundle not active", "want": want, "opa": sorted(have)}
        doc: dict[str, Any] = {
            "status": "ready",
            "revision": want,
            "rules": len(self.built.rules) if self.built else 0,
            "queue_depth": self.queue.depth,
            "dry_run_only": self.dry_run_only,
            **({"audit": f"not writable: {audit_problem}"} if audit_problem else {}),
            **({"audit_shipping": f"failing: {self.shipper.problem}"} if self.shipper and self.shipper.problem else {}),
        }
        if self.built is not None and not self.built.rules:
            doc["warning"] = "no rules: every response is off"
        elif self._empty_refused:
            doc["warning"] = "the rules files hold no rule: reload refused, the previous rules stay active"
        return True, doc

    async def drained(self) -> None:
        """Wait until every accepted alert is finished (tests and benchmarks)."""
        await self.queue.join()


def decide_ahead(cfg: config.Config) -> int:
    """How many alerts beyond `queue.workers` are decided while the workers' plans run (docs/rego.md §6).

    Their decisions fill larger OPA batches (OPA's CPU per alert: ~200 µs in batches of 16, ~140 in 64).
    None when `opa.decide_ahead` is off, with caps limits (a plan decided ahead would read older counters,
    docs/caps.md), with batching off, or with JetStream (its partitions set the concurrency).
    """
    if not cfg.opa.decide_ahead or cfg.queue.kind != "memory" or cfg.opa.batch_size <= 1 or cfg.caps.get("limits"):
        return 0
    return cfg.opa.batch_size


def decide_waiting(cfg: config.Config) -> bool:
    """Whether an alert waiting behind alerts about the same pod is decided meanwhile (docs/rego.md §6).

    With decide-ahead, unless the caps read the pod (`protected_labels`, `keep_last_replica`: the alerts
    before it may change the pod). Its plan still runs after theirs.
    """
    return decide_ahead(cfg) > 0 and not config.caps_need_pod(cfg.caps)
