"""The floor under `talon-opa server`'s start-up: what Python and OPA cost before the engine does any work.

startup.py measures the engine from exec to its first 200 on /readyz. This script measures, on the same
machine and in alternation with it, what no change to the engine's own code can remove:

- `python_s`: the interpreter alone (`python -c pass`, with the virtualenv's site), exec to exit;
- `imports_s`: a Python that imports exactly the standard-library and third-party modules a start of the
  engine imports, in the same order, with the same compile cache (core/compile_cache.py) and deferred CA
  certificates, and none of the engine's own modules but those two; exec until the last import is done
  (the process then exits at once, without its teardown). The module list is
  read from `-X importtime` of one real start of the engine to ready, so it follows the dependencies;
- `no_aiohttp_s`: the same without aiohttp and the packages only it brings (`AIOHTTP_PACKAGES`): what an engine
  with its own HTTP server and client would still import (the standard-library modules aiohttp imports stay
  in: they are counted for aiohttp only when nothing else imports them, so this is an upper bound);
- `opa_s`: the child OPA alone, as the engine spawns it (opa_supervisor.child_process, the default `opa:`
  config: a Unix socket and a token), from exec until its bundle is active, on the bundle of the same
  rules, waited for as the engine waits for it (OpaProcess.wait_ready: /health?bundles every 10 ms);
- `engine_s`: the engine, exec to /readyz 200, as startup.py measures it (polled every 10 ms).

The engine starts OPA once its bundle is built and imports the rest meanwhile (engine/prestart.py), so its
start can be no shorter than `imports_s`, nor than the time to its bundle plus `opa_s`. Prints one line per
run on stderr and the medians on stdout:

    rules=N python_s=A imports_s=B no_aiohttp_s=C opa_s=D engine_s=E (median of R) modules=M no_aiohttp_modules=K

Never asserted in tests; wall-clock figures on a shared machine: compare medians of alternated runs.

    .venv/bin/python benchmarks/startup_floor.py --rules 10 --runs 9
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.decision_latency import rules_file  # noqa: E402
from benchmarks.startup import READY_WITHIN_S, engine_env, ready, run_once  # noqa: E402
from talon_opa.core import config  # noqa: E402
from talon_opa.engine.opa_supervisor import child_process, child_token  # noqa: E402
from talon_opa.opa.process import free_port  # noqa: E402

# aiohttp and the packages it alone brings into the engine (its install requirements)
AIOHTTP_PACKAGES = ("aiohttp", "aiohappyeyeballs", "aiosignal", "attr", "frozenlist", "multidict", "propcache", "yarl")
# imports the listed modules as the engine imports them (compile cache, deferred certificates), then exits at once
_IMPORTER = """\
import importlib, os, sys
from talon_opa.core import compile_cache, deferred_certs
with compile_cache.cached(), deferred_certs.deferred():
    for name in open(sys.argv[1]).read().split():
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except ImportError:
                pass  # an optional module the engine's libraries look for and go on without, as in the engine
os._exit(0)
"""
_IMPORTTIME = re.compile(r"^import time:\s+\d+ \|\s+\d+ \| *(\S+)$")


def _env(work: Path, cache: str) -> dict[str, str]:
    """startup.py's environment, with a bytecode folder per kind of run (each keeps its own compile table)."""
    env = engine_env(REPO, work / cache)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    return env


def engine_modules(rules: Path, work: Path) -> list[str]:
    """The modules one start of the engine imports until ready, in the order `-X importtime` reports them."""
    port = free_port()
    cfg = work / "importtime.yaml"
    cfg.write_text(f"listen_address: 127.0.0.1\nlisten_port: {port}\nlog_level: warning\n")
    argv = [sys.executable, "-X", "importtime", "-m", "talon_opa.cli.main", "server", "-c", str(cfg), "-r", str(rules)]
    with (work / "importtime.log").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=_env(work, "pycache-importtime"), stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + READY_WITHIN_S
            while not ready(f"http://127.0.0.1:{port}/readyz"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((work / "importtime.log").read_text()[-2000:])
                time.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(30)
    names = []
    for line in (work / "importtime.log").read_text().splitlines():
        found = _IMPORTTIME.match(line)
        if found and found.group(1) not in names:
            names.append(found.group(1))
    return names


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from exec to exit of a command that must succeed."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"{argv[:3]} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    return elapsed


def opa_alone(bundle: Path, work: Path) -> float:
    """Seconds from the child OPA's exec until it reports its bundle active."""
    opa_cfg = config.Opa()
    child = child_process(opa_cfg, bundle, work, 0, child_token(opa_cfg))

    async def start() -> float:
        t0 = time.perf_counter()
        child.spawn()
        try:
            await child.wait_ready(READY_WITHIN_S)
            return time.perf_counter() - t0
        finally:
            await child.stop()

    return asyncio.run(start())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rules", type=int, default=10, help="rule count (rules of decision_latency's generator)")
    p.add_argument("--runs", type=int, default=9, help="alternated runs of each measure")
    args = p.parse_args(argv)
    if args.rules < 1 or args.runs < 1:
        p.error("--rules and --runs need at least 1")
    with tempfile.TemporaryDirectory(prefix="talon-opa-bench-floor-") as tmp:
        work = Path(tmp)
        rules = work / "rules.yaml"
        rules.write_text(rules_file(args.rules))
        bundle = work / "bundle"
        translate = [sys.executable, "-m", "talon_opa.cli.main", "rules", "-r", str(rules), "translate"]
        timed([*translate, "-o", str(bundle)], _env(work, "pycache-translate"))
        modules = [m for m in engine_modules(rules, work) if not m.startswith(("talon_opa", "__editable__"))]
        own = [m for m in modules if m.split(".", 1)[0] not in AIOHTTP_PACKAGES]
        (work / "modules.txt").write_text("\n".join(modules))
        (work / "no-aiohttp.txt").write_text("\n".join(own))
        python = [sys.executable, "-c", "pass"]
        importer = [sys.executable, "-c", _IMPORTER]
        measures: dict[str, Callable[[], float]] = {
            "python_s": lambda: timed(python, _env(work, "pycache-python")),
            "imports_s": lambda: timed([*importer, str(work / "modules.txt")], _env(work, "pycache-imports")),
            "no_aiohttp_s": lambda: timed([*importer, str(work / "no-aiohttp.txt")], _env(work, "pycache-noaio")),
            "opa_s": lambda: opa_alone(bundle, work),
            "engine_s": lambda: run_once(rules, work, None).ready_s,
        }
        for measure in measures.values():  # bytecode and compile cache tables written: not measured
            measure()
        figures: dict[str, list[float]] = {name: [] for name in measures}
        for i in range(args.runs):
            for name, measure in measures.items():
                figures[name].append(measure())
            line = " ".join(f"{name}={values[-1]:.3f}" for name, values in figures.items())
            print(f"# run={i + 1} rules={args.rules} {line}", file=sys.stderr, flush=True)
    medians = " ".join(f"{name}={statistics.median(values):.3f}" for name, values in figures.items())
    print(
        f"rules={args.rules} {medians} (median of {args.runs}) modules={len(modules)} no_aiohttp_modules={len(own)}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
