"""Shipping the audit trail to an output, in segments (docs/audit.md, `audit.output`).

The trail file stays the source: after each written batch the trail tells the shipper how far its whole
lines go; the shipper cuts the lines not shipped yet into segments (`audit.segment_lines` lines, or
fewer once the oldest is `audit.segment_seconds` old), reads them back from the file byte for byte and
hands each to the output as an artifact named `audit-<trail>-<first>-<last>.jsonl` (engine/audit_segments.py).
Segments go in order; a failed upload is logged, counted and retried (backoff 1 s to 60 s) while the
trail and the alerts go on. After each upload its progress is written beside the trail
(`<audit.path>.shipped`), so a restart ships from there; a crash between an upload and that write ships
the last segment's lines again, which `audit verify` over the folder recognises as duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from talon_opa.core import backoff, config, logs
from talon_opa.engine import audit_chain, audit_segments
from talon_opa.engine.audit import AuditTrail
from talon_opa.engine.instances import Instances
from talon_opa.engine.metrics import OURS
from talon_opa.plugins import runtime
from talon_opa.plugins.params import ParamsInvalid
from talon_opa.plugins.runtime import Artifact, Outcome

log = logs.get("audit")

STATE_SUFFIX = ".shipped"
RETRY = backoff.Policy(initial=1.0, maximum=60.0)
UPLOAD_TIMEOUT = 60.0  # seconds per upload

Store = Callable[[Artifact], Awaitable[Outcome]]


@dataclass(slots=True)
class Progress:
    """What is shipped: the trail's id, the bytes and the last line (seq, hash, length) shipped."""

    trail: str = ""
    offset: int = 0
    seq: int = 0
    hash: str = audit_chain.GENESIS
    last_len: int = 0


@dataclass(frozen=True, slots=True)
class Cut:
    """A segment read from the trail."""

    data: bytes
    first: int
    last: int
    last_hash: str
    last_len: int
    trail: str


