"""A Go sender (tests/harness/gosender/main.go): alerts posted by Go's net/http client, as Falcosidekick's
webhook output posts them (Falcosidekick itself cannot be built here, tools/README.md). Built with the local Go
toolchain, standard library only, into the tools cache (keyed by the source's hash), on first use."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent / "gosender" / "main.go"


def binary() -> Path:
    cache = Path(os.environ.get("TALON_OPA_CACHE") or Path.home() / ".cache" / "talon-opa")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    out = cache / "bin" / f"gosender-{digest}" / "gosender"
    if out.exists():
        return out
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("the Go toolchain is needed to build tests/harness/gosender (go on PATH)")
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOCACHE": str(cache / "gobuild")}
    tmp = out.with_suffix(".tmp")
    subprocess.run([go, "build", "-trimpath", "-o", str(tmp), str(SOURCE)], env=env, check=True, cwd=SOURCE.parent)
    tmp.rename(out)
    return out


def send(url: str, n: int, workers: int, header: str = "", value: str = "") -> dict[str, Any]:
    """Post `n` alerts (pods gosender-0...) with `workers` keep-alive senders; the sender's summary."""
    cmd = [str(binary()), "-url", url, "-n", str(n), "-workers", str(workers), "-header", header, "-value", value]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary
