"""local:file — store artifacts in a folder of the talon-opa host.

The file name is Talon's key (reference §6): `<time>_<namespace>_<pod>_<name>` when the artifact names a
pod and its namespace, else `<time>_<hostname>_<name>`, else `<time>_` + the values of the other objects
(sorted by key, each followed by `_`) + `<name>`. Differences, each for safety (docs/compatibility.md):
the time is UTC (Talon wrote local time with a literal `Z`); every part is reduced to `[A-Za-z0-9._-]`
(Talon replaced only `/` in the artifact's name, so a pod name from an alert could carry `../`), and
the name is cut to the file system's limit; the file is written whole or not at all (a temporary file,
flushed, then linked under its name), and never replaces an existing file (a name taken in the same
second gets `.1`, `.2`...).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from talon_opa.core.errors import StepFailed
from talon_opa.plugins.params import param
from talon_opa.plugins.runtime import Artifact, Outcome, Output
from talon_opa.plugins.spec import Spec

TIME_FORMAT = "%Y-%m-%dT%H-%M-%SZ"  # Talon's "2006-01-02T15-04-05Z"
MAX_NAME = 200  # bytes of a file name (file systems allow 255; room for a `.N` suffix and the temporary name)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, kw_only=True, slots=True)
class FileParams:
    # Talon checks that the folder exists when the action runs, not when the rules load.
    destination: str = param(doc="existing folder where artifacts are written (mode 0600)", required=True)


def safe_part(value: str) -> str:
    """A part of a file name: every character but letters, digits, `.`, `_` and `-` becomes `_`."""
    return _UNSAFE.sub("_", value)


def file_name(artifact: Artifact, now: _dt.datetime) -> str:
    """Talon's key for the artifact, made of safe characters only (see the module docstring)."""
    objects = artifact.objects
    name = safe_part(artifact.name.replace("/", "_"))
    if objects.get("namespace") and objects.get("pod"):
        middle = f"{safe_part(objects['namespace'])}_{safe_part(objects['pod'])}_"
    elif objects.get("hostname"):
        middle = f"{safe_part(objects['hostname'])}_"
    else:
        middle = "".join(f"{safe_part(v)}_" for k, v in sorted(objects.items()) if k != "file")
    key = f"{now.strftime(TIME_FORMAT)}_{middle}{name}"
    return key.encode()[:MAX_NAME].decode(errors="ignore")


def expand(destination: str) -> str:
    """`$VAR` and `${VAR}` replaced by their value, unset ones by "" (as Go's os.ExpandEnv)."""
    return re.sub(
        r"\$\{([^}]*)\}|\$([A-Za-z0-9_]+)", lambda m: os.environ.get(m.group(1) or m.group(2) or "", ""), destination
    )


def write_new(folder: Path, name: str, data: bytes) -> Path:
    """Write `data` as a new file of `folder` (mode 0600), whole or not at all; returns its path.

    The bytes go to a temporary file of the folder, flushed to disk, then hard-linked under `name`: a link
    never replaces an existing file (nor follows a link planted there), so a taken name gets a suffix.
    """
    fd, tmp = tempfile.mkstemp(prefix=".talon-opa-", suffix=".tmp", dir=folder)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        for n in range(1000):
            target = folder / (name if n == 0 else f"{name}.{n}")
            try:
                os.link(tmp, target)
            except FileExistsError:
                continue
            return target
        raise FileExistsError(f"{folder / name} and its 999 numbered variants already exist")
    finally:
        Path(tmp).unlink(missing_ok=True)


class File(Output[FileParams]):
    spec: ClassVar[Spec[FileParams]] = Spec(
        name="local:file",
        kind="output",
        description="Write the artifact to a local folder, named <time>_<namespace>_<pod>_<name>",
        params=FileParams,
        example="""\
- action: Get the logs of the pod
  actionner: kubernetes:log
  output:
    target: local:file
    parameters:
      destination: /var/lib/talon-opa/artifacts
""",
    )

    async def store(self, artifact: Artifact, params: FileParams) -> Outcome:
        folder = Path(expand(params.destination).rstrip("/") or "/")
        name = file_name(artifact, _dt.datetime.now(_dt.UTC))
        path = await asyncio.to_thread(_store, folder, name, artifact.data)
        objects: Mapping[str, str] = {"file": path.name, "destination": str(path)}
        return Outcome("success", f"the file '{path.name}' has been copied to '{path}'", objects)


def _store(folder: Path, name: str, data: bytes) -> Path:
    if not folder.is_dir():
        raise StepFailed(
            f"folder '{folder}' does not exist",
            hint="create the folder (writable by talon-opa) or change the output's destination",
        )
    try:
        return write_new(folder, name, data)
    except OSError as e:
        raise StepFailed(
            f"cannot write the artifact into '{folder}': {e.strerror or e}",
            hint="check the folder's permissions and free space",
        ) from e