class AuditShipper:
    """Ships the trail `path` through `store` (one output, its parameters bound); `start`, `written`, `stop`."""

    def __init__(self, cfg: config.Audit, store: Store, registry: CollectorRegistry) -> None:
        self.path = Path(cfg.path)
        self.state_path = Path(cfg.path + STATE_SUFFIX)
        self.target = cfg.output
        self._store = store
        self._lines = cfg.segment_lines
        self._seconds = cfg.segment_seconds
        self._progress = Progress()
        self._size = 0  # bytes of whole lines the trail has written
        self._seq = 0  # the trail's last seq
        self._oldest: float | None = None  # when the oldest line not shipped was written
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.problem = ""  # the last upload error, while uploads fail
        self.segments = Counter(
            f"{OURS}_audit_segments_shipped", "Audit trail segments uploaded to audit.output", registry=registry
        )
        self.failures = Counter(
            f"{OURS}_audit_ship_failures", "Failed uploads of audit trail segments (retried)", registry=registry
        )
        self.unshipped = Gauge(
            f"{OURS}_audit_lines_unshipped", "Audit trail lines written but not uploaded yet", registry=registry
        )

    async def start(self, size: int, seq: int) -> None:
        """Continue from the saved progress (or the trail's start); `size`/`seq`: the trail's end now."""
        self._progress = await asyncio.to_thread(self._load)
        self.written(size, seq)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="talon-opa-audit-shipper")
        log.info(
            "audit shipping",
            extra={"output": self.target, "shipped_seq": self._progress.seq, "unshipped": seq - self._progress.seq},
        )

    def written(self, size: int, seq: int) -> None:
        """The trail's whole lines now end at `size` bytes, its last line is `seq` (never waits)."""
        self._size, self._seq = size, seq
        pending = seq - self._progress.seq
        self.unshipped.set(max(pending, 0))
        if pending > 0:
            if self._oldest is None:
                self._oldest = time.monotonic()
            self._wake.set()

    def _due(self) -> float | None:
        """Seconds until the next segment is due (0: now); None when nothing is waiting."""
        pending = self._seq - self._progress.seq
        if pending <= 0 or self._oldest is None:
            return None
        if pending >= self._lines:
            return 0.0
        return max(0.0, self._oldest + self._seconds - time.monotonic())

    async def _run(self) -> None:
        retry = backoff.Backoff(RETRY)
        while True:
            due = self._due()
            if due is None or due > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due):
                        await self._wake.wait()
                continue
            if await self._ship_one():
                retry = backoff.Backoff(RETRY)
            else:
                await retry.sleep()

    async def _ship_one(self) -> bool:
        """Upload the next segment; False when it failed (logged and counted)."""
        try:
            cut = await asyncio.to_thread(self._cut)
            if cut is None:
                return True
            artifact = Artifact(audit_segments.name(cut.trail, cut.first, cut.last), cut.data)
            async with asyncio.timeout(UPLOAD_TIMEOUT):
                outcome = await self._store(artifact)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # every output error: reported, retried, never lost
            self.failures.inc()
            error = f"{type(e).__name__}: {e}"[:500] if not isinstance(e, TimeoutError) else "upload timed out"
            if not self.problem:
                log.error("audit segment upload failed", extra={"output": self.target, "error": error})
            self.problem = error
            return False
        progress = Progress(cut.trail, self._progress.offset + len(cut.data), cut.last, cut.last_hash, cut.last_len)
        try:
            await asyncio.to_thread(self._save, progress)
        except OSError as e:  # shipped all the same; a restart would ship these lines again
            log.error("audit shipping progress not saved", extra={"path": str(self.state_path), "error": str(e)})
        self._progress = progress
        self.segments.inc()
        if self.problem:
            log.info("audit segment uploads work again", extra={"output": self.target})
        self.problem = ""
        log.info(
            "audit segment shipped", extra={"output": self.target, "segment": artifact.name, "to": outcome.message}
        )
        pending = self._seq - progress.seq
        self.unshipped.set(max(pending, 0))
        self._oldest = time.monotonic() if pending > 0 else None
        return True

    def _cut(self) -> Cut | None:
        """The next segment's lines, read from the trail (the writer thread may be appending after `_size`)."""
        start, end = self._progress.offset, self._size
        if end <= start:
            return None
        lines: list[bytes] = []
        with self.path.open("rb") as f:
            f.seek(start)
            pos = start
            while len(lines) < self._lines and pos < end:
                raw = f.readline()
                if not raw.endswith(b"\n") or pos + len(raw) > end:
                    break
                lines.append(raw)
                pos += len(raw)
        if not lines:
            return None
        # a line that is not a record (the file was edited) is shipped as it is: `audit verify` reports it
        first_seq = self._progress.seq + 1
        first, last = _seq_hash(lines[0]), _seq_hash(lines[-1])
        last_seq, last_hash = last or (first_seq + len(lines) - 1, "")
        trail = self._progress.trail or audit_segments.trail_id(first[1] if first else audit_chain.GENESIS)
        return Cut(b"".join(lines), first[0] if first else first_seq, last_seq, last_hash, len(lines[-1]), trail)

    def _load(self) -> Progress:
        """The saved progress if it still describes this trail; else the trail's start."""
        try:
            saved = Progress(**json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return Progress()
        except (OSError, ValueError, TypeError) as e:
            log.warning(
                "audit shipping starts over: unreadable progress",
                extra={"path": str(self.state_path), "error": str(e)},
            )
            return Progress()
        try:
            with self.path.open("rb") as f:
                first = f.readline()
                f.seek(max(saved.offset - saved.last_len, 0))
                last = f.read(saved.last_len)
            same_trail = audit_segments.trail_id(str(json.loads(first)["hash"])) == saved.trail
            same_line = json.loads(last)["hash"] == saved.hash and last.endswith(b"\n")
        except (OSError, ValueError, KeyError, TypeError):
            same_trail = same_line = False
        if same_trail and same_line:
            return saved
        log.warning(
            "audit shipping starts over: the trail is not the one shipped before (moved aside?)",
            extra={"path": str(self.path), "progress": str(self.state_path)},
        )
        return Progress()

    def _save(self, progress: Progress) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(progress)))
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(self.state_path)

    async def stop(self, timeout: float = 10.0) -> None:
        """Ship what is left (up to `timeout`), then stop."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._seq > self._progress.seq and await self._ship_one():
                    pass
        left = self._seq - self._progress.seq
        if left > 0:
            log.error("audit lines not shipped at shutdown", extra={"output": self.target, "count": left})


def _seq_hash(raw: bytes) -> tuple[int, str] | None:
    """The line's seq and hash; None when it is not a record."""
    try:
        doc = json.loads(raw)
        return int(doc["seq"]), str(doc["hash"])
    except (ValueError, KeyError, TypeError):
        return None


def shipper(cfg: config.Audit, trail: AuditTrail, instances: Instances, registry: CollectorRegistry) -> AuditShipper:
    """The shipper of `trail` through the output `audit.output`; ConfigError naming the key when it cannot be."""
    cls = instances.registry.outputs.get(cfg.output)
    known = ", ".join(sorted(n for n, c in instances.registry.outputs.items() if runtime.runs(c)))
    if cls is None or not runtime.runs(cls):
        raise config.ConfigError(
            f"config key 'audit.output' names {cfg.output!r}, which is not an output that runs",
            hint=f"use one of: {known}",
        )
    try:
        params = cls.spec.decode(cfg.output_parameters)
    except ParamsInvalid as e:
        raise config.ConfigError(
            f"config key 'audit.output_parameters' is invalid for {cfg.output}: {e}",
            hint=f"see `talon-opa outputs list` for the parameters of {cfg.output}",
        ) from e
    instances.check_clients([cfg.output])
    plugin = instances.output(cls)

    async def store(artifact: Artifact) -> Outcome:
        return await plugin.store(artifact, params)

    ship = AuditShipper(cfg, store, registry)
    trail.on_written = ship.written
    return ship
