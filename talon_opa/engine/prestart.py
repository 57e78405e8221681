"""What start-up does first: the rules built into a bundle, and the child OPA spawned on it.

`talon-opa server` runs this before it imports the rest of the engine (metrics, traces, intake, workers),
so the child OPA starts and activates the bundle while Python is still importing: the engine then only
waits for what is left of OPA's start (docs/performance.md). An `Engine` built without a `Prestart` (tests,
benchmarks) does the same steps itself in `start`, one after the other. This module imports none of the
engine's serving parts: keep it that way, or OPA starts later.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import tempfile
from dataclasses import dataclass
from pathlib import Path

from talon_opa.catalog import default_registry
from talon_opa.core import config, logs, secrets
from talon_opa.core.errors import RulesError, TalonError
from talon_opa.engine import reload
from talon_opa.engine.bundle_cache import BundleCache
from talon_opa.engine.opa_supervisor import child_process, child_token
from talon_opa.opa.process import OpaProcess
from talon_opa.plugins.registry import Registry

log = logs.get("engine")


@dataclass
class Workdir:
    """Where the engine writes its bundles and OPA logs: `opa.bundle_dir`, else a temporary folder."""

    path: Path
    tmp: tempfile.TemporaryDirectory[str] | None

    @classmethod
    def of(cls, cfg: config.Config) -> Workdir:
        if cfg.opa.bundle_dir:
            path = Path(cfg.opa.bundle_dir)
            path.mkdir(parents=True, exist_ok=True)
            return cls(path, None)
        tmp = tempfile.TemporaryDirectory(prefix="talon-opa-engine-")
        return cls(Path(tmp.name), tmp)

    def cleanup(self) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()


@dataclass
class Prestart:
    """The first bundle, built, and the child OPA spawned on it (not yet waited for; None with a sidecar)."""

    registry: Registry
    workdir: Workdir
    cache: BundleCache | None
    built: reload.Built
    opa: OpaProcess | None


def bundle_cache(cfg: config.Config) -> BundleCache | None:
    return BundleCache(Path(cfg.opa.cache_dir)) if cfg.opa.cache_dir else None


def announce(cfg: config.Config) -> None:
    """Before anything is logged: the config's secrets are scrubbed; unknown keys are reported."""
    secrets.KNOWN.add(cfg.secret_values())
    for key in cfg.unknown_keys:
        log.warning("unknown config key ignored", extra={"key": key})


def build(cfg: config.Config, registry: Registry, workdir: Path, cache: BundleCache | None) -> reload.Built:
    """The rules files built into a validated bundle under `workdir` (blocking); RulesError, TalonError."""
    return reload.build(
        list(cfg.rules_files),
        registry,
        workdir,
        [Path(p) for p in cfg.opa.rego],
        Path(cfg.opa.signing_key) if cfg.opa.signing_key else None,
        cfg.caps,
        cfg.approvals,
        cfg.undo,
        cache=cache,
        child_checks=not cfg.opa.url,  # a child activates each bundle before it goes live
    )


async def build_async(cfg: config.Config, registry: Registry, workdir: Path, cache: BundleCache | None) -> reload.Built:
    """`build` off the event loop (start-up of an engine without a Prestart, and reloads)."""
    return await asyncio.to_thread(functools.partial(build, cfg, registry, workdir, cache))


def report(cfg: config.Config, built: reload.Built) -> None:
    """The rules' warnings, and a loud line when there is no rule at all."""
    for w in built.warnings:
        log.warning("rules warning", extra={"where": str(w)})
    if not built.rules:
        log.warning(
            "NO RULES: the rules files hold no rule, every response is off", extra={"files": list(cfg.rules_files)}
        )


def prestart(cfg: config.Config) -> Prestart:
    """Build the first bundle and spawn the child OPA on it; RulesError or TalonError when the rules or the
    bundle are refused (nothing is left running then)."""
    announce(cfg)
    registry = default_registry()
    workdir = Workdir.of(cfg)
    cache = bundle_cache(cfg)
    # what was imported so far lives as long as the engine: the collector need not walk it again (the
    # build's full collection, and every one after)
    gc.freeze()
    try:
        built = build(cfg, registry, workdir.path, cache)
    except BaseException:
        workdir.cleanup()
        raise
    report(cfg, built)
    opa = None
    if not cfg.opa.url:
        opa = child_process(cfg.opa, built.path, workdir.path, 1, child_token(cfg.opa))
        opa.spawn()
    return Prestart(registry, workdir, cache, built, opa)


def prestart_or_log(cfg: config.Config) -> Prestart | None:
    """`prestart`, or None once the reason the engine cannot start is logged (`talon-opa server` exits 1)."""
    try:
        return prestart(cfg)
    except RulesError as e:
        reload.log_problems(e, reload=False)
    except TalonError as e:
        log.error("engine did not start", extra={"error": str(e)})
    return None
