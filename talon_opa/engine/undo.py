"""Undo (docs/undo.md): the reversals of the actions that ran, undone on demand or when their TTL expires.

The executor hands `record` each reversal a step returned (with the step's TTL from the plan, its cluster
and its span); the record is kept (`UndoStore`: on disk with `state_dir`). `undo(id)` undoes one action
(its action id) or every reversible action of an alert (its alert id, last step first); a task undoes each
record whose TTL expired, at start too for those that expired while the engine was down.

Each undo runs the actionner's own `undo` (an instance of the same cluster), in a span `undo action` that
starts a NEW trace with a link to the action's span in the alert's trace; it is counted
(`talon_opa_undos_total{actionner, trigger, result}`), logged, and written to the audit trail when there
is one. An action already undone answers `already_undone`; a conflict (someone changed the object since)
is reported and can be tried again; a failure (the API's error) leaves it pending: a TTL undo is retried
with backoff, a manual one reports the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import context as otel_context
from opentelemetry.trace import Link, SpanContext, TraceFlags, Tracer
from prometheus_client import CollectorRegistry, Counter, Gauge

from talon_opa.core import config, logs, secrets
from talon_opa.core.errors import TalonError
from talon_opa.engine import audit_chain, telemetry
from talon_opa.engine.instances import Instances
from talon_opa.engine.metrics import OURS
from talon_opa.engine.undo_store import Record, UndoStore, action_id
from talon_opa.opa.plan import Step
from talon_opa.plugins import runtime
from talon_opa.plugins.registry import Registry
from talon_opa.plugins.reversal import Reversal, Reversible, Undone

if TYPE_CHECKING:
    from talon_opa.engine.audit import AuditTrail  # (audit → execute → undo: the type only)

log = logs.get("undo")

Result = Literal["undone", "already_undone", "conflict", "failure"]
Trigger = Literal["manual", "ttl"]
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 5.0, 300.0  # a failed TTL undo is tried again after these waits


class UnknownUndo(TalonError):
    """No reversible action has this id (as an action id or an alert id)."""


@dataclass(frozen=True, slots=True)
class Report:
    """What one undo did, as the API and the CLI show it."""

    action_id: str
    alert_id: str
    rule: str
    action: str
    actionner: str
    result: Result
    message: str
    trace_id: str  # of the undo's own trace

    def doc(self) -> dict[str, Any]:
        return {
            "action_id": self.action_id,
            "alert_id": self.alert_id,
            "rule": self.rule,
            "action": self.action,
            "actionner": self.actionner,
            "result": self.result,
            "message": self.message,
            "trace_id": self.trace_id,
        }


def iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def pending_doc(record: Record) -> dict[str, Any]:
    """A pending (or done) record as `GET /v1/undo` lists it."""
    return {
        "action_id": record.action_id,
        "alert_id": record.alert_id,
        "rule": record.rule,
        "action": record.action,
        "actionner": record.actionner,
        "cluster": record.cluster,
        "undo": record.reversal.description,
        "ran_at": iso(record.ran_at),
        "expires_at": iso(record.expires_at),
        "state": record.state,
        "result_message": record.result_message,
        "trace_id": record.trace_id,
    }


class Undoer:
    """The engine's reversals: kept, undone on demand, undone when their TTL expires."""

    def __init__(
        self,
        cfg: config.Config,
        *,
        registry: Registry,
        tracer: Tracer,
        metrics: CollectorRegistry,
        audit: AuditTrail | None = None,
    ) -> None:
        self.store = UndoStore(cfg.state_dir)
        self._registry = registry
        self._tracer = tracer
        self._audit = audit
        self._timeout = cfg.step_timeout_seconds
        self.undos = Counter(
            f"{OURS}_undos",
            "Undos run, by trigger (manual, ttl) and result (undone, already_undone, conflict, failure)",
            ["actionner", "trigger", "result"],
            registry=metrics,
        )
        self.pending_count = Gauge(f"{OURS}_undo_pending", "Reversible actions not undone yet", registry=metrics)
        self._instances: Instances | None = None
        self._lock = asyncio.Lock()  # one undo at a time: a manual undo and the TTL never race on a record
        self._wake = asyncio.Event()
        self._retry: dict[str, tuple[float, float]] = {}  # action id → (not before, next wait): failed TTL undos
        self._task: asyncio.Task[None] | None = None
        self._warned_memory = False

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self, instances: Instances) -> None:
        """Read the kept records back and start the TTL task (expired TTLs are undone at once)."""
        self._instances = instances
        loaded = await asyncio.to_thread(self.store.load)
        pending = list(self.store.pending())
        self.pending_count.set(len(pending))
        if loaded:
            armed = sum(1 for r in pending if r.expires_at is not None)
            log.info(
                "undo records loaded",
                extra={
                    "records": loaded,
                    "pending": len(pending),
                    "ttl_armed": armed,
                    "state_dir": str(self.store.folder),
                },
            )
        self._task = asyncio.get_running_loop().create_task(self._expire(), name="talon-opa-undo-ttl")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # --- keeping --------------------------------------------------------------------------------------

    async def record(
        self,
        *,
        alert_id: str,
        step_index: int,
        step: Step,
        reversal: Reversal,
        cluster: str | None,
        trace_id: str,
        span_id: str,
    ) -> Record:
        """Keep the reversal of a step that ran; arm its TTL when the plan gave one."""
        now = time.time()
        record = Record(
            action_id=action_id(alert_id, step_index),
            alert_id=alert_id,
            step_index=step_index,
            rule=step.rule,
            action=step.action,
            actionner=step.actionner,
            cluster=cluster or "",
            reversal=reversal,
            ran_at=now,
            expires_at=None if step.undo_after is None else now + step.undo_after,
            trace_id=trace_id,
            span_id=span_id,
        )
        earlier = self.store.get(record.action_id)  # the same alert run again (redelivered): replaced
        await asyncio.to_thread(self.store.put, record)
        if earlier is None or not earlier.pending:
            self.pending_count.inc()
        extra = {
            "id": alert_id,
            "action_id": record.action_id,
            "actionner": step.actionner,
            "undo": reversal.description,
        }
        if record.expires_at is not None:
            extra["expires_at"] = iso(record.expires_at) or ""
            if not self.store.durable and not self._warned_memory:
                self._warned_memory = True
                log.warning(
                    "undo TTL kept in memory only: lost if the engine stops before it expires",
                    extra={**extra, "hint": "set state_dir to keep pending undos across restarts"},
                )
            self._wake.set()
        log.info("reversible action recorded", extra=extra)
        return record

    def records(self, id_: str) -> list[Record]:
        """The records of an action id, or of every reversible action of an alert id ([] when none)."""
        one = self.store.get(id_)
        return [one] if one is not None else self.store.of_alert(id_)

    def pending(self) -> list[Record]:
        """The records not undone yet, the soonest to expire first (on-demand ones last)."""
        return sorted(self.store.pending(), key=lambda r: (r.expires_at is None, r.expires_at or 0.0, r.ran_at))

    # --- undoing --------------------------------------------------------------------------------------

    async def undo(self, id_: str, trigger: Trigger = "manual") -> list[Report]:
        """Undo an action (action id) or every reversible action of an alert (alert id), last step first."""
        records = self.records(id_)
        if not records:
            raise UnknownUndo(
                f"nothing to undo with the id {id_!r}: no reversible action has that action id or alert id",
                hint="list the pending undos with `talon-opa undo --list`; only reversible actionners' steps that "
                "ran (not in dry-run) can be undone",
            )
        return [await self._undo_one(r.action_id, trigger) for r in reversed(records)]

    async def _undo_one(self, action: str, trigger: Trigger) -> Report:
        async with self._lock:
            record = self.store.get(action)
            assert record is not None
            return await self._run(record, trigger)

    async def _run(self, record: Record, trigger: Trigger) -> Report:
        attrs: dict[str, Any] = {
            telemetry.UNDO_ACTION_ID: record.action_id,
            telemetry.ALERT_ID: record.alert_id,
            telemetry.RULE: record.rule,
            telemetry.ACTION: record.action,
            telemetry.ACTIONNER: record.actionner,
            telemetry.UNDO_TRIGGER: trigger,
        }
        links = [Link(_span_context(record.trace_id, record.span_id))] if record.trace_id and record.span_id else []
        # context=Context(): a root span, whatever is current (a new trace, linked to the alert's)
        with self._tracer.start_as_current_span(
            telemetry.UNDO, context=otel_context.Context(), links=links, attributes=attrs
        ) as span:
            undo_trace = telemetry.trace_id_of(span)
            result: Result
            if record.state in ("undone", "already_undone"):
                when = iso(record.finished_at) or "earlier"
                result, message = (
                    "already_undone",
                    f"already undone ({record.trigger}, {when}): {record.result_message}",
                )
            else:
                try:
                    done = await self._undo_with_plugin(record)
                except asyncio.CancelledError:
                    raise
                except TalonError as e:
                    result, message = "failure", str(e)
                except Exception as e:  # an actionner's bug is a reported failure too
                    result, message = "failure", f"{type(e).__name__}: {e}"
                else:
                    result, message = done.result, done.message
            message = secrets.KNOWN.scrub(message)
            span.set_attribute(telemetry.UNDO_RESULT, result)
            telemetry.result(span, message)
            if result in ("failure", "conflict"):
                telemetry.fail(span, message, result)
            else:
                telemetry.ok(span)
        ran = record.state in ("pending", "conflict")
        if ran and result != "failure":
            await asyncio.to_thread(self.store.put, record.finished(result, message, trigger, undo_trace))
            self._retry.pop(record.action_id, None)
            if record.pending:
                self.pending_count.dec()
        elif result == "failure" and trigger == "ttl":
            self._back_off(record.action_id)
        self.undos.labels(record.actionner, trigger, result).inc()
        extra = {
            "id": record.alert_id,
            "action_id": record.action_id,
            "actionner": record.actionner,
            "trigger": trigger,
            "result": result,
            "output": message,
            "trace_id": undo_trace,
            "linked_trace_id": record.trace_id,
        }
        if result == "failure":
            log.error("undo", extra=extra)
        elif result == "conflict":
            log.warning("undo", extra=extra)
        else:
            log.info("undo", extra=extra)
        if self._audit is not None:
            self._audit.record_line(
                {
                    "v": audit_chain.FORMAT,
                    "kind": "undo",
                    "time": iso(time.time()),
                    "action_id": record.action_id,
                    "alert_id": record.alert_id,
                    "rule": record.rule,
                    "action": record.action,
                    "actionner": record.actionner,
                    "trigger": trigger,
                    "result": result,
                    "message": message,
                    "trace_id": undo_trace,
                    "linked_trace_id": record.trace_id,
                }
            )
        return Report(
            record.action_id, record.alert_id, record.rule, record.action, record.actionner, result, message, undo_trace
        )

    async def _undo_with_plugin(self, record: Record) -> Undone:
        cls = self._registry.actionners.get(record.actionner)
        if cls is None or not runtime.runs(cls) or not issubclass(cls, Reversible):
            raise TalonError(
                f"{record.actionner} cannot undo in this version",
                hint="run the engine version that recorded it, or undo the change by hand",
            )
        assert self._instances is not None, "the undoer is not started"
        cluster = record.cluster or None
        provider = self._instances.provider
        if cluster is not None and cluster not in provider.clusters:
            raise TalonError(
                f"the cluster {cluster!r} of this action is no longer in `clusters`",
                hint="add it back to `clusters` in the configuration to undo this action",
            )
        plugin = self._instances.actionner(cls, cluster)
        assert isinstance(plugin, Reversible)
        try:
            async with asyncio.timeout(self._timeout):
                return await plugin.undo(record.reversal)
        except TimeoutError as e:
            raise TalonError(
                f"undoing {record.actionner} did not finish within {self._timeout}s", hint="raise step_timeout_seconds"
            ) from e

    # --- TTL ------------------------------------------------------------------------------------------

    def _due(self, record: Record) -> float | None:
        if record.expires_at is None:
            return None
        not_before = self._retry.get(record.action_id, (0.0, 0.0))[0]
        return max(record.expires_at, not_before)

    def _back_off(self, action: str) -> None:
        wait = self._retry.get(action, (0.0, RETRY_FIRST_SECONDS))[1]
        self._retry[action] = (time.time() + wait, min(wait * 2, RETRY_MAX_SECONDS))

    async def _expire(self) -> None:
        """Undo each pending record whose TTL expired; sleep until the next one (or a new one) is due."""
        while True:
            self._wake.clear()  # before looking: a record added from here on wakes the wait below
            now = time.time()
            due = sorted(
                (r for r in self.store.pending() if (d := self._due(r)) is not None and d <= now),
                key=lambda r: r.expires_at or 0.0,
            )
            for record in due:
                try:
                    await self._undo_one(record.action_id, "ttl")
                except Exception as e:  # e.g. state_dir not writable: the TTL task must live on
                    self._back_off(record.action_id)
                    log.error(
                        "undo not recorded",
                        extra={
                            "action_id": record.action_id,
                            "error": f"{type(e).__name__}: {e}",
                            "hint": "check state_dir",
                        },
                    )
            upcoming = [d for r in self.store.pending() if (d := self._due(r)) is not None]
            timeout = max(0.0, min(upcoming) - time.time()) if upcoming else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)


def _span_context(trace_id: str, span_id: str) -> SpanContext:
    return SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
