"""Python's cyclic garbage collector paused while the translator builds large, short-lived object graphs."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while rules load, back as it was after (even on error).

    Loading builds millions of objects (YAML nodes and marks, Values, raw items) that reference counting
    frees; while they are alive, each full collection walks all of them, which at 10,000 rules cost more
    than the loading itself (and half of generating the Rego). The collector is process-wide: other
    threads run without it for that time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
