"""The reversals the engine keeps (docs/undo.md): one record per reversible action that ran, pending or done.

With `state_dir` set, each record is one JSON file `<state_dir>/undo/<action id>.json`, written atomically
(a temporary file in the same folder, fsynced, then renamed over the old one), so a crash leaves either
the old record or the new one. At start every record is read back; a file that cannot be read is logged and
left where it is (renamed `*.unreadable`), never deleted. Records done for longer than `RETAIN_SECONDS` are
removed at start. Without `state_dir` the records live in memory and are lost when the engine stops.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from talon_opa.core import logs
from talon_opa.core.config import ConfigError
from talon_opa.plugins.reversal import Reversal

log = logs.get("undo")

State = Literal["pending", "undone", "already_undone", "conflict"]
STATES: tuple[State, ...] = ("pending", "undone", "already_undone", "conflict")
RETAIN_SECONDS = 7 * 24 * 3600  # a done record answers "already undone" this long, then it is forgotten
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
FOLDER = "undo"


def valid_id(text: str) -> bool:
    """Whether `text` can be an alert or action id (also a safe file name)."""
    return bool(_ID.match(text))


def action_id(alert_id: str, step_index: int) -> str:
    """The id of one action: its alert's id and its step's index in the plan."""
    return f"{alert_id}-{step_index}"


@dataclass(frozen=True, slots=True)
class Record:
    """One reversible action that ran: how to undo it, when (TTL), and what became of it."""

    action_id: str
    alert_id: str
    step_index: int
    rule: str
    action: str
    actionner: str
    cluster: str  # "" = the default cluster
    reversal: Reversal
    ran_at: float  # unix seconds
    expires_at: float | None  # unix seconds, when the TTL undoes it (None: only on demand)
    trace_id: str  # of the alert's trace, with the span of the action: what the undo's span links to
    span_id: str
    state: State = "pending"
    result_message: str = ""
    trigger: str = ""  # what undid it: "manual" or "ttl"
    undo_trace_id: str = ""
    finished_at: float | None = None

    @property
    def pending(self) -> bool:
        return self.state == "pending"

    def finished(self, state: State, message: str, trigger: str, undo_trace_id: str) -> Record:
        return replace(
            self,
            state=state,
            result_message=message,
            trigger=trigger,
            undo_trace_id=undo_trace_id,
            finished_at=time.time(),
        )

    def doc(self) -> dict[str, Any]:
        return {
            "action_id": self.action_id,
            "alert_id": self.alert_id,
            "step_index": self.step_index,
            "rule": self.rule,
            "action": self.action,
            "actionner": self.actionner,
            "cluster": self.cluster,
            "reversal": self.reversal.doc(),
            "ran_at": self.ran_at,
            "expires_at": self.expires_at,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "state": self.state,
            "result_message": self.result_message,
            "trigger": self.trigger,
            "undo_trace_id": self.undo_trace_id,
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Record:
        """A record `doc()` wrote; ValueError (or KeyError, TypeError) when it is not one."""
        state = doc.get("state")
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        expires, finished = doc.get("expires_at"), doc.get("finished_at")
        return cls(
            action_id=str(doc["action_id"]),
            alert_id=str(doc["alert_id"]),
            step_index=int(doc["step_index"]),
            rule=str(doc["rule"]),
            action=str(doc["action"]),
            actionner=str(doc["actionner"]),
            cluster=str(doc.get("cluster") or ""),
            reversal=Reversal.from_doc(doc["reversal"]),
            ran_at=float(doc["ran_at"]),
            expires_at=None if expires is None else float(expires),
            trace_id=str(doc.get("trace_id") or ""),
            span_id=str(doc.get("span_id") or ""),
            state=state,
            result_message=str(doc.get("result_message") or ""),
            trigger=str(doc.get("trigger") or ""),
            undo_trace_id=str(doc.get("undo_trace_id") or ""),
            finished_at=None if finished is None else float(finished),
        )


class UndoStore:
    """The records by action id, in memory and (with a folder) on disk. Blocking file I/O: call it from a
    thread (`asyncio.to_thread`) on the event loop."""

    def __init__(self, state_dir: str) -> None:
        self.folder = Path(state_dir) / FOLDER if state_dir else None
        self._records: dict[str, Record] = {}

    @property
    def durable(self) -> bool:
        return self.folder is not None

    def load(self) -> int:
        """Read every record of the folder (the records done long ago are removed); how many were read."""
        if self.folder is None:
            return 0
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"config key 'state_dir': cannot create {self.folder}: {e.strerror}",
                hint="give a folder the engine can write (a volume, not the read-only root filesystem)",
            ) from e
        horizon = time.time() - RETAIN_SECONDS
        for path in sorted(self.folder.glob("*.json")):
            try:
                record = Record.from_doc(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError) as e:
                bad = path.with_suffix(".unreadable")
                log.error(
                    "unreadable undo record set aside",
                    extra={"path": str(path), "moved_to": str(bad), "error": str(e)[:300]},
                )
                path.replace(bad)
                continue
            if record.finished_at is not None and record.finished_at < horizon:
                path.unlink(missing_ok=True)
                continue
            self._records[record.action_id] = record
        return len(self._records)

    def put(self, record: Record) -> None:
        """Keep the record (replacing the one of the same action id); on disk first, atomically."""
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{record.action_id}.json"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            data = json.dumps(record.doc(), sort_keys=True).encode("utf-8")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            dir_fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename itself survives a crash
            finally:
                os.close(dir_fd)
        self._records[record.action_id] = record

    def get(self, action_id: str) -> Record | None:
        return self._records.get(action_id)

    def of_alert(self, alert_id: str) -> list[Record]:
        """The records of an alert's actions, in step order."""
        return sorted((r for r in self._records.values() if r.alert_id == alert_id), key=lambda r: r.step_index)

    def pending(self) -> Iterator[Record]:
        return (r for r in self._records.values() if r.pending)
