"""XNNPACK partitions and INT8 speed-up of every registered backbone (issue 16).

    .venv/bin/python benchmarks/bench_partitions.py --work /tmp/partitions [--runs 100]

Each backbone of `edgetl.backbones.BACKBONES` is exported by the TFLite format exactly as
`edgetl export` does (FP32 with litert-torch, full-integer INT8 with ai-edge-quantizer from
it; the INT8 graph quantized from the int8-delegable rewrite of edgetl/formats/delegable.py),
at its default input size, NHWC, with random-init weights (`--weights none`: MobileNet
weights are not installed here; speed and partitioning do not depend on the values).
Calibration: 32 demo images (tests/data/sign-digits-demo), recipe minmax; "cos vs FP32" is
the mean cosine of INT8 and FP32 embeddings on 32 other demo images (random init: a check
that INT8 computes the same function, not an accuracy figure). For backbones the
rewrite changes, the INT8 graph quantized from the plain FP32 graph (what shipped before
issue 16) is timed too, as "int8 plain", and the rewritten FP32 graph INT8 is quantized from,
as "fp32 rewritten" (FP32 bundles keep the plain graph).

Latency: batch 1, LiteRT Interpreter with its default XNNPACK delegate, at 1 and 2 threads;
all variants of one backbone interleaved in reshuffled blocks (benchmarks/bench_tflite.py's
`time_variants`), median of --runs calls. The host is noisy (±20 % run to run): compare
numbers of the same row only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from bench_tflite import time_variants  # noqa: E402  (the same interleaved timing)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "tests" / "data" / "sign-digits-demo"


def export_backbone(name: str, work: Path, calib_images: list[Path]) -> dict[str, Path]:
    """FP32, INT8 (shipped route) and, when the rewrite applies, INT8 from the plain graph."""
    from dataclasses import replace

    from edgetl.backbones import create_backbone, get_spec
    from edgetl.formats import ExportRequest
    from edgetl.formats.delegable import count_rewrites
    from edgetl.formats.tflite import describe_io, export, int8_source_path, quantize_int8
    from edgetl.quantize.recipes import load_recipe

    spec = get_spec(name)
    module, _ = create_backbone(name, "none")
    pre = spec.preprocess("NHWC")
    recipe = replace(load_recipe("minmax"), samples=len(calib_images))
    calibration = [pre.batch([p]) for p in calib_images]
    paths = {"fp32": work / f"{name}.fp32.tflite", "int8": work / f"{name}.int8.tflite"}
    request = ExportRequest(module=module.eval(), size=spec.size, layout="NHWC", precision="fp32", recipe=recipe,
                            calibration=lambda: calibration, threads=2)
    export(request, paths["fp32"])
    export(replace(request, precision="int8", base=paths["fp32"]), paths["int8"])
    if count_rewrites(module):
        # export() left the rewritten FP32 graph it quantized beside its base: time it too,
        # to show why FP32 bundles keep XNNPACK's fused float HARD_SWISH.
        paths["fp32 rewritten"] = int8_source_path(paths["fp32"])
        paths["int8 plain"] = work / f"{name}.int8-plain.tflite"
        io = describe_io(paths["fp32"], "NHWC")
        quantize_int8(paths["fp32"], paths["int8 plain"], calibration, recipe, io["input"]["signature_input"],
                      io["input"]["signature"])
    return paths


def embed(path: Path, batch: np.ndarray) -> np.ndarray:
    """Float embeddings of a preprocessed NHWC batch through the device backend."""
    from edgetl.backends import open_backend
    from edgetl.formats.tflite import describe_io

    return open_backend("tflite", path, describe_io(path, "NHWC"), threads=2).run(batch)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def runner(path: Path, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    return interpreter.invoke


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--backbones", nargs="+", default=None, help="Default: every registered backbone.")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--reuse", action="store_true", help="Reuse the .tflite files already in --work.")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args.work.mkdir(parents=True, exist_ok=True)

    from edgetl.backbones import BACKBONES, get_spec
    from edgetl.core.scan import scan_classes
    from edgetl.formats.tflite import xnnpack_partitions
    from edgetl.quantize.recipes import select_stratified

    items = scan_classes(DEMO, sorted(p.name for p in DEMO.iterdir() if p.is_dir())).items
    calib = select_stratified([p for p, _ in items], [y for _, y in items], 32, seed=0)
    held_out = [p for p, _ in items if p not in set(calib)][::6][:32]
    console = Console()
    table = Table(title="XNNPACK partitions and INT8 speed (random init, batch 1)")
    for col in ("backbone", "model", "partitions", "undelegated ops", "size MB", "cos vs FP32",
                *[f"ms {t} thr" for t in args.threads], *[f"speed-up vs FP32 {t} thr" for t in args.threads]):
        table.add_column(col)
    for name in args.backbones or list(BACKBONES):
        if args.reuse and (args.work / f"{name}.int8.tflite").is_file():
            paths = {k: args.work / f"{name}.{s}.tflite" for k, s in
                     (("fp32", "fp32"), ("fp32 rewritten", "fp32.delegable"), ("int8", "int8"),
                      ("int8 plain", "int8-plain"))
                     if (args.work / f"{name}.{s}.tflite").is_file()}
        else:
            paths = export_backbone(name, args.work, calib)
        ms = {t: time_variants({k: runner(p, t) for k, p in paths.items()}, args.warmup, args.runs)
              for t in args.threads}
        batch = get_spec(name).preprocess("NHWC").batch(held_out)
        reference = embed(paths["fp32"], batch)
        for kind, path in paths.items():
            partitions, outside = xnnpack_partitions(path)
            counts: dict[str, int] = {}
            for op in outside:
                counts[op] = counts.get(op, 0) + 1
            speed = [f"{ms[t]['fp32'] / ms[t][kind]:.2f}x" if kind != "fp32" else "" for t in args.threads]
            table.add_row(name, kind, str(partitions), ", ".join(f"{k} x{v}" for k, v in counts.items()) or "-",
                          f"{path.stat().st_size / 1e6:.2f}", f"{cosine(embed(path, batch), reference):.4f}",
                          *[f"{ms[t][kind]:.2f}" for t in args.threads], *speed)
        console.print(f"{name} done", style="dim")
    console.print(table)


if __name__ == "__main__":
    main()
