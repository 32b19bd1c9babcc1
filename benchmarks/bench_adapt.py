"""Adaptation to field images (issue 17): the figures of docs/benchmarks.md, "Adaptation to
field images".

Protocol, per dataset (hymenoptera, sign digits) and seed (0, 1, 2; the seed of the run and
of the shift's noise):
  1. `edgetl finetune DATA --strategy linear --seed S` (Lite0).
  2. The simulated cheap camera (benchmarks/camera_shift.py, seed S) on the run's
     training-side images (train + selection): the UNLABELED target images; and on its
     validation images: the labelled evaluation set. Disjoint; labels only score.
  3. Source-only, align (per-dimension), align at half strength, coral, AdaBN (anchored and
     plain), and `--adapt auto`: top-1 on the shifted validation images (target) and on the
     clean ones (clean val). align/coral/AdaBN use the same statistics `edgetl adapt` does
     (source: the run's training images; target: the unlabeled shifted ones).
  3a. `--adapt selftrain` (edgetl adapt, its defaults) on every dataset/seed: target and
     clean-val top-1, the student's stop, the source check, the wall time.
  3b. `--adapt dann` (edgetl adapt with its defaults, partial from the linear run) on the
     `--dann` dataset/seed pairs: target and clean-val top-1, the stop rule, the epochs, the
     source check, the wall time.
  4. Seed 0 only: an FP32 rpi5 bundle of the run, `edgetl-device adapt` with the target
     images (source statistics: the bundle's reference set), `edgetl-device evaluate` on the
     shifted validation images; and drift: 100 random subsets of N clean training-side
     images (never in the reference set, which holds validation images) and 100 of the
     shifted ones, each tested against the reference set at alpha 0.05.

The shared machine (2 cores, other agents' jobs) makes the slow parts slower than they
are: `--target-max` (400) caps the target images at a seeded subset (the digits have 1651
training-side images), and `--heavy` picks the runs that also run AdaBN, auto and the device
figures (every hymenoptera seed, digits seed 0).

`--ablation` runs source-only and align on hymenoptera seed 0 under each camera_shift
preset instead (OUT/ablation.json). Results go to OUT/results.json (resumable: finished steps are not rerun) and a table.

  python benchmarks/bench_adapt.py --out /tmp/bench-adapt [--datasets hymenoptera,digits] [--seeds 0,1,2]
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from camera_shift import shift_folder  # noqa: E402

DATA = REPO.parent / "shared" / "data"
DATASETS = {"hymenoptera": DATA / "hymenoptera_data", "digits": DATA / "sign_language_digits"}
DEVICE_CLI = str(Path(sys.executable).with_name("edgetl-device"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)


def _top1(logits: np.ndarray, y) -> float:
    return float(np.mean(np.asarray(logits).argmax(1) == np.asarray(y)))


def prepare(dataset: str, seed: int, work: Path, target_max: int, preset: str = "cheap-camera") -> dict:
    import edgetl

    run_dir = work / "runs" / f"{dataset}-s{seed}"
    if not (run_dir / "metrics.json").is_file():
        t0 = time.perf_counter()
        edgetl.finetune(DATASETS[dataset], run_dir, strategy="linear", seed=seed)
        print(f"  finetune {dataset} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    record = json.loads((run_dir / "metrics.json").read_text())["data"]
    root = Path(record["root"])
    shifted = work / "shifted" / (f"{dataset}-s{seed}" + ("" if preset == "cheap-camera" else f"-{preset}"))
    train_side = sorted(record["train_files"] + record["selection_files"])
    if target_max and len(train_side) > target_max:
        # A seeded subset keeps the digits' run inside the shared machine's time (see the docs).
        pick = np.random.default_rng(seed).choice(len(train_side), target_max, replace=False)
        train_side = [train_side[i] for i in sorted(pick)]
    shift_folder(root, shifted / "train", seed, train_side, preset)
    shift_folder(root, shifted / "val", seed, record["val_files"], preset)
    return {"run": run_dir, "record": record, "root": root, "target_dir": shifted / "train",
            "val_dir": shifted / "val", "train_side": train_side}


def host_methods(ctx: dict, adabn_too: bool) -> dict:
    """Every host method's target and clean-val top-1 on one run (see the module docstring)."""
    from edgetl.adapt import adabn
    from edgetl.adapt.features import embedding_cache
    from edgetl.core import align
    from edgetl.data import split_from_record
    from edgetl.model import load_run

    run = load_run(ctx["run"])
    split = split_from_record(ctx["record"])
    cache = embedding_cache(run.backbone, run, None)
    val_shifted = [(ctx["val_dir"] / p.relative_to(ctx["root"])).with_suffix(".jpg") for p, _ in split.val]
    target_paths = [(ctx["target_dir"] / rel).with_suffix(".jpg") for rel in ctx["train_side"]]
    source_x = cache.embed([p for p, _ in split.train])
    target_x = cache.embed(target_paths)
    val_x, val_sx = cache.embed([p for p, _ in split.val]), cache.embed(val_shifted)
    y = [c for _, c in split.val]
    w = run.model.head.weight.detach().numpy().astype(np.float64)
    b = run.model.head.bias.detach().numpy().astype(np.float64)
    out = {"source-only": {"target": _top1(val_sx @ w.T + b, y), "clean": _top1(val_x @ w.T + b, y)}}
    per_dim = align.per_dimension(align.Moments.of(source_x), align.Moments.of(target_x))
    maps = {"align": per_dim, "align 0.5": per_dim.toward_identity(0.5), "coral": align.coral(source_x, target_x)}
    for name, amap in maps.items():
        w2, b2 = align.fold(w, b, amap)
        out[name] = {"target": _top1(val_sx @ w2.T + b2, y), "clean": _top1(val_x @ w2.T + b2, y),
                     "map": {k: v for k, v in amap.info.items() if k in ("clipped_dimensions", "shrinkage_source",
                                                                         "shrinkage_target", "strength")}}
    if not adabn_too:
        return out
    moments = adabn.layer_moments(copy.deepcopy(run.backbone), [p for p, _ in split.train], run.preprocess)
    for name, source in (("adabn", moments), ("adabn plain", None)):
        t0 = time.perf_counter()
        module = copy.deepcopy(run.backbone)
        adabn.adapt_batchnorm(module, target_paths, run.preprocess, source).apply(module, 1.0)
        c2 = embedding_cache(module, run, None)
        out[name] = {"target": _top1(c2.embed(val_shifted) @ w.T + b, y),
                     "clean": _top1(c2.embed([p for p, _ in split.val]) @ w.T + b, y),
                     "seconds": round(time.perf_counter() - t0, 1)}
    return out


