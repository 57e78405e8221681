"""Loading, translating and bundling from 10 to 10,000 Talon rules (the translator's share of startup).

Writes the rules file `decision_latency` generates (same generator), then times, in one process:
`load_ruleset` (read, merge, resolve, validate, build the model), `rego.generate` and `build_bundle`
to a temporary .tar.gz (as the engine writes it) without `opa check`. OPA's own start-up is measured by
the engine (benchmarks/startup.py), not here.
Prints one line per rule count on stdout (peak RSS is the process's high-water mark so far):

    rules=N load_s=X translate_s=Y bundle_s=Z peak_rss_mb=M

CPU times go to stderr (steadier than wall time on a busy machine). Never asserted in tests.
`--profile` prints cProfile's top functions of each load to stderr.

    .venv/bin/python benchmarks/rules_load.py --rules 10,1000,10000
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.decision_latency import rules_file
from talon_opa import catalog
from talon_opa.translator import bundle, rego
from talon_opa.translator import rules as rules_loader


def peak_rss_mb() -> float:
    """The process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_size(n: int, work: Path, profile: bool) -> None:
    rules_path = work / f"rules-{n}.yaml"
    rules_path.write_text(rules_file(n))
    reg = catalog.default_registry()
    prof = cProfile.Profile() if profile else None
    t0, c0 = time.perf_counter(), time.process_time()
    if prof is not None:
        prof.enable()
    ruleset = rules_loader.load_ruleset([rules_path], reg)
    if prof is not None:
        prof.disable()
    t1, c1 = time.perf_counter(), time.process_time()
    files = rego.generate(ruleset)
    t2, c2 = time.perf_counter(), time.process_time()
    bundle.build_bundle(files, work / f"bundle-{n}.tar.gz", check=False)
    t3, c3 = time.perf_counter(), time.process_time()
    print(
        f"rules={n} load_s={t1 - t0:.3f} translate_s={t2 - t1:.3f} bundle_s={t3 - t2:.3f} "
        f"peak_rss_mb={peak_rss_mb():.1f}",
        flush=True,
    )
    # CPU time of this process: steadier than wall time when the machine is busy
    log(f"# rules={n} load_cpu_s={c1 - c0:.3f} translate_cpu_s={c2 - c1:.3f} bundle_cpu_s={c3 - c2:.3f}")
    if prof is not None:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
        log(f"# cProfile of load_ruleset, rules={n}:\n{text.getvalue()}")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rules", default="10,1000,10000", help="comma-separated rule counts")
    p.add_argument("--profile", action="store_true", help="print cProfile's top functions of each load to stderr")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.rules.split(",") if s.strip()]
    if not sizes or any(n < 1 for n in sizes):
        p.error("--rules needs positive counts")
    with tempfile.TemporaryDirectory(prefix="talon-opa-bench-") as tmp:
        for n in sizes:
            run_size(n, Path(tmp), args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
