"""The executor: runs a plan's steps in order with Talon's runtime control flow (reference §2.9).

For each step of the plan (already cut after the first matched rule with `continue: false`):
* a step whose rule has ended is skipped;
* `dry_run` runs nothing (logged, traced, counted as `dry_run`) but keeps the flow;
* otherwise: the actionner is looked up, its parameters decoded, the alert's required fields checked
  (missing → the step fails naming the field), then `await plugin.run(alert, params)` under the step
  timeout; an artifact goes to the step's output (`write output`);
* a step the caps policy `held` (docs/caps.md) is not run: reported like a failure (log line, span with
  `talon.status=held` and the reason, actions counter with status `held`, a notification) and it ends its
  rule unless `ignore_errors`;
* a step marked `approval` (docs/approvals.md) parks the rest of the plan (`park`, the approvals manager)
  and the worker moves on: the step is announced (`pending`) and `resume` runs it once approved, then the
  steps after it; denied or expired, it is reported like a held step and the flow goes on as after a
  failure. Without room for one more pending approval the step fails (`approvals_full`);
* every step that ran with success is counted in `counters` (the next decisions' `input.counters`);
* a step whose actionner returned a reversal (a `Reversible` one that changed something) has it kept by the
  undoer under its action id, with the step's TTL (docs/undo.md), before its notification;
* a failed step ends its rule's remaining steps unless `ignore_errors`; `continue: false` ends them
  whatever the result (a failing terminate with ignore_errors still ends the rule); errors never stop
  later rules.

Every failure is reported: a log line, the span's status and `error.type`, the actions counter with
status `failure`, and a notification to `default_notifiers + step.notifiers` (sent concurrently, beside
the next steps, each carrying the trace id; the plan is done when they are). Unlike Talon, failures of
the checks (unknown actionner, missing field, bad parameters) are notified too, and a failing notifier is
counted as a notification failure.

With `clusters` configured, a step whose actionner or output uses Kubernetes acts on the cluster the
alert's `cluster_field` output field names (docs/clusters.md); an alert naming a cluster that is not
configured, or naming none when there is no default cluster, fails those steps (`unknown_cluster`,
`no_cluster`). Steps that need no Kubernetes run as usual.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry import trace

from talon_opa.core import logs
from talon_opa.core.errors import TalonError
from talon_opa.core.events import Alert
from talon_opa.core.kube import KubeClient
from talon_opa.engine import telemetry
from talon_opa.engine.caps import ActionCounters
from talon_opa.engine.instances import Instances
from talon_opa.engine.metrics import Metrics
from talon_opa.engine.notify import Notifications
from talon_opa.engine.parked import ApprovalRefused, Decision, Parked
from talon_opa.engine.undo import Undoer
from talon_opa.engine.work import WorkItem
from talon_opa.opa.plan import Plan, Step
from talon_opa.plugins import runtime
from talon_opa.plugins.notes import Note
from talon_opa.plugins.notes import Status as NoteStatus
from talon_opa.plugins.params import ParamsInvalid
from talon_opa.plugins.reversal import Reversal
from talon_opa.plugins.runtime import Artifact, Outcome
from talon_opa.plugins.spec import Spec

log = logs.get("execute")

Status = Literal["success", "failure", "ignored", "dry_run", "skipped", "held", "pending", "denied", "expired"]
NOT_RUN = ("failure", "held", "denied", "expired")  # results that end a rule unless ignore_errors
DRY_RUN_MESSAGE = "no action, dry-run is enabled"


@dataclass(frozen=True, slots=True)
class StepResult:
    """What became of one step of the plan."""

    step: Step
    status: Status
    message: str = ""
    error: str = ""
    error_type: str = ""
    objects: Mapping[str, str] = field(default_factory=dict)
    output_status: Status | None = None  # of the output stage, when there was one
    span_id: str = ""  # of the step's `run action` span ("" when skipped)


class _Failure(Exception):
    """A step failed: `kind` becomes `error.type`."""

    def __init__(self, kind: str, message: str, hint: str = "") -> None:
        super().__init__(f"{message} ({hint})" if hint else message)
        self.kind = kind


def field_text(alert: Alert, name: str) -> str | None:
    """An output field as Talon's actionners read it: strings as is, numbers in decimal, else absent."""
    return alert.field_str(name)


