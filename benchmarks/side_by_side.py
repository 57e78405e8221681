"""Side by side with Falco Talon: unique alerts posted by wrk (a non-Python load generator) to an engine URL.

By default it starts talon-opa itself (`talon-opa server`, its own OPA child) once per `--rules` count, with a
generated rules file of that many rules (benchmarks/decision_latency.py's generator); `--url` drives any
engine instead (Falco Talon or a running talon-opa; `--token` for an engine with auth, `--pid` to measure its
CPU and memory). wrk (`make bench-tools`, Debian's wrk unpacked into the tools cache) runs `--connections`
connections for `--seconds` with benchmarks/wrk_alerts.lua, which makes every body unique (the output text is
the deduplication key): Falco-shaped alerts that match no rule, or with `--matching` one that matches (its
steps run in dry-run: the engine has no kubeconfig). Figures, per run:

* accepted/s: answers 200 per second of load (wrk's count), and `refused` any other answer or error;
* processed/s (talon-opa only, from /metrics): alerts decided, from the first alert until the last accepted
  one is decided, per second (load + drain);
* drain: from the end of the load until every accepted alert is decided (queue empty, nothing in flight);
* CPU per alert: user + system CPU of the engine process and of its children (the OPA child, and the intake
  processes of `--intake-processes N`) from /proc, from the start of the load until the end of the drain,
  over the alerts processed (talon-opa's count; wrk misses the answers cut by the end of the load) or else
  accepted (split engine / intake processes / OPA);
* p50/p99: wrk's latency distribution of the answers; RSS: peak resident memory (VmHWM) of engine, intake
  processes and OPA.

Talon's figures are not measured here (its Go module cannot be fetched on this machine): they are the ones
issue 15 recorded, measured on the machine the issue was written on with the same wrk load (32 connections,
10 s, unique non-matching bodies), and are printed beside ours: compare them only with figures from a machine
as fast (docs/performance.md ties machines together through the engine of that time, `--engine-src`).
Prints one `rules=... key=value` line per run, then the table.

    make bench-tools && .venv/bin/python benchmarks/side_by_side.py --rules 1,1000
    .venv/bin/python benchmarks/side_by_side.py --rules 1,1000 --intake-processes 1   # the engine on 2 cores
    .venv/bin/python benchmarks/side_by_side.py --url http://127.0.0.1:2803/ --pid 12345 --token s3cret
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._engine import REPO, Running, running_engine
from benchmarks._proc import children, cpu_s, status_mb
from benchmarks._wrk import LUA, body_halves, wrk_binary
from benchmarks.decision_latency import rules_file

TALON_LABEL = "Talon (issue 15, measured on that issue's machine)"
BEFORE_LABEL = "talon-opa (issue 15, before)"
# issue 15's figures (wrk, 32 connections, 10 s, unique non-matching bodies); processed/s of Talon with 1,000 rules
TALON = {"accepted": 8192.0, "processed": 8178.0, "drain": 0.02, "cpu": 0.20, "p50": 3.5, "p99": 12.0}
TALON_PROCESSED_1000_RULES = 7146.0
BEFORE = {"accepted": 3409.0, "processed": 1492.0, "drain": 12.2, "cpu": 0.79, "p50": 8.9, "p99": 89.0}
DECIDED = ("talon_opa_decision_duration_seconds_count", "talon_opa_alerts_failed_total")
BUSY = ("talon_opa_queue_depth", "talon_opa_alerts_in_flight")
PROBE = "talon_opa_queue_depth"  # always exported (the decision histogram has series only once used)
# /metrics is polled during the drain: often at first (a short drain is timed closely), then at most 4 times a
# second, so that the scrapes cost the engine little of the CPU measured
POLL_FIRST_S, POLL_MAX_S = 0.01, 0.25


@dataclass
class Figures:
    """One run's figures (None: not measurable for this engine)."""

    label: str
    accepted: int = 0
    refused: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    processed: int | None = None
    drain_s: float | None = None
    engine_cpu_s: float | None = None
    opa_cpu_s: float | None = None
    intake_cpu_s: float = 0.0  # the engine's intake processes (intake.processes), children like its OPA
    rss_mb: float | None = None
    opa_rss_mb: float | None = None
    intake_rss_mb: float = 0.0

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    @property
    def processed_per_s(self) -> float | None:
        if self.processed is None or self.drain_s is None:
            return None
        return self.processed / (self.seconds + self.drain_s)

    @property
    def alerts(self) -> int:
        """The alerts the CPU is divided by: the engine's own count when it gives one, else wrk's."""
        return self.processed or self.accepted

    @property
    def cpu_ms_per_alert(self) -> float | None:
        if self.engine_cpu_s is None or not self.alerts:
            return None
        return 1000 * (self.engine_cpu_s + (self.opa_cpu_s or 0.0) + self.intake_cpu_s) / self.alerts

    def line(self) -> str:

        def per(seconds: float | None) -> str:
            return "n/a" if seconds is None or not self.alerts else f"{1000 * seconds / self.alerts:.3f}"

        fields = {
            "accepted_per_s": f"{self.accepted_per_s:.0f}",
            "processed_per_s": _num(self.processed_per_s, "{:.0f}"),
            "drain_s": _num(self.drain_s, "{:.2f}"),
            "cpu_ms_per_alert": _num(self.cpu_ms_per_alert, "{:.3f}"),
            "engine_cpu_ms_per_alert": per(self.engine_cpu_s),
            "opa_cpu_ms_per_alert": per(self.opa_cpu_s),
            "intake_processes_cpu_ms_per_alert": per(self.intake_cpu_s),
            "p50_ms": f"{self.p50_ms:.2f}",
            "p99_ms": f"{self.p99_ms:.2f}",
            "rss_peak_mb": _num(self.rss_mb, "{:.0f}"),
            "opa_rss_peak_mb": _num(self.opa_rss_mb, "{:.0f}"),
            "intake_processes_rss_peak_mb": f"{self.intake_rss_mb:.0f}",
            "accepted": str(self.accepted),
            "refused": str(self.refused),
            "processed": _num(self.processed, "{}"),
            "seconds": f"{self.seconds:.1f}",
        }
        return f"{self.label} " + " ".join(f"{k}={v}" for k, v in fields.items())


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def cpu_seconds(pid: int) -> tuple[float, float, float]:
    """User + system CPU seconds of a process (all its threads) and, summed, of its children: its OPA (and any
    other child), and talon-opa's intake processes."""
    kids = children(pid)
    intake = [c for c in kids if is_intake_process(c)]
    return cpu_s(pid), sum(cpu_s(c) for c in kids if c not in intake), sum(cpu_s(c) for c in intake)


