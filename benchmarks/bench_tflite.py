"""FP32 / FP16 / INT8 TFLite vs torch eager for one run: latency, size, accuracy.

    .venv/bin/python benchmarks/bench_tflite.py runs/h-lin --target rpi5 --work /tmp/bench-h

Exports the run three times with `edgetl export` (each bundle is evaluated by the device
runtime on the run's validation split), then times batch-1 inference of every variant at
1 and 2 threads: `--warmup` runs each, then `--runs` timed runs each, taken in short
blocks whose order is reshuffled every round (interleaved), because this machine is noisy
and one long block per variant would compare different moments of background load.
Reports medians.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

PRECISIONS = ("fp32", "fp16", "int8")


def export_all(run: Path, target: str, work: Path, reuse: bool) -> dict[str, Path]:
    import edgetl

    bundles = {}
    for precision in PRECISIONS:
        out = work / precision
        if not (reuse and (out / "manifest.json").is_file()):
            t0 = time.perf_counter()
            edgetl.export(run, target, out, precision)  # the gate's verdict is in the manifest either way
            print(f"exported {precision} in {time.perf_counter() - t0:.0f} s")
        bundles[precision] = out
    return bundles


def time_variants(variants: dict, warmup: int, runs: int, block: int = 5, seed: int = 0) -> dict[str, float]:
    """Median ms per variant over `runs` timed calls, taken in blocks of `block` with the
    variant order reshuffled every round. One untimed call opens each block: a thread pool
    that just finished (XNNPACK's, torch's OpenMP) keeps spinning for a moment, and on two
    cores that would bill the next variant for it."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(-(-runs // block)):
        order = list(variants)
        rng.shuffle(order)
        for name in order:
            fn = variants[name]
            fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(v[:runs]) for name, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--target", default="rpi5")
    parser.add_argument("--work", type=Path, required=True, help="Folder for the three bundles.")
    parser.add_argument("--reuse", action="store_true", help="Reuse bundles already in --work.")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()

    # torch's OpenMP workers otherwise busy-wait between calls and steal the second core from
    # the interleaved TFLite variants.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from edgetl.model import load_run
    from edgetl.backends import open_backend

    bundles = export_all(args.run, args.target, args.work, args.reuse)
    manifests = {p: json.loads((b / "manifest.json").read_text()) for p, b in bundles.items()}
    run = load_run(args.run)
    run_metrics = json.loads((args.run / "metrics.json").read_text())
    val_files = run_metrics["data"]["val_files"]
    image = Path(run_metrics["data"]["root"]) / val_files[0]
    preprocess = run.preprocess
    x_nchw = torch.from_numpy(preprocess.batch([image]))
    x_layout = {p: preprocess.with_layout(m["preprocess"]["layout"]).batch([image]) for p, m in manifests.items()}

    latency: dict[int, dict[str, float]] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        variants = {}
        for precision, bundle in bundles.items():
            m = manifests[precision]
            backend = open_backend(m["backend"], bundle / m["model"]["file"], m["model"], threads)
            variants[f"tflite {precision}"] = (lambda b=backend, x=x_layout[precision]: b.run(x))

        def torch_eager():
            with torch.inference_mode():
                run.backbone(x_nchw)

        variants["torch eager fp32"] = torch_eager
        latency[threads] = time_variants(variants, args.warmup, args.runs)

    rows = []
    for precision in PRECISIONS:
        m = manifests[precision]
        size = (bundles[precision] / m["model"]["file"]).stat().st_size
        metrics = m["metrics"][precision]
        rows.append({"variant": f"tflite {precision}", "size_mb": size / 1e6, "top1": metrics["top1"],
                     "balanced_accuracy": metrics["balanced_accuracy"], "n": metrics["n"],
                     **{f"ms_{t}t": latency[t][f"tflite {precision}"] for t in args.threads}})
    torch_size = sum(p.numel() * p.element_size() for p in run.backbone.state_dict().values())
    rows.append({"variant": "torch eager fp32", "size_mb": torch_size / 1e6, "top1": run_metrics["top1"],
                 "balanced_accuracy": run_metrics["balanced_accuracy"], "n": run_metrics["n"],
                 **{f"ms_{t}t": latency[t]["torch eager fp32"] for t in args.threads}})

    fp32, int8 = rows[0], rows[2]
    summary = {
        "int8_drop_pts": (fp32["top1"] - int8["top1"]) * 100,
        **{f"int8_speedup_{t}t": fp32[f"ms_{t}t"] / int8[f"ms_{t}t"] for t in args.threads},
        "int8_size_ratio": int8["size_mb"] / fp32["size_mb"],
        "val_images": fp32["n"],
        "calibration": manifests["int8"].get("calibration", {}).get("name"),
    }

    table = Table(title=f"{args.run} on {args.target} bundles (batch 1, median of {args.runs} interleaved runs)")
    for col in ["variant", "size MB", "top1", "bal. acc.", *[f"{t} thr ms" for t in args.threads]]:
        table.add_column(col, justify="right" if col != "variant" else "left")
    for r in rows:
        table.add_row(r["variant"], f"{r['size_mb']:.2f}", f"{r['top1']:.4f}", f"{r['balanced_accuracy']:.4f}",
                      *[f"{r[f'ms_{t}t']:.2f}" for t in args.threads])
    console = Console()
    console.print(table)
    console.print(f"INT8 vs FP32 TFLite: top1 drop {summary['int8_drop_pts']:.2f} pts on {summary['val_images']} "
                  f"images; speed-up " + ", ".join(f"{summary[f'int8_speedup_{t}t']:.2f}x @{t} thr" for t in args.threads)
                  + f"; size ratio {summary['int8_size_ratio']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
