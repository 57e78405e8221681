"""Keeps an OPA deciding: the child OPA on the translated bundle (default) or a sidecar.

Child mode: `opa run --server` on a unix socket (or loopback TCP) with a token. If the child dies it is
restarted on the current bundle (alerts wait in the queue meanwhile). A new bundle is swapped in
blue/green: a second child starts on it and must activate it (full validation by OPA itself) before
decisions move to it; the old child then stops. A decision is thus made entirely with the old rules or
entirely with the new ones, and a bundle OPA refuses never goes live.

Sidecar mode (`opa.url`): the engine serves its current bundle at `GET /v1/bundles/talon.tar.gz` (ETag =
revision, the intake's token required when set) and the sidecar polls it, activating each new revision
atomically. Sidecar config (`opa run --server --config-file`):

    services: {engine: {url: "http://127.0.0.1:2803", credentials: {bearer: {token: "<auth.token>"}}}}
    bundles: {talon: {service: engine, resource: /v1/bundles/talon.tar.gz,
                      polling: {min_delay_seconds: 1, max_delay_seconds: 2}}}

Readiness waits until the sidecar reports the revision the engine built; until then decisions are retried.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from talon_opa.core import config, logs
from talon_opa.core.backoff import Backoff, Policy
from talon_opa.core.errors import OpaError
from talon_opa.engine.reload import DROP_DECISION_PATH
from talon_opa.opa.process import OpaProcess, new_token

# not imported here at run time: engine/prestart.py spawns OPA before aiohttp and the metrics are imported
if TYPE_CHECKING:
    from talon_opa.engine.metrics import Metrics
    from talon_opa.opa.client import Endpoint

log = logs.get("opa")

WATCH_INTERVAL_S = 0.2
RESTART_BACKOFF_MAX_S = 5.0


def child_token(cfg: config.Opa) -> str:
    """The token every request to the child (or the sidecar) carries; empty when none is used."""
    # OpaProcess loads its token policy as a second, unsigned bundle, which OPA refuses once a
    # verification key is set: a verifying child relies on its private unix socket instead
    verifying_child = bool(cfg.verification_key) and not cfg.url
    return "" if verifying_child else (cfg.token or ("" if cfg.url else new_token()))


def child_process(cfg: config.Opa, bundle: Path, workdir: Path, n: int, token: str) -> OpaProcess:
    """The engine's `n`th child OPA on `bundle` (not started), as `opa.*` configures it."""
    extra: tuple[str, ...] = ()
    if cfg.decision_logs:
        extra = ("--set=decision_logs.console=true",)
    elif cfg.decision_ids:
        extra = ("--set=decision_logs.console=true", f"--set=decision_logs.drop_decision={DROP_DECISION_PATH}")
    return OpaProcess(
        bundle=bundle,
        unix_socket=cfg.unix_socket,
        token=token or None,
        log_path=workdir / f"opa-{n}.log",
        extra_args=extra,
        env={"GOGC": str(cfg.gc_percent)} if cfg.gc_percent else {},
        verification_key=Path(cfg.verification_key) if cfg.verification_key else None,
    )


