"""`audit verify FILE|FOLDER [--head HASH]`: check an audit trail's hash chain (docs/audit.md).

A folder holds the segments `audit.output` shipped (engine/audit_segments.py): each trail in it is checked
as one chain, its segments in order, lines shipped twice left out once found identical.

Prints `FILE:LINE: what is wrong` for every line where the chain does not hold (an edited line, a
deleted, inserted or moved one, a cut last line) and exits 1; prints the count and the head hash and
exits 0 when it holds. `--head` is a head printed earlier and kept elsewhere: the trail must still
contain it, so lines removed at its end are found too. Exit 2: the file cannot be read, or a bad --head.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from talon_opa.engine import audit_chain, audit_segments

EXIT_OK, EXIT_BROKEN, EXIT_INVALID = 0, 1, 2
_HASH = re.compile(r"^[0-9a-f]{64}$")


def main(args: argparse.Namespace) -> int:
    if args.audit_command == "verify":
        return verify(Path(args.file), args.head or "")
    raise AssertionError(args.audit_command)


def verify(path: Path, head: str) -> int:
    if head and not _HASH.match(head):
        print(f"error: --head {head!r} is not a hash (64 lowercase hex digits)", file=sys.stderr)
        return EXIT_INVALID
    if path.is_dir():
        return verify_folder(path, head)
    try:
        report = audit_chain.verify(audit_chain.read_lines(path), anchor=head)
    except OSError as e:
        print(f"error: cannot read the audit trail {path}: {e.strerror}", file=sys.stderr)
        return EXIT_INVALID
    return _print(path, head, report, lambda line: f"{path}:{line}")


def verify_folder(folder: Path, head: str) -> int:
    """Each trail of the folder's segments, as one chain."""
    try:
        trails = audit_segments.in_folder(folder)
    except OSError as e:
        print(f"error: cannot read the folder {folder}: {e.strerror}", file=sys.stderr)
        return EXIT_INVALID
    if not trails:
        print(f"error: {folder} holds no audit segment (audit-<trail>-<first>-<last>.jsonl)", file=sys.stderr)
        return EXIT_INVALID
    if head and len(trails) > 1:
        print(f"error: {folder} holds {len(trails)} trails; --head needs one (move the others)", file=sys.stderr)
        return EXIT_INVALID
    code = EXIT_OK
    for trail, segments in sorted(trails.items()):
        merged = audit_segments.Merged()
        name = folder / f"audit-{trail}"
        try:
            report = audit_chain.verify(audit_segments.lines(segments, merged), anchor=head)
        except OSError as e:
            print(f"error: cannot read {name}: {e.strerror}", file=sys.stderr)
            return EXIT_INVALID
        report.problems[:0] = merged.problems
        if merged.duplicates and not merged.problems:
            print(f"{name}: {merged.duplicates} line(s) shipped twice, left out once", file=sys.stderr)
        label = f"{name} ({len(segments)} segment(s))"
        code = max(code, _print(Path(label), head, report, merged.where_in(folder)))
    return code


def _print(path: Path, head: str, report: audit_chain.Report, where: Callable[[int], str]) -> int:
    if not report.intact:
        for problem in report.problems:
            print(f"{where(problem.line)}: {problem.message}")
        print(
            f"error: {path} does not verify: {len(report.problems)} problem(s) in {report.lines} line(s)",
            file=sys.stderr,
        )
        return EXIT_BROKEN
    for line, dropped in report.gaps:
        print(
            f"warning: {where(line)}: {dropped} alert(s) not recorded here (the audit buffer was full)", file=sys.stderr
        )
    text = f"{path}: intact, {report.lines} line(s), {report.alerts} alert(s), head {report.head}"
    if head and report.anchor_line is not None:
        text += f"; the anchored head is line {report.anchor_line}, {report.lines - report.anchor_line} line(s) since"
    print(text)
    return EXIT_OK