def _adapted(ctx: dict, work: Path, method: str, **options) -> tuple[dict, dict]:
    """`edgetl adapt RUN --adapt METHOD`: (the adaptation record, target/clean top-1 and seconds)."""
    import edgetl.adapt
    from edgetl.evaluate import evaluate_run_on_folder

    out_dir = work / "adapted" / f"{ctx['run'].name}-{method}"
    t0 = time.perf_counter()
    run = edgetl.adapt.adapt_run(ctx["run"], ctx["target_dir"], method, out_dir, **options)
    seconds = time.perf_counter() - t0
    return run.metrics["adaptation"], {"target": evaluate_run_on_folder(out_dir, ctx["val_dir"])["top1"],
                                       "clean": run.metrics["top1"], "seconds": round(seconds, 1)}


def auto(ctx: dict, work: Path) -> dict:
    a, scores = _adapted(ctx, work, "auto")
    return {**scores, "chosen": a["auto"]["chosen"], "tried": a["auto"]["tried"],
            "candidates": [{"method": c["method"], "strength": c["strength"],
                            "im_score": c["target_scores"]["im_score"]} for c in a["auto"]["candidates"]]}


def dann(ctx: dict, work: Path, epochs: int | None) -> dict:
    """`edgetl adapt RUN --adapt dann` with its defaults (`epochs` caps the maximum)."""
    a, scores = _adapted(ctx, work, "dann", dann={"epochs": epochs})
    return {**scores, "stopped": a["training"]["stopped"], "config": a["training"]["config"],
            "epochs_run": len(a["training"]["history"]), "source_check": a["source_check"],
            "history": a["training"]["history"]}


