"""Built bundles kept by content hash (`opa.cache_dir`), so a restart on unchanged rules skips translating them.

The key is a sha256 over everything the bundle and its summary depend on: the rules files' bytes, the
user's native Rego, the caps data written into the bundle, the signing key, the plugins registered and the
code of talon-opa itself (every `.py` and `.rego` of the package, so an upgrade or an edit never reuses an
old bundle). An entry is a folder `<key>/` holding the bundle as a `.tar.gz` and `meta.json` (its revision,
the tarball's sha256 and what the engine needs of the rules: names, notifiers, plugins, warnings).

Nothing read from the cache is trusted blindly: an entry whose meta is unreadable, of another format or
key, or whose tarball does not hash to what the meta says is deleted and the bundle rebuilt. A signed
bundle stays signed with the same key (it is part of the key) and the child OPA verifies it as always.
An entry is written to a temporary folder and renamed into place, so a crash leaves no half entry.
A cache that cannot be written (read-only disk) is logged once and then ignored: start-up never fails on it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import talon_opa
from talon_opa.core import logs
from talon_opa.core.errors import RuleProblem, Where
from talon_opa.plugins.registry import Registry

log = logs.get("rules")

FORMAT = 1  # of meta.json; a new format never reads an old entry
KEEP = 8  # entries kept (most recently used first); older ones are deleted when a new one is stored
BUNDLE = "bundle.tar.gz"
META = "meta.json"


@dataclass(frozen=True, slots=True)
class Entry:
    """A bundle found in the cache: its tarball (verified against meta) and meta's `summary` and warnings."""

    bundle: Path
    revision: str
    summary: Mapping[str, Any]
    warnings: tuple[RuleProblem, ...]


@functools.cache
def code_fingerprint() -> str:
    """sha256 of PyYAML's version and every .py and .rego file of the talon_opa package (once per process)."""
    root = Path(talon_opa.__file__).resolve().parent
    h = hashlib.sha256()
    _part(h, yaml.__version__.encode())  # the YAML parser reads the rules
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".rego") and p.is_file()):
        _part(h, path.relative_to(root).as_posix().encode())
        _part(h, path.read_bytes())
    return h.hexdigest()


def registry_fingerprint(registry: Registry) -> str:
    """The plugins by kind and name, with the class each name maps to (none of them imported)."""
    tables = {"actionners": registry.actionners, "outputs": registry.outputs, "notifiers": registry.notifiers}
    return json.dumps({kind: {name: t.origin(name) for name in t} for kind, t in tables.items()}, sort_keys=True)


def cache_key(
    rules: Sequence[str],
    registry: Registry,
    *,
    native: Mapping[str, str],
    data_files: Mapping[str, str],
    signing_key: Path | None,
) -> str | None:
    """The key of a bundle built from these inputs; None when a rules file cannot be read (no caching)."""
    h = hashlib.sha256()
    _part(h, f"talon-opa bundle cache {FORMAT}".encode())
    _part(h, code_fingerprint().encode())
    _part(h, registry_fingerprint(registry).encode())
    try:
        for path in rules:
            _part(h, path.encode())
            _part(h, Path(path).read_bytes())
        _part(h, signing_key.read_bytes() if signing_key is not None else b"")
    except OSError:
        return None  # the loader reports the missing file with its own message
    for rel in sorted(native):
        _part(h, rel.encode())
        _part(h, native[rel].encode())
    for rel in sorted(data_files):  # the config written into the bundle as data (caps, approvals, undo)
        _part(h, rel.encode())
        _part(h, data_files[rel].encode())
    return h.hexdigest()


def _part(h: Any, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class BundleCache:
    """A folder of cached bundles; every failure reading it is a miss, every failure writing it is logged."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._write_failed = False

    def get(self, key: str) -> Entry | None:
        """The verified entry for `key`, or None (a damaged entry is deleted)."""
        folder = self.root / key
        if not folder.is_dir():
            return None
        try:
            meta = json.loads((folder / META).read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("key") != key:
                raise ValueError("another format or key")
            bundle = folder / BUNDLE
            if _sha256_file(bundle) != meta["bundle_sha256"]:
                raise ValueError("the bundle does not match its hash")
            warnings = tuple(problem_of(w) for w in meta["warnings"])
            summary = meta["summary"]
            revision = meta["revision"]
            if not isinstance(summary, dict) or not isinstance(revision, str):
                raise ValueError("summary or revision of the wrong type")
        except (OSError, ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
            log.warning("bundle cache entry unusable, rebuilding it", extra={"entry": str(folder), "error": str(e)})
            shutil.rmtree(folder, ignore_errors=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(folder)  # most recently used: kept longest
        return Entry(bundle, revision, summary, warnings)

    def put(
        self,
        key: str,
        bundle: Path,
        revision: str,
        summary: Mapping[str, Any],
        warnings: Sequence[RuleProblem],
    ) -> None:
        """Store a copy of the bundle tarball and its meta under `key`; never raises."""
        if self._write_failed:
            return
        meta = {
            "format": FORMAT,
            "key": key,
            "revision": revision,
            "bundle_sha256": _sha256_file(bundle),
            "summary": dict(summary),
            "warnings": [problem_doc(w) for w in warnings],
        }
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".entry-", dir=self.root))
            try:
                shutil.copyfile(bundle, tmp / BUNDLE)
                (tmp / META).write_text(json.dumps(meta, sort_keys=True), encoding="utf-8")
                final = self.root / key
                try:
                    os.rename(tmp, final)
                except OSError:
                    if not final.is_dir():
                        raise
                    # another engine stored the same key meanwhile (a damaged entry is deleted when read)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self._prune()
        except OSError as e:
            self._write_failed = True
            log.warning(
                "bundle cache not writable, start-up will translate the rules every time",
                extra={"cache_dir": str(self.root), "error": str(e), "hint": "make opa.cache_dir writable"},
            )

    def _prune(self) -> None:
        entries = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[KEEP:]:
            shutil.rmtree(old, ignore_errors=True)


def problem_doc(p: RuleProblem) -> dict[str, object]:
    return {
        "file": p.where.file,
        "line": p.where.line,
        "column": p.where.column,
        "message": p.message,
        "hint": p.hint,
        "rule": p.rule,
        "action": p.action,
        "field": p.field,
    }


def problem_of(doc: Any) -> RuleProblem:
    if not isinstance(doc, dict):
        raise ValueError("a warning is not an object")
    where = Where(str(doc["file"]), int(doc["line"]), int(doc["column"]))
    return RuleProblem(
        where,
        str(doc["message"]),
        hint=str(doc["hint"]),
        rule=str(doc["rule"]),
        action=str(doc["action"]),
        field=str(doc["field"]),
    )
