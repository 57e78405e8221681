"""Assemble an OPA bundle (a directory or a .tar.gz, optionally signed) from generated Rego and data.

The bundle holds the generated files, every non-test `.rego` of the hand-written library in
`policies/` (same layout), the user's native Rego, and a `.manifest` whose `revision` is a content
hash: the same input always gives the same revision. `pack` is the one `.tar.gz` writer: for
`rules translate -o FILE.tar.gz` and for the bundle the engine serves to a sidecar OPA. Signing is done
by the real `opa sign`, and `check_bundle` runs `opa check --strict` on the result.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

from talon_opa.core import binaries
from talon_opa.core.errors import TalonError
from talon_opa.translator import rego

POLICIES = Path(__file__).resolve().parents[1] / "policies"  # shipped in the package (package data)
ROOTS = ("talon",)
CAPS_DATA_FILE = "talon/caps/data.json"  # data.talon.caps: the caps policy's config (docs/caps.md)
APPROVALS_DATA_FILE = "talon/approvals/data.json"  # data.talon.approvals: which steps wait (docs/approvals.md)
UNDO_DATA_FILE = "talon/undo/data.json"  # data.talon.undo: the undo TTLs (docs/undo.md)
NATIVE_DIR = "native"  # where the user's own Rego goes inside the bundle
OPA_TIMEOUT_S = 300.0
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
GZIP_LEVEL = 6  # zlib's default; at 10,000 rules level 9 packed in 1.2 s instead of 0.7 s for 12% fewer bytes


class BundleError(TalonError):
    """The bundle could not be built, signed or checked; carries OPA's own message."""


def is_archive(out: Path) -> bool:
    return out.name.endswith(_ARCHIVE_SUFFIXES)


def is_test_rego(path: Path) -> bool:
    return path.name.endswith("_test.rego")


def library_files(library: Path = POLICIES) -> dict[str, str]:
    """Every non-test `.rego` of the library, keyed by its path relative to the library folder."""
    if not library.is_dir():
        return {}
    return {
        p.relative_to(library).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted(library.rglob("*.rego"))
        if p.is_file() and not is_test_rego(p)
    }


def native_files(paths: Iterable[Path]) -> dict[str, str]:
    """The user's native Rego (files or folders, tests excluded), placed under `native/` in the bundle."""
    out: dict[str, str] = {}
    for given in paths:
        if given.is_dir():
            found = [
                (p, f"{given.resolve().name}/{p.relative_to(given).as_posix()}") for p in sorted(given.rglob("*.rego"))
            ]
        elif given.is_file():
            found = [(given, given.name)]
        else:
            raise BundleError(f"native Rego {given}: no such file or folder", hint="pass a .rego file or a folder")
        for path, rel in found:
            if is_test_rego(path):
                continue  # tests belong to `rules test`, not to the bundle
            key = f"{NATIVE_DIR}/{rel}"
            if key in out:
                raise BundleError(
                    f"native Rego {path}: another file already maps to {key}", hint="rename one of the two files"
                )
            out[key] = path.read_text(encoding="utf-8")
    return out


def content_revision(files: Mapping[str, str]) -> str:
    """sha256 over the files sorted by path (path and content, length-prefixed): same input, same revision."""
    h = hashlib.sha256()
    for path in sorted(files):
        for part in (path.encode(), files[path].encode()):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
    return h.hexdigest()


def manifest(revision: str) -> dict[str, object]:
    return {"revision": revision, "roots": list(ROOTS), "rego_version": 1}


def assemble(
    files: Mapping[str, str], *, library: Path = POLICIES, native: Sequence[Path] = ()
) -> tuple[dict[str, str], str]:
    """All files of the bundle (without `.manifest`) and their revision; overlapping paths are an error."""
    merged: dict[str, str] = {}
    own = native_files(native)
    for origin, part in (
        ("generated", dict(files)),
        (f"library {library}", library_files(library)),
        ("native Rego", own),
        # the plan finds native rules through data.talon.native (docs/rego.md), never by enumeration
        ("native index", rego.native_index(own.values(), generated=files)),
    ):
        for path, text in part.items():
            _check_rel(path)
            if path in merged:
                raise BundleError(
                    f"bundle path {path} from the {origin} is already taken",
                    hint="generated, library and native files must not overlap",
                )
            merged[path] = text
    return merged, content_revision(merged)