def is_intake_process(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return b"talon_opa.engine.front" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


async def run_wrk(a: argparse.Namespace, url: str, seconds: float) -> dict[str, int]:
    head, tail = body_halves(a.matching)
    cmd = [wrk_binary(), "-t", str(a.threads), "-c", str(a.connections), "-d", f"{seconds:g}s"]
    cmd += ["--timeout", "10s", "-s", str(LUA)]
    if a.token:
        cmd += ["-H", f"{a.header}: {'Bearer ' if a.header.lower() == 'authorization' else ''}{a.token}"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, url, "--", head, tail, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    for line in out.decode().splitlines():
        if line.startswith("wrk_result "):
            return {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    raise RuntimeError(f"wrk printed no result (exit {proc.returncode}): {out.decode()[-500:]} {err.decode()[-500:]}")


async def decided(http: aiohttp.ClientSession, base: str) -> tuple[float, float]:
    """(alerts decided or failed, alerts waiting or in flight) from one scrape of a talon-opa /metrics."""
    async with http.get(base + "/metrics") as r:
        text = await r.text()
    sums = dict.fromkeys((*DECIDED, *BUSY), 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        name = name.split("{", 1)[0]
        if name in sums:
            sums[name] += float(value.rsplit(" ", 1)[-1])
    return sum(sums[n] for n in DECIDED), sum(sums[n] for n in BUSY)


async def is_talon_opa(http: aiohttp.ClientSession, base: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError):
        async with http.get(base + "/metrics") as r:
            return r.status == 200 and PROBE in await r.text()
    return False


async def measure(a: argparse.Namespace, label: str, url: str, pid: int | None) -> Figures:
    base = url.rstrip("/")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        ours = await is_talon_opa(http, base)
        if a.warmup > 0:
            await run_wrk(a, url, a.warmup)
            if ours:
                await wait_drained(http, base, a.max_drain)
        figures = Figures(label)
        before_cpu = cpu_seconds(pid) if pid else None
        before = (await decided(http, base))[0] if ours else 0.0
        result = await run_wrk(a, url, a.seconds)
        load_end = time.monotonic()
        figures.seconds = result["duration_us"] / 1e6
        figures.refused = result["status_errors"] + result["timeouts"]
        figures.accepted = result["requests"] - result["status_errors"]
        figures.p50_ms, figures.p99_ms = result["p50_us"] / 1000, result["p99_us"] / 1000
        if ours:
            done, idle_at = await wait_drained(http, base, a.max_drain)
            figures.drain_s = max(0.0, idle_at - load_end)
            figures.processed = int(done - before)
        if pid and before_cpu:
            after_cpu = cpu_seconds(pid)
            figures.engine_cpu_s = after_cpu[0] - before_cpu[0]
            figures.opa_cpu_s = after_cpu[1] - before_cpu[1]
            figures.intake_cpu_s = after_cpu[2] - before_cpu[2]
            figures.rss_mb = status_mb(pid)
            kids = children(pid)
            rss = [r for r in (status_mb(c) for c in kids if not is_intake_process(c)) if r is not None]
            figures.opa_rss_mb = sum(rss) if rss else None
            figures.intake_rss_mb = sum(r for r in (status_mb(c) for c in kids if is_intake_process(c)) if r)
    return figures


async def wait_drained(http: aiohttp.ClientSession, base: str, limit: float) -> tuple[float, float]:
    """Poll /metrics until nothing waits or runs and the decided count stops moving: (decided count, when idle)."""
    deadline = time.monotonic() + limit
    last, idle_at = -1.0, 0.0
    pause = POLL_FIRST_S
    while True:
        done, busy = await decided(http, base)
        now = time.monotonic()
        if busy == 0 and done == last:
            return done, idle_at
        if now > deadline:
            print(f"# not drained after {limit:g} s: {busy:.0f} alerts still waiting or running", file=sys.stderr)
            return done, now
        last, idle_at = (done, now) if busy == 0 else (-1.0, 0.0)
        await asyncio.sleep(pause)
        pause = min(POLL_MAX_S, pause * 1.5)


@contextlib.asynccontextmanager
async def engine_for(a: argparse.Namespace, rules: int) -> AsyncIterator[Running]:
    queue = {"capacity": a.queue_capacity, "workers": 16}
    text = a.rules_file.read_text() if a.rules_file else rules_file(rules)
    extra = {"intake": {"processes": a.intake_processes}} if a.intake_processes else {}
    async with running_engine(text, src=a.engine_src, queue=queue, **extra) as engine:
        yield engine


def table(runs: list[tuple[Figures, int | None]]) -> str:
    """Talon's reference figures, talon-opa's figures from the issue, then ours: one column each."""
    cols: list[tuple[str, dict[str, str]]] = []
    fmt = {
        "accepted": "{:,.0f}",
        "processed": "{:,.0f}",
        "drain": "{:.2f}",
        "cpu": "{:.2f}",
        "p50": "{:.1f}",
        "p99": "{:.1f}",
        "rss": "{:.0f}",
    }
    talon = {k: fmt[k].format(v) for k, v in TALON.items()}
    talon["processed"] += f" (1,000 rules: {TALON_PROCESSED_1000_RULES:,.0f})"
    talon["rss"] = "n/a"
    cols.append((TALON_LABEL, talon))
    cols.append((BEFORE_LABEL, {k: fmt[k].format(v) for k, v in BEFORE.items()} | {"rss": "n/a"}))
    for f, rules in runs:
        values = {
            "accepted": f.accepted_per_s,
            "processed": f.processed_per_s,
            "drain": f.drain_s,
            "cpu": f.cpu_ms_per_alert,
            "p50": f.p50_ms,
            "p99": f.p99_ms,
            "rss": None if f.rss_mb is None else f.rss_mb + (f.opa_rss_mb or 0.0) + f.intake_rss_mb,
        }
        cell = {k: "n/a" if v is None else fmt[k].format(v) for k, v in values.items()}
        if f.engine_cpu_s is not None and f.opa_cpu_s is not None and f.alerts:
            engine, opa = 1000 * f.engine_cpu_s / f.alerts, 1000 * f.opa_cpu_s / f.alerts
            intake = f" + intake processes {1000 * f.intake_cpu_s / f.alerts:.2f}" if f.intake_cpu_s else ""
            cell["cpu"] += f" ({engine:.2f}{intake} + OPA {opa:.2f})"
        cols.append((f.label if rules is None else f"talon-opa now, {rules} rule{'s' if rules != 1 else ''}", cell))
    rows = [
        ("accepted/s", "accepted"),
        ("processed/s", "processed"),
        ("queue drain (s)", "drain"),
        ("CPU per alert (ms, all processes)", "cpu"),
        ("HTTP p50 (ms)", "p50"),
        ("HTTP p99 (ms)", "p99"),
        ("peak RSS (MB, all processes)", "rss"),
    ]
    head = ["", *(c[0] for c in cols)]
    body = [[name, *(c[1][key] for c in cols)] for name, key in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in [head, *body]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="drive this engine (Talon or talon-opa) instead of starting talon-opa")
    p.add_argument("--pid", type=int, help="with --url: the engine's process id, for CPU and RSS (children too)")
    p.add_argument("--token", default="", help="the engine's intake token")
    p.add_argument("--header", default="Authorization", help="the header carrying --token (Bearer if Authorization)")
    p.add_argument("--rules", default="1", help="comma-separated rule counts, one talon-opa started per count")
    p.add_argument("--rules-file", type=Path, help="start talon-opa with this rules file instead of generated rules")
    p.add_argument("--matching", action="store_true", help="post alerts that match a rule (dry-run steps)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load (then drained) before measuring")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--queue-capacity", type=int, default=100_000)
    p.add_argument("--max-drain", type=float, default=120.0, help="give up waiting for the drain after this")
    p.add_argument("--engine-src", type=Path, default=REPO, help="the talon-opa source tree to run (A/B runs)")
    p.add_argument(
        "--intake-processes", type=int, default=0, help="start talon-opa with intake.processes: N (docs/performance.md)"
    )
    a = p.parse_args()
    if not 0 < a.seconds <= 600 or a.connections < 1:
        p.error("--seconds must be in (0, 600] and --connections at least 1")
    runs: list[tuple[Figures, int | None]] = []
    if a.url:
        figures = await measure(a, "url", a.url, a.pid)
        print(figures.line(), flush=True)
        runs.append((figures, None))
    elif a.rules_file:
        async with engine_for(a, 0) as engine:
            figures = await measure(a, f"rules={a.rules_file}", engine.url + "/", engine.pid)
        print(figures.line(), flush=True)
        runs.append((dataclasses.replace(figures, label=f"talon-opa now, {a.rules_file.name}"), None))
    else:
        for n in [int(s) for s in a.rules.split(",") if s.strip()]:
            async with engine_for(a, n) as engine:
                figures = await measure(a, f"rules={n}", engine.url + "/", engine.pid)
            print(figures.line(), flush=True)
            runs.append((figures, n))
    print()
    print(table(runs))


if __name__ == "__main__":
    asyncio.run(main())