def with_talon_context(alert: Alert, step: Step) -> Alert:
    """A copy of the alert whose context carries Talon's `falco-talon.*` keys for this step (§2.10).

    A fresh copy per step: keys of one step never leak into the next one (Talon shares the map).
    """
    flag = {True: "true", False: "false"}
    context = {
        **alert.context,
        "falco-talon.rule": step.rule,
        "falco-talon.action": step.action,
        "falco-talon.actionner": step.actionner,
        "falco-talon.action.continue": flag[step.continue_],
        "falco-talon.action.ignore_errors": flag[step.ignore_errors],
        "falco-talon.rule.dry_run": flag[step.dry_run],
        "falco-talon.action.parameters": json.dumps(step.parameters, sort_keys=True, separators=(",", ":")),
    }
    return dataclasses.replace(alert, context=context)


def missing_fields(alert: Alert, needs: Sequence[str]) -> list[str]:
    """Each required field (a "a|b" group needs any one) that the alert lacks or has empty."""
    missing = []
    for group in needs:
        names = [n.strip() for n in group.split("|") if n.strip()]
        if not any(field_text(alert, n) for n in names):
            missing.append(group)
    return missing


def alert_objects(alert: Alert) -> dict[str, str]:
    """The alert's pod and namespace as a step's objects (what a failed step reports), when present."""
    ns, pod = alert_target(alert)
    return {k: v for k, v in (("pod", pod), ("namespace", ns)) if v}


def alert_target(alert: Alert) -> tuple[str, str]:
    """(namespace, pod) of the alert, Talon's accessor order; "" when absent."""
    return alert.namespace() or "", alert.pod_name() or ""


def _spanned(result: StepResult, span: trace.Span) -> StepResult:
    """The result with the id of the span it ran in (the audit trail points at it)."""
    return dataclasses.replace(result, span_id=telemetry.span_id_of(span))


def _flow(ended: set[str], step: Step, result: StepResult) -> None:
    """Talon's flow after a step: a failure ends its rule unless ignore_errors; `continue: false` ends it."""
    if result.status in NOT_RUN and not step.ignore_errors:
        ended.add(step.rule)
    if not step.continue_:
        ended.add(step.rule)


def _approval_attrs(approval_id: str, decision: Decision) -> dict[str, Any]:
    attrs: dict[str, Any] = {telemetry.APPROVAL_ID: approval_id, telemetry.APPROVAL_RESULT: decision.result}
    if decision.by:
        attrs[telemetry.APPROVAL_BY] = decision.by
    return attrs


def _note_status(status: Status) -> NoteStatus:
    if status in NOT_RUN:
        return "failure"
    if status in ("ignored", "pending"):
        return status
    return "success"


