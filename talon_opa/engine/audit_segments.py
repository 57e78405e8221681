"""Audit trail segments (docs/audit.md): the names the shipper gives them, and a folder of them read back
as one chain per trail.

A segment is consecutive whole lines of one trail, byte for byte. Its name ends with
`audit-<trail>-<first seq>-<last seq>.jsonl`: `<trail>` is the first 16 hex digits of the hash of the
trail's first line (a rotated trail, another replica's trail, get other ids), the seqs are zero-padded so
names sort in chain order. Outputs may put a time or a prefix before it, or a `.N` after it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from talon_opa.engine.audit_chain import Problem

NAME = re.compile(r"audit-([0-9a-f]{16})-(\d{12})-(\d{12})\.jsonl")


def name(trail: str, first: int, last: int) -> str:
    return f"audit-{trail}-{first:012d}-{last:012d}.jsonl"


def trail_id(first_line_hash: str) -> str:
    return first_line_hash[:16]


@dataclass(frozen=True, slots=True)
class Segment:
    path: Path
    trail: str
    first: int
    last: int


def in_folder(folder: Path) -> dict[str, list[Segment]]:
    """The folder's segments by trail, each trail's in chain order (by first seq, the longest first)."""
    trails: dict[str, list[Segment]] = {}
    for p in folder.iterdir():
        m = NAME.search(p.name)
        if m and p.is_file():
            trails.setdefault(m.group(1), []).append(Segment(p, m.group(1), int(m.group(2)), int(m.group(3))))
    for segments in trails.values():
        segments.sort(key=lambda s: (s.first, -s.last, s.path.name))
    return trails


@dataclass(slots=True)
class Merged:
    """A trail's lines from its segments, each line once; what could not be merged, as problems."""

    duplicates: int = 0  # lines found again in a later segment (re-shipped after a crash), left out
    problems: list[Problem] = field(default_factory=list)
    # where the merged lines come from: (first merged line number, segment file name, lines of it left out)
    starts: list[tuple[int, str, int]] = field(default_factory=list)

    def where_in(self, folder: Path) -> Callable[[int], str]:
        return lambda line: f"{folder}/{self.where(line)}"

    def where(self, line: int) -> str:
        """`<segment file>:<line in it>` of a merged line number."""
        found = ("?", 0, 0)
        for start, seg, skipped in self.starts:
            if start <= line:
                found = (seg, start, skipped)
        seg, start, skipped = found
        return f"{seg}:{line - start + 1 + skipped}"


def lines(segments: list[Segment], merged: Merged) -> Iterator[bytes]:
    """Each line of the trail once, in order; a line shipped twice must be the same bytes both times."""
    # A segment shipped again after a crash overlaps only the one shipped just before it (the shipper
    # records its progress after each upload), so the lines of the previous segment are enough to compare.
    seen: dict[int, bytes] = {}  # seq -> line, of the previous segment
    last = 0
    number = 0  # merged lines so far
    for seg in segments:
        current: dict[int, bytes] = {}
        skipped = 0
        started = False
        with seg.path.open("rb") as f:
            for raw in f:
                seq = _seq(raw)
                if seq is not None and seq <= last and not started:
                    earlier = seen.get(seq)
                    if earlier is not None and earlier != raw:
                        merged.problems.append(
                            Problem(
                                number,
                                f"{seg.path.name}:{skipped + 1}: line seq {seq} differs from the one shipped before",
                            )
                        )
                    merged.duplicates += 1
                    skipped += 1
                    current[seq] = raw
                    continue
                if not started:
                    started = True
                    merged.starts.append((number + 1, seg.path.name, skipped))
                if seq is not None:
                    last = max(last, seq)
                    current[seq] = raw
                number += 1
                yield raw
        seen = current


def _seq(raw: bytes) -> int | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    seq = doc.get("seq") if isinstance(doc, Mapping) else None
    return seq if isinstance(seq, int) else None
