"""Start-up of `talon-opa server`, from exec to the first 200 on /readyz, and its peak memory.

For each rule count (rules from `decision_latency`'s generator), starts the engine as its own process
(`python -m talon_opa.cli.main server`, child OPA, default config) and polls /readyz every 10 ms.
Runs alternate between sizes (1, 10, 1000, 1, 10, 1000...) so a busy moment of the machine does not
land on one size only; medians are printed. Peak RSS is the kernel's high-water mark (VmHWM) of the
engine and of its OPA child, read once the engine is ready; `sampled_peak_mb` is the highest total resident
set of the engine and all its child processes (`opa check` too) seen while polling. `cpu_s` is the CPU
time the engine, the `opa` commands it ran and its OPA child used until ready: on a busy machine it moves
much less than the wall time. The engine runs as installed, with Python's bytecode cached (a first,
unmeasured start compiles it). `engine_now_mb` is the engine's resident set once ready: what it keeps.

`--cache off` runs without `opa.cache_dir`; `--cache cold` gives every run an empty cache folder, so the
bundle is built (and stored); `--cache warm` starts each size once beforehand and keeps its cache folder,
so the runs reuse the bundle. `--compare DIR` runs the engine of another checkout too (e.g. `git worktree add
/tmp/before <commit>`), each run of this one followed by the same run of that one, so that both see the same
moments of a busy machine; its lines say `engine=DIR`.
Prints one line per run on stderr and, per rule count, on stdout:

    rules=N cache=off|cold|warm ready_s=X cpu_s=Y (median of R) engine_rss_mb=A opa_rss_mb=B
        total_rss_mb=C sampled_peak_mb=D engine_now_mb=E

Never asserted in tests. Timings are wall-clock and noisy on a shared machine: compare medians.

    .venv/bin/python benchmarks/startup.py --rules 1,10,1000,10000 --runs 3
    .venv/bin/python benchmarks/startup.py --rules 10 --runs 9 --compare /tmp/before   # A/B against a checkout
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._proc import children, cpu_s, status_mb  # noqa: E402
from benchmarks.decision_latency import rules_file  # noqa: E402
from talon_opa.opa.process import free_port  # noqa: E402

READY_WITHIN_S = 180.0
POLL_S = 0.01


@dataclass(frozen=True)
class Run:
    ready_s: float
    engine_mb: float
    opa_mb: float
    sampled_peak_mb: float  # highest sum of the tree's resident sets seen while polling (catches `opa check`)
    cpu_s: float  # CPU time of the engine, its finished children and its live OPA: steadier than wall time
    engine_now_mb: float  # the engine's resident set once ready (what it keeps, after the peak of building)


def hwm_mb(pid: int, field: str = "VmHWM") -> float:
    """VmHWM (peak resident set; or another field, e.g. VmRSS) of a live process, in MiB; 0 when it is gone."""
    return status_mb(pid, field) or 0.0


def tree_rss_mb(pid: int) -> float:
    """Current resident set of a process and all its descendants (OPA, `opa check`), in MiB."""
    return hwm_mb(pid, "VmRSS") + sum(tree_rss_mb(c) for c in children(pid))


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def engine_env(repo: Path, pycache: Path) -> dict[str, str]:
    """The environment a measured start runs in: as installed, Python's bytecode cached (in `pycache`, a
    private folder), whatever PYTHONDONTWRITEBYTECODE says here."""
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONPYCACHEPREFIX": str(pycache)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_once(rules: Path, work: Path, cache: Path | None, repo: Path = REPO) -> Run:
    port = free_port()
    config = work / "config.yaml"
    opa_cfg = f"opa: {{ready_timeout_seconds: {READY_WITHIN_S}" + (f", cache_dir: {cache}}}" if cache else "}")
    config.write_text(
        f"listen_address: 127.0.0.1\nlisten_port: {port}\nlog_format: json\nlog_level: warning\n{opa_cfg}\n"
    )
    env = engine_env(repo, work / "pycache")
    url = f"http://127.0.0.1:{port}/readyz"
    with (work / "engine.log").open("wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "talon_opa.cli.main", "server", "-c", str(config), "-r", str(rules)],
            cwd=repo,
            env=env,
            stdout=log,
            stderr=log,
        )
        peak = 0.0
        try:
            while not ready(url):
                peak = max(peak, tree_rss_mb(proc.pid))
                if proc.poll() is not None:
                    raise RuntimeError((work / "engine.log").read_text()[-2000:])
                if time.perf_counter() - t0 > READY_WITHIN_S:
                    raise RuntimeError(f"engine not ready after {READY_WITHIN_S:.0f} s")
                time.sleep(POLL_S)
            elapsed = time.perf_counter() - t0
            kids = children(proc.pid)
            cpu = cpu_s(proc.pid, waited=True) + sum(cpu_s(c) for c in kids)
            peak = max(peak, tree_rss_mb(proc.pid))
            now = hwm_mb(proc.pid, "VmRSS")
            return Run(elapsed, hwm_mb(proc.pid), sum(hwm_mb(c) for c in kids), peak, cpu, now)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rules", default="1,10,1000,10000", help="comma-separated rule counts")
    p.add_argument("--runs", type=int, default=3, help="runs per rule count (alternating between counts)")
    p.add_argument("--cache", choices=("off", "cold", "warm"), default="off", help="empty or pre-filled bundle cache")
    p.add_argument("--compare", metavar="DIR", type=Path, help="another checkout whose engine runs in alternation")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.rules.split(",") if s.strip()]
    if not sizes or any(n < 1 for n in sizes) or args.runs < 1:
        p.error("--rules needs positive counts and --runs at least 1")
    repos = [REPO]
    if args.compare is not None:
        if not (args.compare / "talon_opa").is_dir():
            p.error(f"--compare {args.compare}: not a talon-opa checkout (no talon_opa/ folder)")
        repos.append(args.compare.resolve())
    results: dict[tuple[Path, int], list[Run]] = {(repo, n): [] for repo in repos for n in sizes}
    with tempfile.TemporaryDirectory(prefix="talon-opa-bench-startup-") as tmp:
        work = Path(tmp)
        for n in sizes:
            (work / f"rules-{n}.yaml").write_text(rules_file(n))
        for k, repo in enumerate(repos):
            run_once(work / f"rules-{min(sizes)}.yaml", work, None, repo)  # compiles the bytecode: not measured
            for n in sizes:
                (work / f"cache-{n}-{k}").mkdir()
                if args.cache == "warm":
                    run_once(work / f"rules-{n}.yaml", work, work / f"cache-{n}-{k}", repo)
        for i in range(args.runs):
            for n in sizes:
                for k, repo in enumerate(repos):
                    cache: Path | None = work / f"cache-{n}-{k}"
                    if args.cache == "off":
                        cache = None
                    elif args.cache == "cold":
                        cache = work / f"cache-{n}-{k}-{i}"
                    r = run_once(work / f"rules-{n}.yaml", work, cache, repo)
                    results[repo, n].append(r)
                    print(
                        f"# run={i + 1} rules={n}{_label(repo)} ready_s={r.ready_s:.3f} "
                        f"engine_rss_mb={r.engine_mb:.1f} opa_rss_mb={r.opa_mb:.1f} "
                        f"sampled_peak_mb={r.sampled_peak_mb:.1f} cpu_s={r.cpu_s:.2f} "
                        f"engine_now_mb={r.engine_now_mb:.1f}",
                        file=sys.stderr,
                        flush=True,
                    )
    for repo, n in results:
        runs = results[repo, n]
        engine = statistics.median(r.engine_mb for r in runs)
        opa = statistics.median(r.opa_mb for r in runs)
        print(
            f"rules={n}{_label(repo)} cache={args.cache} ready_s={statistics.median(r.ready_s for r in runs):.3f} "
            f"cpu_s={statistics.median(r.cpu_s for r in runs):.2f} "
            f"(median of {len(runs)}) engine_rss_mb={engine:.1f} opa_rss_mb={opa:.1f} "
            f"total_rss_mb={statistics.median(r.engine_mb + r.opa_mb for r in runs):.1f} "
            f"sampled_peak_mb={statistics.median(r.sampled_peak_mb for r in runs):.1f} "
            f"engine_now_mb={statistics.median(r.engine_now_mb for r in runs):.1f}",
            flush=True,
        )
    return 0


def _label(repo: Path) -> str:
    return "" if repo == REPO else f" engine={repo}"


if __name__ == "__main__":
    sys.exit(main())