def build_bundle(
    files: Mapping[str, str],
    out: Path,
    *,
    signing_key: Path | None = None,
    library: Path = POLICIES,
    native: Sequence[Path] = (),
    check: bool = True,
    unchecked: Collection[str] = (),
) -> str:
    """Write the bundle to `out` (a directory, or a `.tar.gz`), sign it if asked; return its revision.

    `files` maps bundle-relative paths to the generated Rego and data. The output replaces a previous
    bundle atomically (never a foreign, non-empty folder). With `check`, `opa check --strict` must pass
    on every file but the `unchecked` ones (the engine leaves out what it generated: OPA compiles those
    when it activates the bundle, and checking 10,000 generated modules twice doubled start-up).
    """
    merged, revision = assemble(files, library=library, native=native)
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".talon-bundle-", dir=out.parent) as tmp:
        if check and unchecked:
            rest = {path: text for path, text in merged.items() if path not in unchecked}
            write_tree(rest, Path(tmp) / "checked", revision)
            check_bundle(Path(tmp) / "checked")
            check = False
        staging = Path(tmp) / "bundle"
        if is_archive(out):
            packed = Path(tmp) / "bundle.tar.gz"
            if signing_key is not None:
                write_tree(merged, staging, revision)
                sign(staging, signing_key)
                packed.write_bytes(pack(staging))
            else:  # straight from memory: 10,000 rules are 10,000 files not written and read back
                packed.write_bytes(pack_files(tree_files(merged, revision)))
            if check:
                check_bundle(packed)
            os.replace(packed, out)
        else:
            if signing_key is not None:
                # OPA names a directory bundle's files by the path it was loaded from, so a signed
                # directory only verifies at the exact path it was signed at: sign tarballs only.
                raise BundleError(
                    f"cannot sign the directory bundle {out}", hint="write a signed bundle as FILE.tar.gz"
                )
            write_tree(merged, staging, revision)
            if check:
                check_bundle(staging)
            _replace_dir(staging, out)
    return revision


def manifest_text(revision: str) -> str:
    return json.dumps(manifest(revision), sort_keys=True) + "\n"


def tree_files(files: Mapping[str, str], revision: str) -> dict[str, bytes]:
    """The files of a bundle and its `.manifest`, as `write_tree` writes them."""
    out = {rel: text.encode() for rel, text in files.items()}
    out[".manifest"] = manifest_text(revision).encode()
    return out


def write_tree(files: Mapping[str, str], root: Path, revision: str) -> None:
    """Write the files and their `.manifest` as a bundle directory."""
    root.mkdir(parents=True)
    made: set[Path] = {root}
    for rel, text in files.items():
        path = root / rel
        if path.parent not in made:  # 10,000 rules are 10,000 files: one mkdir per folder
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_text(text, encoding="utf-8")
    (root / ".manifest").write_text(manifest_text(revision), encoding="utf-8")


def sign(root: Path, signing_key: Path) -> None:
    """Add `.signatures.json` (every file's hash, signed with the PEM private key) to a bundle directory."""
    args = ["sign", "--signing-key", str(signing_key.absolute()), "--bundle", ".", "--output-file-path", "."]
    run_opa(args, cwd=root, what="opa sign")


def pack(root: Path) -> bytes:
    """A bundle directory as the `.tar.gz` OPA loads: every file by its path under `root`, in sorted order."""
    return pack_files({p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()})


def pack_files(files: Mapping[str, bytes]) -> bytes:
    """Bundle files (path -> content) as a `.tar.gz`, in the order of their paths' parts.

    Times, owners and modes are fixed, so the same bundle always packs to the same bytes.
    """
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=GZIP_LEVEL) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for rel in sorted(files, key=lambda r: r.split("/")):
            data = files[rel]
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def check_bundle(path: Path) -> None:
    """Run `opa check --strict` on a bundle (directory or tarball); raise BundleError with OPA's message."""
    run_opa(["check", "--strict", "--bundle", str(path)], what="opa check --strict")


def read_manifest(path: Path) -> dict[str, object]:
    """The `.manifest` of a bundle directory or tarball."""
    if path.is_dir():
        data = (path / ".manifest").read_text(encoding="utf-8")
    else:
        with tarfile.open(path, "r:gz") as tar:
            member = next((m for m in tar.getmembers() if m.name.lstrip("/") == ".manifest"), None)
            f = tar.extractfile(member) if member is not None else None
            if f is None:
                raise BundleError(f"{path} has no .manifest", hint="build it with `talon-opa rules translate`")
            data = f.read().decode()
    loaded = json.loads(data)
    if not isinstance(loaded, dict):
        raise BundleError(f"{path}: .manifest is not a JSON object", hint="rebuild the bundle")
    return loaded


def run_opa(args: Sequence[str], *, what: str, cwd: Path | None = None) -> str:
    """Run the opa CLI; its combined output on success, BundleError with that output on failure."""
    cmd = [binaries.find("opa"), *args]
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=OPA_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise BundleError(f"{what} timed out after {OPA_TIMEOUT_S:.0f}s", hint="report this with the rules") from e
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise BundleError(f"{what} failed (exit {done.returncode}): {_cut(output)}", hint=_hint(what))
    return output


def _hint(what: str) -> str:
    if what == "opa check --strict":
        return "fix the Rego at the file:line OPA names (generated code: report it with the rules file)"
    if what == "opa sign":
        return "check the signing key (a PEM private key)"
    return "see OPA's message"


def _cut(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def _check_rel(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or ".." in parts or parts[-1].startswith(".manifest"):
        raise BundleError(f"bad bundle path {path!r}", hint="paths are relative, inside the bundle, not .manifest")


def _replace_dir(staging: Path, out: Path) -> None:
    """Swap the staged directory into place; only an empty folder or a previous bundle is replaced."""
    if out.exists():
        if not out.is_dir():
            raise BundleError(f"{out} exists and is not a directory", hint="choose another output path")
        if any(out.iterdir()) and not (out / ".manifest").exists():
            raise BundleError(
                f"{out} is a non-empty folder that is not a bundle", hint="choose an empty or new output folder"
            )
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)
