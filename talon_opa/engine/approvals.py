"""Pending approvals (docs/approvals.md): plans parked at a step that waits for an operator, until decided.

The executor parks a plan (`park`, bounded by `approvals.max_pending`) and its worker moves on. Each
pending approval has a timer for its window; an operator decides through the operator API or the CLI
(`decide`). Once decided (approved, denied, or expired by the timer) the rest of the plan is resumed by
`Executor.resume` in a task of its own, in the alert's trace (a `resume plan` span under the alert's span).

With `state_dir` set, each pending approval is one file `<state_dir>/approvals/<id>.json`, written
atomically (temporary file, fsync, rename); the decision is written into it before the plan resumes and
the file is removed once the plan has run. At start, every file is re-armed: an expired one expires at
once (reported), a decided one resumes with its decision (the steps are idempotent). Without `state_dir`
pending approvals live in memory and are lost when the engine stops (logged).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import CollectorRegistry, Counter, Gauge

from talon_opa.core import config, logs
from talon_opa.core.errors import TalonError
from talon_opa.engine import telemetry
from talon_opa.engine.audit import AuditTrail, approval_record
from talon_opa.engine.execute import Executor, StepResult
from talon_opa.engine.metrics import OURS
from talon_opa.engine.parked import ApprovalRefused, Decision, Parked, Result

log = logs.get("approvals")

REMEMBERED = 1000  # decided ids remembered, to answer "already decided" (410) rather than "unknown" (404)


class UnknownApproval(TalonError):
    """No pending approval has this id (HTTP 404)."""


class ApprovalGone(TalonError):
    """The approval was already decided or has expired (HTTP 410)."""


class Approvals:
    """The engine's pending approvals: `park` (executor), `pending`, `decide` (operators), `start`/`stop`."""

    def __init__(
        self,
        cfg: config.Config,
        *,
        executor: Callable[[], Executor],
        tracer: trace.Tracer,
        registry: CollectorRegistry,
        audit: AuditTrail | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_pending = int(cfg.approvals.get("max_pending", config.APPROVAL_MAX_PENDING))
        self.folder = Path(cfg.state_dir) / "approvals" if cfg.state_dir else None
        self._configured = bool(cfg.approvals.get("require"))
        self._executor = executor
        self._audit = audit  # an `approval` line per decided approval, with the results of the resumed steps
        self._tracer = tracer
        self._clock = clock
        self._pending: dict[str, Parked] = {}
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._resuming: set[asyncio.Task[None]] = set()
        self._decided: collections.OrderedDict[str, Decision] = collections.OrderedDict()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self.requests = Counter(
            f"{OURS}_approvals",
            "Approval requests, by result (requested, approved, denied, expired)",
            ["result"],
            registry=registry,
        )
        self.waiting = Gauge(f"{OURS}_approvals_pending", "Steps waiting for an operator's approval", registry=registry)

    # --- the executor's side ------------------------------------------------------------------------

    async def park(self, parked: Parked) -> None:
        """Keep the plan until its step is decided; ApprovalRefused when max_pending are already waiting."""
        if self._stopping and self.folder is None:
            raise ApprovalRefused("the engine is stopping: no new approval can wait", hint="send the alert again")
        if len(self._pending) >= self.max_pending:
            raise ApprovalRefused(
                f"{len(self._pending)} approvals are already pending (approvals.max_pending is {self.max_pending})",
                hint="approve or deny pending ones (talon-opa approvals), or raise approvals.max_pending",
            )
        try:
            await self._save(parked)
        except OSError as e:
            raise ApprovalRefused(
                f"the pending approval cannot be saved in state_dir: {e}",
                hint="check state_dir's disk and rights",
                kind="approvals_unsaved",
            ) from e
        self.requests.labels(result="requested").inc()
        if self._stopping:  # kept in state_dir: the next start re-arms it
            log.info("approval kept for the next start", extra={"approval_id": parked.id})
            return
        self._pending[parked.id] = parked
        self._arm(parked)

    # --- the operators' side ------------------------------------------------------------------------

    def pending(self) -> list[Parked]:
        """The pending approvals, oldest first."""
        return sorted(self._pending.values(), key=lambda p: p.created)

    async def decide(self, approval_id: str, result: Result, by: str, reason: str = "") -> Parked:
        """Approve or deny a pending approval: its plan resumes. UnknownApproval / ApprovalGone otherwise."""
        parked = self._pending.get(approval_id)
        if parked is None:
            done = self._decided.get(approval_id)
            if done is not None:
                raise ApprovalGone(
                    f"approval {approval_id} is no longer pending: it was {done.result}"
                    + (f" by {done.by}" if done.by else ""),
                    hint="talon-opa approvals lists the pending ones",
                )
            raise UnknownApproval(
                f"no pending approval {approval_id!r}", hint="talon-opa approvals lists the pending ones"
            )
        if self._clock() >= parked.expires:
            await self._finish(parked, Decision("expired", at=self._clock()))
            raise ApprovalGone(
                f"approval {approval_id} expired: its {parked.window_seconds}s window has passed", hint="too late"
            )
        return await self._finish(parked, Decision(result, by=by, at=self._clock(), reason=reason))

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Re-arm the approvals kept in `state_dir` (an expired one expires at once)."""
        if self.folder is None:
            if self._configured:
                log.warning(
                    "approvals are kept in memory only: pending ones are lost when the engine stops",
                    extra={"hint": "set state_dir to keep them across a restart"},
                )
            return
        try:
            await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True)
        except OSError as e:
            raise config.ConfigError(
                f"config key 'state_dir': cannot create {self.folder}: {e.strerror}",
                hint="give a folder the engine can write (a volume, not the read-only root filesystem)",
            ) from e
        for path in sorted(self.folder.glob("*.json")):
            try:
                parked = Parked.decode(await asyncio.to_thread(path.read_bytes))
            except (TalonError, OSError) as e:
                bad = path.with_suffix(".bad")
                with contextlib.suppress(OSError):
                    path.rename(bad)
                log.error("pending approval unreadable, set aside", extra={"file": str(bad), "error": str(e)})
                continue
            if parked.decision is not None:  # decided before the stop: its plan had not finished
                log.info("resuming a decided approval", extra={"approval_id": parked.id, **_decision(parked.decision)})
                self._resume(parked, parked.decision)
                continue
            self._pending[parked.id] = parked
            if parked.expires <= self._clock():  # its window ended while the engine was down
                await self._finish(parked, Decision("expired", at=self._clock()))
                continue
            log.info("pending approval re-armed", extra={"approval_id": parked.id, "expires": parked.expires})
            self._arm(parked)
        self.waiting.set(len(self._pending))

    async def stop(self, timeout: float) -> None:
        """Stop the timers and wait (up to `timeout`) for the plans being resumed; pending ones stay on disk."""
        self._stopping = True
        for t in self._timers.values():
            t.cancel()
        for t in list(self._timers.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._timers.clear()
        if self._resuming:
            _, late = await asyncio.wait(list(self._resuming), timeout=timeout)
            for t in late:
                t.cancel()
            for t in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if late:
                log.error("plans not finished at shutdown", extra={"count": len(late), "kept": self.folder is not None})
        if self._pending and self.folder is None:
            log.warning("pending approvals lost at shutdown (no state_dir)", extra={"count": len(self._pending)})

    async def settled(self) -> None:
        """Wait until no decided plan is being resumed (tests)."""
        await self._idle.wait()

    # --- inside -------------------------------------------------------------------------------------

    def _arm(self, parked: Parked) -> None:
        self.waiting.set(len(self._pending))
        self._timers[parked.id] = asyncio.get_running_loop().create_task(
            self._expire_later(parked), name=f"talon-opa-approval-{parked.id}"
        )

    async def _expire_later(self, parked: Parked) -> None:
        await asyncio.sleep(max(0.0, parked.expires - self._clock()))
        if parked.id in self._pending:
            self._timers.pop(parked.id, None)  # this task is ending: _finish must not cancel it
            await self._finish(parked, Decision("expired", at=self._clock()))

    async def _finish(self, parked: Parked, decision: Decision) -> Parked:
        self._pending.pop(parked.id, None)
        self.waiting.set(len(self._pending))
        timer = self._timers.pop(parked.id, None)
        if timer is not None:
            timer.cancel()
        self._decided[parked.id] = decision
        while len(self._decided) > REMEMBERED:
            self._decided.popitem(last=False)
        self.requests.labels(result=decision.result).inc()
        log_at = log.info if decision.result == "approved" else log.warning
        log_at("approval decided", extra={"approval_id": parked.id, "rule": parked.step.rule, **_decision(decision)})
        decided = dataclasses.replace(parked, decision=decision)
        try:
            await self._save(decided)  # a restart now resumes it with this decision
        except OSError as e:
            log.error("approval decision not saved", extra={"approval_id": parked.id, "error": str(e)})
        self._resume(decided, decision)
        return decided

    def _resume(self, parked: Parked, decision: Decision) -> None:
        task = asyncio.get_running_loop().create_task(self._run(parked, decision), name=f"talon-opa-resume-{parked.id}")
        self._resuming.add(task)
        self._idle.clear()

        def done(t: asyncio.Task[None]) -> None:
            self._resuming.discard(t)
            if not self._resuming:
                self._idle.set()

        task.add_done_callback(done)

    async def _run(self, parked: Parked, decision: Decision) -> None:
        parent = SpanContext(
            int(parked.trace_id, 16),
            int(parked.span_id, 16),
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        ctx = trace.set_span_in_context(NonRecordingSpan(parent))
        with self._tracer.start_as_current_span(
            telemetry.RESUME_PLAN,
            context=ctx,
            attributes={
                telemetry.ALERT_ID: parked.item.alert_id,
                telemetry.APPROVAL_ID: parked.id,
                telemetry.APPROVAL_RESULT: decision.result,
                **({telemetry.APPROVAL_BY: decision.by} if decision.by else {}),
            },
        ) as span:
            results: list[StepResult] = []
            try:
                results = await self._executor().resume(parked, decision)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                telemetry.fail(span, e)
                log.exception("resumed plan failed", extra={"approval_id": parked.id})
            else:
                failed = [r for r in results if r.status == "failure"]
                if failed:
                    telemetry.fail(span, f"{len(failed)} step(s) failed: {failed[0].error}", failed[0].error_type)
                else:
                    telemetry.ok(span)
        if self._audit is not None:
            self._audit.record_line(
                approval_record(
                    parked.item.alert_id, parked.trace_id, parked.id, _decision(decision), parked.index, results
                )
            )
        await self._forget(parked)

    async def _save(self, parked: Parked) -> None:
        if self.folder is not None:
            await asyncio.to_thread(_write_atomically, self.folder / f"{parked.id}.json", parked.encode())

    async def _forget(self, parked: Parked) -> None:
        if self.folder is not None:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread((self.folder / f"{parked.id}.json").unlink)


def _decision(d: Decision) -> dict[str, str]:
    return {"result": d.result, "by": d.by, "reason": d.reason}


def _write_atomically(path: Path, data: bytes) -> None:
    """The file holds either its old content or `data`, never a part, even if the machine stops."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
