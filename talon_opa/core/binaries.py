"""Where the real component binaries are: an explicit path, the repo's tools cache, or PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from talon_opa.core.errors import TalonError

REPO = Path(__file__).resolve().parents[2]


def find(name: str) -> str:
    """Path of a component binary (opa, etcd, kube-apiserver, kwok, jaeger, nats-server...).

    Order: $TALON_OPA_<NAME>_BIN, then `tools/path NAME` of this checkout, then PATH.
    """
    env = os.environ.get(f"TALON_OPA_{name.upper().replace('-', '_')}_BIN")
    if env:
        return env
    tool = REPO / "tools" / "path"
    if tool.exists():
        done = subprocess.run([str(tool), name], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return done.stdout.strip()
    found = shutil.which(name)
    if found:
        return found
    raise TalonError(
        f"{name} binary not found",
        hint=f"run `make tools` (or tools/build) in the repo, put {name} on PATH, "
        f"or set TALON_OPA_{name.upper().replace('-', '_')}_BIN",
    )
