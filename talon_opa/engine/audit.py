"""The audit trail writer: one hash-chained line per processed alert, written off the event loop.

`record` is called by the processor when an alert's plan has run (or could not be decided); it builds
the line's content and leaves it in a bounded buffer, never waiting. One writer task takes what the
buffer holds and appends it in a batch from a dedicated thread (chaining, hashing, write, fsync), so
the event loop never blocks on the disk. Failures are never silent:
* a write that fails is logged and counted, readiness says so until a write succeeds again, and the
  batch stays in the buffer (retried with backoff; the file is cut back to its last whole line);
* a full buffer drops the new line, counts it, and the next write adds a `gap` line saying how many.
At start the trail's last lines are checked and the chain continues from them; `stop` flushes.
`caught_up` lets the JetStream path ack an alert only once its line is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import os
import stat
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from talon_opa.core import backoff, config, logs, secrets
from talon_opa.engine import audit_chain, telemetry
from talon_opa.engine.execute import StepResult
from talon_opa.engine.metrics import OURS
from talon_opa.engine.work import Job
from talon_opa.opa.plan import Plan, plan_doc

log = logs.get("audit")

BATCH = 1000  # most lines per write
RETRY = backoff.Policy(initial=0.1, maximum=5.0)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def alert_record(job: Job, plan: Plan | None, results: Sequence[StepResult], error: str) -> dict[str, Any]:
    """The content of an alert's line (the writer adds seq, prev and hash)."""
    item = job.item
    return {
        "v": audit_chain.FORMAT,
        "kind": "alert",
        "time": now(),
        "alert_id": item.alert_id,
        "digest": audit_chain.body_digest(item.body),
        "body": item.body.decode("utf-8", "surrogateescape"),
        "content_type": item.content_type,
        "trace_id": telemetry.trace_id_of(job.span),
        "decision_id": plan.decision_id if plan else "",
        "revision": plan.revision if plan else "",
        "plan": plan_doc(plan.matched_rules, plan.steps) if plan else None,
        "results": [_result_doc(i, r) for i, r in enumerate(results)],
        "error": secrets.KNOWN.scrub(error),
    }


def _result_doc(index: int, r: StepResult) -> dict[str, Any]:
    scrub = secrets.KNOWN.scrub
    return {
        "step": index,
        "rule": r.step.rule,
        "action": r.step.action,
        "status": r.status,
        "message": scrub(r.message),
        "error": scrub(r.error),
        "error_type": r.error_type,
        "objects": dict(r.objects),
        "output_status": r.output_status,
        "span_id": r.span_id,
    }


