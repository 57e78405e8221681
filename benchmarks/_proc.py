"""What /proc (Linux) says of a process a benchmark measures: CPU seconds, children, resident memory."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def cpu_s(pid: int, waited: bool = False) -> float:
    """User + system CPU seconds of a process (all its threads), with those of the children it waited for when
    `waited` (e.g. `opa check`); 0 when it is gone."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11 : 15 if waited else 13]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def children(pid: int) -> list[int]:
    """The live children of a process (of any of its threads)."""
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


def status_mb(pid: int, field: str = "VmHWM") -> float | None:
    """A memory field of /proc/PID/status in MiB (VmHWM: peak resident set; VmRSS: now); None when gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return None
