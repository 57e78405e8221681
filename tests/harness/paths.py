"""Where the repo and the shared samples are: `../shared` beside the clone (as CI lays it out),
$TALON_OPA_SHARED, or the workplace's /work/shared."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _shared() -> Path:
    env = os.environ.get("TALON_OPA_SHARED")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared", Path("/work/shared")]
    for c in candidates:
        if (c / "samples" / "alerts").is_dir():
            return c
    raise RuntimeError(
        f"the shared samples are not found in {', '.join(map(str, candidates))}: "
        "put shared/ beside the clone or set TALON_OPA_SHARED"
    )


SHARED = _shared()
SAMPLES = SHARED / "samples"
ALERTS = SAMPLES / "alerts"
SEED_RULES = SAMPLES / "rules" / "seed-scenarios.yaml"
