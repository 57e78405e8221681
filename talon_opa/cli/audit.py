"""`audit verify FILE [--head HASH]`: check an audit trail's hash chain (docs/audit.md).

Prints `FILE:LINE: what is wrong` for every line where the chain does not hold (an edited line, a
deleted, inserted or moved one, a cut last line) and exits 1; prints the count and the head hash and
exits 0 when it holds. `--head` is a head printed earlier and kept elsewhere: the trail must still
contain it, so lines removed at its end are found too. Exit 2: the file cannot be read, or a bad --head.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from talon_opa.engine import audit_chain

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
    try:
        report = audit_chain.verify(audit_chain.read_lines(path), anchor=head)
    except OSError as e:
        print(f"error: cannot read the audit trail {path}: {e.strerror}", file=sys.stderr)
        return EXIT_INVALID
    if not report.intact:
        for problem in report.problems:
            print(f"{path}:{problem.line}: {problem.message}")
        print(
            f"error: {path} does not verify: {len(report.problems)} problem(s) in {report.lines} line(s)",
            file=sys.stderr,
        )
        return EXIT_BROKEN
    for line, dropped in report.gaps:
        print(
            f"warning: {path}:{line}: {dropped} alert(s) not recorded here (the audit buffer was full)", file=sys.stderr
        )
    text = f"{path}: intact, {report.lines} line(s), {report.alerts} alert(s), head {report.head}"
    if head and report.anchor_line is not None:
        text += f"; the anchored head is line {report.anchor_line}, {report.lines - report.anchor_line} line(s) since"
    print(text)
    return EXIT_OK