class Executor:
    """Runs plans with the engine's plugin instances; tells the notifiers about every result."""

    def __init__(
        self,
        *,
        instances: Instances,
        notifications: Notifications,
        metrics: Metrics,
        tracer: trace.Tracer,
        step_timeout: float = 30.0,
        force_dry_run: bool = False,
        cluster_field: str = "cluster",
        counters: ActionCounters | None = None,
        park: Callable[[Parked], Awaitable[None]] | None = None,
        undo: Undoer | None = None,
    ) -> None:
        self.instances = instances
        self.registry = instances.registry
        self.notifications = notifications
        self.metrics = metrics
        self.tracer = tracer
        self.step_timeout = step_timeout
        self.force_dry_run = force_dry_run
        self.cluster_field = cluster_field
        self.counters = counters if counters is not None else ActionCounters()
        self.park = park  # keeps a plan waiting for approval (the approvals manager); None: no approvals
        self.undo = undo  # keeps the reversals of the steps that ran (docs/undo.md)

    def _needs_kube(self, step: Step) -> bool:
        """Whether the step's actionner or output uses the Kubernetes client (unknown ones count as using it).

        Without Kubernetes credentials only those steps run in dry-run: `aws:lambda` still runs.
        """
        plugins = [self.registry.actionners.get(step.actionner)]
        if step.output is not None:
            plugins.append(self.registry.outputs.get(step.output.target))
        return any(p is None or "kube" in p.spec.clients for p in plugins)

    def _cluster(self, alert: Alert, needs_kube: bool) -> str | None:
        """The configured cluster the alert names (None: the default one); `_Failure` when a step that needs
        Kubernetes cannot have it."""
        provider = self.instances.provider
        if not provider.clusters or not needs_kube:
            return None
        name = field_text(alert, self.cluster_field)
        if not name:
            if provider.default_kube is None:
                raise _Failure(
                    "no_cluster",
                    f"the alert names no cluster (output field {self.cluster_field!r}) and no default cluster is "
                    "configured",
                    "have Falcosidekick add the field (customfields: cluster:<name>), or set `kubeconfig`",
                )
            return None
        if name not in provider.clusters:
            known = ", ".join(sorted(provider.clusters))
            raise _Failure(
                "unknown_cluster",
                f"the alert names cluster {name!r}, which is not in `clusters`: {known}",
                "add it to `clusters` in the configuration, or fix Falcosidekick's customfields",
            )
        return name

    def kube_for(self, alert: Alert) -> KubeClient | None:
        """The API server of the alert's cluster; None without one (no credentials, unknown or no cluster)."""
        try:
            cluster = self._cluster(alert, True)
        except _Failure:
            return None
        provider = self.instances.provider
        return provider.clusters[cluster] if cluster is not None else provider.default_kube

    async def execute(
        self, alert: Alert, plan: Plan, alert_id: str = "", *, item: WorkItem | None = None
    ) -> list[StepResult]:
        """Run the plan's steps with Talon's control flow; every result, in plan order (up to a `pending`
        one: the steps after a step that waits for approval run when it is decided, see `resume`).

        `alert_id`: what the reversals of its steps are kept under (none kept without it)."""
        async with self.notifications.alongside():  # a slow receiver never delays the next step
            return await self._run_from(alert, plan, 0, set(), item, alert_id)

    async def resume(self, parked: Parked, decision: Decision) -> list[StepResult]:
        """The parked step, approved (run) or not (reported), then the rest of its plan; their results."""
        alert, plan, index = parked.item.alert, parked.plan, parked.index
        step = plan.steps[index]
        ended = set(parked.ended)
        async with self.notifications.alongside():
            if decision.result == "approved":
                result = await self.run_step(alert, step, index, parked.item.alert_id, approval=(parked.id, decision))
            else:
                result = await self.refuse_step(alert, step, index, parked.id, decision)
            _flow(ended, step, result)
            return [
                result,
                *await self._run_from(alert, plan, index + 1, ended, parked.item, parked.item.alert_id),
            ]

    async def _run_from(
        self, alert: Alert, plan: Plan, start: int, ended: set[str], item: WorkItem | None, alert_id: str
    ) -> list[StepResult]:
        results: list[StepResult] = []
        for index in range(start, len(plan.steps)):
            step = plan.steps[index]
            if step.rule in ended:
                results.append(StepResult(step, "skipped", "an earlier step ended this rule"))
                continue
            if step.held:
                result = await self.hold_step(alert, step, index)
            elif step.approval_seconds:
                result = await self.wait_for_approval(alert, plan, index, ended, item)
                if result.status == "pending":
                    results.append(result)
                    return results  # the rest waits for the decision (resume)
            else:
                result = await self.run_step(alert, step, index, alert_id)
            results.append(result)
            _flow(ended, step, result)
        return results

    def _step_attrs(self, alert: Alert, step: Step, index: int, dry_run: bool) -> dict[str, Any]:
        ns, pod = alert_target(alert)
        attrs: dict[str, Any] = {
            telemetry.RULE: step.rule,
            telemetry.ACTION: step.action,
            telemetry.ACTIONNER: step.actionner,
            telemetry.STEP_INDEX: index,
            telemetry.CONTINUE: step.continue_,
            telemetry.IGNORE_ERRORS: step.ignore_errors,
            telemetry.DRY_RUN: dry_run,
        }
        if pod:
            attrs[telemetry.K8S_POD_NAME] = pod
        if ns:
            attrs[telemetry.K8S_NAMESPACE_NAME] = ns
        return attrs

    async def hold_step(self, alert: Alert, step: Step, index: int = 0) -> StepResult:
        """A step the caps policy held: not run; logged, traced, counted and notified with the reason."""
        return await self._not_run(alert, step, index, "held", f"held: {step.held}", {telemetry.HELD: step.held})

    async def refuse_step(
        self, alert: Alert, step: Step, index: int, approval_id: str, decision: Decision
    ) -> StepResult:
        """A step whose approval was denied or expired: not run; reported like a held step."""
        if decision.result == "denied":
            error = f"approval {approval_id} denied by {decision.by or 'an operator'}"
            error += f": {decision.reason}" if decision.reason else ""
        else:
            error = f"approval {approval_id} expired: nobody approved within {step.approval_seconds}s"
        status: Status = "denied" if decision.result == "denied" else "expired"
        return await self._not_run(alert, step, index, status, error, _approval_attrs(approval_id, decision))

    async def _not_run(
        self, alert: Alert, step: Step, index: int, status: Status, error: str, attrs: Mapping[str, Any]
    ) -> StepResult:
        with self.tracer.start_as_current_span(
            telemetry.RUN_ACTION, attributes={**self._step_attrs(alert, step, index, step.dry_run), **attrs}
        ) as span:
            result = StepResult(step, status, error=error, error_type=status, objects=alert_objects(alert))
            span.set_attribute(telemetry.STATUS, status)
            telemetry.result(span, error)
            telemetry.fail(span, error, status)
            self.metrics.actions.labels(step.rule, step.action, step.actionner, status).inc()
            log.warning(
                "action",
                extra={
                    "rule": step.rule,
                    "action": step.action,
                    "actionner": step.actionner,
                    "status": status,
                    "error": error,
                },
            )
            await self.notifications.notify(step, self._note(alert, step, "action", result))
            return _spanned(result, span)

    async def wait_for_approval(
        self, alert: Alert, plan: Plan, index: int, ended: set[str], item: WorkItem | None
    ) -> StepResult:
        """Park the plan at this step (`pending`, announced with how to approve); a failure when it cannot wait."""
        step = plan.steps[index]
        window = step.approval_seconds
        approval_id = uuid.uuid4().hex[:20]
        attrs: dict[str, Any] = {telemetry.APPROVAL_ID: approval_id, telemetry.APPROVAL_WINDOW: window}
        parent = trace.get_current_span()  # the alert's span: the resumed steps become its children too
        with self.tracer.start_as_current_span(
            telemetry.RUN_ACTION, attributes={**self._step_attrs(alert, step, index, step.dry_run), **attrs}
        ) as span:
            extra = {"rule": step.rule, "action": step.action, "actionner": step.actionner, "approval_id": approval_id}
            try:
                if self.park is None or item is None:
                    raise ApprovalRefused(
                        "this engine cannot keep a step waiting for approval", kind="approvals_unavailable"
                    )
                now = time.time()
                await self.park(
                    Parked(
                        id=approval_id,
                        item=item,
                        plan=plan,
                        index=index,
                        ended=frozenset(ended),
                        trace_id=telemetry.trace_id_of(span),
                        span_id=telemetry.span_id_of(parent),
                        created=now,
                        expires=now + window,
                    )
                )
            except ApprovalRefused as e:
                result = StepResult(step, "failure", error=str(e), error_type=e.kind, objects=alert_objects(alert))
                span.set_attribute(telemetry.STATUS, "failure")
                telemetry.result(span, result.error)
                telemetry.fail(span, result.error, result.error_type)
                self.metrics.actions.labels(step.rule, step.action, step.actionner, "failure").inc()
                log.error("action", extra={**extra, "status": "failure", "error": result.error})
                await self.notifications.notify(step, self._note(alert, step, "action", result))
                return _spanned(result, span)
            message = (
                f"waiting for approval {approval_id} for up to {window}s: "
                f"approve with `talon-opa approve {approval_id}` "
                f"(or POST /v1/approvals/{approval_id}/approve), deny with `talon-opa deny {approval_id}`; "
                "without approval the step is skipped"
            )
            result = StepResult(step, "pending", message, objects=alert_objects(alert))
            span.set_attribute(telemetry.STATUS, "pending")
            telemetry.ok(span, message)
            log.warning("action", extra={**extra, "status": "pending", "window_seconds": window, "output": message})
            await self.notifications.notify(step, self._note(alert, step, "action", result))
            return _spanned(result, span)

    async def run_step(
        self,
        alert: Alert,
        step: Step,
        index: int = 0,
        alert_id: str = "",
        *,
        approval: tuple[str, Decision] | None = None,
    ) -> StepResult:
        dry_run = step.dry_run or (self.force_dry_run and self._needs_kube(step))
        attrs = self._step_attrs(alert, step, index, dry_run)
        if approval is not None:
            attrs.update(_approval_attrs(*approval))
        extra = {"rule": step.rule, "action": step.action, "actionner": step.actionner}
        with self.tracer.start_as_current_span(telemetry.RUN_ACTION, attributes=attrs) as span:
            if dry_run:
                span.set_attribute(telemetry.STATUS, "dry_run")
                telemetry.result(span, DRY_RUN_MESSAGE)
                telemetry.ok(span, DRY_RUN_MESSAGE)
                self.metrics.actions.labels(step.rule, step.action, step.actionner, "dry_run").inc()
                log.info("action", extra={**extra, "status": "dry_run", "output": DRY_RUN_MESSAGE})
                return _spanned(StepResult(step, "dry_run", DRY_RUN_MESSAGE), span)
            started = time.perf_counter()
            log.info("action", extra={**extra, "status": "in_progress"})
            artifact: Artifact | None = None
            spec: Spec[Any] | None = None
            reversal: Reversal | None = None
            try:
                spec, outcome = await self._act(alert, step)
                artifact, reversal = outcome.artifact, outcome.reversal
            except asyncio.CancelledError:
                raise
            except _Failure as e:
                result = StepResult(step, "failure", error=str(e), error_type=e.kind)
            except TalonError as e:
                result = StepResult(step, "failure", error=str(e), error_type=type(e).__name__)
            except Exception as e:  # a plugin bug is still a reported failure, never a crash
                result = StepResult(step, "failure", error=f"{type(e).__name__}: {e}", error_type=type(e).__name__)
            else:
                status: Status = "ignored" if outcome.status == "ignored" else "success"
                result = StepResult(step, status, outcome.message, objects=dict(outcome.objects))
            if result.status == "failure" and not result.objects:
                # like Talon, a failure names the objects the step was about (the alert's pod), when known
                result = dataclasses.replace(result, objects=alert_objects(alert))
            seconds = time.perf_counter() - started
            self.metrics.actions.labels(step.rule, step.action, step.actionner, result.status).inc()
            self.metrics.action_seconds.labels(step.actionner, result.status).observe(seconds)
            span.set_attribute(telemetry.STATUS, result.status)
            for k, v in result.objects.items():
                span.set_attribute(f"talon.object.{k}", v)
            if result.status == "failure":
                telemetry.result(span, result.error)
                telemetry.fail(span, result.error, result.error_type)
                log.error(
                    "action",
                    extra={
                        **extra,
                        "status": "failure",
                        "error": result.error,
                        "error_type": result.error_type,
                        "duration_ms": round(seconds * 1000, 3),
                    },
                )
            else:
                telemetry.result(span, result.message)
                log.info(
                    "action",
                    extra={
                        **extra,
                        "status": result.status,
                        "output": result.message,
                        "objects": dict(result.objects),
                        "duration_ms": round(seconds * 1000, 3),
                    },
                )
            if reversal is not None and result.status != "failure":
                await self._keep(alert, step, index, alert_id, reversal, span)
            await self.notifications.notify(step, self._note(alert, step, "action", result))
            if result.status == "failure" or spec is None:
                return _spanned(result, span)
            final = await self._output_stage(alert, step, spec, result, artifact)
            if final.status == "success":
                self.counters.record(step.actionner, alert_target(alert)[0])
            if final.status != "failure":
                telemetry.ok(span)  # only now: OTel keeps an OK status final, and the output may still fail
            return _spanned(final, span)

    async def _keep(
        self, alert: Alert, step: Step, index: int, alert_id: str, reversal: Reversal, span: trace.Span
    ) -> None:
        """Hand the step's reversal to the undoer; a failure to keep it is logged on the step, never fatal."""
        if self.undo is None or not alert_id:
            return
        try:
            record = await self.undo.record(
                alert_id=alert_id,
                step_index=index,
                step=step,
                reversal=reversal,
                cluster=self._cluster(alert, self._needs_kube(step)),
                trace_id=telemetry.trace_id_of(span),
                span_id=telemetry.span_id_of(span),
            )
        except Exception as e:  # the action is done: a record that cannot be written must not fail it
            span.add_event("reversal not kept", {"error": str(e)[:500]})
            log.error(
                "reversal not kept: this action cannot be undone by talon-opa",
                extra={"rule": step.rule, "action": step.action, "actionner": step.actionner, "error": str(e)},
            )
            return
        span.set_attribute(telemetry.UNDO_ACTION_ID, record.action_id)

    async def _act(self, alert: Alert, step: Step) -> tuple[Spec[Any], Outcome]:
        cls = self.registry.actionners.get(step.actionner)
        if cls is None:
            raise _Failure(
                "unknown_actionner",
                f"unknown actionner {step.actionner!r}",
                "the plan names an actionner this engine does not have: check native Rego rules",
            )
        spec: Spec[Any] = cls.spec
        missing = missing_fields(alert, spec.needs_fields)
        if missing:
            raise _Failure(
                "missing_field",
                f"the alert has no field {missing[0]!r}, which {step.actionner} needs",
                "narrow the rule's match (output_fields) to alerts that carry it",
            )
        try:
            params = spec.decode(step.parameters)
        except ParamsInvalid as e:
            raise _Failure("invalid_parameters", f"invalid parameters: {e}", "fix the action's parameters") from e
        if spec.output == "required" and step.output is None:
            raise _Failure("missing_output", f"{step.actionner} needs an output", "add `output:` to the action")
        if not runtime.runs(cls):
            raise _Failure(
                "not_implemented",
                f"{step.actionner} cannot run in this version",
                "use dry_run: true for this action, or another actionner",
            )
        plugin = self.instances.actionner(cls, self._cluster(alert, self._needs_kube(step)))
        try:
            async with asyncio.timeout(self.step_timeout):
                outcome = await plugin.run(with_talon_context(alert, step), params)
        except TimeoutError as e:
            raise _Failure(
                "timeout", f"{step.actionner} did not finish within {self.step_timeout}s", "raise step_timeout_seconds"
            ) from e
        if not isinstance(outcome, Outcome):
            raise _Failure("bad_outcome", f"{step.actionner} returned {type(outcome).__name__}, not an Outcome")
        return spec, outcome

    async def _output_stage(
        self, alert: Alert, step: Step, spec: Spec[Any], result: StepResult, artifact: Artifact | None
    ) -> StepResult:
        if step.output is None or spec.output == "none":
            if artifact is not None and spec.output == "required":
                log.warning("artifact without output", extra={"actionner": step.actionner})
            return result
        if artifact is None and result.status == "ignored":
            return result
        target = step.output.target
        with self.tracer.start_as_current_span(
            telemetry.WRITE_OUTPUT, attributes={telemetry.OUTPUT_TARGET: target, telemetry.ACTION: step.action}
        ) as span:
            out_status: Status = "success"
            message = error = kind = ""
            try:
                if artifact is None or not artifact.data:
                    raise _Failure("empty_artifact", f"{step.actionner} produced no artifact for {target}")
                cls = self.registry.outputs.get(target)
                if cls is None:
                    raise _Failure("unknown_output", f"unknown output target {target!r}", "check the action's output")
                params = cls.spec.decode(step.output.parameters)
                if not runtime.runs(cls):
                    raise _Failure("not_implemented", f"output {target} cannot run in this version")
                plugin = self.instances.output(cls, self._cluster(alert, "kube" in cls.spec.clients))
                async with asyncio.timeout(self.step_timeout):
                    outcome = await plugin.store(artifact, params)
                message = outcome.message
            except asyncio.CancelledError:
                raise
            except _Failure as e:
                out_status, error, kind = "failure", str(e), e.kind
            except TimeoutError:
                out_status, error, kind = "failure", f"output {target} timed out after {self.step_timeout}s", "timeout"
            except ParamsInvalid as e:
                out_status, error, kind = "failure", f"invalid output parameters: {e}", "invalid_parameters"
            except Exception as e:
                out_status, error, kind = "failure", f"{type(e).__name__}: {e}", type(e).__name__
            self.metrics.outputs.labels(step.action, target, out_status).inc()
            span.set_attribute(telemetry.STATUS, out_status)
            extra = {"rule": step.rule, "action": step.action, "output_target": target, "status": out_status}
            if out_status == "failure":
                telemetry.fail(span, error, kind)
                log.error("output", extra={**extra, "error": error})
            else:
                telemetry.ok(span, message[:200])
                log.info("output", extra={**extra, "output": message})
            note = self._note(
                alert, step, "output", result, out_status=out_status, out_message=message, out_error=error
            )
            await self.notifications.notify(step, note)
        if out_status == "failure":
            # the step failed as a whole (Talon: an output error is the action's error)
            step_span = trace.get_current_span()
            step_span.set_attribute(telemetry.STATUS, "failure")
            telemetry.fail(step_span, error, kind)
            return StepResult(step, "failure", result.message, error, kind, result.objects, out_status)
        return StepResult(step, result.status, result.message, "", "", result.objects, out_status)

    def _note(
        self,
        alert: Alert,
        step: Step,
        stage: Literal["action", "output"],
        result: StepResult,
        *,
        out_status: Status = "success",
        out_message: str = "",
        out_error: str = "",
    ) -> Note:
        ns, pod = alert_target(alert)
        if stage == "action":
            status, output, error = result.status, result.message, result.error
        else:
            status, output, error = out_status, out_message, out_error
        return Note(
            stage=stage,
            status=_note_status(status),
            rule=step.rule,
            action=step.action,
            actionner=step.actionner,
            event=alert.output,
            objects=dict(result.objects),
            output=output,
            error=error,
            output_target=step.output.target if (stage == "output" and step.output) else "",
            trace_id=telemetry.current_trace_id(),
            alert_rule=alert.rule,
            priority=alert.priority,
            hostname=alert.hostname,
            pod=pod,
            namespace=ns,
            cluster=(field_text(alert, self.cluster_field) or "") if self.instances.provider.clusters else "",
        )
