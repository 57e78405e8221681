"""Processing one accepted alert, in its trace: decide its plan (OPA), then execute it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from talon_opa.core import config, logs
from talon_opa.core.errors import OpaError
from talon_opa.engine import pod_facts, telemetry
from talon_opa.engine.audit import AuditTrail
from talon_opa.engine.batcher import Batcher
from talon_opa.engine.execute import Executor, StepResult
from talon_opa.engine.metrics import Metrics
from talon_opa.engine.work import Job
from talon_opa.opa.plan import Plan
from talon_opa.opa.prefilter import Prefilter

log = logs.get("engine")


class Processor:
    """Decides and executes jobs; `handle` is what the queue's workers call.

    With `execute_slots`, the queue runs more workers than that (decide-ahead: their decisions share
    larger OPA batches) and at most `execute_slots` of them run a plan at a time. With `decide_waiting`,
    an alert waiting behind alerts about the same pod is decided meanwhile (`decide_early`), in the same
    OPA batches as the other waiting alerts; its plan still runs after theirs.
    """

    def __init__(
        self,
        cfg: config.Config,
        *,
        batcher: Batcher,
        executor: Callable[[], Executor],
        metrics: Metrics,
        tracer: trace.Tracer,
        audit: AuditTrail | None = None,
        prefilter: Prefilter | None = None,
        execute_slots: int | None = None,
        lean_input: bool = False,
        decide_waiting: bool = False,
    ) -> None:
        self._print_all_events = cfg.print_all_events
        self._batcher = batcher
        self._executor = executor  # the current one (the engine builds it at start)
        self._metrics = metrics
        self._tracer = tracer
        self._audit = audit  # records each alert once its plan has run (or could not be decided)
        self._needs_pod = config.caps_need_pod(cfg.caps)  # input.pod for protected labels, the last replica
        self._prefilter = prefilter  # decides, without OPA, the alerts the served index has no rule for
        self._lean_input = lean_input  # only the input fields talon-opa's Rego reads (no user Rego in the bundle)
        # how many plans run at once when more alerts than that are decided at once (None: no limit here)
        self._execute_slots = asyncio.Semaphore(execute_slots) if execute_slots else None
        self._decide_waiting = decide_waiting
        self._decided_by_index = metrics.decision_seconds.labels(by="index")
        self._decided_by_opa = metrics.decision_seconds.labels(by="opa")

    def decide_now(self, job: Job) -> bool:
        """Process at once, without awaiting, an alert the candidate index proves no rule matches: the same
        `decide plan` span, metrics and audit line as `handle` gives it. False (nothing done): queue it.
        """
        prefilter = self._prefilter
        if prefilter is None:
            return False
        t0 = time.perf_counter()
        alert = job.alert
        try:
            revision = prefilter.empty_plan_revision(alert.rule, alert.tags)
        except Exception:  # never expected: queued, `handle` reports it as it would have anyway
            return False
        if not revision:
            return False
        root = job.span
        plan: Plan | None = None
        audit = self._audit
        try:
            if root.is_recording():  # else its child would record nothing either: no span to start
                span = self._tracer.start_span(telemetry.DECIDE_PLAN, context=trace.set_span_in_context(root))
                with trace.use_span(span, end_on_exit=True):
                    plan = self._by_index(span, revision, t0)
            else:
                seconds = time.perf_counter() - t0
                if audit is not None:  # the plan is for its line only
                    plan = Plan.empty(revision, seconds)
                self._decided_by_index.observe(seconds)
            telemetry.ok(root)
            if audit is not None:
                audit.record(job, plan, [], "")
        except Exception as e:
            self._metrics.alerts_failed.labels(stage="execute").inc()
            telemetry.fail(root, e)
            trace_id = telemetry.trace_id_of(root)  # its span is not the current one here
            log.exception("alert processing failed", extra={"id": job.alert_id, "trace_id": trace_id})
            self._record(job, plan, [], f"{type(e).__name__}: {e}")
        finally:
            root.end()
        return True

    def _by_index(self, span: trace.Span, revision: str, t0: float) -> Plan:
        """The empty plan of `revision`'s index, on the alert's `decide plan` span."""
        plan = Plan.empty(revision, time.perf_counter() - t0)
        self._decided_by_index.observe(plan.seconds)
        if span.is_recording():
            span.set_attributes(
                {
                    telemetry.DECIDED_BY: "index",
                    telemetry.BUNDLE_REVISION: revision,
                    telemetry.MATCHED_RULES: [],
                    telemetry.STEP_COUNT: 0,
                }
            )
            telemetry.ok(span)
        return plan

    def decide_early(self, job: Job) -> None:
        """Start deciding an alert that waits behind alerts about the same pod (with `decide_waiting`).

        Its `decide plan` span starts now, in its trace; `handle` takes the plan (or the OpaError) when the
        alert's turn comes. Only where the plan cannot depend on what the alerts before it do: not with caps
        limits (counters) nor with caps reading the pod (engine/lifecycle.py `decide_waiting`).
        """
        if not self._decide_waiting or job.early is not None:
            return
        with trace.use_span(job.span, end_on_exit=False):  # the task copies this context: the span's parent
            job.early = task = asyncio.get_running_loop().create_task(self.decide(job))
        task.add_done_callback(_retrieved)  # a drain may stop the engine before its turn: no "never retrieved"

    async def handle(self, job: Job, started: Callable[[], None] = lambda: None) -> None:
        """Decide and execute one alert, in its trace. Never raises (failures are reported).

        `started()` is called once the alert starts: at once, or with `execute_slots`, once it is decided
        and its plan may run (the queue counts it as waiting until then).
        """
        if self._execute_slots is None:
            started()
        metrics = self._metrics
        metrics.in_flight.inc()
        plan: Plan | None = None
        results: list[StepResult] | None = None  # set once the plan has run (and its line is recorded)
        try:
            with trace.use_span(job.span, end_on_exit=False):
                try:
                    plan = await (job.early or self.decide(job))
                except OpaError as e:
                    metrics.alerts_failed.labels(stage="decide").inc()
                    telemetry.fail(job.span, e, "opa_error")
                    log.error("decision failed", extra={"id": job.alert_id, "error": str(e)})
                    self._record(job, None, [], str(e))
                    return
                alert = job.alert
                if not plan.matched_rules:
                    started()
                    telemetry.ok(job.span)
                    self._record(job, plan, [])
                    return
                # with decide-ahead, more alerts are decided at once than may run: `queue.workers` run plans
                async with self._execute_slots or contextlib.nullcontext():
                    started()
                    if not self._print_all_events:
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
                        metrics.count_match(rule, alert.rule, alert.priority, alert.source)
                        log.info("match", extra={"id": job.alert_id, "rule": rule, "event": alert.rule})
                    results = await self._executor().execute(alert, plan, job.alert_id, item=job.item)
                    self._record(job, plan, results)
                    failed = [r for r in results if r.status == "failure"]
                    if failed:
                        telemetry.fail(
                            job.span, f"{len(failed)} step(s) failed: {failed[0].error}", failed[0].error_type
                        )
                    else:
                        telemetry.ok(job.span)
        except Exception as e:
            metrics.alerts_failed.labels(stage="execute").inc()
            telemetry.fail(job.span, e)
            log.exception("alert processing failed", extra={"id": job.alert_id})
            if results is None:
                self._record(job, plan, [], f"{type(e).__name__}: {e}")
        finally:
            job.span.end()
            metrics.in_flight.dec()

    def _record(self, job: Job, plan: Plan | None, results: list[StepResult], error: str = "") -> None:
        if self._audit is not None:
            self._audit.record(job, plan, results, error)

    async def _add_pod(self, job: Job, opa_input: dict[str, Any]) -> None:
        """input.pod, from the alert's cluster; absent when the alert names no pod or there is no API server."""
        name, namespace = job.alert.pod_name(), job.alert.namespace()
        kube = self._executor().kube_for(job.alert)
        if name and namespace and kube is not None:
            opa_input["pod"] = facts = await pod_facts.lookup(kube, namespace, name)
            if "error" in facts:
                log.warning("pod lookup failed", extra={"id": job.alert_id, "error": facts["error"]})
                trace.get_current_span().add_event("pod lookup failed", {"error": str(facts["error"])})

    async def decide(self, job: Job) -> Plan:
        span = self._tracer.start_span(telemetry.DECIDE_PLAN)  # a child of the alert's span, current here
        with trace.use_span(span, end_on_exit=True):
            t0 = time.perf_counter()
            alert = job.alert
            revision = self._prefilter.empty_plan_revision(alert.rule, alert.tags) if self._prefilter else ""
            if revision:
                return self._by_index(span, revision, t0)

            def retrying(attempt: int, error: OpaError) -> None:
                span.add_event("opa unavailable, retrying", {"attempt": attempt, "error": str(error)[:500]})

            try:
                opa_input = alert.opa_input(lean=self._lean_input)
                opa_input["counters"] = self._executor().counters.snapshot()  # what the caps policy reads
                if self._needs_pod:
                    await self._add_pod(job, opa_input)
                plan = await self._batcher.decide(opa_input, on_retry=retrying, size=len(job.item.body))
            except OpaError as e:
                telemetry.fail(span, e, "opa_error")
                raise
            self._decided_by_opa.observe(plan.seconds)
            span.set_attributes(
                {
                    telemetry.DECIDED_BY: "opa",
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


def _retrieved(task: asyncio.Task[Plan]) -> None:
    if not task.cancelled():
        task.exception()
