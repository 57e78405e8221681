"""`talon-opa server`: start the engine (on its head start, cli/main.py) and its HTTP listener, drain on SIGTERM.

SIGHUP reloads the rules now (as a change of the rules files does when `watch_rules` is on).

Exit codes: 0 after a clean stop; 1 when the configuration, the rules or OPA keep the engine from
starting (the reason is logged, rules problems one per line with file:line:column and field).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from talon_opa.core import config, logs
from talon_opa.core.errors import RulesError, TalonError
from talon_opa.engine.app import create_app
from talon_opa.engine.intake import INTAKE
from talon_opa.engine.lifecycle import Engine
from talon_opa.engine.listener import Runner
from talon_opa.engine.prestart import Prestart
from talon_opa.engine.reload import log_problems

if TYPE_CHECKING:
    from talon_opa.engine.fronts import Fronts

log = logs.get("server")

GC_YOUNG_THRESHOLD = 10_000  # container objects allocated (net) between young collections; Python's default: 700


def ssl_context(tls: config.Tls) -> ssl.SSLContext | None:
    """The intake's TLS context (client certificates required when a client CA is set)."""
    if not tls.cert_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        ctx.load_verify_locations(cafile=tls.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def serve(cfg: config.Config, stop: asyncio.Event | None = None, head_start: Prestart | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set), then drain and stop."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine = Engine(cfg, head_start=head_start)
    app = create_app(engine)
    processes = cfg.intake.processes
    runner = Runner(app, cfg.intake)
    intake_processes: Fronts | None = None
    try:
        await runner.setup()  # starts the engine: rules → bundle → OPA
    except RulesError as e:
        log_problems(e, reload=False)
        return 1
    except TalonError as e:
        log.error("engine did not start", extra={"error": str(e)})
        return 1
    try:
        site = web.TCPSite(runner, cfg.address, cfg.listen_port, ssl_context=ssl_context(cfg.tls))
        await site.start()
        if processes:
            from talon_opa.engine.fronts import Fronts  # only when configured: nothing more to import otherwise

            intake_processes = Fronts(
                cfg, acceptor=engine.acceptor, intake=app[INTAKE], metrics=engine.metrics, handler=runner.handler
            )
            await intake_processes.start()
            runner.serve_elsewhere(intake_processes)
        log.info(
            "listening",
            extra={
                "address": cfg.address,
                "port": cfg.listen_port,
                "tls": bool(cfg.tls.cert_file),
                "auth": cfg.authentication,
                "event_loop": type(loop).__module__.split(".", 1)[0],  # uvloop, or asyncio without it
                "intake_processes": processes,
            },
        )
        if cfg.authentication == "none":
            hint = "set auth.token, or tls.client_ca_file for client certificates"
            if cfg.address not in (config.LOOPBACK, "localhost", "::1"):
                log.warning("intake has no authentication and listens beyond loopback", extra={"hint": hint})
            elif cfg.tls.cert_file:
                log.warning(
                    "intake TLS without client certificates is not authentication: listening on loopback only",
                    extra={"hint": hint},
                )
        engine_reload = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, engine_reload.set)
        reloader = loop.create_task(_reload_on(engine_reload, engine), name="talon-opa-sighup")
        try:
            await stop.wait()
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reloader
        log.info("stopping: draining accepted alerts")
    except OSError as e:
        log.error("cannot listen", extra={"error": str(e), "port": cfg.listen_port})
        return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if intake_processes is not None:
            runner.serve_elsewhere(None)
            await intake_processes.stop()  # their last answers, while the engine still accepts
        await runner.cleanup()  # closes the listener, then drains the queue (engine.stop)
    log.info("stopped")
    return 0


def event_loop_factory() -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """uvloop's event loop when it is installed (a pinned dependency: 9% less engine CPU per alert and a
    third more alerts accepted per second in benchmarks/side_by_side.py), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


async def _reload_on(requested: asyncio.Event, engine: Engine) -> None:
    """Reload the rules on each SIGHUP (besides the file watcher)."""
    while True:
        await requested.wait()
        requested.clear()
        log.info("SIGHUP: reloading the rules")
        await engine.reload()


def main(cfg: config.Config, head_start: Prestart | None = None) -> int:
    """Serve `cfg` (logging already set up), from `head_start` when start-up began before (cli/main.py)."""
    # Each alert leaves a few short-lived container objects (spans, futures, dicts) that reference counting
    # frees; at thousands of alerts/s Python's default (a collection every 700 of them) spent ~5% of the
    # engine's CPU in the cyclic collector (benchmarks/intake_throughput.py). Young collections 14x rarer.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    gc.freeze()  # the modules' objects live as long as the engine: no collection walks them
    gc.enable()  # off while start-up imported (cli/main.py)
    _, factory = event_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(serve(cfg, head_start=head_start))