class OpaSupervisor:
    """The OPA decisions come from; `endpoint()` is always the current one.

    `spawned`: a child already spawned on the first bundle (engine/prestart.py) that `start` adopts.
    """

    def __init__(self, cfg: config.Opa, workdir: Path, metrics: Metrics, *, spawned: OpaProcess | None = None) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.metrics = metrics
        self.token = (spawned.token or "") if spawned is not None else child_token(cfg)
        self.revision = ""  # the revision of the bundle decisions should come from
        self.bundle: Path | None = None
        self.restarts = 0
        self._proc: OpaProcess | None = None
        self._endpoint: Endpoint | None = None
        self._lock = asyncio.Lock()
        self._children = 1 if spawned is not None else 0
        self._spawned = spawned
        self._stopping = False

    @property
    def external(self) -> bool:
        return bool(self.cfg.url)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def endpoint(self) -> Endpoint:
        if self._endpoint is None:
            raise OpaError("OPA is not started yet", hint="wait for /readyz")
        return self._endpoint

    async def start(self, bundle: Path, revision: str) -> None:
        """Start deciding from this bundle (child mode: start the child and wait until it is ready)."""
        async with self._lock:
            self.bundle, self.revision = bundle, revision
            if self.external:
                from talon_opa.opa.client import Endpoint

                self._endpoint = Endpoint.for_url(self.cfg.url, self.token)
                return
            spawned, self._spawned = self._spawned, None
            if spawned is not None and spawned.bundle == bundle:
                await spawned.wait_ready(self.cfg.ready_timeout_seconds)  # OpaError: it stopped it
                self._proc, self._endpoint = spawned, self._open(spawned)
            else:
                if spawned is not None:
                    await spawned.stop()
                self._proc, self._endpoint = await self._spawn(bundle)
        log.info("opa started", extra={"revision": revision, "pid": self.pid, "address": self._proc.addr})

    async def swap(self, bundle: Path, revision: str) -> None:
        """Move decisions to a new bundle atomically; OpaError (old bundle still in use) if OPA refuses it."""
        async with self._lock:
            if self.external:
                self.bundle, self.revision = bundle, revision
                return
            proc, endpoint = await self._spawn(bundle)  # raises: nothing changed
            old_proc, old_endpoint = self._proc, self._endpoint
            self._proc, self._endpoint = proc, endpoint
            self.bundle, self.revision = bundle, revision
        log.info("opa bundle swapped", extra={"revision": revision, "pid": proc.pid})
        await self._retire(old_proc, old_endpoint)

    async def _spawn(self, bundle: Path) -> tuple[OpaProcess, Endpoint]:
        self._children += 1
        proc = child_process(self.cfg, bundle, self.workdir, self._children, self.token)
        await proc.start(ready_within=self.cfg.ready_timeout_seconds)
        return proc, self._open(proc)

    @staticmethod
    def _open(proc: OpaProcess) -> Endpoint:
        from talon_opa.opa.client import Endpoint

        return Endpoint.open(proc.base_url, proc.connector(), proc.headers())

    async def _retire(self, proc: OpaProcess | None, endpoint: Endpoint | None) -> None:
        """Let in-flight decisions on the old child finish (bounded by their timeout), then stop it."""
        if endpoint is not None:
            deadline = asyncio.get_running_loop().time() + self.cfg.timeout_seconds
            while endpoint.in_flight and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - a counter, polled briefly
                await asyncio.sleep(0.01)
            await endpoint.close()
        if proc is not None:
            await proc.stop()

    async def watch(self) -> None:
        """Restart the child whenever it dies (runs until cancelled)."""
        if self.external:
            return
        backoff = Backoff(Policy(0.1, RESTART_BACKOFF_MAX_S))
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if self._stopping or self._proc is None or self._proc.running:
                continue
            async with self._lock:
                if self._stopping or self._proc is None or self._proc.running or self.bundle is None:
                    continue
                dead = self._proc
                self.metrics.opa_errors.labels(kind="exited").inc()
                log.error(
                    "opa exited, restarting it",
                    extra={"pid": dead.pid, "revision": self.revision, "log": dead.log_tail(5)},
                )
                try:
                    proc, endpoint = await self._spawn(self.bundle)
                except OpaError as e:
                    self.metrics.opa_errors.labels(kind="restart_failed").inc()
                    log.error("opa restart failed", extra={"error": str(e), "retry_in_s": backoff.delay})
                    await backoff.sleep()
                    continue
                old_endpoint = self._endpoint
                self._proc, self._endpoint = proc, endpoint
                self.restarts += 1
                backoff.reset()
            log.info("opa restarted", extra={"pid": proc.pid, "revision": self.revision, "restarts": self.restarts})
            if old_endpoint is not None:
                await old_endpoint.close()
            await dead.stop()

    async def stop(self) -> None:
        self._stopping = True
        async with self._lock:
            proc, endpoint = self._proc, self._endpoint
            self._proc = None
            spawned, self._spawned = self._spawned, None
        if spawned is not None:  # never started: the engine failed before
            await spawned.stop()
        if endpoint is not None:
            with contextlib.suppress(Exception):
                await endpoint.close()
        if proc is not None:
            await proc.stop()
