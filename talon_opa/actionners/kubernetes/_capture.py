"""What the capture actionners share: a capture container that runs, a command in it, the file copied out.

tcpdump runs in an ephemeral container added to the alert's pod (the `ephemeralcontainers`
subresource); sysdig in a privileged Job's pod on the same node. Both then run the capture for its
duration through exec, `cat` the file (bounded) and remove it. The file has a name unique to the
capture container, so a capture never reads a stale or a concurrent one.
"""

from __future__ import annotations

import asyncio
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from talon_opa.actionners.kubernetes import _exec
from talon_opa.actionners.kubernetes._pods import PodRef
from talon_opa.core.errors import StepFailed
from talon_opa.core.kube import KubeClient

START_SECONDS = 20.0  # Talon waits this long for the capture container to run
POLL_SECONDS = 0.25
_SUFFIX = string.ascii_lowercase + string.digits
T = TypeVar("T")


async def poll(check: Callable[[], Awaitable[T | None]], within: float = START_SECONDS) -> T | None:
    """`check()` until it returns a value, at most `within` seconds; None when it never did."""
    deadline = time.monotonic() + within
    while True:
        found = await check()
        if found is not None or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(POLL_SECONDS)


def suffix() -> str:
    """5 random characters, as Talon names its capture containers and Jobs."""
    return "".join(secrets.choice(_SUFFIX) for _ in range(5))


def container_state(statuses: Any, name: str) -> Mapping[str, Any] | None:
    """The `state` of the container `name` in a list of container statuses; None when not reported."""
    for status in statuses or []:
        if status.get("name") == name:
            state: Mapping[str, Any] = status.get("state") or {}
            return state
    return None


async def wait_running(kube: KubeClient, ref: PodRef, container: str, *, ephemeral: bool) -> None:
    """Poll the pod until `container` runs; fail with the reason it waits or ended, or after START_SECONDS."""
    key = "ephemeralContainerStatuses" if ephemeral else "containerStatuses"
    deadline = time.monotonic() + START_SECONDS
    last = "not reported yet"
    while True:
        pod = await kube.get(ref.path)
        state = container_state((pod.get("status") or {}).get(key), container)
        if state is not None:
            if "running" in state:
                return
            if "terminated" in state:
                t = state["terminated"]
                raise StepFailed(
                    f"the capture container '{container}' of {ref} ended before the capture "
                    f"({t.get('reason', '')} {t.get('message', '')}, exit code {t.get('exitCode')})".strip(),
                    hint="check the capture image and the pod's security policy",
                )
            waiting = state.get("waiting") or {}
            last = f"waiting: {waiting.get('reason', '')} {waiting.get('message', '')}".strip()
        if time.monotonic() >= deadline:
            raise StepFailed(
                f"the capture container '{container}' of {ref} did not run within {START_SECONDS:.0f}s ({last})",
                hint="check that the node can pull the image and that the pod is running",
            )
        await asyncio.sleep(POLL_SECONDS)


async def capture(
    kube: KubeClient, ref: PodRef, container: str, command: str, path: str, *, duration: int, max_bytes: int
) -> tuple[bytes, bool]:
    """Run the capture `command` (sh -c) in `container`, then copy `path` out (at most max_bytes) and remove it."""
    ran = await _exec.run(kube, ref, container, ["sh", "-c", command], idle=duration + _exec.EXEC_IDLE_SECONDS)
    if ran.failed:
        raise StepFailed(ran.failure("the capture") + f" ({ref})", hint="see the capture's stderr")
    got = await _exec.run(kube, ref, container, ["cat", "--", path], max_stdout=max_bytes)
    if got.failed:
        raise StepFailed(got.failure(f"cat {path!r}") + f" ({ref})", hint="the capture wrote no file")
    cleanup = await _exec.run(kube, ref, container, ["rm", "-f", "--", path])
    if cleanup.failed:
        raise StepFailed(cleanup.failure(f"rm {path!r}") + f" ({ref})", hint="the capture file is left in place")
    return got.output.stdout, got.output.truncated
