"""Time `edgetl build` (docs/benchmarks.md, "edgetl build (issue 15)").

    python benchmarks/bench_build.py examples/hymenoptera.edgetl.yaml --work /tmp/bb            # cold, rerun
    python benchmarks/bench_build.py PROJECT --work /tmp/bb --jobs-compare 1,2 [--seed-cache CACHE]

Cold: an empty embedding cache and build cache. Rerun: the same command again. With
--jobs-compare, the export stage alone: every run starts from a cache holding only the
finished fine-tuning stages (of the cold run, or of --seed-cache, an EDGETL_CACHE folder,
which skips the cold run), so each one exports every bundle with that many workers.
Runs the real CLI in a subprocess; prints one line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

EDGETL = str(Path(sys.executable).with_name("edgetl"))


def build(project: str, out: Path, cache: Path, *extra: str) -> tuple[float, dict]:
    env = {**os.environ, "EDGETL_CACHE": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.run([EDGETL, "build", project, "--out", str(out), "--json", *extra], capture_output=True,
                          text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        sys.exit(f"edgetl build failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, json.loads(proc.stdout)


def stages(summary: dict) -> str:
    reused = sum(s["reused"] for s in summary["stages"])
    return f"{reused}/{len(summary['stages'])} stages reused"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("project")
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--jobs-compare", default="", help="e.g. 1,2: time the export stage with each --jobs")
    ap.add_argument("--seed-cache", type=Path, default=None, help="EDGETL_CACHE with the fine-tuning done")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    cache = args.seed_cache or args.work / "cache"
    if args.seed_cache is None:
        cold, summary = build(args.project, args.work / "dist", cache)
        print(f"cold: {cold:.1f} s ({stages(summary)}; passed={summary['passed']})")
        warm, summary = build(args.project, args.work / "dist", cache)
        print(f"unchanged rerun: {warm:.2f} s ({stages(summary)}); {cold / warm:.0f}x faster")
    for jobs in filter(None, args.jobs_compare.split(",")):
        trial = args.work / f"cache-jobs{jobs}"
        shutil.rmtree(trial, ignore_errors=True)
        shutil.copytree(cache, trial, ignore=shutil.ignore_patterns("export", "verify", "benchmark"))
        seconds, summary = build(args.project, args.work / f"dist-jobs{jobs}", trial, "--jobs", jobs)
        exports = [s for s in summary["stages"] if s["stage"] == "export"]
        print(f"--jobs {jobs}: build {seconds:.1f} s, {len(exports)} exports "
              f"(sum of their own times {sum(s['seconds'] for s in exports):.1f} s)")


if __name__ == "__main__":
    main()
