"""The audit trail's format: JSON lines chained by hashes, and their verification (docs/audit.md).

Each line is one JSON object: `prev`, the `hash` of the line before it (`GENESIS` for the first line),
and `hash`, the sha256 of the canonical JSON (keys sorted, no spaces, ASCII only) of the line without
`hash`. The writer writes exactly that canonical JSON, with `hash` added as the last key.
Editing a line breaks its hash; deleting, inserting or moving a line breaks the next line's `prev`.
Removing lines at the end keeps a valid chain: compare the last hash with a head recorded elsewhere
(`audit verify --head`) to see that.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from talon_opa.core.errors import TalonError

FORMAT = 1  # `v` of every line
GENESIS = "0" * 64  # `prev` of the first line
_RECENT = 4096  # hashes remembered to say which earlier line a broken `prev` points to


class AuditError(TalonError):
    """The audit trail cannot be read or continued."""


def canonical(doc: Mapping[str, Any]) -> bytes:
    """The one serialisation that is hashed and written: keys sorted, no spaces, ASCII escapes."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def digest(doc: Mapping[str, Any]) -> str:
    """The `hash` of a line: sha256 over the canonical JSON of the line without `hash`."""
    return hashlib.sha256(canonical({k: v for k, v in doc.items() if k != "hash"})).hexdigest()


def body_digest(body: bytes) -> str:
    """The `digest` of an alert as received: `sha256:` and the hex sha256 of its body."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def seal(record: Mapping[str, Any], prev: str) -> tuple[bytes, str]:
    """The record as one chained line (newline included), and its hash.

    The line is the canonical JSON of the record with `prev`, then `hash` as its last key: serialised
    once, and the hash is where `tail -c 80` shows it.
    """
    body = canonical({k: v for k, v in record.items() if k != "hash"} | {"prev": prev})
    h = hashlib.sha256(body).hexdigest()
    return body[:-1] + b',"hash":"' + h.encode() + b'"}\n', h


@dataclass(frozen=True, slots=True)
class Problem:
    """Where the chain does not hold: the line (1-based) and what is wrong there."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class Report:
    """What `verify` found: the records, the head (last hash), gaps, and every problem."""

    lines: int = 0
    alerts: int = 0
    head: str = GENESIS
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (line, records dropped)
    problems: list[Problem] = field(default_factory=list)
    anchor_line: int | None = None  # the line whose hash is the anchored head, when one was given

    @property
    def intact(self) -> bool:
        return not self.problems


def verify(lines: Iterable[bytes], *, anchor: str = "", start: str = GENESIS) -> Report:
    """Check every line's hash and its link to the line before; each problem once, with its line number.

    `start` is the `prev` the first line must have (the genesis value for a whole trail).
    """
    report = Report()
    recent: OrderedDict[str, int] = OrderedDict()  # hash → line, of the last lines
    prev: str | None = start
    prev_line = 0
    for number, raw in enumerate(lines, start=1):
        report.lines = number
        problem = _check(raw, prev, prev_line, recent)
        doc = _parse(raw)
        if problem:
            report.problems.append(Problem(number, problem))
        if doc is None:
            prev = None  # unreadable: the next line's link cannot be checked (this line is already reported)
            continue
        stored = str(doc["hash"])
        if doc.get("kind") == "gap":
            report.gaps.append((number, int(doc.get("dropped") or 0)))
        elif doc.get("kind") == "alert":
            report.alerts += 1
        if anchor and stored == anchor:
            report.anchor_line = number
        recent[stored] = number
        if len(recent) > _RECENT:
            recent.popitem(last=False)
        prev, prev_line = stored, number
    report.head = prev or ""
    if anchor and report.anchor_line is None:
        report.problems.append(
            Problem(
                report.lines,
                f"the anchored head {anchor} is not in the trail: lines were removed at its end, or it was rewritten",
            )
        )
    return report


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("hash"), str) or not isinstance(doc.get("prev"), str):
        return None
    return doc


def _check(raw: bytes, prev: str | None, prev_line: int, recent: Mapping[str, int]) -> str:
    """What is wrong with this line ("" when nothing); `prev` None: the line before was unreadable."""
    if not raw.endswith(b"\n"):
        return "the last line is incomplete (no newline): a write was interrupted, or the line was cut"
    doc = _parse(raw)
    if doc is None:
        return "not an audit record (not a JSON object with hash and prev): edited or corrupted"
    if digest(doc) != doc["hash"]:
        return "edited: its content does not match its hash"
    body = doc.get("body")
    if isinstance(body, str) and doc.get("digest") != body_digest(body.encode("utf-8", "surrogateescape")):
        return "its body does not match its digest (written so, or edited with a new hash)"
    if prev is None or doc["prev"] == prev:
        return ""
    if prev_line == 0:
        return "the chain does not start here (prev is not the genesis value): lines were removed before it"
    earlier = recent.get(str(doc["prev"]))
    if earlier is not None:
        return (
            f"chain broken: prev is the hash of line {earlier}, not of line {prev_line} "
            "(a line was inserted, or lines were moved)"
        )
    return (
        f"chain broken: prev does not match the hash of line {prev_line} (a line was deleted here, or lines were moved)"
    )


def read_lines(path: Path) -> Iterator[bytes]:
    """The file's lines, newline kept (the last one may lack it)."""
    with path.open("rb") as f:
        yield from f


def tail(path: Path) -> tuple[int, str] | None:
    """(seq, hash) of the trail's last line, after checking the last two lines; None for an empty trail.

    AuditError when the end does not verify: the engine must not extend a chain it cannot vouch for.
    """
    last = _last_lines(path, 2)
    if not last:
        return None
    first = _parse(last[0])
    report = verify(last, start=str(first["prev"]) if first else GENESIS)
    if report.problems:
        raise AuditError(
            f"the audit trail {path} does not verify at its end ({report.problems[0].message})",
            hint=f"run `talon-opa audit verify {path}`; move the file aside to start a new trail",
        )
    seq = json.loads(last[-1]).get("seq")
    if not isinstance(seq, int):
        raise AuditError(f"the last line of the audit trail {path} has no seq", hint="move the file aside")
    return seq, report.head


def _last_lines(path: Path, n: int, block: int = 65536) -> list[bytes]:
    """The last `n` lines of the file (fewer if it has fewer), read backwards."""
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        data = b""
        pos = end
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    lines = data.splitlines(keepends=True)
    if pos > 0:
        lines = lines[1:]  # the first one may be the end of a longer line
    return lines[-n:]