class AuditTrail:
    """The audit trail of one engine (`audit.path`): `start`, `record` per alert, `stop`."""

    def __init__(self, cfg: config.Audit, registry: CollectorRegistry) -> None:
        self.path = Path(cfg.path)
        self.unmatched = cfg.unmatched
        self._fsync = cfg.fsync
        self._capacity = cfg.buffer
        self._pending: deque[dict[str, Any]] = deque()
        self._dropped = 0  # since the last gap line
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set when everything recorded is written
        self._idle.set()
        self._queued = 0  # alert lines put in the buffer since start
        self._written = 0  # of those, written
        self._progress = asyncio.Condition()  # notified after each written batch
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="talon-opa-audit")
        self._task: asyncio.Task[None] | None = None
        self._fd = -1
        self._size = 0  # bytes of whole lines in the file
        self._seq = 0
        self._prev = audit_chain.GENESIS
        self.problem = ""  # the last write error, while writes fail
        self.head = audit_chain.GENESIS
        self.written = Counter(
            f"{OURS}_audit_records", "Lines appended to the audit trail", ["kind"], registry=registry
        )
        self.failures = Counter(
            f"{OURS}_audit_write_failures", "Failed writes to the audit trail (retried)", registry=registry
        )
        self.dropped = Counter(
            f"{OURS}_audit_records_dropped", "Alerts not recorded: the audit buffer was full", registry=registry
        )

    async def start(self) -> None:
        """Open the trail (one writer at a time), check its end, continue its chain; AuditError otherwise."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._open)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="talon-opa-audit-writer")
        log.info("audit trail", extra={"path": str(self.path), "seq": self._seq, "head": self._prev})

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as e:
            raise audit_chain.AuditError(
                f"cannot open the audit trail {self.path}: {e.strerror}", hint="set audit.path to a writable file"
            ) from e
        regular = stat.S_ISREG(os.fstat(fd).st_mode)  # a device or a pipe has no chain to share or continue
        try:
            if regular:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise audit_chain.AuditError(
                f"the audit trail {self.path} is being written by another process",
                hint="give each engine (replica) its own audit.path",
            ) from e
        try:
            end = audit_chain.tail(self.path) if regular else None
        except OSError as e:
            os.close(fd)
            raise audit_chain.AuditError(
                f"cannot read the end of the audit trail {self.path}: {e.strerror}", hint="make the file readable"
            ) from e
        except BaseException:
            os.close(fd)
            raise
        if end is not None:
            self._seq, self._prev = end
        self.head = self._prev
        self._fsync = self._fsync and regular  # a pipe or a device cannot be fsynced
        self._size = os.fstat(fd).st_size
        self._fd = fd

    def record(self, job: Job, plan: Plan | None, results: Sequence[StepResult], error: str = "") -> None:
        """Queue the alert's line; never waits (a full buffer drops it, counted, and a gap line follows)."""
        if plan is not None and not plan.matched_rules and not error and not self.unmatched:
            return
        self.record_line(alert_record(job, plan, results, error))

    def record_line(self, content: dict[str, Any]) -> None:
        """Queue a line of any kind (an alert, an undo); never waits, like `record`."""
        if len(self._pending) >= self._capacity:
            self._idle.clear()
            if self._dropped == 0:
                log.error(
                    "audit buffer full: alerts are not recorded",
                    extra={"path": str(self.path), "problem": self.problem, "hint": "see audit write failures"},
                )
            self._dropped += 1
            self.dropped.inc()
            self._wake.set()
            return
        self._pending.append(content)
        self._queued += 1
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        retry = backoff.Backoff(RETRY)
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending or self._dropped:
                batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
                dropped, self._dropped = self._dropped, 0
                if dropped:  # where the lines went missing, recorded in the chain itself
                    batch.insert(0, {"v": audit_chain.FORMAT, "kind": "gap", "time": now(), "dropped": dropped})
                try:
                    await loop.run_in_executor(self._thread, self._append, batch)
                except OSError as e:
                    self._pending.extendleft(reversed(batch[1:] if dropped else batch))
                    self._dropped += dropped
                    self.failures.inc()
                    if not self.problem:
                        log.error("audit trail write failed", extra={"path": str(self.path), "error": str(e)})
                    self.problem = f"{e.strerror or e}"
                    await retry.sleep()
                    continue
                if self.problem:
                    log.info("audit trail writes again", extra={"path": str(self.path)})
                self.problem = ""
                retry = backoff.Backoff(RETRY)
                for doc in batch:
                    self.written.labels(kind=doc["kind"]).inc()
                self._written += len(batch) - (1 if dropped else 0)
                async with self._progress:
                    self._progress.notify_all()
                if dropped:
                    log.error("audit gap recorded", extra={"path": str(self.path), "dropped": dropped})
            self._idle.set()

    def _append(self, batch: list[dict[str, Any]]) -> None:
        """Chain, hash and append the batch in one write (the writer thread); all or nothing."""
        seq, prev = self._seq, self._prev
        lines = []
        for doc in batch:
            seq += 1
            line, prev = audit_chain.seal({**doc, "seq": seq}, prev)
            lines.append(line)
        data = memoryview(b"".join(lines))
        try:
            while data:
                data = data[os.write(self._fd, data) :]
            if self._fsync:
                os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)  # no half line: the retry appends after the last whole one
            raise
        self._size += sum(len(line) for line in lines)
        self._seq, self._prev = seq, prev
        self.head = prev
        # shipping the trail to an output (docs/audit.md, "not yet built in") would take `lines` here

    async def caught_up(self, timeout: float) -> bool:
        """Wait until every alert line recorded so far is written (up to `timeout`: False when not)."""
        target = self._queued
        try:
            async with asyncio.timeout(timeout), self._progress:
                await self._progress.wait_for(lambda: self._written >= target)
        except TimeoutError:
            return False
        return True

    async def flushed(self) -> None:
        """Wait until every line recorded so far is written."""
        await self._idle.wait()

    async def stop(self, timeout: float = 10.0) -> None:
        """Write what is buffered (waiting up to `timeout` while writes fail), then close the file."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._idle.wait()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            left = len(self._pending) + self._dropped
            if left:
                log.error("audit lines not written at shutdown", extra={"path": str(self.path), "count": left})
        self._thread.shutdown(wait=True)  # a write under way finishes before the file is closed
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            log.info("audit trail closed", extra={"path": str(self.path), "seq": self._seq, "head": self.head})
