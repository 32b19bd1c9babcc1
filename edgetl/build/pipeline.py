"""`edgetl build`: every candidate fine-tuned once, exported to every target, verified,
timed, gated, and the best that fits each device's budget written to OUT/<target>/.

    OUT/<target>/                       the chosen bundle (what a device installs)
    OUT/candidates/<target>/<candidate>/  every candidate's bundle (benchmark them on the board)
    OUT/summary.json  report.md  junit.xml  report.html

Stages are cached by content hash (edgetl/build/cache.py), so a rerun with nothing changed
only reads the cache, and changing one target's options rebuilds that target's exports only.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from edgetl.build.cache import StageCache, default_cache_root, folder_digest
from edgetl.build.config import Project, TargetSpec, load_project
from edgetl.build.devresults import check_all_matched, read_device_results
from edgetl.build.dist import install_bundle, remove_stale
from edgetl.build.select import Option, evaluate_gates, pareto, select
from edgetl.build.stages import (Adaptation, ExportJob, StageResult, benchmark_stage, export_key, export_target, finetune_stage,
                                 rank_stage, run_export_job, verify_stage, worker_init)
from edgetl.core.progress import ProgressCallback, reporting, track
from edgetl.errors import EdgetlError

log = logging.getLogger("edgetl")

CANDIDATES_DIR = "candidates"
RESERVED = {CANDIDATES_DIR, "summary.json", "report.md", "junit.xml", "report.html"}


@dataclass(frozen=True)
class BuildResult:
    """What a build produced: `summary` (summary.json's content), `passed` (every gate of every
    target), `failures` (one line per failed gate, naming target and gate) and the files."""

    out: Path
    summary: dict
    passed: bool
    failures: tuple[str, ...]
    files: tuple[Path, ...]


# -- export stage (parallel) --------------------------------------------------------------------
def _export_all(cache: StageCache, fts: dict, project: Project, jobs: int) -> dict:
    results: dict[tuple[str, str], StageResult] = {}
    pending = []
    for cand in project.candidates:
        for spec in project.targets:
            label = f"{cand.name} -> {spec.name} ({spec.precision})"
            t0 = time.perf_counter()
            target_yaml = export_target(cache, spec)
            key = export_key(fts[cand.name], spec, target_yaml)
            record = cache.load("export", key)
            if record is not None:
                r = StageResult("export", key, label, True, time.perf_counter() - t0, record, cache.entry("export", key))
                log.info("export %s: reused (key %s)", label, key[:12])
                results[(cand.name, spec.name)] = r
            else:
                options = {k: v for k, v in spec.export.items() if v is not None}
                pending.append((cand, spec, ExportJob(key, label, str(fts[cand.name].path / "run"),
                                                      str(target_yaml), options,
                                                      str(cache.stage_dir("export", key)))))
    if not pending:
        return results

    def finish(cand, spec, job: ExportJob, out: dict) -> None:
        staged = Path(job.staged)
        if "error" in out:
            cache.discard(staged)
            r = StageResult("export", job.key, job.label, False, out["seconds"], {}, None, out["error"])
            log.error("export %s: failed after %.1f s: %s", job.label, out["seconds"], out["error"])
        else:
            from edgetl.bundle import Bundle

            record = {"candidate": cand.name, "target": spec.name, **out,
                      "bundle_sha256": Bundle.open(staged / "bundle", verify=False).digest}
            path = cache.commit("export", job.key, staged, record)
            r = StageResult("export", job.key, job.label, False, out["seconds"], record, path)
            verdict = "" if out["passed"] else " (its own accuracy gate failed; build gates below)"
            log.info("export %s: exported in %.1f s (key %s)%s", job.label, out["seconds"], job.key[:12], verdict)
        results[(cand.name, spec.name)] = r

    workers = max(1, min(jobs, len(pending)))
    try:
        with track("build: exporting", len(pending)) as task:
            if workers == 1:
                for cand, spec, job in pending:
                    log.info("export %s: exporting", job.label)
                    finish(cand, spec, job, run_export_job(job))
                    task.advance()
            else:
                # Processes, not threads: conversion is mostly Python (torch.export tracing,
                # flatbuffer and ONNX graph building), and each export keeps its own torch
                # thread count and converter state. spawn, not fork: a forked torch with live
                # threads can hang. On this 2-vCPU host 2 workers were 13-17 % slower than 1
                # (docs/benchmarks.md, "edgetl build"); it pays with more cores than exports need.
                ctx = multiprocessing.get_context("spawn")
                threads = max(1, (os.cpu_count() or 1) // workers)
                log.info("exporting %d bundles in %d worker processes (%d torch threads each)", len(pending), workers,
                         threads)
                with ProcessPoolExecutor(workers, mp_context=ctx, initializer=worker_init,
                                         initargs=(log.getEffectiveLevel() or logging.INFO, threads)) as pool:
                    futures = {pool.submit(run_export_job, job): (cand, spec, job) for cand, spec, job in pending}
                    for future in as_completed(futures):
                        cand, spec, job = futures[future]
                        finish(cand, spec, job, future.result())
                        task.advance()
    finally:
        for _, _, job in pending:  # what a failure or Ctrl-C left staged
            if Path(job.staged).exists():
                cache.discard(Path(job.staged))
    return results


# -- the build ---------------------------------------------------------------------------------
def _option(cand: str, spec: TargetSpec, ex: StageResult, ver: StageResult | None, bench: StageResult | None,
            manifest, device: dict | None) -> Option:
    if ex.error:
        return Option(cand, error=ex.error, precision=spec.precision)
    m, rec = manifest.metrics, ver.record
    latency = None
    if device is not None:
        latency = {**device}
    elif bench is not None:
        b = bench.record
        latency = {"median": b["median"], "p90": b["p90"], "source": "host"}
    return Option(cand, precision=manifest.precision, fp32_top1=m["fp32"]["top1"], top1=m[manifest.precision]["top1"],
                  reproduced=bool(rec["reproduced"]), manifest_top1=rec["manifest_top1"],
                  verified_top1=rec["val"]["top1"],
                  selection_top1=(rec["selection"] or rec["val"])["top1"],
                  selection_n=(rec["selection"] or rec["val"])["n"],
                  fp32_selection_top1=rec.get("fp32_selection_top1") if rec["selection"] else None,
                  selection_split=rec["selection_split"], latency=latency,
                  extra={"tasks": {name: (t["fp32"]["top1"], t[manifest.precision]["top1"])
                                   for name, t in (m.get("tasks") or {}).items()}})


def _keep_top(cache: StageCache, project: Project, data_digest: str,
              stages: list[StageResult]) -> tuple[Project, list[dict] | None]:
    """`keep_top: K`: rank every candidate on frozen embeddings (no fine-tuning) and go on
    with the K best by LogME. Returns the project with only those, and the ranking rows."""
    from edgetl.rank import top_k

    if not project.keep_top or len(project.candidates) <= project.keep_top:
        return project, None
    records = []
    with track("build: ranking", len(project.candidates)) as task:
        for cand in project.candidates:
            r = rank_stage(cache, project.data, data_digest, cand)
            stages.append(r)
            # The name from the project: candidates with the same backbone, size and split
            # share one cached score, recorded under whichever was ranked first.
            records.append({**r.record, "candidate": cand.name})
            task.advance()
    kept = {r["candidate"] for r in top_k(records, project.keep_top)}
    order = sorted(records, key=lambda r: (r["logme"], r["knn_top1"]), reverse=True)  # stable, as top_k
    rows = [{"candidate": r["candidate"], "rank": i, "logme": r["logme"], "knn_top1": r["knn_top1"],
             "kept": r["candidate"] in kept,
             "why": (f"LogME rank {i} of {len(order)}: " +
                     (f"within keep_top {project.keep_top}" if r["candidate"] in kept
                      else f"below keep_top {project.keep_top}, not fine-tuned"))}
            for i, r in enumerate(order, 1)]
    log.info("ranking: fine-tuning %s; not %s (keep_top %d)", ", ".join(r["candidate"] for r in rows if r["kept"]),
             ", ".join(r["candidate"] for r in rows if not r["kept"]), project.keep_top)
    return replace(project, candidates=tuple(c for c in project.candidates if c.name in kept)), rows


def build(project_file: str | Path, out: str | Path, *, jobs: int = 1, device_results: Sequence[str | Path] = (),
          cache_dir: str | Path | None = None, progress: ProgressCallback | None = None) -> BuildResult:
    """Build every target's bundle from a project file.

    Args:
        project_file: the edgetl.yaml (edgetl/build/config.py).
        out: the output folder (see the module docstring).
        jobs: exports run in this many worker processes at once (1: in this process).
        device_results: `edgetl-device benchmark --json` files; their board latency replaces
            the host's for selection and the budget gate of the bundle each one names.
        cache_dir: the stage cache (default `$EDGETL_CACHE/build`, else ~/.cache/edgetl/build).
        progress: called as progress(description, done, total) during long stages.

    Returns:
        BuildResult. A failed gate is a verdict there (`passed` False), not an exception.

    Raises:
        ConfigError: a bad project file or device-results file (the key and file are named).
        EdgetlError: unreadable data, or an output folder holding something else.
    """
    with reporting(progress):
        return _build(Path(project_file), Path(out), max(1, int(jobs)), list(device_results), cache_dir)


def _build(project_file: Path, out: Path, jobs: int, device_files: list, cache_dir) -> BuildResult:
    from edgetl.bundle import Bundle
    from edgetl.report.summary import assemble, target_entry, write_reports

    started = time.perf_counter()
    project = load_project(project_file)
    device = read_device_results(device_files)
    clash = sorted({s.name for s in project.targets} & RESERVED)
    if clash:
        raise EdgetlError(f"target name '{clash[0]}' would overwrite the build's own '{clash[0]}' in '{out}'; "
                          "rename the target YAML")
    cache = StageCache(cache_dir or default_cache_root())
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data_digest = folder_digest(project.data)
    log.info("data '%s': content digest %s in %.2f s", project.data, data_digest[:12], time.perf_counter() - t0)

    adapt = None
    if project.adapt is not None:
        adapt = Adaptation(project.adapt.target_images, folder_digest(project.adapt.target_images),
                           project.adapt.method)

    stages: list[StageResult] = []
    project, ranking = _keep_top(cache, project, data_digest, stages)
    fts = {}
    with track("build: fine-tuning", len(project.candidates)) as task:
        for cand in project.candidates:
            fts[cand.name] = finetune_stage(cache, project.data, data_digest, cand, adapt, project.tasks)
            stages.append(fts[cand.name])
            task.advance()

    exports = _export_all(cache, fts, project, jobs)
    pairs = [(c, s) for c in project.candidates for s in project.targets]
    stages += [exports[(c.name, s.name)] for c, s in pairs]
    manifests, verifies = {}, {}
    with track("build: verifying", len(pairs)) as task:
        for cand, spec in pairs:
            ex = exports[(cand.name, spec.name)]
            if not ex.error:
                manifests[(cand.name, spec.name)] = Bundle.open(ex.path / "bundle", verify=False).manifest
                verifies[(cand.name, spec.name)] = v = verify_stage(cache, fts[cand.name], ex, spec)
                stages.append(v)
            task.advance()
    check_all_matched(device, {(s.name, verifies[(c.name, s.name)].record["bundle_sha256"])
                               for c, s in pairs if (c.name, s.name) in verifies})
    benches = {}
    # One at a time and after every export: a timed run must not share the CPU with a conversion.
    with track("build: benchmarking", len(verifies)) as task:
        for (cname, tname), v in verifies.items():
            spec = next(s for s in project.targets if s.name == tname)
            benches[(cname, tname)] = b = benchmark_stage(cache, exports[(cname, tname)], spec, project.runs,
                                                          project.warmup, v.record["bundle_sha256"])
            stages.append(b)
            task.advance()

    targets = {}
    for spec in project.targets:
        options = []
        for cand in project.candidates:
            k = (cand.name, spec.name)
            ex = exports[k]
            dev = device.get((spec.name, verifies[k].record["bundle_sha256"])) if k in verifies else None
            options.append(_option(cand.name, spec, ex, verifies.get(k), benches.get(k), manifests.get(k), dev))
            if not ex.error:
                install_bundle(ex.path / "bundle", out / CANDIDATES_DIR / spec.name / cand.name)
        sources = {o.source for o in options if not o.error}
        if len(sources) > 1:
            log.warning("target '%s': device results cover only some candidates; selection compares device and host "
                        "latency (each labelled in summary.json)", spec.name)
        chosen, selection = select(spec, options)
        gates = evaluate_gates(spec.name, spec, chosen) if chosen else evaluate_gates(
            spec.name, spec, Option("-", error="no candidate exported", precision=spec.precision))
        copied = None
        if chosen is not None:
            k = (chosen.candidate, spec.name)
            copied = install_bundle(exports[k].path / "bundle", out / spec.name)
            log.info("target %s: %s (%s) -> '%s'%s", spec.name, chosen.candidate, spec.precision, out / spec.name,
                     "" if copied else " (unchanged)")
        remove_stale(out / CANDIDATES_DIR / spec.name, {c.name for c in project.candidates})
        k = (chosen.candidate, spec.name) if chosen else None
        targets[spec.name] = target_entry(
            spec, chosen, gates, selection, pareto(options, chosen),
            manifest=manifests.get(k) if k else None, verify=verifies.get(k) if k else None,
            host=benches.get(k) if k else None,
            device=device.get((spec.name, verifies[k].record["bundle_sha256"])) if k else None,
            candidate=next((c for c in project.candidates if chosen and c.name == chosen.candidate), None),
            bundle_dir=out / spec.name if chosen else None)
    for stale in (out / CANDIDATES_DIR).iterdir() if (out / CANDIDATES_DIR).is_dir() else []:
        if stale.is_dir() and stale.name not in {s.name for s in project.targets}:
            remove_stale(stale, set())
            if not any(stale.iterdir()):
                stale.rmdir()

    summary = assemble(project, out, data_digest, targets, fts, stages, cache.root, device_files,
                       time.perf_counter() - started, ranking)
    files = write_reports(summary, out)
    failures = tuple(g["message"] for t in summary["targets"].values() for g in t["gates"] if not g["passed"])
    reused = sum(1 for s in stages if s.reused)
    log.info("build finished in %.1f s: %d of %d stages reused; %s", summary["seconds"], reused, len(stages),
             "every gate passed" if summary["passed"] else f"{len(failures)} gate(s) failed")
    return BuildResult(out, summary, summary["passed"], failures, tuple(files))