def selftrain(ctx: dict, work: Path) -> dict:
    """`edgetl adapt RUN --adapt selftrain` (teacher: align + adabn; student: the head)."""
    a, scores = _adapted(ctx, work, "selftrain")
    return {**scores, "stopped": a["training"]["stopped"], "map": a["map"], "source_check": a["source_check"]}


def device_figures(ctx: dict, work: Path, subset: int) -> dict:
    """Device adapt vs host align, and the drift test's alarm rates (seed 0)."""
    import edgetl
    from edgetl.backends import Backbone
    from edgetl.bundle import Bundle
    from edgetl.ondevice.drift import mmd_test
    from edgetl.ondevice.embedcache import embed_files

    bundle = work / "dist" / f"{ctx['run'].name}-rpi5-fp32"
    if not (bundle / "manifest.json").is_file():
        edgetl.export(ctx["run"], "rpi5", bundle, "fp32")
    shutil.rmtree(bundle / "heads", ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests" / "no_torch")}

    def dev(*args):
        return subprocess.run([DEVICE_CLI, *map(str, args)], capture_output=True, text=True, env=env)

    before = json.loads(dev("evaluate", bundle, ctx["val_dir"], "--json").stdout)["top1"]
    t0 = time.perf_counter()
    adapt = dev("adapt", bundle, ctx["target_dir"], "--json")
    adapt_s = time.perf_counter() - t0
    assert adapt.returncode == 0, adapt.stderr[-2000:]
    after = json.loads(dev("evaluate", bundle, ctx["val_dir"], "--json").stdout)["top1"]
    clean_val = bundle / "clean-val"  # the run's validation split as class folders
    if not clean_val.is_dir():
        for rel in ctx["record"]["val_files"]:
            (clean_val / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(ctx["root"] / rel, clean_val / rel)
    after_clean = json.loads(dev("evaluate", bundle, clean_val, "--json").stdout)["top1"]
    result = {"device_target_before": before, "device_target_after": after, "device_clean_after": after_clean,
              "adapt_wall_s": round(adapt_s, 1), "adapt": json.loads(adapt.stdout)["metrics"]}
    shutil.rmtree(clean_val)
    shutil.rmtree(bundle / "heads", ignore_errors=True)

    b = Bundle.open(bundle)
    ref = b.reference()[0]
    rels = ctx["train_side"]  # clean and shifted versions of the same training-side images
    clean_x, _ = embed_files(b, [ctx["root"] / r for r in rels], lambda: Backbone.open(b))
    shifted_x, _ = embed_files(b, [(ctx["target_dir"] / r).with_suffix(".jpg") for r in rels], lambda: Backbone.open(b))
    rng = np.random.default_rng(12345)
    flags = {"clean": 0, "shifted": 0}
    t0 = time.perf_counter()
    for i in range(100):
        for name, pool in (("clean", clean_x), ("shifted", shifted_x)):
            pick = rng.choice(len(pool), subset, replace=False)
            flags[name] += mmd_test(ref, pool[pick], 1000, seed=i)[1] <= 0.05
    result["drift"] = {"subset": subset, "reference": len(ref), "tests": 100, "clean_flagged": int(flags["clean"]),
                       "shifted_flagged": int(flags["shifted"]),
                       "seconds_per_test": round((time.perf_counter() - t0) / 200, 3)}
    return result


@click.command()
@click.option("--out", "work", type=click.Path(file_okay=False, path_type=Path), default=Path("/tmp/bench-adapt"))
@click.option("--datasets", default="hymenoptera,digits")
@click.option("--seeds", default="0,1,2")
@click.option("--drift-subset", type=int, default=50, help="Recent images per drift test.")
@click.option("--target-max", type=int, default=400, help="At most this many (seeded) target images.")
@click.option("--heavy", default="hymenoptera/0,hymenoptera/1,hymenoptera/2,digits/0",
              help="dataset/seed pairs that also run AdaBN, auto and the device figures (seed 0).")
@click.option("--dann", "dann_pairs", default="hymenoptera/0,hymenoptera/1,hymenoptera/2",
              help="dataset/seed pairs that also run `--adapt dann` (an epoch runs the backbone on every "
                   "training and as many target images: the digits' 1400 are too slow for the shared machine).")
@click.option("--dann-epochs", type=int, default=None, help="Cap dann's maximum epochs (default: its own).")
@click.option("--ablation", is_flag=True, help="Only the shift ablation: source-only and align on hymenoptera "
                                                 "seed 0 under each camera_shift preset.")
def main(work: Path, datasets: str, seeds: str, drift_subset: int, target_max: int, heavy: str, dann_pairs: str,
         dann_epochs: int | None, ablation: bool) -> None:
    import torch

    from camera_shift import PRESETS

    torch.set_num_threads(os.cpu_count() or 1)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "results.json"
    results = _load(path)
    if ablation:  # its own file: a main run going on at the same time rewrites results.json
        apath = work / "ablation.json"
        for preset in PRESETS:
            found = _load(apath)
            if preset not in found:
                found[preset] = host_methods(prepare("hymenoptera", 0, work, target_max, preset), False)
                _save(apath, found)
            print(preset, {k: (round(100 * v["target"], 1), round(100 * v["clean"], 1))
                           for k, v in found[preset].items()}, flush=True)
        return
    for dataset in datasets.split(","):
        for seed in [int(s) for s in seeds.split(",")]:
            key = f"{dataset}/{seed}"
            entry = results.setdefault(key, {})
            ctx = prepare(dataset, seed, work, target_max)
            entry["n_target"] = len(ctx["train_side"])
            is_heavy = key in heavy.split(",")
            for step, fn in (("host", lambda: host_methods(ctx, is_heavy)), ("auto", lambda: auto(ctx, work)),
                             ("device", lambda: device_figures(ctx, work, drift_subset)),
                             ("dann", lambda: dann(ctx, work, dann_epochs)),
                             ("selftrain", lambda: selftrain(ctx, work))):
                if step in entry or (step == "dann" and key not in dann_pairs.split(",")) \
                        or (step in ("auto", "device") and not is_heavy) or (step == "device" and seed != 0):
                    continue
                t0 = time.perf_counter()
                entry[step] = fn()
                print(f"{key} {step}: {time.perf_counter() - t0:.0f} s", flush=True)
                _save(path, results)
    table(results)


def table(results: dict) -> None:
    rows = ["source-only", "align", "align 0.5", "coral", "adabn", "adabn plain", "selftrain", "auto", "dann"]
    own = ("selftrain", "auto", "dann")  # steps of their own, not host_methods' rows
    for dataset in sorted({k.split("/")[0] for k in results}):
        entries = [v for k, v in sorted(results.items()) if k.startswith(dataset + "/") and "host" in v]
        print(f"\n{dataset}: target top1 mean [min, max] | clean val top1 mean [min, max] (seeds)")
        for row in rows:
            vals = [e[row] if row in own else e["host"][row] for e in entries
                    if (row in own and row in e) or (row not in own and row in e["host"])]
            if not vals:
                continue
            t = np.array([v["target"] for v in vals]) * 100
            c = np.array([v["clean"] for v in vals]) * 100
            print(f"  {row:12s} {t.mean():5.1f} [{t.min():.1f}, {t.max():.1f}] | {c.mean():5.1f} [{c.min():.1f}, "
                  f"{c.max():.1f}] ({len(vals)})")


if __name__ == "__main__":
    main()
