"""Rules → bundle, and the watcher that reloads them.

`build` runs the whole pipeline (load, merge, validate, generate Rego, write the bundle, `opa check
--strict`); nothing goes live until it passes and a fresh OPA has activated the bundle (see
opa_supervisor). The watcher polls the rules files: path, resolved target (symlinks followed, so a
ConfigMap's `..data` swap is seen), inode, mtime and size; a change that has settled triggers a reload.
A bad reload is logged with every problem's file:line:column and field, counted, and the old rules keep
acting. Unlike Talon, creating, replacing or renaming a file counts as a change too, and an edit that is
still being written (truncate then write) is only read once it has settled.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import shutil
import tarfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine import logs
from engine.errors import RuleProblem, RulesError
from translator import bundle, rego
from translator import rules as rules_loader
from translator.model import RuleSet
from translator.validate import RegistryLike

log = logs.get("rules")

_SEQ = itertools.count(1)

Signature = tuple[tuple[object, ...], ...]


@dataclass(frozen=True, slots=True)
class Built:
    """A validated bundle on disk and what it was built from."""

    ruleset: RuleSet
    revision: str
    path: Path
    warnings: tuple[RuleProblem, ...] = ()

    @property
    def notifiers(self) -> tuple[str, ...]:
        """Every notifier a rule names, in order of first use."""
        return tuple(dict.fromkeys(n for r in self.ruleset.rules for n in r.notifiers))


def build(
    paths: Sequence[str],
    registry: RegistryLike,
    workdir: Path,
    native: Sequence[Path] = (),
    signing_key: Path | None = None,
) -> Built:
    """Load and validate the rules, write and check their bundle under `workdir` (blocking: run in a thread).

    With a signing key the bundle is a signed .tar.gz, else a directory. Raises RulesError (every problem
    with its place) or a TalonError from the bundle step.
    """
    ruleset, warnings = rules_loader.load_ruleset_with_warnings(paths, registry)
    files = rego.generate(ruleset)
    suffix = ".tar.gz" if signing_key is not None else ""
    out = workdir / f"bundle-{os.getpid()}-{next(_SEQ)}{suffix}"
    try:
        revision = bundle.build_bundle(files, out, native=list(native), signing_key=signing_key, check=True)
    except BaseException:
        remove(out)
        raise
    return Built(ruleset, revision, out, tuple(warnings))


def remove(path: Path) -> None:
    """Delete a bundle (a directory or a tarball); missing is fine."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def pack(path: Path) -> bytes:
    """A bundle as the .tar.gz OPA downloads from a bundle service (what a sidecar polls)."""
    if path.is_file():
        return path.read_bytes()  # already a (signed) tarball
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            tar.add(f, arcname=f.relative_to(path).as_posix(), recursive=False)
    return buf.getvalue()


def log_problems(error: RulesError, *, reload: bool) -> None:
    """One log line per problem, with its place and field, then a summary."""
    for p in error.problems:
        log.error(
            "invalid rules",
            extra={
                "file": p.where.file,
                "line": p.where.line,
                "column": p.where.column,
                "rule": p.rule,
                "action": p.action,
                "field": p.field,
                "error": p.message,
                "hint": p.hint,
                "where": str(p),
            },
        )
    log.error(
        "rules rejected" if reload else "rules invalid, not starting",
        extra={"problems": len(error.problems), "kept": "the previous rules stay active" if reload else ""},
    )


def signature(paths: Sequence[str]) -> Signature:
    """What identifies the current content of each file without reading it."""
    out: list[tuple[object, ...]] = []
    for p in paths:
        try:
            real = os.path.realpath(p)
            st = os.stat(p)
        except OSError as e:
            out.append((p, "missing", e.errno))
            continue
        out.append((p, real, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class RulesWatcher:
    """Polls the rules files and calls `on_change` once a change has settled."""

    def __init__(self, paths: Sequence[str], interval: float, on_change: Callable[[], Awaitable[object]]) -> None:
        self.paths = list(paths)
        self.interval = interval
        self.on_change = on_change
        self._last = signature(self.paths)

    async def run(self) -> None:
        settle = min(0.25, self.interval / 2)
        while True:
            await asyncio.sleep(self.interval)
            sig = signature(self.paths)
            if sig == self._last:
                continue
            await asyncio.sleep(settle)
            again = signature(self.paths)
            if again != sig:
                continue  # still being written: look again next round
            self._last = again
            log.info("rules files changed", extra={"files": self.paths})
            await self.on_change()
